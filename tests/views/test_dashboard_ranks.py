"""The dashboard of a multi-process (torchrun) run, driven by the recorded two-rank logs.

Expected figures are read from the fixtures' JSON here, independently of the code under test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.style import Style
from test_dashboard_app import (  # noqa: F401 - the fixture applies here too
    BIG,
    SMALL,
    FakeHandle,
    eventually,
    make_app,
    no_drawing_errors,
    region_text,
    screen_text,
    wait_for,
    wait_for_settled,
)

from conftest import FIXTURES_ROOT
from ftwatch.views.dashboard.app import FtwatchApp
from ftwatch.views.dashboard.demo import GiB, synthetic_lines
from ftwatch.views.dashboard.multi_feed import MultiRunFeed
from ftwatch.views.dashboard.rank_rows import RankRow, RanksView
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.screens import HelpScreen
from ftwatch.views.dashboard.widgets.ranks import render_rows

FIXTURES = FIXTURES_ROOT / "logs"
TENSORS = ("weights", "lora", "grads", "optimizer", "activations")



# -- figures from the fixtures, computed here ----------------------------------------------------
def rank_lines(name: str, rank: int) -> list[str]:
    return (FIXTURES / name / f"rank{rank}" / "events.jsonl").read_text().splitlines(keepends=True)


def binary(n: float) -> str:
    """Bytes with three significant digits in binary units (``3.16 MiB``, ``23.5 GiB``)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.2f} {units[i]}" if n < 10 else f"{n:.1f} {units[i]}" if n < 100 else f"{n:.0f} {units[i]}"


def expected_row(lines: list[str]) -> dict[str, str]:
    """What a CPU rank's row shows: its last snapshot's step, tensor bytes against the RAM."""
    events = [json.loads(line) for line in lines]
    capacity = events[0]["device"]["capacity"]
    snap = [e for e in events if e["kind"] == "snapshot"][-1]
    used = sum(snap["categories"].get(c, 0) for c in TENSORS)
    share = used / capacity
    used_text, cap_text = binary(used), binary(capacity)
    if used_text.split()[1] == cap_text.split()[1]:
        sizes = f"{used_text.split()[0]}/{cap_text}"
    else:
        sizes = f"{used_text}/{cap_text}"
    return {"step": f"step {snap['step']}", "share": "<1%" if 0 < share < 0.005 else f"{share * 100:.0f}%",
            "sizes": sizes}


def ranks_rows(app: FtwatchApp) -> dict[int, str]:
    """The visible rank rows, by rank (the row text, its spaces collapsed)."""
    region = app.w_ranks_box.scrollable_content_region
    rows = screen_text(app).splitlines()[region.y:region.bottom]
    out = {}
    for row in rows:
        text = " ".join(row[region.x:region.right].split())
        label = text.lstrip("▸ ").split(" ", 1)[0]
        if label.startswith("r") and label[1:].isdigit():
            out[int(label[1:])] = text
    return out


async def wait_settled(pilot) -> None:
    """Until the job has ended on screen and the screen (footer included) has settled."""
    app = pilot.app
    await wait_for(pilot, lambda: app.view is not None and app.view.run_ended)
    await wait_for_settled(pilot)


