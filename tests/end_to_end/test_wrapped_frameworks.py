"""End to end: axolotl's and LLaMA-Factory's own CLIs under ``ftwatch run --headless --json --``,
a LoRA fine-tune of the bundled tiny model on CPU for a few steps; figures checked against the count
from config.json's shapes (:func:`test_run_end_to_end.expected_tiny_bytes`), as a config run is.

Neither framework installs beside this project's pins (each wants its own transformers, peft and
trl), so each lives in a virtual environment of its own, named by its interpreter:

- ``FTWATCH_AXOLOTL_PYTHON=/path/to/venv/bin/python`` (its ``axolotl`` script beside it);
- ``FTWATCH_LLAMAFACTORY_PYTHON=/path/to/venv/bin/python`` (its ``llamafactory-cli`` beside it).

A test is skipped when its variable is unset (and the framework is not importable here) or names no
such interpreter. ``ftwatch run`` itself is this interpreter's: the child finds ftwatch through
``FTWATCH_PACKAGE_ROOT``, so the framework's venv needs only ftwatch's light dependencies (psutil).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from test_run_end_to_end import expected_tiny_bytes
from test_wrapped_trainer import check_exact_figures, events_of, finished, ftwatch_run

from conftest import FIXTURES_ROOT, TINY_DATA, TINY_MODEL, wait_for

pytestmark = pytest.mark.slow

FRAMEWORKS = FIXTURES_ROOT / "frameworks"
#: Printed by LLaMA-Factory after ``trainer.train()`` returned (its ``log_metrics("train", ...)``).
LF_AFTER_TRAIN = "***** train metrics *****"
#: Printed by axolotl after ``trainer.train()`` returned.
AXOLOTL_AFTER_TRAIN = "Training completed!"


def framework_cli(variable: str, module: str, script: str) -> Path | None:
    """The framework's CLI script beside the interpreter ``variable`` names (or this one's, when the
    framework imports here); ``None`` when there is none."""
    python = os.environ.get(variable)
    if not python and find_spec(module) is not None:
        python = sys.executable
    if not python:
        return None
    cli = Path(python).with_name(script)
    return cli if Path(python).is_file() and cli.is_file() else None


AXOLOTL = framework_cli("FTWATCH_AXOLOTL_PYTHON", "axolotl", "axolotl")
LLAMAFACTORY = framework_cli("FTWATCH_LLAMAFACTORY_PYTHON", "llamafactory", "llamafactory-cli")
needs_axolotl = pytest.mark.skipif(
    AXOLOTL is None, reason="axolotl not found: set FTWATCH_AXOLOTL_PYTHON to the python of a venv with axolotl")
needs_llamafactory = pytest.mark.skipif(
    LLAMAFACTORY is None,
    reason="LLaMA-Factory not found: set FTWATCH_LLAMAFACTORY_PYTHON to the python of a venv with llamafactory")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, no telemetry, no tracker; the datasets cache under ``tmp_path``."""
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled",
                        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false",
                        "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(name, value)


