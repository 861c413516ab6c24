"""A user's own script gets the same measurements: with the Trainer callback, or the Probe in a loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_run_end_to_end import expected_tiny_bytes

from conftest import EXAMPLES
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.state import RunState

pytestmark = pytest.mark.slow


def _run_script(tmp_path, *extra: str) -> RunState:
    result = subprocess.run([sys.executable, str(EXAMPLES / "own_script.py"), "--log-dir", str(tmp_path),
                             "--max-steps", "4", *extra], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = list(tmp_path.glob("*/events.jsonl"))
    assert len(logs) == 1
    state = RunState()
    state.apply_all(list(read_events(logs[0])))
    return state


@pytest.mark.parametrize("mode", ["trainer", "loop"])
def test_own_script_measures_the_same_categories(tmp_path, mode):
    state = _run_script(tmp_path, *(["--loop"] if mode == "loop" else []))
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    summary = state.summary()
    assert summary["status"] == "finished"
    assert summary["steps"] == 4
    for category in ("weights", "lora", "grads", "optimizer"):
        assert summary["peak_bytes"][category] == expected[category], category
    assert summary["peak_bytes"]["activations"] > 0
    assert state.samples > 0
    assert summary["params_trainable"] == expected["params_trainable"]
