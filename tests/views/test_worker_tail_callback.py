"""How the dashboard shows a run made by ``FtwatchCallback`` added by hand (``origin: callback``):
the worker-log panel says the script's output goes to its own terminal (there is no worker.log),
the phases it could not see say "before callback" instead of "·", and the step total from the
``training`` phase gives the step count and the ETA."""

from __future__ import annotations

import json
import time
from pathlib import Path

from test_dashboard_app import eventually, screen_text

from ftwatch.runlog.events import encode
from ftwatch.runlog.state import PhaseRecord, RunState
from ftwatch.views.dashboard.app import FtwatchApp
from ftwatch.views.dashboard.widgets.phases import phase_cells, unwatched_phases
from ftwatch.views.dashboard.worker_tail import missing_log_note

BIG = (120, 36)
MiB = 1 << 20
CATS = {"weights": 650_000, "lora": 16_384, "grads": 16_384, "optimizer": 32_768, "activations": 2 * MiB}


def cpu_header(run_id: str, origin: str | None) -> dict:
    """The header of a one-process CPU run (8 GiB of RAM) started by ``origin`` (absent: an older log)."""
    header = {"run_id": run_id, "name": "train", "config_path": None, "pid": 4242, "host": "h",
              "user": "u", "versions": {}, "model": None, "budget": None, "sample_hz": 10, "max_steps": None,
              "rank": 0, "world_size": 1,
              "device": {"type": "cpu", "index": None, "name": "x86_64", "capacity": 8 << 30,
                         "capacity_source": "ram"}}
    if origin is not None:
        header.update(origin=origin, command=None)
    return header


def callback_lines(steps: int, max_steps: int, t0: float, origin: str | None = "callback") -> list[str]:
    """A CPU run as ``FtwatchCallback`` writes it: no loading or LoRA phase, the model event with a
    name, the step total on the ``training`` phase only; ``steps`` steps one second apart."""
    header = cpu_header("cb0123456789", origin)
    lines = [encode("header", header, t0),
             encode("phase", {"name": "preparing_trainer"}, t0 + 0.1),
             encode("sample", {"phase": "preparing_trainer", "rss": 900 * MiB}, t0 + 0.2),
             encode("model", {"params_total": 170304, "params_trainable": 4096, "dtype": ["float32"],
                              "lora_targets": ["q_proj", "v_proj"], "name": "/models/tiny-llama"}, t0 + 0.3),
             encode("phase", {"name": "training", "max_steps": max_steps}, t0 + 0.4)]
    for step in range(1, steps + 1):
        t = t0 + 0.4 + step
        lines.append(encode("sample", {"phase": "training", "rss": 950 * MiB}, t - 0.5))
        lines.append(encode("snapshot", {"phase": "training", "step": step, "loss": 2.0, "categories": CATS}, t))
    return lines


def test_the_panel_says_where_the_output_goes() -> None:
    assert missing_log_note(False, "callback") == "this script writes its output to its own terminal"
    assert missing_log_note(False, "worker") == "no worker.log in the run directory (yet)"
    assert missing_log_note(False, None) == "no worker.log in the run directory (yet)"
    assert missing_log_note(True, "callback") == "no output yet"
    assert missing_log_note(False, None, external=True) == "this process writes its output to its own terminal"


def test_phases_before_the_first_logged_one_were_not_watched() -> None:
    def record(name: str) -> PhaseRecord:
        return PhaseRecord(name=name, start_t=0.0, start_used=None, peak_used=None)

    assert unwatched_phases([record("preparing_trainer"), record("training")]) == {"loading_model", "applying_lora"}
    assert unwatched_phases([record("loading_model")]) == set()  # a worker run that stopped while loading
    assert unwatched_phases([]) == set()
    state = RunState()
    state.apply_all([json.loads(line) for line in callback_lines(2, 10, 1000.0)])
    cells = phase_cells(state.phases, state.phase, None, state.capacity, state.last_t, origin=state.origin)
    assert [(c[0], c[1], c[2]) for c in cells[:2]] == [("–", "loading", "before callback"),
                                                        ("–", "LoRA", "before callback")]
    assert cells[3][0] == "▶" and cells[2][0] == "✔"
    generic = phase_cells(state.phases, state.phase, None, state.capacity, state.last_t)
    assert generic[0][2] == "not watched"
    assert state.max_steps == 10 and state.header["model"] == "/models/tiny-llama"


class LiveHandle:
    """Stands in for the handle of a live script run (``ftwatch attach`` of a callback run)."""

    def __init__(self, run_dir: Path) -> None:
        self.pid, self.run_dir, self.alive = 4242, run_dir, True

    def is_alive(self) -> bool:
        return self.alive

    def returncode(self) -> int | None:
        return None

    def request_stop(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def reattach_hint(self) -> str:
        return f"ftwatch attach {self.pid}"


async def test_a_live_callback_run_on_the_dashboard(tmp_path: Path) -> None:
    run = tmp_path / "train-20260101-000000"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(callback_lines(5, 40, time.time() - 10)))
    app = FtwatchApp(run / "events.jsonl", LiveHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=BIG) as pilot:
        def shown() -> None:
            text = screen_text(app)
            assert "this script writes its output to its own terminal" in text
            assert "no worker.log" not in text
            assert text.count("before callback") == 2
            assert "step 5/40" in text and "ETA" in text
            assert "tiny-llama" in text

        await eventually(pilot, shown)
        assert app.render_error is None


async def test_a_worker_run_without_its_log_still_says_yet(tmp_path: Path) -> None:
    run = tmp_path / "tiny-20260101-000000"
    run.mkdir()
    lines = callback_lines(2, 40, time.time() - 5, origin=None)
    (run / "events.jsonl").write_text("".join(lines))
    app = FtwatchApp(run / "events.jsonl", LiveHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=BIG) as pilot:
        await eventually(pilot, lambda: _assert_in("no worker.log in the run directory (yet)", screen_text(app)))
        assert "this script writes" not in screen_text(app)


def _assert_in(needle: str, text: str) -> None:
    assert needle in text
