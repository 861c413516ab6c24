"""The dashboard driven through Textual's Pilot by recorded event logs (tests/fixtures/logs)."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from rich.color import Color
from rich.console import Console
from textual.pilot import Pilot

from conftest import FIXTURES_ROOT
from ftwatch.runlog.events import CATEGORIES, encode
from ftwatch.views.dashboard.app import FtwatchApp
from ftwatch.views.dashboard.demo import synthetic_lines
from ftwatch.views.dashboard.palette import LOOKS, TRACK
from ftwatch.views.dashboard.screens import ConfirmStopScreen, HelpScreen, QuitScreen
from ftwatch.views.dashboard.widgets.membar import MemoryBar

FIXTURES = FIXTURES_ROOT / "logs"
BIG, SMALL = (120, 36), (80, 24)


class FakeHandle:
    """Stands in for a WorkerHandle: records what the dashboard asks of the worker."""

    def __init__(self, run_dir: Path) -> None:
        self.pid = 424242
        self.run_dir = run_dir
        self.alive = True
        self.stop_requests = 0
        self.terminations = 0

    def is_alive(self) -> bool:
        return self.alive

    def returncode(self) -> int | None:
        return None if self.alive else -9  # killed (SIGKILL): a vanished worker

    def request_stop(self) -> None:
        self.stop_requests += 1

    def terminate(self) -> None:
        self.terminations += 1

    def reattach_hint(self) -> str:
        return f"ftwatch attach {self.pid}"


_APPS: list[FtwatchApp] = []


def make_app(*args, **kwargs) -> FtwatchApp:
    """An app whose drawing errors fail the test (the app itself survives them)."""
    app = FtwatchApp(*args, **kwargs)
    _APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def no_drawing_errors():
    _APPS.clear()
    yield
    for app in _APPS:
        assert app.render_error is None, repr(app.render_error)


def screen_text(app: FtwatchApp) -> str:
    """The screen as plain text, one line per row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def region_text(app: FtwatchApp, widget) -> str:
    """The text inside one widget's region of the screen, its lines joined by spaces."""
    region = getattr(widget, "scrollable_content_region", widget.content_region)
    rows = screen_text(app).splitlines()[region.y:region.bottom]
    return " ".join(" ".join(row[region.x:region.right].split()) for row in rows)