def copy_run(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def with_header(lines: list[str], **fields) -> list[str]:
    header = json.loads(lines[0])
    header.update(fields)
    return [json.dumps(header, separators=(",", ":")) + "\n", *lines[1:]]


def stage_ranks(run: Path, parts: dict[int, list[str]], launch: dict | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    if launch is not None:
        (run / "launch.json").write_text(json.dumps(launch))
    for rank, lines in parts.items():
        (run / f"rank{rank}").mkdir(exist_ok=True)
        with (run / f"rank{rank}" / "events.jsonl").open("a") as f:
            f.write("".join(lines))


LAUNCH = {"launcher": "torchrun", "launcher_pid": 1, "world_size": 2, "nproc_per_node": 2, "nnodes": 1,
          "node_rank": 0, "ranks": [0, 1]}


# -- the recorded runs -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_finished_run_shows_both_ranks_with_their_figures(size) -> None:
    app = make_app(FIXTURES / "ddp-finished", None)
    async with app.run_test(size=size) as pilot:
        await wait_settled(pilot)
        rows = ranks_rows(app)
        assert sorted(rows) == [0, 1]
        for rank in (0, 1):
            expected = expected_row(rank_lines("ddp-finished", rank))
            assert expected["step"] == "step 60"
            for key in ("step", "share", "sizes"):
                assert expected[key] in rows[rank], (key, rows[rank])
            assert "finished" in rows[rank] and "cpu" in rows[rank]
        text = screen_text(app)
        assert "FINISHED" in text.splitlines()[0]
        # every rank finished fine: none is the worst, none is marked so
        assert "Ranks 2/2 · all finished · focus r0" in text and "worst r" not in text
        assert "Memory · rank 0" in text and "Phases · rank 0" in text
        assert rows[0].startswith("▸r0") and "◀ worst" not in rows[0] and "◀ worst" not in rows[1]


@pytest.mark.parametrize("size", [BIG, SMALL])
async def test_a_rank_that_died_is_shown_dead_and_is_the_worst(size) -> None:
    app = make_app(FIXTURES / "ddp-rank-died", None)
    async with app.run_test(size=size) as pilot:
        await wait_settled(pilot)
        rows = ranks_rows(app)
        dead = json.loads(rank_lines("ddp-rank-died", 1)[-1])
        assert dead["error_type"] == "WorkerVanished"
        assert f"DEAD: process vanished at step {dead['step']}" in rows[1]
        assert rows[1].startswith("▸r1") and rows[1].endswith("◀ worst")  # focused: the worst rank
        expected0 = expected_row(rank_lines("ddp-rank-died", 0))
        assert "FAILED" in rows[0] and expected0["step"] in rows[0] and expected0["share"] in rows[0]
        text = screen_text(app)
        lines = text.splitlines()
        assert "FAILED" in lines[0] and "rank 1 vanished" in lines[0]
        assert lines[1].lstrip().startswith("rank 1:") and f"step {dead['step']}/" in lines[1]
        assert "worst r1 (dead) · focus r1" in text
        assert "Memory · rank 1" in text
        alerts = region_text(app, app.w_alerts_box)
        assert "rank 1: RUN FAILED" in alerts
        if size == BIG:
            assert "rank 1 failed after 41 steps" in alerts


async def test_brackets_and_w_move_the_focus_and_the_panels_follow() -> None:
    app = make_app(FIXTURES / "ddp-rank-died", None)
    async with app.run_test(size=BIG) as pilot:
        await wait_settled(pilot)
        assert app.feed.focus == 1
        await pilot.press("right_square_bracket")  # past the last rank: back to the first
        await wait_for(pilot, lambda: "Memory · rank 0" in screen_text(app))
        text = screen_text(app)
        assert "focus r0 (w: worst)" in text and "Post-mortem · rank 0" in text and "Timeline · rank 0" in text
        assert ranks_rows(app)[0].startswith("▸r0") and not ranks_rows(app)[1].startswith("▸")
        assert "Connection reset by peer" in region_text(app, app.w_alerts_box)
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: "Memory · rank 1" in screen_text(app))
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: "Memory · rank 0" in screen_text(app))
        await pilot.press("w")
        await wait_for(pilot, lambda: "Memory · rank 1" in screen_text(app))
        assert "(w: worst)" not in screen_text(app) and app.feed.picked is None


async def test_help_and_footer_list_the_rank_keys() -> None:
    app = make_app(FIXTURES / "ddp-finished", None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_settled(pilot)
        await wait_for(pilot, lambda: "[ ] Rank" in screen_text(app).splitlines()[-1])
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "previous / next rank" in text and "worst rank again" in text


async def test_single_process_runs_have_no_ranks_panel(tmp_path: Path) -> None:
    app = make_app(FIXTURES / "cpu-finished" / "events.jsonl", None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.ended)
        await wait_for_settled(pilot)
        text = screen_text(app)
        assert not app.w_ranks_box.display and app.view.ranks is None
        assert "Ranks" not in text and "Rank" not in text.splitlines()[-1] and "rank" not in text.splitlines()[1]
        await pilot.press("right_square_bracket", "w")  # nothing to move
        assert not app.multi


async def test_no_color_keeps_the_rows_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(FIXTURES / "ddp-rank-died", None)
    assert app.no_color
    async with app.run_test(size=BIG) as pilot:
        await wait_settled(pilot)
        rows = ranks_rows(app)
        assert "DEAD" in rows[1] and "◀ worst" in rows[1] and rows[1].startswith("▸")
        assert "✖ FAILED" in rows[0] and "░" in rows[0]


# -- following a live run ------------------------------------------------------------------------
async def test_rows_follow_the_rank_logs_as_they_grow(tmp_path: Path) -> None:
    run = tmp_path / "ddp-live"
    full = {r: with_header(rank_lines("ddp-finished", r), host="elsewhere") for r in (0, 1)}
    halves = {r: len(lines) // 2 for r, lines in full.items()}
    stage_ranks(run, {r: lines[:halves[r]] for r, lines in full.items()}, LAUNCH)
    (run / "worker.log").write_text("ftwatch worker [rank 0]: training\nftwatch worker [rank 1]: training\n")
    handle = FakeHandle(run)
    handle.group = True
    app = make_app(run, handle)  # type: ignore[arg-type]
    assert isinstance(app.feed, MultiRunFeed)
    async with app.run_test(size=BIG) as pilot:
        first = {r: expected_row(full[r][:halves[r]]) for r in (0, 1)}
        await wait_for(pilot, lambda: all(first[r]["step"] in ranks_rows(app).get(r, "") for r in (0, 1)))

        def live_screen() -> None:
            text = screen_text(app)
            assert "LIVE" in text.splitlines()[0] and "ftwatch worker [rank 1]: training" in text
            assert all(" ok" in ranks_rows(app)[r] for r in (0, 1))
            assert "Detach" in text.splitlines()[-1]

        await eventually(pilot, live_screen)
        stage_ranks(run, {r: lines[halves[r]:] for r, lines in full.items()})
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app).splitlines()[0])

        def finished_screen() -> None:
            rows = ranks_rows(app)
            for r in (0, 1):
                assert expected_row(full[r])["step"] in rows[r] and "finished" in rows[r]
            assert "Detach" not in screen_text(app).splitlines()[-1]  # nothing left to detach from

        await eventually(pilot, finished_screen)
        await pilot.press("q")
    assert app.return_value == "quit"


