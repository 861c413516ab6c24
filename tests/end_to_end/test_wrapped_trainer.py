"""End to end: ``ftwatch run --headless --json -- python SCRIPT`` of scripts that know nothing of
ftwatch, on the bundled tiny model; figures checked against a count from config.json's shapes
(:func:`test_run_end_to_end.expected_tiny_bytes`), the same figures a config run measures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_run_end_to_end import expected_tiny_bytes

from conftest import FIXTURES_ROOT, REPO, wait_for
from ftwatch.runlog.event_reader import read_events

pytestmark = pytest.mark.slow

SCRIPTS = FIXTURES_ROOT / "scripts"
AFTER_TRAIN = "AFTER-TRAIN-MARKER"
PHASES = ["loading_model", "applying_lora", "preparing_trainer", "training"]


def ftwatch_run(tmp_path: Path, *command: str, options: tuple[str, ...] = ("--headless", "--json"),
                **popen: object) -> subprocess.Popen[str]:
    """``python -m ftwatch run OPTIONS -- COMMAND`` with its runs under ``tmp_path/runs``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", FTWATCH_LOG_DIR=str(tmp_path / "runs"))
    return subprocess.Popen([sys.executable, "-m", "ftwatch", "run", *options, "--", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            **popen)


def run_dir_of(tmp_path: Path) -> Path:
    dirs = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def events_of(tmp_path: Path) -> list[dict]:
    logs = list((tmp_path / "runs").glob("*/events.jsonl")) if (tmp_path / "runs").is_dir() else []
    return list(read_events(logs[0])) if logs else []


def finished(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, out, err


def check_exact_figures(summary: dict, events: list[dict], steps: int) -> None:
    """The four tensor categories and the parameter counts equal the count from the model's shapes;
    the phases are the worker's, in its order; the step total is known."""
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    assert summary["steps"] == steps
    for category in ("weights", "lora", "grads", "optimizer"):
        assert summary["peak_bytes"][category] == expected[category], category
    assert summary["peak_bytes"]["activations"] > 0
    assert summary["params_total"] == expected["params_total"]
    assert summary["params_trainable"] == expected["params_trainable"]
    assert [e["name"] for e in events if e["kind"] == "phase"] == PHASES
    training = next(e for e in events if e["kind"] == "phase" and e["name"] == "training")
    assert training.get("max_steps") == steps


def test_plain_trainer_script_is_measured_like_a_config_run(tmp_path):
    process = ftwatch_run(tmp_path, sys.executable, str(SCRIPTS / "trainer_script.py"), str(tmp_path / "out"), "4")
    code, out, err = finished(process)
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished"
    assert summary["model"] == str(REPO / "examples" / "tiny-llama")
    events = events_of(tmp_path)
    check_exact_figures(summary, events, 4)
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "finished" and events[-1]["by"] == "worker"
    header = next(e for e in events if e["kind"] == "header")
    if "origin" in header:  # the header says how the run was started, and what ran
        assert header["origin"] == "command" and header["command"][1] == str(SCRIPTS / "trainer_script.py")
    assert f"{AFTER_TRAIN} 4" in err  # the command's own output, passed through (stderr in --json mode)
    assert f"{AFTER_TRAIN} 4" in (run_dir_of(tmp_path) / "worker.log").read_text()


def stopped_after_two_steps(tmp_path: Path, *command: str) -> tuple[int, str, str]:
    """Run ``command`` under ``ftwatch run --``; once step 2 is logged, send what ``k`` in the
    dashboard sends (SIGINT to the command's process group); the exit code and the output."""
    process = ftwatch_run(tmp_path, *command)
    try:
        wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 2 for e in events_of(tmp_path)))
        pid = next(e["pid"] for e in events_of(tmp_path) if e["kind"] == "header")
        os.killpg(pid, signal.SIGINT)
    except BaseException:
        process.kill()
        raise
    return finished(process)


def test_k_stops_a_trainer_script_at_a_step_boundary_and_its_code_goes_on(tmp_path):
    code, out, err = stopped_after_two_steps(tmp_path, sys.executable, str(SCRIPTS / "trainer_script.py"),
                                             str(tmp_path / "out"), "100000")
    assert code == 130, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "stopped"
    events = events_of(tmp_path)
    exit_event = events[-1]
    assert exit_event["kind"] == "exit" and exit_event["by"] == "worker" and exit_event["status"] == "stopped"
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    assert exit_event["step"] == last_step
    assert f"{AFTER_TRAIN} {last_step}" in err  # train() returned and the script went on


def test_a_failing_command_passes_its_exit_code_on_and_the_log_says_so(tmp_path):
    script = tmp_path / "fails_after_training.py"
    script.write_text("import runpy, sys\n"
                      f"sys.argv = [{str(SCRIPTS / 'trainer_script.py')!r}, {str(tmp_path / 'out')!r}, '1']\n"
                      f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
                      "runpy.run_path(sys.argv[0], run_name='__main__')\n"
                      "sys.exit(3)\n")
    code, out, err = finished(ftwatch_run(tmp_path, sys.executable, str(script)))
    assert code == 3, err[-3000:]
    exit_event = events_of(tmp_path)[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "failed"
    assert exit_event["exit_code"] == 3 and "the command failed" in exit_event["message"]
    assert "exit code 3" in err.splitlines()[-1]


def test_a_script_with_its_own_callback_gets_one_probe_and_one_log(tmp_path):
    own_logs = tmp_path / "own-logs"
    code, out, err = finished(ftwatch_run(tmp_path, sys.executable, str(REPO / "examples" / "own_script.py"),
                                          "--log-dir", str(own_logs), "--max-steps", "2"))
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished" and summary["steps"] == 2
    events = events_of(tmp_path)
    assert [e["kind"] for e in events].count("header") == 1
    assert [e["kind"] for e in events].count("exit") == 1
    check_exact_figures(summary, events, 2)
    assert not own_logs.exists()  # its FtwatchCallback measured into this run's probe, not a second log