async def wait_for(pilot: Pilot, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``predicate()`` holds (a generous deadline: a loaded machine renders late, never wrong)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time; screen:\n" + screen_text(pilot.app))
        await pilot.pause(0.05)


async def eventually(pilot: Pilot, check: Callable[[], None], timeout: float = 30.0) -> None:
    """Run ``check`` (a block of asserts on the screen) until it passes; past the deadline its
    last failure is raised. For what the screen shows once it has settled, instead of a pause."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await pilot.pause(0.05)


async def wait_for_settled(pilot: Pilot, timeout: float = 30.0) -> None:
    """Until the footer has drawn and two reads of the screen a few frames apart agree (under load
    Textual draws the footer and the plot after the rest: a read right after a change can miss them)."""
    app = pilot.app
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        text = screen_text(app)
        footer = text.rstrip("\n").splitlines()[-1] if text.strip() else ""
        if text == previous and "Quit" in footer:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not settle in time; screen:\n" + text)
        previous = text
        await pilot.pause(0.1)


async def wait_for_end(pilot: Pilot) -> None:
    """Until the replayed run has ended on screen and the screen has settled."""
    app = pilot.app
    await wait_for(pilot, lambda: app.view is not None and app.view.ended)
    await wait_for_settled(pilot)


def exit_line(run: Path, status: str, step: int) -> str:
    """An exit event stamped just after the last event of the log."""
    last_t = json.loads((run / "events.jsonl").read_text().splitlines()[-1])["t"]
    return encode("exit", {"status": status, "step": step, "by": "worker", "suggestions": []}, last_t + 0.1)


def replay_dir(tmp_path: Path, name: str) -> Path:
    """A copy of a recorded run directory (so screenshots can be written into it)."""
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def live_dir(tmp_path: Path, lines: list[str], log: str = "starting\n") -> Path:
    run = tmp_path / "live-run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(lines))
    (run / "worker.log").write_text(log)
    return run


def live_app(tmp_path: Path, lines: list[str]) -> tuple[Path, FakeHandle, FtwatchApp]:
    """A live run whose log holds ``lines`` so far, the fake worker it has, and a dashboard following it."""
    run = live_dir(tmp_path, lines)
    handle = FakeHandle(run)
    return run, handle, make_app(run / "events.jsonl", handle)  # type: ignore[arg-type]


def append(run: Path, lines: list[str]) -> None:
    with (run / "events.jsonl").open("a") as f:
        f.write("".join(lines))


def training_lines(upto_step: int) -> tuple[list[str], list[str]]:
    """The synthetic CUDA run cut right after the snapshot of ``upto_step`` (and the rest)."""
    lines = synthetic_lines("cuda", ending="running")
    cut = next(i for i, line in enumerate(lines) if f'"kind":"snapshot","phase":"training","step":{upto_step},'
               in line)
    return lines[:cut + 1], lines[cut + 1:]


def last_snapshot(path: Path) -> dict:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["kind"] == "snapshot"][-1]


def expected_cells(parts: list[tuple[str, int]], scale: int, width: int) -> list[tuple[str, int]]:
    """Reference layout, computed here from bytes: boundaries at the cumulative share, rounded half up;
    then each part with bytes and no cell takes one from the widest part (the first of equals)."""
    cells, previous, total = [], 0, 0
    for _, nbytes in parts:
        total += nbytes
        boundary = min(int(Fraction(total * width, scale) + Fraction(1, 2)), width)
        cells.append(boundary - previous)
        previous = boundary
    for i, (_, nbytes) in enumerate(parts):
        if nbytes > 0 and cells[i] == 0:
            widest = cells.index(max(cells))
            if cells[widest] > 1:
                cells[widest], cells[i] = cells[widest] - 1, 1
            elif sum(cells) < width:
                cells[i] = 1
    out = [(name, n) for (name, _), n in zip(parts, cells, strict=True) if n > 0]
    if sum(cells) < width:
        out.append(("(track)", width - sum(cells)))
    return out


def bar_runs_from_screen(app: FtwatchApp, widget: Any = None, skip: int = 0) -> list[tuple[str, int]]:
    """Read a bar's first row back from the screen (the memory bar unless ``widget`` is given, from
    its ``skip``-th cell): background colour -> category, run-length coded."""
    by_colour = {Color.parse(look.colour).triplet: name for name, look in LOOKS.items()}
    by_colour[Color.parse(TRACK.colour).triplet] = "(track)"
    region = (widget or app.query_one(MemoryBar)).content_region
    runs: list[tuple[str, int]] = []
    for x in range(region.x + skip, region.right):
        style = app.screen.get_style_at(x, region.y)
        name = by_colour.get(style.bgcolor.triplet if style.bgcolor else None, "?")
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
    return runs


# -- the bar -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_bar_segments_on_screen_have_the_order_and_sizes_of_the_snapshot(tmp_path: Path, size) -> None:
    run = replay_dir(tmp_path, "cuda-finished")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        snap = last_snapshot(run / "events.jsonl")
        header = json.loads((run / "events.jsonl").read_text().splitlines()[0])
        parts = [(c, snap["categories"][c]) for c in CATEGORIES if c in snap["categories"]]
        width = app.query_one(MemoryBar).content_region.width
        assert width == size[0] - 2  # the panel pads one cell each side
        expected = expected_cells(parts, header["device"]["capacity"], width)
        assert bar_runs_from_screen(app) == expected
        assert [name for name, _ in expected] == [name for name, nbytes in parts if nbytes > 0]  # none dropped


async def test_cpu_bar_shows_only_the_categories_that_apply(tmp_path: Path) -> None:
    run = replay_dir(tmp_path, "cpu-finished")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=BIG) as pilot:
        await wait_for_end(pilot)
        text = screen_text(app)
        legend = text[text.index("Memory"):text.index("Phases")]
        for absent in ("cache", "free", "non-torch", "other procs"):
            assert absent not in legend
        assert "rest of RSS" in legend and "of 23.5 GiB RAM" in legend
        assert "tensors 3.16 MiB" in legend  # the zoomed tensor bar
        runs = bar_runs_from_screen(app)  # the bar is the process (RSS): each category on it, no empty track
        assert [name for name, _ in runs] == ["weights", "lora", "grads", "optimizer", "activations", "process_rest"]


async def test_no_color_draws_the_bar_with_glyphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    run = replay_dir(tmp_path, "cuda-finished")
    app = make_app(run / "events.jsonl", None)
    assert app.no_color
    async with app.run_test(size=BIG) as pilot:
        await wait_for_end(pilot)
        region = app.query_one(MemoryBar).content_region
        row = screen_text(app).splitlines()[region.y][region.x:region.right]
        snap = last_snapshot(run / "events.jsonl")
        parts = [(c, snap["categories"][c]) for c in CATEGORIES]
        expected = "".join(LOOKS[name].glyph * n for name, n in expected_cells(parts, sum(v for _, v in parts),
                                                                               region.width))
        assert row == expected


# -- keys ----------------------------------------------------------------------------------------
async def test_k_asks_then_calls_request_stop(tmp_path: Path) -> None:
    lines, _ = training_lines(20)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "step 20/60" in screen_text(app))
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmStopScreen)
        await pilot.press("n")
        assert handle.stop_requests == 0
        await pilot.press("k")
        await pilot.press("y")
        assert handle.stop_requests == 1
        await wait_for(pilot, lambda: "STOPPING" in screen_text(app))
        assert app.is_running and handle.alive


async def test_the_stop_question_follows_the_run_and_closes_when_it_ends(tmp_path: Path) -> None:
    lines, rest = training_lines(20)
    more, _ = training_lines(30)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "step 20/60" in screen_text(app))
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmStopScreen)
        assert "It is at step 20 of 60" in screen_text(app)
        append(run, more[len(lines):])
        await wait_for(pilot, lambda: "It is at step 30 of 60" in screen_text(app))
        append(run, rest[len(more) - len(lines):])
        append(run, [exit_line(run, "finished", 60)])
        handle.alive = False
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmStopScreen))
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app))
        assert handle.stop_requests == 0 and handle.terminations == 0


async def test_d_detaches_and_leaves_the_worker_alone(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("d")
    assert app.return_value == "detached"
    assert handle.alive and handle.stop_requests == 0 and handle.terminations == 0


async def test_q_asks_and_can_detach(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        assert "still running" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitScreen) and app.is_running
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("d")
    assert app.return_value == "detached"
    assert handle.stop_requests == 0


async def test_quit_twice_detaches_and_never_stops_the_training(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("ctrl+c", "ctrl+c")
    assert app.return_value == "detached"
    assert handle.stop_requests == 0 and handle.terminations == 0


async def test_q_then_stop_waits_for_the_worker_and_ends_stopped(tmp_path: Path) -> None:
    lines, rest = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("q")
        await pilot.press("k")  # k stops, as on the dashboard (s is the screenshot everywhere)
        assert handle.stop_requests == 1
        await pilot.pause(0.3)
        assert app.is_running  # still showing while the worker finishes its step
        append(run, rest[:20])
        append(run, [exit_line(run, "stopped", 11)])
        handle.alive = False
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_value == "stopped"


async def test_q_in_a_replay_quits_at_once(tmp_path: Path) -> None:
    run = replay_dir(tmp_path, "cpu-finished")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        await wait_for(pilot, lambda: "Quit" in screen_text(app).splitlines()[-1])  # the footer draws late
        footer = screen_text(app).splitlines()[-1]
        assert "Detach" not in footer and "Stop" not in footer
        await pilot.press("d")  # nothing to detach from: says so, stays
        assert app.is_running
        await pilot.press("q")
    assert app.return_value == "quit"


async def test_space_pauses_the_display_not_the_data(tmp_path: Path) -> None:
    lines, rest = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("space")

        def paused() -> None:
            text = screen_text(app)
            assert "PAUSED" in text and "step 10/60" in text and "Resume" in text.splitlines()[-1]

        await eventually(pilot, paused)  # the whole screen, footer included, before it is frozen
        frozen = screen_text(app)
        upto = next(i for i, line in enumerate(rest) if '"step":20,' in line and '"snapshot"' in line)
        append(run, rest[:upto + 1])
        await wait_for(pilot, lambda: app.feed.state.step == 20)  # read and folded...
        await pilot.pause(0.6)
        assert screen_text(app) == frozen  # ...but not shown
        await pilot.press("space")
        await wait_for(pilot, lambda: "step 20/60" in screen_text(app))
        assert "PAUSED" not in screen_text(app)


async def test_the_final_state_stays_after_the_worker_exits(tmp_path: Path) -> None:
    lines, rest = training_lines(30)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "LIVE" in screen_text(app))
        append(run, rest)
        append(run, [exit_line(run, "finished", 40)])
        handle.alive = False
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app))

        def final_state() -> None:
            text = screen_text(app)
            assert app.is_running
            assert "Summary" in text and "run finished after 40 steps" in text
            assert "step 40/60" in text and "ETA" not in text
            footer = text.splitlines()[-1]
            assert "Quit" in footer and "Detach" not in footer and "Stop" not in footer

        await eventually(pilot, final_state)
        await pilot.press("q")
    assert app.return_value == "quit"


async def test_a_worker_that_vanishes_is_reported(tmp_path: Path) -> None:
    lines, _ = training_lines(5)
    run, handle, app = live_app(tmp_path, lines)
    app.feed.exit_grace = 0.2
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "LIVE" in screen_text(app))
        handle.alive = False
        await wait_for(pilot, lambda: "FAILED" in screen_text(app))

        def reported() -> None:
            text = screen_text(app)
            assert "Post-mortem" in text and "RUN FAILED" in text
            assert "without writing an exit event" in region_text(app, app.w_alerts_box)
            footer = text.splitlines()[-1]
            assert "Quit" in footer and "Detach" not in footer

        await eventually(pilot, reported)


async def test_l_gives_the_worker_log_the_room(tmp_path: Path) -> None:
    run = replay_dir(tmp_path, "cpu-stopped")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        small = app.query_one("#log-box").size.height
        await pilot.press("l")

        def log_has_the_room() -> None:
            assert app.query_one("#log-box").size.height > small + 5
            text = screen_text(app)
            assert "Timeline" not in text and "ftwatch worker: stopped at step 107" in text

        await eventually(pilot, log_has_the_room)
        await pilot.press("l")
        await wait_for(pilot, lambda: app.query_one("#log-box").size.height == small)


async def test_s_saves_an_svg_into_the_run_directory(tmp_path: Path) -> None:
    run = replay_dir(tmp_path, "cuda-finished")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=BIG) as pilot:
        await wait_for_end(pilot)
        await pilot.press("s")
        await wait_for(pilot, lambda: any(run.glob("ftwatch-*.svg")))
    shots = list(run.glob("ftwatch-*.svg"))
    assert len(shots) == 1 and "FINISHED" in shots[0].read_text()


async def test_question_mark_shows_the_help(tmp_path: Path) -> None:
    run = replay_dir(tmp_path, "cpu-finished")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "detach" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


# -- cadence ---------------------------------------------------------------------------------------
async def test_redraws_are_capped_whatever_the_event_rate(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=2000, ending="running", hz=200.0, step_seconds=0.05)
    head, body = lines[:50], lines[50:]
    run = live_dir(tmp_path, head)
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    stop = threading.Event()

    def writer() -> None:  # ~2000 events a second, one flush every 10 ms
        for i in range(0, len(body), 20):
            if stop.is_set():
                return
            append(run, body[i:i + 20])
            time.sleep(0.01)

    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: app.renders > 0)
        thread = threading.Thread(target=writer, daemon=True)
        start_renders, start = app.renders, time.monotonic()
        thread.start()
        # until the feed has folded 500 samples (a loaded machine takes longer, never differently),
        # then the redraws over that time: at most 8 a second whatever the rate they came in at
        await wait_for(pilot, lambda: app.feed.state.samples > 500, timeout=60)
        renders = app.renders - start_renders
        elapsed = time.monotonic() - start
        stop.set()
        thread.join()
        assert renders <= elapsed * 8 + 2


# -- states: key regions of the screen ------------------------------------------------------------
def lines_of(text: str) -> list[str]:
    return text.splitlines()


@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_loading_state(tmp_path: Path, size) -> None:
    lines = synthetic_lines("cuda", ending="running")
    cut = next(i for i, line in enumerate(lines) if '"snapshot"' in line) - 30
    run = live_dir(tmp_path, lines[:cut], log="Loading checkpoint shards:  50%|#####     | 2/4\r")
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "LIVE" in screen_text(app))

        def loading_screen() -> None:
            rows = lines_of(screen_text(app))
            assert "LIVE" in rows[0] and "phase loading model" in rows[0]
            assert rows[2].startswith("─Memory · GPU 0") and "live" in rows[2]
            text = "\n".join(rows)
            assert "≈" in text  # the weights are estimated from the allocator while loading
            phase_row = next(i for i, r in enumerate(rows) if r.startswith("─Phases"))
            assert "▶ loading" in rows[phase_row + 1] and "· training" in rows[phase_row + 1]
            assert "Loading checkpoint shards:  50%" in text
            assert "Quit" in rows[-1] and "Detach" in rows[-1] and "Stop" in rows[-1]

        await eventually(pilot, loading_screen)


@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_training_state(tmp_path: Path, size) -> None:
    lines, _ = training_lines(40)
    run = live_dir(tmp_path, lines)
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: "step 40/60" in screen_text(app))

        def training_screen() -> None:
            text = screen_text(app)
            rows = lines_of(text)
            assert "phase training" in rows[0] and "ETA" in rows[1]
            assert "step 40" in rows[2] and "free" in rows[2]
            assert "peak" in text and "▲" in text and "◆" in text
            assert "WATCH" in text and "oom_risk" in text  # the forecaster's warning
            assert "Timeline" in text and "activations" in region_text(app, app.w_plot_legend)
            if size == BIG:
                assert "capacity" in region_text(app, app.w_plot_legend)
            phase_row = next(i for i, r in enumerate(rows) if r.startswith("─Phases"))
            assert "✔ loading" in rows[phase_row + 1] and "▶ training" in rows[phase_row + 1]
            assert "+15.1 GiB" in rows[phase_row + 2]

        await eventually(pilot, training_screen)  # the timeline draws after the rest
        svg = app.export_screenshot()
        assert "training" in svg and "activations" in svg


@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_oom_post_mortem_state(tmp_path: Path, size) -> None:
    run = replay_dir(tmp_path, "cuda-oom-loading")
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        text = screen_text(app)
        rows = lines_of(text)
        assert "OUT OF MEMORY" in rows[0]
        assert "at the failure" in rows[2]
        phase_row = next(i for i, r in enumerate(rows) if r.startswith("─Phases"))
        assert "✖ loading" in rows[phase_row + 1] and "+77.6 GiB" in rows[phase_row + 2]
        assert "Post-mortem" in text and "OUT OF MEMORY while loading" in text
        alerts = region_text(app, app.w_alerts_box)
        assert "CUDA out of memory. Tried to allocate 448.00 MiB" in alerts
        if size == BIG:
            assert "to fix it" in alerts and "[model] load_in_4bit = true" in alerts


async def test_waiting_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    run = tmp_path / "later"
    run.mkdir()
    handle = FakeHandle(run)
    app = make_app(run / "events.jsonl", handle)  # type: ignore[arg-type]
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "WAITING" in screen_text(app))
        (run / "events.jsonl").write_text("".join(training_lines(3)[0]))
        await wait_for(pilot, lambda: "step 3/60" in screen_text(app))


# -- run_dashboard ---------------------------------------------------------------------------------
def test_run_dashboard_never_reports_a_stop_it_did_not_make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.views.dashboard import app as app_module

    handle = FakeHandle(tmp_path)

    def crash(self, *args, **kwargs):
        raise RuntimeError("terminal went away")

    monkeypatch.setattr(app_module.FtwatchApp, "run", crash)
    assert app_module.run_dashboard(tmp_path / "events.jsonl", handle) == "detached"  # type: ignore[arg-type]
    assert handle.stop_requests == 0
    handle.alive = False
    assert app_module.run_dashboard(tmp_path / "events.jsonl", handle) == "quit"  # type: ignore[arg-type]
    monkeypatch.setattr(app_module.FtwatchApp, "run", lambda self, *a, **k: "stopped")
    assert app_module.run_dashboard(tmp_path / "events.jsonl", handle) == "stopped"  # type: ignore[arg-type]
