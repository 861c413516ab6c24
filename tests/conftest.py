"""Shared test helpers: a config factory for the bundled tiny model, and a CLI runner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES_ROOT = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "examples"
TINY_MODEL = EXAMPLES / "tiny-llama"
TINY_DATA = EXAMPLES / "data" / "field-notes.jsonl"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


class AliveHandle:
    """A stand-in worker handle for a live dashboard: it runs for ever and is never asked anything."""

    pid = 424242

    def is_alive(self) -> bool:
        return True

    def returncode(self) -> None:
        return None


def load_benchmark(name: str) -> Any:
    """The module ``benchmarks/NAME.py`` (tests reuse a benchmark's independent measurements)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in it looks its module up while the module runs
    spec.loader.exec_module(module)
    return module


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write a TOML config from nested dicts."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def tiny_sections(tmp_path: Path, **overrides: dict[str, object]) -> dict[str, dict[str, object]]:
    """The bundled example's config with absolute paths and a log dir under ``tmp_path``."""
    sections: dict[str, dict[str, object]] = {
        "model": {"name": str(TINY_MODEL), "dtype": "float32"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 6,
                     "learning_rate": 1e-3, "logging_steps": 1, "seed": 0, "use_cpu": True},
        "data": {"path": str(TINY_DATA), "text_field": "text", "max_length": 64},
        "monitor": {"sample_hz": 10, "log_dir": str(tmp_path / "runs")},
    }
    for section, table in overrides.items():
        sections.setdefault(section, {}).update(table)
    return sections


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Factory: ``tiny_config(training={"max_steps": 3})`` -> path of a config file."""
    counter = {"n": 0}

    def make(**overrides: dict[str, object]) -> Path:
        counter["n"] += 1
        return write_config(tmp_path / f"tiny-{counter['n']}.toml", tiny_sections(tmp_path, **overrides))

    return make


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ftwatch ARGS`` and capture its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ftwatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env, input=input)


def wait_for(predicate, timeout: float = 120.0) -> None:  # noqa: ANN001 - any zero-argument callable
    """Poll ``predicate`` every 0.2 s until it is true; fail after ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests where no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own ftwatch state directory (the run registry), inherited by subprocesses.

    Afterwards every run still registered there is killed: a training process outlives its viewer
    by design, so a test that failed half-way would leave its run training beside the next tests."""
    home = tmp_path_factory.mktemp("ftwatch-home")
    monkeypatch.setenv("FTWATCH_HOME", str(home))
    yield home
    from ftwatch.runlog import registry

    monkeypatch.setenv("FTWATCH_HOME", str(home))  # a test may have pointed it at a refused directory
    try:
        entries = registry.live_runs(clean=False)  # alive: the same process (its start time is checked)
    except OSError:
        entries = []
    for entry in entries:
        if entry.pid == os.getpid():  # a Probe the test made in this process
            continue
        with contextlib.suppress(OSError):
            group = os.getpgid(entry.pid)
            if group == entry.pid and group != os.getpgrp():  # a session of its own (a worker)
                os.killpg(group, signal.SIGKILL)
            os.kill(entry.pid, signal.SIGKILL)