def filled(template: Path, target: Path, **values: object) -> Path:
    """``template`` with each ``@KEY@`` replaced by its value, written to ``target``."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    assert "@" not in "".join(line.split("#")[0] for line in text.splitlines()), "a placeholder left unfilled"
    target.write_text(text)
    return target


def axolotl_config(tmp_path: Path, steps: int) -> Path:
    return filled(FRAMEWORKS / "axolotl" / "lora.yml", tmp_path / "axolotl.yml", MODEL=TINY_MODEL,
                  DATA=TINY_DATA, OUTPUT=tmp_path / "out", PREPARED=tmp_path / "prepared", STEPS=steps)


def llamafactory_config(tmp_path: Path, steps: int) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FRAMEWORKS / "llamafactory" / "dataset_info.json", data)
    shutil.copy(TINY_DATA, data / "field-notes.jsonl")
    return filled(FRAMEWORKS / "llamafactory" / "pt_lora.yaml", tmp_path / "llamafactory.yaml", MODEL=TINY_MODEL,
                  DATA=data, OUTPUT=tmp_path / "out", STEPS=steps)


def check_run(tmp_path: Path, out: str, steps: int) -> list[dict]:
    summary = json.loads(out)
    assert summary["status"] == "finished"
    assert summary["model"] == str(TINY_MODEL)
    events = events_of(tmp_path)
    check_exact_figures(summary, events, steps)  # LoRA r=8 on q_proj, v_proj; AdamW; float32 throughout
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "finished" and events[-1]["step"] == steps
    estimate = next(e for e in events if e["kind"] == "estimate")  # from the model, LoraConfig and arguments
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    for category in ("weights", "lora", "grads", "optimizer"):
        assert estimate["estimate_bytes"][category] == expected[category], category
    return events


@needs_axolotl
def test_axolotl_train_in_process_is_measured_exactly(tmp_path, offline):
    config = axolotl_config(tmp_path, 3)
    code, out, err = finished(ftwatch_run(tmp_path, str(AXOLOTL), "train", str(config), "--launcher", "python"))
    assert code == 0, err[-3000:]
    check_run(tmp_path, out, 3)
    assert AXOLOTL_AFTER_TRAIN in err


@needs_axolotl
def test_axolotl_train_through_its_accelerate_launcher_is_measured_exactly(tmp_path, offline, monkeypatch):
    """``axolotl train`` as typed (it execs ``accelerate launch -m axolotl.cli.train``, one CPU
    process): the venv's bin first on PATH, as an activated venv has it."""
    monkeypatch.setenv("PATH", str(AXOLOTL.parent) + os.pathsep + os.environ.get("PATH", ""))
    config = axolotl_config(tmp_path, 3)
    code, out, err = finished(ftwatch_run(tmp_path, str(AXOLOTL), "train", str(config)))
    assert code == 0, err[-3000:]
    check_run(tmp_path, out, 3)


@needs_axolotl
def test_k_stops_axolotl_at_a_step_boundary_and_it_saves(tmp_path, offline):
    config = axolotl_config(tmp_path, 100000)
    process = ftwatch_run(tmp_path, str(AXOLOTL), "train", str(config), "--launcher", "python")
    check_stopped(tmp_path, process, AXOLOTL_AFTER_TRAIN)


@needs_llamafactory
def test_llamafactory_cli_train_is_measured_exactly(tmp_path, offline):
    config = llamafactory_config(tmp_path, 3)
    code, out, err = finished(ftwatch_run(tmp_path, str(LLAMAFACTORY), "train", str(config)))
    assert code == 0, err[-3000:]
    check_run(tmp_path, out, 3)
    assert LF_AFTER_TRAIN in err  # its own output passed through, and its code after train() ran


@needs_llamafactory
def test_k_stops_llamafactory_at_a_step_boundary_and_it_saves(tmp_path, offline):
    config = llamafactory_config(tmp_path, 100000)
    process = ftwatch_run(tmp_path, str(LLAMAFACTORY), "train", str(config))
    check_stopped(tmp_path, process, LF_AFTER_TRAIN)


def check_stopped(tmp_path: Path, process: subprocess.Popen[str], after_train: str) -> None:
    """``k`` once two steps are done: the run stops at a step boundary, ``train()`` returns and the
    framework's own code after it runs (its line printed, the adapter saved)."""
    try:
        wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 2 for e in events_of(tmp_path)),
                 timeout=240)
        pid = next(e["pid"] for e in events_of(tmp_path) if e["kind"] == "header")
        os.killpg(pid, signal.SIGINT)  # what `k` in the dashboard sends
    except BaseException:
        process.kill()
        raise
    code, out, err = finished(process)
    assert code == 130, err[-3000:]
    assert json.loads(out)["status"] == "stopped"
    events = events_of(tmp_path)
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "stopped" and events[-1]["step"] == last_step
    assert after_train in err  # train() returned at the boundary and the framework went on
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()  # ... to save the trained adapter
