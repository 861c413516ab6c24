"""End to end: TRL's SFTTrainer with a peft config, and a hand-written loop, under
``ftwatch run -- python SCRIPT``: the same exact figures as a config run of the same model."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec

import pytest
from test_run_end_to_end import expected_tiny_bytes
from test_wrapped_trainer import (
    AFTER_TRAIN,
    PHASES,
    SCRIPTS,
    check_exact_figures,
    events_of,
    finished,
    ftwatch_run,
    stopped_after_two_steps,
)

pytestmark = pytest.mark.slow


@pytest.mark.skipif(find_spec("trl") is None, reason="trl is not installed (pip install trl, in the test extras)")
def test_trl_sft_trainer_with_a_peft_config(tmp_path):
    code, out, err = finished(ftwatch_run(tmp_path, sys.executable, str(SCRIPTS / "sft_script.py"),
                                          str(tmp_path / "out"), "3"))
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished"
    check_exact_figures(summary, events_of(tmp_path), 3)  # get_peft_model inside SFTTrainer.__init__ seen too
    assert f"{AFTER_TRAIN} 3" in err


def check_four_hand_loop_steps(code: int, out: str, err: str, tmp_path) -> list[dict]:  # noqa: ANN001
    """A hand-written loop's run of 4 steps on the tiny model: its exact figures, each step once; its events."""
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    assert summary["status"] == "finished" and summary["steps"] == 4
    for category in ("weights", "lora", "grads", "optimizer"):
        assert summary["peak_bytes"][category] == expected[category], category
    assert summary["peak_bytes"]["activations"] > 0  # the forwards of the model the optimizer trains
    assert summary["params_trainable"] == expected["params_trainable"]
    events = events_of(tmp_path)
    assert [e["step"] for e in events if e["kind"] == "snapshot" and e.get("step")] == [1, 2, 3, 4]
    assert f"{AFTER_TRAIN} 4" in err
    return events


def test_hand_written_loop_counts_steps_at_optimizer_step(tmp_path):
    events = check_four_hand_loop_steps(*finished(ftwatch_run(tmp_path, sys.executable,
                                                              str(SCRIPTS / "loop_script.py"), "4")), tmp_path)
    assert [e["name"] for e in events if e["kind"] == "phase"] == [p for p in PHASES if p != "preparing_trainer"]


def test_a_script_with_its_own_probe_gets_the_runs_one_probe_and_one_log(tmp_path):
    own = tmp_path / "own-runs"
    events = check_four_hand_loop_steps(*finished(ftwatch_run(tmp_path, sys.executable,
                                                              str(SCRIPTS / "probe_loop_script.py"), "4", str(own))),
                                        tmp_path)
    assert [e["kind"] for e in events].count("header") == 1 and [e["kind"] for e in events].count("exit") == 1
    # transformers imported before peft: the LoRA is still its own phase
    assert [e["name"] for e in events if e["kind"] == "phase"][:2] == ["loading_model", "applying_lora"]
    assert not own.exists() or not any(own.iterdir())


def test_k_stops_a_hand_loop_between_steps(tmp_path):
    code, out, err = stopped_after_two_steps(tmp_path, sys.executable, str(SCRIPTS / "loop_script.py"), "100000")
    assert code == 130, err[-3000:]
    assert json.loads(out)["status"] == "stopped"
    events = events_of(tmp_path)
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "stopped" and events[-1]["step"] == last_step
    assert "interrupted between steps" in err  # raised as KeyboardInterrupt after a whole step
    assert f"{AFTER_TRAIN} {last_step}" in err


@pytest.mark.skipif(find_spec("trl") is None, reason="trl is not installed (pip install trl, in the test extras)")
def test_k_stops_a_trl_sft_trainer_at_a_step_boundary_and_its_code_goes_on(tmp_path):
    code, out, err = stopped_after_two_steps(tmp_path, sys.executable, str(SCRIPTS / "sft_script.py"),
                                             str(tmp_path / "out"), "100000")
    assert code == 130, err[-3000:]
    events = events_of(tmp_path)
    exit_event = events[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "stopped"
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    assert exit_event["step"] == last_step
    assert f"{AFTER_TRAIN} {last_step}" in err  # SFTTrainer.train() returned and the script went on
