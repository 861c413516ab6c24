"""How a run that dies of out-of-memory is recorded: status, phase, figures, fixes."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES_ROOT, run_cli, tiny_sections, write_config
from ftwatch.common.config import load_config
from ftwatch.runlog.event_reader import read_events
from ftwatch.training.probe.probe import Probe, is_out_of_memory

FIXTURES = FIXTURES_ROOT / "oom"
GiB = 1024**3


@pytest.mark.parametrize(("exc", "expected"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 22.20 GiB total capacity)"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
    (MemoryError(), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),  # only the types torch raises count
])
def test_out_of_memory_is_recognised_in_every_form(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_oom_exit_records_phase_figures_and_fixes(tmp_path):
    message = (FIXTURES / "current.txt").read_text().strip()
    probe = Probe(tmp_path, name="t", device="cpu")
    probe.start()
    probe.phase("training")
    exc = torch.OutOfMemoryError(message.split(": ", 1)[1] if message.startswith("torch.") else message)
    details = {"requested_bytes": 2 * GiB}
    status = probe.finish_with_exception(exc, step=7, oom_details=details,
                                         suggestions=[{"change": "x", "config": "y", "saves_bytes": 1}])
    assert status == "oom"
    exit_event = list(read_events(tmp_path))[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "oom" and exit_event["step"] == 7
    assert exit_event["oom"]["phase"] == "training"
    assert exit_event["oom"]["requested_bytes"] == 2 * GiB
    assert set(exit_event["oom"]["last_categories"]) >= {"weights", "lora", "grads", "optimizer", "activations"}
    assert exit_event["suggestions"][0]["change"] == "x"
    assert "OutOfMemoryError" in exit_event["traceback"] or exit_event["error_type"] == "OutOfMemoryError"


def test_an_exit_without_its_step_takes_the_last_step_written(tmp_path):
    from io import StringIO

    from ftwatch.runlog.state import RunState
    from ftwatch.views.headless.report import ProgressPrinter

    probe = Probe(tmp_path, name="t", device="cpu")
    probe.start()
    probe.phase("training")
    for step in (1, 2, 3):
        probe.step_begin()
        probe.step_end(step)
    probe.finish_with_exception(ValueError("boom at step 4"))  # as an uncaught exception is recorded
    events = list(read_events(tmp_path))
    assert events[-1]["kind"] == "exit" and events[-1]["step"] == 3
    out, state = StringIO(), RunState()
    printer = ProgressPrinter(out, every=10)
    for event in [*events[:-1], {**events[-1], "step": None}]:  # a log from before: no step
        state.apply(event)
        printer.handle(state, event)
    assert "exit failed: ValueError: boom at step 4" in out.getvalue() and "None" not in out.getvalue()


def test_worker_diagnosis_parses_the_message_and_skips_levers_in_use(tmp_path):
    from ftwatch.training.worker import Training
    from ftwatch.training.worker_stop import StopControl

    cfg = load_config(write_config(tmp_path / "c.toml", tiny_sections(
        tmp_path, training={"gradient_checkpointing": True, "per_device_train_batch_size": 8})))
    training = Training(cfg, tmp_path / "run", StopControl())
    text = (FIXTURES / "current.txt").read_text()
    details, suggestions = training.diagnose(torch.OutOfMemoryError(text))
    assert details["format"] == "current"
    assert details["requested_bytes"] > 0
    configs = " ".join(str(s.get("config")) for s in suggestions)
    assert "gradient_checkpointing" not in configs  # already on
    assert "per_device_train_batch_size = 4" in configs  # half of the 8 in use
    assert training.diagnose(RuntimeError("shape mismatch")) == (None, None)
    assert training.diagnose(MemoryError()) == (None, [])  # an OOM without figures: no details
    training.probe.writer.close()


@pytest.mark.gpu
def test_budget_on_cuda_provokes_a_real_oom_reported_with_fixes(tiny_config, tmp_path):
    """On a GPU: an 8 MiB budget caps the allocator; 4 MiB of logits need a 20 MiB segment: real OOM."""
    config = tiny_config(training={"use_cpu": False, "per_device_train_batch_size": 16, "max_steps": 3},
                         data={"max_length": 128}, monitor={"budget": "8MiB"})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "oom"
    assert summary["oom"]["requested_bytes"] > 0
    assert summary["capacity_source"] == "budget" and summary["capacity_bytes"] == 8 * 1024**2
    assert summary["suggestions"]


@pytest.mark.gpu
def test_cuda_run_splits_the_whole_card(tiny_config):
    config = tiny_config(training={"use_cpu": False, "max_steps": 3})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    peak = json.loads(result.stdout)["peak_bytes"]
    for category in ("other", "cache"):
        assert category in peak
