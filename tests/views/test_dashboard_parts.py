"""The dashboard's pure parts: bar layout, breakdown choice, log tail, feed, legend, status, timeline."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import FIXTURES_ROOT
from ftwatch.runlog.events import CATEGORIES, encode
from ftwatch.runlog.state import TimelinePoint
from ftwatch.views.dashboard.breakdown import WARN_FRACTION, compute_breakdown, layout_segments
from ftwatch.views.dashboard.demo import GiB, MiB, synthetic_lines
from ftwatch.views.dashboard.feed import RunFeed
from ftwatch.views.dashboard.palette import PROCESS_REST
from ftwatch.views.dashboard.widgets.membar import layout_legend, legend_entries, render_bar, render_markers
from ftwatch.views.dashboard.widgets.status import badge_for, model_label, status_lines
from ftwatch.views.dashboard.widgets.timeline import (
    build_series,
    downsample,
    nice_ticks,
    without_flat_interiors,
)
from ftwatch.views.dashboard.worker_tail import TextTail, clean_line

FIXTURES = FIXTURES_ROOT / "logs"


def expected_cells(parts: list[tuple[str, int]], scale: int, width: int) -> list[int]:
    """Independent reference: boundaries at cumulative share of the width, rounded half up."""
    cells, previous, total = [], 0, 0
    for _, nbytes in parts:
        total += nbytes
        exact = Fraction(total * width, scale)
        boundary = min(int(exact + Fraction(1, 2)), width)
        cells.append(boundary - previous)
        previous = boundary
    return cells


def feed_of(path: Path, handle=None) -> RunFeed:
    feed = RunFeed(path, handle)
    for _ in range(200):
        feed.pump()
        if feed.state.exit is not None:
            break
    return feed


# -- layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 7, 40, 78, 116, 300])
def test_segments_fill_exactly_their_share(width: int) -> None:
    parts = [("weights", 15 * GiB), ("lora", 42 * MiB), ("grads", 42 * MiB), ("activations", 51 * GiB),
             ("free", 13 * GiB)]
    scale = sum(b for _, b in parts)
    segments = layout_segments(parts, scale, width)
    assert [s.name for s in segments] == [n for n, _ in parts]
    assert [s.cells for s in segments] == expected_cells(parts, scale, width)
    assert sum(s.cells for s in segments) == width
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and starts[0] == 0


def test_segments_clip_at_the_scale_and_leave_the_rest_empty() -> None:
    assert [s.cells for s in layout_segments([("a", 30), ("b", 30)], 100, 10)] == [3, 3]
    assert [s.cells for s in layout_segments([("a", 80), ("b", 80)], 100, 10)] == [8, 2]
    assert layout_segments([("a", 1)], 0, 10) == []


def test_rendered_bar_has_the_laid_out_cells_in_mono() -> None:
    parts_bytes = [("weights", 300), ("lora", 100), ("activations", 500)]
    from ftwatch.views.dashboard.breakdown import Part

    text, segments = render_bar([Part(n, b) for n, b in parts_bytes], 1000, 50, rows=1, mono=True, labels=False)
    assert text.plain == "█" * 15 + "▓" * 5 + "#" * 25 + "·" * 5
    assert [s.cells for s in segments] == expected_cells(parts_bytes, 1000, 50)


# -- breakdown ---------------------------------------------------------------------------------
def test_cuda_breakdown_uses_the_step_snapshot_with_all_ten_categories() -> None:
    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    bd = compute_breakdown(view)
    assert [p.name for p in bd.parts] == list(CATEGORIES)
    assert bd.source == "snapshot"
    assert bd.scale == view.capacity == sum(p.bytes for p in bd.parts)
    assert bd.used == bd.scale - bd.parts[-1].bytes - bd.parts[-2].bytes
    assert bd.peak == view.peak_total
    assert bd.threshold == int(bd.scale * WARN_FRACTION)
    assert bd.threshold_label == f"{round(WARN_FRACTION * 100)}%"


def test_cuda_breakdown_while_loading_comes_from_the_sample_and_is_marked_estimated() -> None:
    lines = synthetic_lines("cuda")
    cut = next(i for i, line in enumerate(lines) if '"snapshot"' in line)  # before the first snapshot
    path = Path(__file__).parent / "_unused"
    feed = RunFeed(path)
    feed.state.apply_all([__import__("json").loads(line) for line in lines[:cut]])
    view = feed.view()
    bd = compute_breakdown(view)
    assert bd.source == "live"
    weights = bd.parts[0]
    assert weights.name == "weights" and weights.estimated
    assert weights.bytes == view.sample["cuda"]["allocated"]
    assert "lora" not in [p.name for p in bd.parts]


def test_oom_breakdown_is_the_one_recorded_at_the_failure() -> None:
    view = feed_of(FIXTURES / "cuda-oom-loading" / "events.jsonl").view()
    bd = compute_breakdown(view)
    assert bd.source == "oom"
    assert {p.name: p.bytes for p in bd.parts} == view.exit["oom"]["last_categories"]


def test_cpu_breakdown_shows_tensors_and_the_rest_of_rss_against_the_ram() -> None:
    view = feed_of(FIXTURES / "cpu-finished" / "events.jsonl").view()
    bd = compute_breakdown(view)
    names = [p.name for p in bd.parts]
    assert names == ["weights", "lora", "grads", "optimizer", "activations", PROCESS_REST]
    assert not set(names) & {"other", "cache", "free", "other_processes", "non_torch"}
    assert bd.used == view.sample["rss"]
    assert sum(p.bytes for p in bd.parts) == view.sample["rss"]
    assert bd.scale == view.capacity and bd.capacity_label == "RAM"
    assert bd.needs_zoom  # the tensors are a sliver of the RAM


def test_markers_show_peak_and_threshold_at_their_cells() -> None:
    from ftwatch.views.dashboard.breakdown import Breakdown

    bd = Breakdown(scale=1000, peak=500, threshold=900, threshold_label="90%")
    line = render_markers(bd, 100).plain
    assert line.index("▲") == 49 and line.index("◆") == 89
    assert "peak" in line and "90%" in line


# -- legend ------------------------------------------------------------------------------------
def test_legend_lists_each_part_with_size_and_share_in_bar_order() -> None:
    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    bd = compute_breakdown(view)
    entries = legend_entries(bd, view.peaks, with_share=True, with_peak=False, mono=True)
    assert len(entries) == 10
    assert entries[0].plain.startswith("██ weights")
    assert "15.0 GiB" in entries[0].plain and "19%" in entries[0].plain
    lines = layout_legend(entries, 116)
    assert len(lines) == 4  # three columns of 29 cells and gaps of 3 fit in 116
    for row, line in enumerate(lines):  # row by row, left to right: the bar's order
        chunk = entries[row * 3:row * 3 + 3]
        positions = [line.plain.index(entry.plain) for entry in chunk]
        assert positions == sorted(positions) and positions[0] == 0


# -- worker log tail ---------------------------------------------------------------------------
def test_text_tail_follows_partial_lines_progress_bars_and_escapes(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    tail = TextTail(path)
    assert not tail.poll() and tail.tail(5) == []
    path.write_bytes(b"one\ntw")
    assert tail.poll()
    assert tail.tail(5) == ["one", "tw"]
    with path.open("ab") as f:
        f.write(b"o\n\x1b[31mred\x1b[0m\n 10%|#  |\r 50%|#####|")
    tail.poll()
    assert tail.tail(5) == ["one", "two", "red", " 50%|#####|"]
    assert tail.tail(2) == ["red", " 50%|#####|"]
    path.write_bytes(b"new\n")  # rewritten: read again from the start
    tail.poll()
    assert tail.tail(5) == ["new"]


def test_text_tail_reads_only_the_end_of_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    path.write_text("".join(f"line {i}\n" for i in range(200_000)))
    tail = TextTail(path, initial_bytes=4096)
    tail.poll()
    assert tail.tail(1) == ["line 199999"]
    assert len(tail.lines) < 1000


def test_clean_line() -> None:
    assert clean_line("a\rb\r") == "b"
    assert clean_line("\x1b[1mbold\x1b[0m\tx\x07") == "bold    x"


# -- feed ----------------------------------------------------------------------------------------
class DeadHandle:
    pid = 999999
    run_dir = Path(".")

    def is_alive(self) -> bool:
        return False

    def returncode(self) -> int:
        return -9


def test_feed_records_a_worker_that_vanished_without_an_exit(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", ending="running")
    log = tmp_path / "events.jsonl"
    log.write_text("".join(lines[:200]))
    feed = RunFeed(log, DeadHandle(), exit_grace=0.0)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while feed.state.exit is None and time.monotonic() < deadline:
        feed.pump()
        time.sleep(0.05)
    view = feed.view()
    assert view.exit["status"] == "failed" and view.exit["by"] == "monitor"
    assert "killed by SIGKILL" in view.exit["message"]
    assert view.summary["status"] == "failed"


def test_feed_marks_a_replay_without_exit_as_killed(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("".join(synthetic_lines("cpu", ending="running")))
    feed = feed_of(log)
    assert feed.state.exit["by"] == "monitor"


def test_feed_reads_a_long_log_in_bounded_batches(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("".join(synthetic_lines("cuda", steps=400)))
    feed = RunFeed(log, batch_bytes=64 * 1024)
    rounds = 0
    while feed.pump():
        rounds += 1
    assert rounds > 3
    assert feed.state.exit["status"] == "finished" and feed.state.step == 400


def test_feed_reports_a_log_of_another_schema(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text('{"v":99,"t":1,"kind":"header"}\n')
    feed = RunFeed(log)
    feed.pump()
    assert "v99" in (feed.view().error or "")


# -- status ------------------------------------------------------------------------------------
def test_status_line_has_the_run_facts() -> None:
    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    text = status_lines(view, 200, live=True).plain
    for piece in ("FINISHED", "llama8b-lora", "meta-llama/Llama-3.1-8B", "step 60/60", "loss 1.548",
                  "steps/s", "elapsed", "NVIDIA H100"):
        assert piece in text
    narrow = status_lines(view, 60, live=True).plain.splitlines()
    assert all(len(line) <= 60 for line in narrow)


def test_a_standing_warning_shows_in_the_status_line() -> None:
    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    view.exit = None
    assert "oom risk" in status_lines(view, 200, live=True).plain.splitlines()[0]
    view.warnings = [*view.warnings, {"code": "oom_risk", "level": "danger", "steps_to_oom": 12, "message": "m"}]
    assert "▲ oom risk: OOM in ~12 steps" in status_lines(view, 200, live=True).plain
    view.warnings = [*view.warnings, {"code": "oom_risk", "level": "ok", "message": "cleared"}]
    assert "oom risk" not in status_lines(view, 200, live=True).plain


def test_status_badges() -> None:
    view = feed_of(FIXTURES / "cuda-oom-loading" / "events.jsonl").view()
    assert badge_for(view, paused=False, live=True) == "oom"
    assert badge_for(view, paused=True, live=True) == "paused"
    assert model_label("/home/a/models/tiny-llama") == "tiny-llama"
    assert model_label("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"


def test_stale_data_is_flagged() -> None:
    view = feed_of(FIXTURES / "cpu-finished" / "events.jsonl").view()
    view.exit = None
    view.last_event_wall = time.monotonic() - 30
    assert "no data for" in status_lines(view, 200, live=True).plain


# -- timeline ----------------------------------------------------------------------------------
def test_downsample_keeps_the_peak_and_the_start() -> None:
    points = [TimelinePoint(t=float(i), step=i, used=i % 97) for i in range(10_000)]
    points[5000].used = 10_000
    small = downsample(points, 100)
    assert len(small) == 100
    assert max(p.used for p in small) == 10_000
    assert small[0].t < 100


def test_series_scale_and_units() -> None:
    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    s = build_series(view.timeline, view.phases, view.capacity, None, True, 80)
    assert s.y_unit == "GiB" and not s.off_scale
    assert set(s.lines) >= {"used", "activations", "weights"}
    assert len(s.x) <= 160 and len(s.phase_starts) == 3
    cpu = feed_of(FIXTURES / "cpu-finished" / "events.jsonl").view()
    s = build_series(cpu.timeline, cpu.phases, cpu.capacity, None, False, 80)
    assert s.off_scale and s.y_unit == "MiB" and "tensors" in s.lines


def test_nice_ticks() -> None:
    assert nice_ticks(81.2) == [0, 25, 50, 75]
    assert nice_ticks(475) == [0, 200, 400]
    assert nice_ticks(0) == [0.0]


def test_encode_roundtrip_of_fixture_kinds() -> None:
    # the fixtures are made of schema events only
    for line in (FIXTURES / "cuda-finished" / "events.jsonl").read_text().splitlines()[:5]:
        import json

        event = json.loads(line)
        assert encode(event["kind"], {k: v for k, v in event.items() if k not in ("v", "t", "kind")},
                      event["t"]).strip() == line


def test_timeline_lines_stay_inside_the_axes_whatever_the_log_says() -> None:
    """A crafted log's extreme values (a category of 2**63-1 bytes far above the process's usage,
    a point stamped before the start) are clamped to the axes: plotext would walk every cell to
    such a point and stall the frame."""
    t0 = 1_000.0
    points = [TimelinePoint(t0 + i, i, 2 * GiB, {"weights": 1 * GiB, "activations": 2**63 - 1 if i == 5 else 0})
              for i in range(10)]
    points.insert(3, TimelinePoint(0.0, 3, 2 * GiB, {"weights": 1 * GiB}))  # time 0, long before t0
    s = build_series(points, [], 8 * GiB, None, True, 80, t0=t0)
    x_max = (points[-1].t - t0)  # seconds: the span is under three minutes
    assert s.x_unit == "s" and all(0.0 <= x <= x_max for x in s.x)
    assert s.lines and all(0.0 <= v <= s.y_max for values in s.lines.values() for v in values)
    assert max(s.lines["activations"]) == s.y_max  # the extreme point sits at the top, not beyond


def test_markers_take_one_span_per_run_of_cells_in_one_style() -> None:
    """The marker line is drawn at every step: a span per cell made its conversion to strips cost a
    segment per cell. The cells keep their styles."""
    from ftwatch.views.dashboard.breakdown import Breakdown

    bd = Breakdown(scale=1000, peak=500, threshold=900, threshold_label="90%")
    line = render_markers(bd, 100)
    assert len(line.spans) == 2  # the peak's glyph and label, the threshold's
    peak = next(span for span in line.spans if span.start == 49)
    assert line.plain[peak.start:peak.end].startswith("▲ peak") and peak.style.bold
    limit = next(span for span in line.spans if line.plain[span.start] == "◆")
    assert "90%" in line.plain[limit.start:limit.end]
    assert not any(line.plain[i] != " " for i in range(100) if not any(s.start <= i < s.end for s in line.spans))


def test_a_flat_run_of_a_timeline_line_keeps_its_first_and_last_point() -> None:
    x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert without_flat_interiors(x, [1, 1, 1, 2, 2, 2, 2, 3]) == ([0.0, 2.0, 3.0, 6.0, 7.0], [1, 1, 2, 2, 3])
    assert without_flat_interiors(x[:3], [5, 5, 5]) == ([0.0, 2.0], [5, 5])
    rising = [float(v) for v in range(8)]
    assert without_flat_interiors(x, rising) == (x, rising)
    assert without_flat_interiors([], []) == ([], [])


async def test_the_chart_draws_the_same_cells_without_the_flat_interiors(monkeypatch: pytest.MonkeyPatch) -> None:
    """plotext joins consecutive points through every cell between them: the chart of a run whose
    weights hold still is the same with the points inside the flat runs left out, and plotext gets
    far fewer points."""
    from textual.app import App, ComposeResult

    from ftwatch.views.dashboard.widgets import timeline

    view = feed_of(FIXTURES / "cuda-finished" / "events.jsonl").view()
    series = build_series(view.timeline, view.phases, view.capacity, None, True, 100)
    handed: list[int] = []

    class Chart(App[None]):
        def compose(self) -> ComposeResult:
            yield timeline.TimelinePlot()

    app = Chart()
    async with app.run_test(size=(110, 24)) as pilot:
        chart = app.query_one(timeline.TimelinePlot)
        chart.show(series)
        await pilot.pause()
        thinned = chart.render()
        original = timeline.without_flat_interiors

        def counted(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
            kept = original(x, y)
            handed.append(len(kept[0]))
            return kept

        monkeypatch.setattr(timeline, "without_flat_interiors", counted)
        chart.render()
        monkeypatch.setattr(timeline, "without_flat_interiors", lambda x, y: (x, y))
        full = chart.render()
    assert thinned.plain == full.plain and thinned.spans == full.spans
    assert sum(handed) < 0.8 * len(series.x) * len(series.lines), (sum(handed), len(series.x) * len(series.lines))
