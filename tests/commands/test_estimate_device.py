"""`ftwatch estimate --device cpu|cuda`: which device it assumes and why, and on the CPU the same
figures as `ftwatch run`'s pre-flight; fixes are optional when the run fits."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ftwatch.runlog.event_reader import read_events
from fuzzkit import cli

MiB = 1024**2
NO_GPU = "no GPU visible: estimating for the CPU; --device cuda for a GPU"


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where NVML sees no GPU (whatever this one has)."""
    import ftwatch.commands.estimate as command

    monkeypatch.setattr(command, "nvml_free_bytes", lambda: None)


def _json(*args: str) -> dict:
    outcome = cli("estimate", *args, "--json")
    assert outcome.code == 0, outcome.stderr
    return json.loads(outcome.stdout)


def test_without_a_gpu_it_estimates_for_the_cpu_and_says_why(tiny_config, no_gpu):
    import psutil

    config = str(tiny_config(training={"use_cpu": False}))
    text = cli("estimate", config)
    assert text.code == 0, text.stderr
    assert NO_GPU in text.stdout and "target cpu" in text.stdout
    data = _json(config)
    assert data["device"] == {"type": "cpu", "reason": NO_GPU}
    assert data["assumptions"]["device"] == "cpu"
    assert "non_torch" not in data["estimate_bytes"]
    # judged against the RAM, as run's pre-flight judges a CPU run
    assert (data["capacity_source"], data["capacity_bytes"]) == ("ram", psutil.virtual_memory().total)


def test_device_cuda_adds_the_cuda_context(tiny_config, no_gpu):
    config = str(tiny_config(training={"use_cpu": False}))
    data = _json(config, "--device", "cuda")
    assert data["device"] == {"type": "cuda", "reason": "--device cuda"}
    assert data["estimate_bytes"]["non_torch"] == 512 * MiB
    assert data["capacity_bytes"] is None  # no GPU to ask, no budget: unknown


def test_gpu_memory_means_a_gpu(tiny_config, no_gpu):
    data = _json(str(tiny_config(training={"use_cpu": False})), "--gpu-memory", "1GiB")
    assert data["device"]["type"] == "cuda" and "--gpu-memory" in data["device"]["reason"]
    assert data["capacity_bytes"] == 1024 * MiB


def test_use_cpu_is_followed_and_said(tiny_config, no_gpu):
    data = _json(str(tiny_config(training={"use_cpu": True})))
    assert data["device"] == {"type": "cpu", "reason": "[training] use_cpu = true: estimating for the CPU"}


def test_gpu_memory_with_device_cpu_is_one_line_error(tiny_config):
    cli("estimate", str(tiny_config()), "--device", "cpu", "--gpu-memory", "8GiB").assert_one_line_error(
        "--gpu-memory", "--device cpu")


def test_fixes_are_optional_when_the_run_fits(tiny_config, no_gpu):
    config = str(tiny_config())
    text = cli("estimate", config).stdout
    assert "if you need more room (optional: the run fits" in text and "what to change" not in text
    data = _json(config)
    assert data["verdict"] == "fits" and data["suggestions"] and data["suggestions_optional"] is True
    tight = str(tiny_config(monitor={"budget": "1MiB"}))
    text = cli("estimate", tight).stdout
    assert "what to change" in text and "if you need more room" not in text
    assert _json(tight)["suggestions_optional"] is False


@pytest.mark.slow
def test_the_cpu_estimate_is_runs_preflight(tiny_config, tmp_path, no_gpu):
    import torch

    if torch.cuda.is_available():
        pytest.skip("`ftwatch run` trains on the GPU here: the comparison is for a machine without one")
    config = str(tiny_config(training={"use_cpu": False, "max_steps": 1}))
    result = run_cli("run", config, "--headless", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    events = list(read_events(next((tmp_path / "runs").iterdir())))
    logged = next(e for e in events if e["kind"] == "estimate")
    data = _json(config)
    assert logged["estimate_bytes"] == data["estimate_bytes"]
    for key in ("capacity_bytes", "loading_bytes", "verdict", "fails_at", "params_total", "params_trainable"):
        assert logged[key] == data[key], key
    assert logged["capacity_source"] == "ram" == data["capacity_source"]