async def test_a_vanished_rank_is_recorded_and_the_others_keep_reporting(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = tmp_path / "ddp-vanish"
    lines0 = with_header(rank_lines("ddp-finished", 0), host="elsewhere")
    lines1 = with_header(rank_lines("ddp-finished", 1), host=socket.gethostname(), pid=gone.pid)
    stage_ranks(run, {0: lines0[:60], 1: lines1[:50]}, LAUNCH)
    handle = FakeHandle(run)
    app = make_app(run, handle)  # type: ignore[arg-type]
    app.feed.exit_grace = 0.2
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "DEAD" in ranks_rows(app).get(1, ""))
        last = json.loads((run / "rank1" / "events.jsonl").read_text().splitlines()[-1])
        step = expected_row(lines1[:50])["step"]
        assert last["kind"] == "exit" and last["error_type"] == "WorkerVanished" and last["by"] == "monitor"
        assert f"step {last['step']}" == step
        rows = ranks_rows(app)
        assert f"DEAD: process vanished at {step}" in rows[1] and rows[1].startswith("▸r1")
        assert " ok" in rows[0]  # rank 0 still reports
        text = screen_text(app)
        assert "LIVE" in text.splitlines()[0] and "rank 1 vanished" in text.splitlines()[0]
        stage_ranks(run, {0: lines0[60:70]})
        await wait_for(pilot, lambda: expected_row(lines0[:70])["step"] in ranks_rows(app)[0])
        handle.alive = False  # the launcher is gone, and rank 0 is on another host: the run is over
        await wait_for(pilot, lambda: "FAILED" in screen_text(app).splitlines()[0])
        assert len((run / "rank1" / "events.jsonl").read_text().splitlines()) == 51  # recorded once


