"""The replay in the dashboard: checkpoints and seeks against fresh folds, the replay clock on a fake
clock, the keys through Textual's Pilot, and the outside view of a process without a probe."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_dashboard_app import SMALL, eventually, screen_text, wait_for

from conftest import FIXTURES_ROOT
from ftwatch.runlog.events import encode
from ftwatch.runlog.state import RunState
from ftwatch.training.outside import NO_BREAKDOWN
from ftwatch.views.dashboard.app import FtwatchApp
from ftwatch.views.dashboard.breakdown import compute_breakdown
from ftwatch.views.dashboard.demo import synthetic_lines
from ftwatch.views.dashboard.replay import SCAN_BATCH, ReplayFeed
from ftwatch.views.dashboard.replay_cursor import Cursor, LogScanner, clone_state
from ftwatch.views.dashboard.replay_source import LogSource
from ftwatch.views.dashboard.replay_speed import (
    AUTO_SECONDS,
    MAX_WAIT,
    RATES,
    auto_rate,
    next_rate,
    parse_speed,
)
from ftwatch.views.dashboard.widgets.status import status_lines

FIXTURES = FIXTURES_ROOT / "logs"


def write_log(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write("".join(lines))
    else:
        path.write_text("".join(lines))
    return path


def parsed(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def fold(events: list[dict]) -> RunState:
    state = RunState()
    state.apply_all(events)
    return state


def facts(state: RunState) -> dict:
    """Everything a screen can show of a state, comparable with ``==``."""
    return {
        "summary": state.summary(), "step": state.step, "phase": state.phase, "samples": state.samples,
        "snapshots": state.snapshots, "last_sample": state.last_sample, "last_snapshot": state.last_snapshot,
        "exit": state.exit, "warnings": state.warnings, "peaks": state.peaks, "stride": state.timeline.stride,
        "timeline": [(p.t, p.step, p.used, p.categories) for p in state.timeline.all_points()],
        "phases": [(p.name, p.start_t, p.end_t, p.start_used, p.end_used, p.peak_used) for p in state.phases],
        "speed": state.steps_per_second, "first_t": state.first_t, "last_t": state.last_t,
    }


def step_marks(events: list[dict]) -> list[int]:
    """Positions (events folded) right after each training step's snapshot, found here."""
    return [i + 1 for i, e in enumerate(events) if e["kind"] == "snapshot" and e.get("step") is not None]


def drain(feed: ReplayFeed) -> ReplayFeed:
    for _ in range(100_000):
        if not feed.pump():
            return feed
    raise AssertionError("the feed never settled")


def press(feed: ReplayFeed, command, *args) -> ReplayFeed:
    getattr(feed, command)(*args)
    feed.pump()
    return feed


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- checkpoints and seeks ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_any_position_restored_from_a_checkpoint_equals_a_fresh_fold(tmp_path: Path, name: str) -> None:
    lines = synthetic_lines("cuda", steps=420)  # > 2048 samples: the timeline compacts on the way
    events = parsed(lines)
    source = LogSource(write_log(tmp_path / name, lines))
    scanner = LogScanner(source, checkpoint_every=97)
    while not scanner.done:
        scanner.advance(50)
    assert scanner.index == len(events) and len(scanner.checkpoints) == len(events) // 97 + 1
    assert scanner.marks == step_marks(events)
    assert facts(scanner.state) == facts(fold(events))
    assert fold(events).timeline.stride > 1
    for target in (0, 1, 2, 96, 97, 98, 500, 1999, 2048, 2049, len(events) - 1, len(events)):
        checkpoint = scanner.checkpoint_before(target)
        assert target - scanner.every < checkpoint.index <= target or checkpoint.index == target
        cursor = Cursor(source.reader, checkpoint)
        cursor.fold_to(target)
        assert cursor.index == target
        assert facts(cursor.state) == facts(fold(events[:target])), target
    source.close()


def test_checkpoints_are_independent_of_the_state_they_copy() -> None:
    events = parsed(synthetic_lines("cpu", steps=30))
    state = fold(events[:100])
    copy = clone_state(state)
    before = facts(copy)
    state.apply_all(events[100:])
    assert facts(copy) == before
    copy.apply_all(events[100:])
    assert facts(copy) == facts(state)


