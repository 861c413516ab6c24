"""The CPU view of the memory panel (issue 15, item 2): the bar is the process (its RSS), every
tensor category keeps a cell, and the bar's text keeps its figures at 80 columns.

Expected bytes and cells are computed here from the fixture's events, not from the dashboard's
code; the sizes as text are worked out by hand below (and checked against the log's bytes).
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_app import (
    BIG,
    FIXTURES,
    SMALL,
    bar_runs_from_screen,
    make_app,
    region_text,
    replay_dir,
    wait_for,
    wait_for_end,
)
from test_dashboard_parts import feed_of

from ftwatch.views.dashboard.breakdown import Breakdown, Part, compute_breakdown
from ftwatch.views.dashboard.palette import LOOKS, TRACK
from ftwatch.views.dashboard.widgets.membar import MemoryBar, ZoomBar, render_bar, render_markers

CPU_LOG = FIXTURES / "cpu-finished" / "events.jsonl"
TENSORS = ("weights", "lora", "grads", "optimizer", "activations")

#: The fixture's last figures as the dashboard should write them, worked out by hand (three
#: significant digits, binary units): checked against the log's bytes in the first test.
BY_HAND = {"weights": "649 KiB", "lora": "16.0 KiB", "grads": "16.0 KiB", "optimizer": "32.0 KiB",
           "activations": "2.46 MiB", "rest of RSS": "377 MiB"}
PEAK_RSS, TENSOR_TOTAL = "380 MiB", "3.16 MiB"


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cpu_facts() -> dict[str, Any]:
    """From the log: the last snapshot's tensors, the last and the largest sample RSS, the RAM."""
    evs = events(CPU_LOG)
    cats = [e for e in evs if e["kind"] == "snapshot"][-1]["categories"]
    rss = [e["rss"] for e in evs if e["kind"] == "sample" and e.get("rss") is not None]
    return {"tensors": {c: cats[c] for c in TENSORS}, "rss": rss[-1], "peak_rss": max(rss),
            "ram": evs[0]["device"]["capacity"]}


def reference_cells(sizes: list[int], scale: int, width: int, minimum: bool = True) -> list[int]:
    """Cells per part: boundaries at the cumulative share rounded half up; then (``minimum``) each part
    with bytes and no cell takes one from the widest part (the first of equals), else from the empty rest."""
    cells, previous, total = [], 0, 0
    for nbytes in sizes:
        total += nbytes
        boundary = min(int(Fraction(total * width, scale) + Fraction(1, 2)), width)
        cells.append(boundary - previous)
        previous = boundary
    for i, nbytes in enumerate(sizes):
        if minimum and nbytes > 0 and cells[i] == 0:
            widest = cells.index(max(cells))
            if cells[widest] > 1:
                cells[widest], cells[i] = cells[widest] - 1, 1
            elif sum(cells) < width:
                cells[i] = 1
    return cells


# -- the figures ---------------------------------------------------------------------------------
def test_the_hand_worked_sizes_are_the_logs_bytes() -> None:
    f = cpu_facts()
    t = f["tensors"]
    assert round(t["weights"] / 1024) == 649
    assert t["lora"] == t["grads"] == 16 * 1024 and round(t["optimizer"] / 1024, 1) == 32.0
    assert round(t["activations"] / 2**20, 2) == 2.46
    assert round((f["rss"] - sum(t.values())) / 2**20) == 377
    assert round(f["peak_rss"] / 2**20) == 380 and round(sum(t.values()) / 2**20, 2) == 3.16


def test_cpu_breakdown_is_the_process_with_the_tensors_as_parts_of_it() -> None:
    f = cpu_facts()
    bd = compute_breakdown(feed_of(CPU_LOG).view())
    tensor_total = sum(f["tensors"].values())
    assert [(p.name, p.bytes) for p in bd.parts] == [*f["tensors"].items(),
                                                       ("process_rest", f["rss"] - tensor_total)]
    assert bd.drawn_scale == max(f["rss"], f["peak_rss"])  # the bar: the process, not the RAM
    assert bd.scale == f["ram"] and bd.capacity_label == "RAM"  # the RAM: still what the title states
    assert bd.peak == f["peak_rss"] and bd.peak_label == "peak RSS"  # named for what it is
    assert bd.threshold is not None and bd.threshold > bd.drawn_scale  # the RAM's warning line is off this bar
    assert bd.needs_zoom


@pytest.mark.parametrize("width", [78, 118, 6])
def test_every_category_keeps_a_cell_on_the_main_bar(width: int) -> None:
    f = cpu_facts()
    bd = compute_breakdown(feed_of(CPU_LOG).view())
    sizes = [*f["tensors"].values(), f["rss"] - sum(f["tensors"].values())]
    expected = reference_cells(sizes, max(f["rss"], f["peak_rss"]), width)
    text, segments = render_bar(bd.parts, bd.drawn_scale, width, mono=True, labels=False)
    assert [s.cells for s in segments] == expected
    assert all(n >= 1 for n in expected)  # weights, lora, grads, optimizer, activations, the rest
    assert text.plain == "".join(LOOKS[s.name].glyph * s.cells for s in segments) + TRACK.glyph * (width - sum(expected))
    if width >= 78:  # proportional, the tensors would fill less than one cell of the process's RSS
        assert Fraction(sum(f["tensors"].values()) * width, max(f["rss"], f["peak_rss"])) < 1


