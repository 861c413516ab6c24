"""The notebook summary (``ftwatch.views.notebook``): a fake IPython kernel and display stand in for
Jupyter; the summary follows a run log, updates one output area in place at most ~2 Hz, and the
callback shows it inside a kernel only."""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for
from ftwatch.common.units import format_bytes
from ftwatch.runlog.events import encode
from ftwatch.views import notebook
from ftwatch.views.notebook import BAR_CHARS, NotebookSummary, SummaryOutput, in_jupyter, text_bar

MiB = 1 << 20
CATS = {"weights": 40 * MiB, "lora": 2 * MiB, "grads": 2 * MiB, "optimizer": 4 * MiB, "activations": 16 * MiB}


class FakeHandle:
    """IPython's ``DisplayHandle``: records every update, with its time."""

    def __init__(self, first: Any) -> None:
        self.shown = [str(first)]
        self.times = [time.monotonic()]
        self.lock = threading.Lock()

    def update(self, obj: Any) -> None:
        with self.lock:
            self.shown.append(repr(obj))
            self.times.append(time.monotonic())
            assert "<pre" in obj._repr_html_()

    @property
    def last(self) -> str:
        with self.lock:
            return self.shown[-1]


class FakeDisplay:
    """IPython's ``display``: must be asked for a handle (``display_id=True``)."""

    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []

    def __call__(self, obj: Any, display_id: Any = None) -> FakeHandle:
        assert display_id is True
        handle = FakeHandle(obj)
        self.handles.append(handle)
        return handle


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeDisplay:
    """A fake IPython with a kernel, and its ``IPython.display.display``."""
    display = FakeDisplay()
    ipython = types.ModuleType("IPython")
    shell = types.SimpleNamespace(kernel=object())
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    display_module = types.ModuleType("IPython.display")
    display_module.display = display  # type: ignore[attr-defined]
    ipython.display = display_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return display


def header(t: float) -> str:
    return encode("header", {"run_id": "nb", "name": "train", "model": "tiny-llama", "pid": 77, "max_steps": None,
                             "device": {"type": "cpu", "capacity": 1024 * MiB, "capacity_source": "ram"}}, t)


def test_in_jupyter_needs_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert in_jupyter() is False  # and IPython was not imported for the answer
    assert "IPython" not in sys.modules
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert in_jupyter() is False  # plain python with IPython imported
    ipython.get_ipython = lambda: types.SimpleNamespace()  # type: ignore[attr-defined]
    assert in_jupyter() is False  # the IPython terminal: a shell without a kernel
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())  # type: ignore[attr-defined]
    assert in_jupyter() is True


def test_the_text_bar_is_drawn_to_scale() -> None:
    w, lo = BAR_CHARS["weights"], BAR_CHARS["lora"]
    assert text_bar({"weights": 50, "lora": 25}, 100, width=4) == f"[{w}{w}{lo}·]"
    assert text_bar({"weights": 1, "activations": 0}, 1000, width=4) == f"[{w}···]"  # held, so one cell
    assert text_bar({}, None, width=3) == "[···]"
    full = text_bar({c: 10 for c in BAR_CHARS}, 50, width=4)  # five categories, four cells: none overflow
    assert len(full) == 6 and "·" not in full


def test_the_summary_follows_the_log_in_place_and_shows_the_ending(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    t0 = time.time()
    log = run / "events.jsonl"
    log.write_text(header(t0) + encode("phase", {"name": "training", "max_steps": 10}, t0))
    display = FakeDisplay()
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        view = NotebookSummary(run, pid=77, display=display, out=stream).start()
        handle = display.handles[0]
        for step in (1, 2, 3):  # one step at a time: each is drawn, no sooner than MIN_INTERVAL after the last
            with log.open("a") as f:
                f.write(encode("snapshot", {"phase": "training", "step": step, "categories": CATS}, t0 + step))
            wait_for(lambda s=step: f"step {s}/10" in handle.last, 60)
        text = handle.last
        assert "tiny-llama" in text and "training" in text and "full dashboard: ftwatch attach 77" in text
        for name, value in CATS.items():
            assert f"{name} {format_bytes(value)}" in text
        assert f"peak {format_bytes(sum(CATS.values()))}" in text
        assert f"{format_bytes(sum(CATS.values()))} of {format_bytes(1024 * MiB)}" in text
        with log.open("a") as f:
            f.write(encode("exit", {"status": "finished", "step": 3, "by": "worker"}, t0 + 4))
        wait_for(lambda: "ended: finished at step 3" in handle.last, 60)
        view._thread.join(60)
        assert not view._thread.is_alive()  # it stops by itself once the run has ended
    assert out.read_text() == "ftwatch: the full dashboard: run `ftwatch attach 77` in a terminal\n"
    assert len(display.handles) == 1  # one output area, updated in place
    gaps = [b - a for a, b in zip(handle.times[1:-2], handle.times[2:-1], strict=True)]  # the ending is drawn at once
    assert len(gaps) >= 2 and all(gap >= notebook.MIN_INTERVAL * 0.9 for gap in gaps), gaps  # at most ~2 Hz


def test_summary_output_escapes_html() -> None:
    assert SummaryOutput("<b>&").__repr__() == "<b>&"
    assert SummaryOutput("<b>&")._repr_html_() == "<pre style='margin:0'>&lt;b&gt;&amp;</pre>"


def test_the_callback_shows_the_summary_inside_a_kernel_only(tmp_path: Path, kernel: FakeDisplay,
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ftwatch.training.probe.callback import FtwatchCallback

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the probe installs its own
    args = types.SimpleNamespace()
    state = types.SimpleNamespace(global_step=0, max_steps=0)
    control = types.SimpleNamespace(should_training_stop=False)
    callback = FtwatchCallback(log_dir=tmp_path / "runs", name="nb")
    callback.on_init_end(args, state, control)
    assert callback.notebook_view is not None and len(kernel.handles) == 1
    assert f"run `ftwatch attach {os.getpid()}` in a terminal" in capsys.readouterr().out
    callback.on_train_end(args, state, control)
    assert "ended: finished at step 0" in kernel.handles[0].last  # the last drawing, before train() returns
    assert not callback.notebook_view._thread.is_alive()

    off = FtwatchCallback(log_dir=tmp_path / "runs", name="off", notebook=False)
    off.on_init_end(args, state, control)
    assert off.notebook_view is None and len(kernel.handles) == 1
    off.on_train_end(args, state, control)


def test_outside_a_kernel_the_callback_shows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.training.probe.callback import FtwatchCallback

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    args, state = types.SimpleNamespace(), types.SimpleNamespace(global_step=0, max_steps=0)
    callback = FtwatchCallback(log_dir=tmp_path / "runs", name="plain")
    callback.on_init_end(args, state, types.SimpleNamespace(should_training_stop=False))
    assert callback.notebook_view is None and "IPython" not in sys.modules
    callback.on_train_end(args, state, types.SimpleNamespace(should_training_stop=False))