def test_corrupt_lines_and_a_cut_tail_keep_positions_in_step(tmp_path: Path) -> None:
    lines = synthetic_lines("cpu", steps=30)
    damaged = lines[:50] + ["garbage\n", "\n"] + lines[50:120] + [encode("hologram", {}, 1.0)] + lines[120:]
    log = write_log(tmp_path / "events.jsonl", damaged)
    log.write_text(log.read_text() + lines[-1][:20])  # and a cut last line
    events = parsed(lines)
    source = LogSource(log)
    scanner = LogScanner(source, checkpoint_every=17)
    while not scanner.done:
        scanner.advance(40)
    assert scanner.index == len(events)
    assert (scanner.stats.corrupt_lines, scanner.stats.unknown_kinds, scanner.stats.truncated_tail) == (1, 1, True)
    for target in (49, 50, 51, 119, 120, 121, len(events)):
        cursor = Cursor(source.reader, scanner.checkpoint_before(target))
        cursor.fold_to(target)
        assert facts(cursor.state) == facts(fold(events[:target])), target
    source.close()


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_an_over_long_line_is_read_past_not_held_and_positions_stay_true(tmp_path: Path, name: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import ftwatch.views.dashboard.replay_source as replay

    monkeypatch.setattr(replay, "MAX_LINE_BYTES", 4096)  # a long line without writing megabytes
    lines = synthetic_lines("cpu", steps=20)
    huge = '{"v":1,"t":1.0,"kind":"note","code":"x","message":"' + "y" * 20_000 + '"}\n'
    events = parsed(lines)
    source = LogSource(write_log(tmp_path / name, lines[:40] + [huge] + lines[40:]))
    scanner = LogScanner(source, checkpoint_every=17)
    held: list[int] = []
    real_read_line = replay.read_line

    def spy(*args: object) -> bytes:
        line = real_read_line(*args)  # type: ignore[arg-type]
        held.append(len(line))
        return line

    monkeypatch.setattr(replay, "read_line", spy)
    while not scanner.done:
        scanner.advance(30)
        held.append(len(scanner._chunks._partial))  # the scan's start of a line still to end
    assert scanner.index == len(events) and max(held) <= 4096
    assert (scanner.stats.long_lines, scanner.stats.corrupt_lines) == (1, 1)
    for target in (39, 40, 41, len(events)):
        cursor = Cursor(source.reader, scanner.checkpoint_before(target))
        cursor.fold_to(target)
        assert facts(cursor.state) == facts(fold(events[:target])), target
    source.close()


# -- the keys, on the feed ------------------------------------------------------------------------
def test_steps_back_and_forth_and_the_two_ends(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=40)
    events = parsed(lines)
    marks = step_marks(events)
    feed = drain(ReplayFeed(write_log(tmp_path / "events.jsonl", lines), "max", checkpoint_every=23))
    assert feed.at_end and feed.state.exit["status"] == "finished" and feed.position == len(events)
    assert len(events) > marks[-1]  # the log goes on after the last step ends (phase end, exit)
    press(feed, "step", -1)  # the end shows step 40: the first step back is the end of step 39
    assert feed.position == marks[-2] and feed.state.step == 39 and feed.state.exit is None
    assert facts(feed.state) == facts(fold(events[:marks[-2]]))
    press(feed, "step", -1)
    assert feed.position == marks[-3] and feed.state.step == 38
    press(feed, "jump", "start")
    assert feed.position == 1 and feed.state.header["name"] == "llama8b-lora" and feed.state.samples == 0
    press(feed, "step", -1)
    assert feed.position == 1  # nothing before the start
    for step in (1, 2, 3):
        press(feed, "step", 1)
        assert feed.position == marks[step - 1] and feed.state.step == step
    assert facts(feed.state) == facts(fold(events[:marks[2]]))
    press(feed, "jump", "end")
    assert feed.at_end and feed.state.exit["status"] == "finished"
    press(feed, "step", 1)
    assert feed.at_end and not feed.playing


def test_the_end_of_a_log_without_exit_reads_as_killed_but_the_steps_before_do_not(tmp_path: Path) -> None:
    lines = synthetic_lines("cpu", steps=20, ending="running")
    feed = drain(ReplayFeed(write_log(tmp_path / "events.jsonl", lines), "max"))
    assert feed.state.exit["by"] == "monitor" and "without an exit event" in feed.state.exit["message"]
    assert feed.state.exit["error_type"] == "NoExitEvent"  # the status line says so, not "worker vanished"
    text = status_lines(feed.view(), 120, live=False).plain
    assert "no exit event in the log" in text and "vanished" not in text
    press(feed, "step", -1)
    assert feed.state.exit is None and feed.view().status == "running"
    press(feed, "jump", "end")
    assert feed.view().summary["status"] == "failed"


def test_max_follows_the_log_while_it_is_read(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=2 * SCAN_BATCH // 5)
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", lines), "max")
    feed.pump()
    info = feed.view().replay
    assert info.loading and not info.playing and info.total is None and 0 < info.loaded < 1
    assert feed.position == SCAN_BATCH and feed.state.samples > 0
    press(feed, "toggle_play")  # leave the loading view: play on from where it stands
    assert feed.cursor is not None and feed.playing and feed.position >= SCAN_BATCH
    drain(feed)
    assert feed.scanner.done and feed.view().replay.total == len(lines)


def test_space_at_the_end_plays_again_from_the_start_at_the_auto_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    lines = synthetic_lines("cpu", steps=50, step_seconds=30.0)
    events = parsed(lines)
    feed = drain(ReplayFeed(write_log(tmp_path / "events.jsonl", lines), "max", now=clock))
    press(feed, "toggle_play")
    duration = events[-1]["t"] - events[0]["t"]
    assert feed.playing and feed.rate == pytest.approx(duration / AUTO_SECONDS)
    assert feed.position == sum(e["t"] <= events[0]["t"] for e in events)  # from the start again
    clock.now = AUTO_SECONDS / 2
    feed.pump()
    half = events[0]["t"] + duration / 2
    assert feed.position == sum(e["t"] <= half for e in events)
    clock.now = AUTO_SECONDS + 1
    drain(feed)
    assert feed.at_end and not feed.playing and feed.state.exit["status"] == "finished"


# -- the clock ------------------------------------------------------------------------------------
@pytest.mark.parametrize("speed", [1.0, 7.5, 40.0])
def test_events_are_released_by_their_time_scaled_by_the_speed(tmp_path: Path, speed: float) -> None:
    clock = FakeClock()
    lines = synthetic_lines("cuda", steps=30)
    events = parsed(lines)
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", lines), speed, now=clock)
    t0 = events[0]["t"]
    for wall in (0.0, 0.35, 1.0, 2.2, 5.0, 9.0):
        clock.now = wall
        feed.pump()
        expected = sum(e["t"] <= t0 + wall * speed for e in events)
        assert feed.position == expected, (wall, feed.position, expected)
        assert feed.view().replay.playing == (expected < len(events))


def test_pause_holds_the_clock_and_play_resumes_where_it_stood(tmp_path: Path) -> None:
    clock = FakeClock()
    lines = synthetic_lines("cuda", steps=30)
    events = parsed(lines)
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", lines), 2.0, now=clock)
    feed.pump()
    clock.now = 3.0
    feed.pump()
    held = feed.position
    press(feed, "toggle_play")
    clock.now = 100.0
    feed.pump()
    assert feed.position == held and not feed.playing
    press(feed, "toggle_play")  # on again at t = the last event shown
    clock.now = 101.0
    feed.pump()
    resumed_at = events[held - 1]["t"]
    assert feed.position == sum(e["t"] <= resumed_at + 2.0 for e in events)


def test_a_quiet_stretch_never_holds_the_replay_long(tmp_path: Path) -> None:
    clock = FakeClock()
    lines = synthetic_lines("cpu", steps=10)
    events = parsed(lines)
    later = [encode(e["kind"], {k: v for k, v in e.items() if k not in ("v", "t", "kind")}, e["t"] + 3600)
             for e in events[-20:]]
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", lines[:-1] + later), 1.0, now=clock)
    feed.pump()  # starts the clock at the first event
    clock.now = events[-2]["t"] - events[0]["t"] + 0.01
    feed.pump()
    before_gap = len(events) - 1
    assert feed.position == before_gap
    clock.now += MAX_WAIT - 0.1
    feed.pump()
    assert feed.position == before_gap
    clock.now += 0.2
    feed.pump()
    assert feed.position > before_gap


def test_auto_is_about_a_minute_for_long_runs_and_real_time_for_short_ones(tmp_path: Path) -> None:
    long_lines = synthetic_lines("cpu", steps=60, step_seconds=20.0)
    duration = json.loads(long_lines[-1])["t"] - json.loads(long_lines[0])["t"]
    assert duration > 20 * 60
    feed = ReplayFeed(write_log(tmp_path / "long" / "events.jsonl", long_lines), "auto")
    feed.pump()
    assert feed.rate == pytest.approx(duration / AUTO_SECONDS)  # known from the log's last line at once
    packed = ReplayFeed(write_log(tmp_path / "packed" / "events.jsonl.gz", long_lines), "auto")
    drain(packed)
    assert packed.rate == pytest.approx(duration / AUTO_SECONDS)
    assert auto_rate(30.0) == 1.0


def test_rate_keys_move_along_the_ladder(tmp_path: Path) -> None:
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", synthetic_lines("cpu", steps=5)), 10.0)
    feed.pump()
    press(feed, "change_rate", 1)
    assert feed.rate == 30
    press(feed, "change_rate", -1)
    press(feed, "change_rate", -1)
    assert feed.rate == 5
    assert next_rate(RATES[-1], 1) == RATES[-1] and next_rate(RATES[0], -1) == RATES[0]
    assert next_rate(7.0, 1) == 10 and next_rate(7.0, -1) == 5


@pytest.mark.parametrize(("text", "value"), [("max", "max"), ("AUTO", "auto"), ("10", 10.0), ("2.5x", 2.5)])
def test_parse_speed(text: str, value: object) -> None:
    assert parse_speed(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "fast", ""])
def test_parse_speed_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--speed"):
        parse_speed(text)


def test_a_log_of_another_schema_shows_an_error(tmp_path: Path) -> None:
    feed = ReplayFeed(write_log(tmp_path / "events.jsonl", ['{"v":7,"t":1,"kind":"header"}\n']), "max")
    feed.pump()
    assert "v7" in (feed.view().error or "")


# -- the keys, on the screen ----------------------------------------------------------------------
async def test_replay_keys_on_screen(tmp_path: Path) -> None:
    log = FIXTURES / "cuda-finished" / "events.jsonl"
    app = FtwatchApp(log, None, feed=ReplayFeed(log, "max"))
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app) and "Quit" in screen_text(app).splitlines()[-1])
        footer = screen_text(app).splitlines()[-1]
        assert "space Play " in footer and "Back" in footer and "Step" in footer  # at the end: play again
        assert "Detach" not in footer and "Stop" not in footer
        await pilot.press("left")  # the first step back from the end moves (60 -> 59)
        await wait_for(pilot, lambda: "step 59/60" in screen_text(app))

        def one_step_back() -> None:  # the footer redraws a moment after the status line
            rows = screen_text(app).splitlines()
            assert "PAUSED" in rows[0] and "space plays" in rows[1]
            assert "step 59" in rows[2]  # the bar shows that step's snapshot
            assert "space Play " in rows[-1]

        await eventually(pilot, one_step_back)
        await pilot.press("left")
        await wait_for(pilot, lambda: "step 58/60" in screen_text(app))
        await pilot.press("home")
        await wait_for(pilot, lambda: "step 0/60" in screen_text(app))
        await pilot.press("right")
        await wait_for(pilot, lambda: "step 1/60" in screen_text(app))
        await pilot.press("end")
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app) and "end of the log" in screen_text(app))
        await pilot.press("space")
        await wait_for(pilot, lambda: "REPLAY" in screen_text(app) and "▶ 1×" in screen_text(app))
        await wait_for(pilot, lambda: "space Pause " in screen_text(app).splitlines()[-1])  # while playing
        await pilot.press("space")
        await wait_for(pilot, lambda: "PAUSED" in screen_text(app))
        await wait_for(pilot, lambda: "space Play " in screen_text(app).splitlines()[-1])
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: "play / pause the replay" in screen_text(app))
        await pilot.press("escape")
        await pilot.press("q")
    assert app.return_value == "quit" and app.render_error is None