# -- many ranks ----------------------------------------------------------------------------------
async def test_many_ranks_keep_one_line_each_and_scroll_to_the_focus(tmp_path: Path) -> None:
    run = tmp_path / "ddp-12"
    lines = rank_lines("ddp-finished", 0)
    launch = dict(LAUNCH, world_size=12, nproc_per_node=12, ranks=list(range(12)))
    stage_ranks(run, {r: with_header(lines, rank=r, local_rank=r) for r in range(12)}, launch)
    app = make_app(run, None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_settled(pilot)
        assert app.w_ranks_box.size.height <= 4 and app.w_ranks.size.height == 12
        assert "Ranks 12/12" in screen_text(app)
        assert 0 in ranks_rows(app) and 11 not in ranks_rows(app)
        await pilot.press("left_square_bracket")  # before the first rank: the last
        await wait_for(pilot, lambda: 11 in ranks_rows(app))
        assert ranks_rows(app)[11].startswith("▸r11") and "Memory · rank 11" in screen_text(app)


# -- pieces ----------------------------------------------------------------------------------------
def test_a_row_fills_its_bar_to_the_share_of_its_capacity() -> None:
    capacity = 24 * GiB
    row = RankRow(rank=0, local_rank=0, host="h", device="cuda:0", status="running", vanished=False, step=120,
                  max_steps=200, occupied=int(capacity * 0.61), capacity=capacity, risk=1, peak=None)
    view = RanksView(rows=[row], focus=0, worst=0, following_worst=True, world_size=1, missing=[],
                     status="running", ended=False)
    for mono in (False, True):
        line = render_rows(view, 90, mono=mono)[0]
        plain = line.plain
        filled, empty = plain.count("█"), plain.count("░")
        assert filled == round(0.61 * (filled + empty)) and filled + empty >= 10
        assert "61%" in plain and "14.6/24.0 GiB" in plain and "step 120" in plain and "watch" in plain
        assert line.cell_len <= 90
        if mono:
            styles = [span.style if isinstance(span.style, Style) else Style.parse(span.style or "none")
                      for span in line.spans]
            assert all(style.color is None and style.bgcolor is None for style in styles)


def test_rows_drop_columns_before_the_bar_gets_too_narrow() -> None:
    rows = [RankRow(rank=r, local_rank=r, host="h", device=f"cuda:{r}", status="running", vanished=False,
                    step=5, max_steps=None, occupied=GiB, capacity=80 * GiB, risk=0, peak=2 * GiB)
            for r in range(2)]
    view = RanksView(rows=rows, focus=1, worst=0, following_worst=False, world_size=4, missing=[],
                     status="running", ended=False)
    wide = render_rows(view, 110)[0].plain
    narrow = render_rows(view, 50)[0].plain
    assert "peak 2.00 GiB" in wide and "1.00/80.0 GiB" in wide
    assert "peak" not in narrow and narrow.count("█") + narrow.count("░") >= 10 and len(narrow) <= 50


def test_the_feed_ends_a_replay_whose_rank_logs_stop_without_an_exit(tmp_path: Path) -> None:
    run = tmp_path / "ddp-cut"
    stage_ranks(run, {r: rank_lines("ddp-finished", r)[:-1] for r in (0, 1)}, LAUNCH)
    feed = MultiRunFeed(run, None)
    for _ in range(50):
        feed.pump()
        if feed.ended:
            break
    ranks = feed.view().ranks
    assert feed.ended and ranks is not None and ranks.ended and ranks.status == "failed"
    assert all(row.vanished for row in ranks.rows)
    assert not any((run / f"rank{r}" / "events.jsonl").read_text().count('"exit"') for r in (0, 1))
    feed.stop()


async def test_s_saves_a_screenshot_of_the_ranks_into_the_run_directory(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "ddp-rank-died")
    app = make_app(run, None)
    async with app.run_test(size=BIG) as pilot:
        await wait_settled(pilot)
        svg = app.export_screenshot()
        assert "DEAD:" in svg and "worst" in svg and "FAILED" in svg
        await pilot.press("s")
        await wait_for(pilot, lambda: any(run.glob("ftwatch-*.svg")))
    shots = list(run.glob("ftwatch-*.svg"))
    assert len(shots) == 1 and "DEAD:" in shots[0].read_text()


def test_run_dashboard_reads_a_multi_rank_directory_with_the_rank_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.views.dashboard import app as app_module

    seen = []
    monkeypatch.setattr(app_module.FtwatchApp, "run", lambda self, *a, **k: seen.append(self.feed) or "quit")
    run = FIXTURES / "ddp-finished"
    assert app_module.run_dashboard(run, None, title="ddp", feed=ReplayFeed(run)) == "quit"
    assert app_module.run_dashboard(run / "rank1" / "events.jsonl", None) == "quit"  # one rank alone
    assert isinstance(seen[0], MultiRunFeed) and type(seen[1]) is not MultiRunFeed


async def test_the_status_line_carries_the_worst_ranks_risk_and_warnings_name_their_rank(tmp_path: Path) -> None:
    cuda = synthetic_lines("cuda", ending="running")
    parts = {}
    for rank, step in ((0, 20), (1, 40)):  # rank 1 is further on: the forecaster has warned it
        cut = next(i for i, line in enumerate(cuda) if f'"kind":"snapshot","phase":"training","step":{step},' in line)
        header = json.loads(cuda[0])
        parts[rank] = with_header(cuda[:cut + 1], rank=rank, local_rank=rank, world_size=2,
                                  device=dict(header["device"], index=rank))
    run = tmp_path / "ddp-cuda"
    stage_ranks(run, parts, LAUNCH)
    app = make_app(run, FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: "step 40" in ranks_rows(app).get(1, ""))
        warned = [json.loads(line) for line in parts[1] if '"kind":"warning"' in line]
        assert warned and not any('"kind":"warning"' in line for line in parts[0])

        def rows_status_and_alerts() -> None:
            rows = ranks_rows(app)
            for rank in (0, 1):
                events = [json.loads(line) for line in parts[rank]]
                snap = [e for e in events if e["kind"] == "snapshot"][-1]
                capacity = events[0]["device"]["capacity"]
                share = (capacity - snap["categories"]["free"]) / capacity  # all but what is free
                assert f"{share * 100:.0f}%" in rows[rank] and f"cuda:{rank}" in rows[rank]
            assert "watch" in rows[1] and " ok" in rows[0] and rows[1].endswith("◀ worst")
            status = screen_text(app).splitlines()[0]
            assert "LIVE" in status and "● r1 oom risk" in status
            alerts = region_text(app, app.w_alerts_box)
            assert f"rank 1: {warned[-1]['message']}" in alerts
            assert "Memory · rank 1 · GPU 1" in screen_text(app)

        await eventually(pilot, rows_status_and_alerts)
