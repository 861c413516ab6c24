"""80x24, a default SSH terminal, as a first-class size: what must show without a key, and the keys.

Expected values come from the recorded logs themselves (tests/fixtures/logs), read here, never
from the dashboard's own formatting code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_dashboard_app import (
    FakeHandle,
    append,
    eventually,
    exit_line,
    live_app,
    live_dir,
    make_app,
    region_text,
    screen_text,
    training_lines,
    wait_for,
)

from conftest import FIXTURES_ROOT
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.screens import QuitScreen

FIXTURES = FIXTURES_ROOT / "logs"
SIZE = (80, 24)
UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def events(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name / "events.jsonl").read_text().splitlines()]


def size3(nbytes: int) -> str:
    """Three significant figures in the largest binary unit it reaches (written here, not imported)."""
    unit, div = next(((u, d) for u, d in UNITS if nbytes >= d), ("B", 1))
    value = nbytes / div
    text = f"{value:.3g}" if value < 100 or value >= 1000 else f"{value:.0f}"
    return f"{text} {unit}"


def exit_event(name: str) -> dict:
    return next(e for e in events(name) if e["kind"] == "exit")


def peak_process(name: str) -> int:
    """The process's peak: NVML's per-process figure on a GPU, else the resident set (RSS)."""
    samples = [e for e in events(name) if e["kind"] == "sample"]
    if any((s.get("nvml") or {}).get("process") is not None for s in samples):
        return max(int(s["nvml"]["process"]) for s in samples if (s.get("nvml") or {}).get("process") is not None)
    return max(int(s["rss"]) for s in samples)


async def replay_at_the_end(pilot, app) -> None:
    await wait_for(pilot, lambda: app.view is not None and app.view.ended and "end of the log" in screen_text(app))


def visible_rows(app) -> list[str]:
    rows = screen_text(app).splitlines()
    assert len(rows) == SIZE[1] and all(len(row) <= SIZE[0] for row in rows)
    return rows


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- item 1: what shows without a key -----------------------------------------------------------
async def test_an_oom_at_80x24_shows_status_bar_peak_verdict_and_the_first_fix() -> None:
    log = FIXTURES / "cuda-oom-loading" / "events.jsonl"
    app = make_app(log, None, feed=ReplayFeed(log, "max"))
    fix = exit_event("cuda-oom-loading")["suggestions"][0]
    saved = f"−{size3(fix['saves_bytes'])}"
    peak = size3(peak_process("cuda-oom-loading"))
    async with app.run_test(size=SIZE) as pilot:
        await replay_at_the_end(pilot, app)

        def shown() -> None:
            rows = visible_rows(app)
            assert "OUT OF MEMORY" in rows[0] and "llama70b-lora" in rows[0]  # the status lines
            assert "step 0/60" in rows[1]
            memory = region_text(app, app.w_memory)
            assert "Memory · GPU 0" in screen_text(app) and "weights" in memory  # the bar
            assert re.search(rf"peak(?: \w+)? {re.escape(peak)}", memory), (peak, memory)  # its peak value
            alerts = region_text(app, app.w_alerts_box)  # what shows without scrolling
            assert "✖ OUT OF MEMORY while loading" in alerts  # the verdict
            assert saved in alerts and one_line(fix["change"]) in alerts and fix["config"] in alerts  # the first fix
            footer = rows[-1]
            assert "f Fixes" in footer and "? Help" in footer  # the rest: one key away, in the footer
            assert "Tab ↑↓" in screen_text(app)  # how to scroll, where the panel holds more

        await eventually(pilot, shown)
        second = exit_event("cuda-oom-loading")["suggestions"][1]
        held = "held at the failure"  # the post-mortem's last part, below the fold at 80x24
        assert app.w_alerts_box.max_scroll_y > 0 and held not in region_text(app, app.w_alerts_box)
        await pilot.press("f")

        def opened() -> None:
            alerts = region_text(app, app.w_alerts_box)
            assert second["config"] in alerts and "CUDA out of memory" in alerts  # the other fixes, the error
            assert "✖ OUT OF MEMORY while loading" in alerts and saved in alerts
            assert "f Less" in visible_rows(app)[-1] and "Timeline" not in screen_text(app)

        await eventually(pilot, opened)
        box = app.w_alerts_box
        while held not in region_text(app, box) and box.scroll_y < box.max_scroll_y:
            before = box.scroll_y
            await pilot.press("down")  # open, the panel has the focus: the arrows scroll it
            await wait_for(pilot, lambda before=before: box.scroll_y > before)
        assert held in region_text(app, box)
        await pilot.press("f")
        await eventually(pilot, lambda: (assert_in("Timeline", screen_text(app)),
                                         assert_in("f Fixes", visible_rows(app)[-1])))


def assert_in(part: str, whole: str) -> None:
    assert part in whole, (part, whole)


async def test_a_cpu_run_at_80x24_shows_status_bar_peak_and_the_verdict() -> None:
    log = FIXTURES / "cpu-finished" / "events.jsonl"
    app = make_app(log, None, feed=ReplayFeed(log, "max"))
    end = exit_event("cpu-finished")
    assert end["status"] == "finished" and not end.get("suggestions")  # no fix to show: nothing went wrong
    steps = end["step"]
    peak = size3(peak_process("cpu-finished"))
    ram = size3(next(e for e in events("cpu-finished") if e["kind"] == "sample")["sys_total"])
    async with app.run_test(size=SIZE) as pilot:
        await replay_at_the_end(pilot, app)

        def shown() -> None:
            rows = visible_rows(app)
            assert "FINISHED" in rows[0] and f"step {steps}/{steps}" in rows[1]
            memory = region_text(app, app.w_memory)
            assert re.search(rf"peak(?: \w+)? {re.escape(peak)}", memory), (peak, memory)
            alerts = region_text(app, app.w_alerts_box)
            assert f"run finished after {steps} steps" in alerts  # the verdict
            assert f"peak {peak} = " in alerts and f"of {ram}" in alerts
            legend = region_text(app, app.w_plot_legend)  # the timeline legend, whole at 80 wide
            assert "process" in legend and "tensors" in legend and f"(capacity {ram} off scale)" in legend
            assert "…" not in legend

        await eventually(pilot, shown)


@pytest.mark.parametrize("name", ["cuda-finished", "cpu-stopped", "cuda-oom-loading", "ddp-finished"])
async def test_the_timeline_legend_is_never_cut_at_80_columns(name: str) -> None:
    app = make_app(FIXTURES / name, None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.ended)

        def whole() -> None:
            box = app.w_plot_legend
            rows = screen_text(app).splitlines()[box.region.y:box.region.bottom]
            cells = [row[box.content_region.x:box.content_region.right].rstrip() for row in rows]
            assert cells and cells[0] and not any(c.endswith("…") for c in cells), cells
            # the text ends inside the box: one cell free, or a second line took the rest
            assert all(len(c) < box.content_region.right - box.content_region.x for c in cells), cells
            legend = " ".join(cells)
            expected = ["process"] + (["capacity"] if app.view.is_cuda else [])
            assert all(word in legend for word in expected), legend

        await eventually(pilot, whole)


async def test_help_explains_the_timeline_marks() -> None:
    app = make_app(FIXTURES / "cuda-finished", None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.ended)
        await pilot.press("question_mark")
        await pilot.press("end")
        await eventually(pilot, lambda: assert_in("a phase begins", screen_text(app)))
        text = screen_text(app)
        assert "The timeline" in text and "85%" in text and "◆" in text and "│ grey" in text


# -- item 7: the keys say what they do, and mean one thing ---------------------------------------
async def test_space_says_resume_while_the_display_is_paused(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run = live_dir(tmp_path, lines)
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "space Pause" in screen_text(app).splitlines()[-1])
        await pilot.press("space")
        await wait_for(pilot, lambda: "space Resume" in screen_text(app).splitlines()[-1])
        assert "PAUSED" in screen_text(app).splitlines()[0]
        await pilot.press("space")
        await wait_for(pilot, lambda: "space Pause" in screen_text(app).splitlines()[-1])
        footer = screen_text(app).splitlines()[-1]
        assert "? Help" in footer and "Stop" in footer and "Detach" in footer  # all of it on 80 columns


async def test_in_the_quit_question_k_stops_as_on_the_dashboard(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        question = region_text(app, app.screen.query_one("#dialog"))
        assert "k stop it cleanly" in question and " s " not in question, question
        await pilot.press("k")
        await wait_for(pilot, lambda: handle.stop_requests == 1)
        return_value = await finish(pilot, app, run, handle)
    assert return_value == "stopped"


async def finish(pilot, app, run: Path, handle: FakeHandle) -> str | None:
    append(run, [exit_line(run, "stopped", 10)])
    handle.alive = False
    await wait_for(pilot, lambda: not app.is_running)
    return app.return_value


async def test_s_in_the_quit_question_stops_nothing(tmp_path: Path) -> None:
    lines, _ = training_lines(10)
    run, handle, app = live_app(tmp_path, lines)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "step 10/60" in screen_text(app))
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("s")
        await pilot.press("escape")  # processed after s: by then s has done whatever it does
        await wait_for(pilot, lambda: not isinstance(app.screen, QuitScreen))
        assert handle.stop_requests == 0 and app.is_running and not app.quit_when_stopped


@pytest.mark.parametrize("width", [42, 60, 200])  # 42: the timeline at 80 columns
def test_the_legend_wraps_rather_than_cut_and_names_the_marks_when_it_has_room(width: int) -> None:
    from ftwatch.views.dashboard.widgets.timeline import Series, legend_text

    series = Series(lines={"used": [1.0], "weights": [1.0], "activations": [1.0], "optimizer": [1.0]},
                    capacity=80.0, limit=68.0, limit_label="85%", peak=(1.0, 1.0), phase_starts=[0.5])
    text = legend_text(series, 80 << 30, width=width)
    lines = text.plain.split("\n")
    assert len(lines) <= 2 and all(len(line) <= width for line in lines), lines
    for word in ("process", "weights", "activations", "optimizer", "capacity", "85%"):
        assert word in text.plain, (word, lines)
    if width >= 200:
        assert len(lines) == 1 and "│ phase" in text.plain and "▲ peak" in text.plain