async def test_a_replay_of_an_oom_shows_the_post_mortem_at_the_end_only(tmp_path: Path) -> None:
    log = FIXTURES / "cuda-oom-loading" / "events.jsonl"
    app = FtwatchApp(log, None, feed=ReplayFeed(log, "max"))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: "Post-mortem" in screen_text(app))
        assert "OUT OF MEMORY" in screen_text(app)
        await pilot.press("home")
        await wait_for(pilot, lambda: "PAUSED" in screen_text(app))
        assert "Post-mortem" not in screen_text(app) and "OUT OF MEMORY" not in screen_text(app)
    assert app.render_error is None


# -- the outside view -----------------------------------------------------------------------------
def outside_lines(pid: int, cuda: bool, samples: int = 40) -> list[str]:
    """A log as ``ExternalWatcher`` writes it for a process without a probe."""
    GiB = 1 << 30
    device = ({"type": "cuda", "index": 0, "name": "NVIDIA H100", "capacity": 80 * GiB, "capacity_source": "nvml"}
              if cuda else {"type": "cpu", "index": None, "name": "RAM", "capacity": 64 * GiB,
                            "capacity_source": "ram"})
    t = 1_000.0
    lines = [encode("header", {"run_id": f"external-{pid}", "name": f"pid {pid}", "config_path": None, "pid": pid,
                               "model": "python3 train.py", "device": device, "budget": None, "sample_hz": 10,
                               "max_steps": None, "external": True}, t),
             encode("note", {"code": "no_breakdown", "message": NO_BREAKDOWN.format(pid=pid)}, t)]
    for i in range(samples):
        t += 0.1
        fields: dict = {"phase": None, "rss": (300 + i) * (1 << 20), "sys_used": 9 * GiB, "sys_total": 64 * GiB}
        if cuda:
            fields["nvml"] = {"total": 80 * GiB, "used": 30 * GiB + i * GiB // 10, "free": 50 * GiB - i * GiB // 10,
                              "process": 20 * GiB + i * GiB // 10, "others": [], "util": 90}
        lines.append(encode("sample", fields, t))
    return lines


@pytest.mark.parametrize("cuda", [False, True])
async def test_the_outside_view_says_there_is_no_breakdown_and_how_to_get_one(tmp_path: Path, cuda: bool) -> None:
    run = tmp_path / "external"
    log = write_log(run / "events.jsonl", outside_lines(4242, cuda))
    app = FtwatchApp(log, None, title="pid 4242")  # as attach shows it: no worker handle
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "No category breakdown" in screen_text(app))
        await pilot.pause(1.0)  # a quiet log must not be taken for a finished one

        def outside_view() -> None:
            text = screen_text(app)
            rows = text.splitlines()
            assert "LIVE" in rows[0] and "FAILED" not in text
            assert "outside view" in rows[1] and "step 0" not in rows[1]
            assert "no breakdown" in rows[2]
            assert "PID 4242 is watched from outside" in text
            assert "callbacks=[FtwatchCallback()]" in text and "from ftwatch import FtwatchCallback" in text
            assert "process (no breakdown)" in text and "· loading" not in text
            if cuda:
                assert "GPU 0 · 23.9 GiB of 80.0 GiB" in rows[2]

        await eventually(pilot, outside_view)
        with (run / "events.jsonl").open("a") as handle:
            handle.write(encode("exit", {"status": "finished", "step": None, "by": "monitor",
                                         "message": "process 4242 exited"}, 1_010.0))
        await wait_for(pilot, lambda: "FINISHED" in screen_text(app))
        await pilot.press("q")
    assert app.return_value == "quit" and app.render_error is None