@pytest.mark.parametrize("width", [61, 101])
def test_the_tensors_bar_keeps_grads_and_the_weights_value(width: int) -> None:
    f = cpu_facts()
    bd = compute_breakdown(feed_of(CPU_LOG).view())
    sizes = list(f["tensors"].values())
    expected = reference_cells(sizes, sum(sizes), width)
    proportional = reference_cells(sizes, sum(sizes), width, minimum=False)
    if width == 61:  # the tensors bar at 80 columns: grads and optimizer would round to nothing
        assert proportional[2] == proportional[3] == 0
    text, segments = render_bar(bd.tensor_parts, bd.tensor_total, width, mono=True)
    assert [s.cells for s in segments] == expected and all(n >= 1 for n in expected)
    weights = next(s for s in segments if s.name == "weights")
    assert BY_HAND["weights"] in text.plain[weights.start:weights.start + weights.cells]


def test_the_peak_keeps_its_value_at_80_columns_and_the_ram_line_is_left_off() -> None:
    bd = compute_breakdown(feed_of(CPU_LOG).view())
    line = render_markers(bd, 78).plain
    assert f"peak RSS {PEAK_RSS} ▲" in line
    assert line.rstrip().endswith("▲") and "◆" not in line  # the peak is the bar's end; 85% of the RAM is not on it


@pytest.mark.parametrize("width", [78, 40])
def test_a_peak_next_to_the_threshold_keeps_its_value(width: int) -> None:
    """The peak close to the end and the threshold just before it (an OOM at 80 columns): the
    peak's label cannot sit beside its glyph, so it is written apart, keyed by the glyph."""
    bd = Breakdown(parts=[Part("weights", 990)], scale=1000, peak=990, threshold=850, threshold_label="85%")
    line = render_markers(bd, width).plain
    peak_col = (2 * 990 * width + 1000) // (2 * 1000) - 1
    assert line[peak_col] == "▲" and line.count("▲") == 2
    assert "▲ peak 990 B" in line and "◆" in line


def test_the_cuda_fixtures_keep_their_scale_and_the_peak_value() -> None:
    for name in ("cuda-finished", "cuda-oom-loading"):
        path = FIXTURES / name / "events.jsonl"
        evs = events(path)
        view = feed_of(path).view()
        bd = compute_breakdown(view)
        assert bd.drawn_scale == bd.scale >= evs[0]["device"]["capacity"]  # the device, as before
        peak = cuda_peak(evs)
        assert bd.peak == peak and bd.peak_label == "peak"
        line = render_markers(bd, 78).plain
        assert re.search(r"peak \d[\d.]* GiB", line), line


def cuda_peak(evs: list[dict[str, Any]]) -> int:
    """The process's peak from the log: NVML's figure for it (else reserved) and the snapshots'
    totals without other processes and free."""
    best = 0
    for e in evs:
        if e["kind"] == "sample":
            nvml, cuda = e.get("nvml") or {}, e.get("cuda") or {}
            used = nvml.get("process", cuda.get("reserved"))
            best = max(best, used or 0)
        elif e["kind"] == "snapshot":
            cats = e.get("categories") or {}
            best = max(best, sum(v for k, v in cats.items() if k not in ("other_processes", "free") and v))
    return best


# -- on screen -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_every_cpu_category_is_on_screen_with_its_value(tmp_path: Path, size) -> None:
    run = replay_dir(tmp_path, "cpu-finished")
    f = cpu_facts()
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        await wait_for(pilot, lambda: "rest of RSS" in region_text(app, app.w_memory))
        memory = region_text(app, app.w_memory)
        for label, value in BY_HAND.items():  # in the legend: the name, then its size
            assert re.search(rf"{re.escape(label)} +{re.escape(value)}", memory), (label, memory)
        assert f"peak RSS {PEAK_RSS} ▲" in memory  # the bar's peak, with its value and its name
        assert "of 23.5 GiB RAM" in app.w_memory.border_title  # the RAM, stated, not the scale
        bar = app.query_one(MemoryBar)
        width = bar.content_region.width
        sizes = [*f["tensors"].values(), f["rss"] - sum(f["tensors"].values())]
        cells = reference_cells(sizes, max(f["rss"], f["peak_rss"]), width)
        names = [*TENSORS, "process_rest"]
        assert bar_runs_from_screen(app, bar) == [(n, c) for n, c in zip(names, cells, strict=True)]
        zoom = app.query_one(ZoomBar)
        caption = f"tensors {TENSOR_TOTAL} "
        assert caption.strip() in region_text(app, zoom)
        tensor_sizes = list(f["tensors"].values())
        zoom_cells = reference_cells(tensor_sizes, sum(tensor_sizes), zoom.content_region.width - len(caption))
        assert bar_runs_from_screen(app, zoom, skip=len(caption)) == list(zip(TENSORS, zoom_cells, strict=True))
        assert BY_HAND["weights"] in region_text(app, zoom)  # the weights' value on the tensors bar


@pytest.mark.parametrize("name", ["cuda-finished", "cuda-oom-loading"])
async def test_the_cuda_peak_keeps_its_value_at_80_columns(tmp_path: Path, name: str) -> None:
    run = replay_dir(tmp_path, name)
    app = make_app(run / "events.jsonl", None)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        peak_gib = cuda_peak(events(run / "events.jsonl")) / 2**30
        expected = f"peak {peak_gib:.1f} GiB"  # both peaks are 10-100 GiB: one decimal
        await wait_for(pilot, lambda: expected in region_text(app, app.query_one(MemoryBar)))