def test_outside_breakdown_on_cuda_splits_the_card_without_inventing_categories() -> None:
    log_events = parsed(outside_lines(7, cuda=True, samples=5))
    feed_state = fold(log_events)

    class View:
        header, device, capacity, is_cuda = feed_state.header, feed_state.device, feed_state.capacity, True
        sample, snapshot, exit, phase = feed_state.last_sample, None, None, None
        peak_total, peak_rss, ended = feed_state.peak_total, feed_state.peak_rss, False

    bd = compute_breakdown(View())
    nvml = log_events[-1]["nvml"]
    assert [(p.name, p.bytes) for p in bd.parts] == [
        ("outside", nvml["process"]), ("other_processes", nvml["used"] - nvml["process"]),
        ("free", nvml["total"] - nvml["used"])]
    assert sum(p.bytes for p in bd.parts) == bd.scale == nvml["total"] and bd.source == "outside"
    assert bd.tensor_parts == [] and not bd.needs_zoom


@pytest.mark.parametrize("rate, shown", [(1.64176, "1.6×"), (0.25, "0.25×"), (1.0, "1×"), (2.5, "2.5×"),
                                         (30.0, "30×"), (3600.0, "3600×"), (10800.0, "10800×"), (None, "?×")])
def test_the_replay_rate_is_shown_to_two_figures(rate, shown) -> None:
    from ftwatch.views.dashboard.widgets.status import rate_text

    assert rate_text(rate) == shown
