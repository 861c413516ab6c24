"""The CPU true peak on screen (issue 13 item 1, issue 15 item 2): a CPU log whose measured steps
carry ``tensor_peak`` and ``tensor_peak_split`` draws the split at the peak (``other`` included)
with the true peak's value; the state fold, the summary and the headless report carry it too.

The split's bytes are set here by hand; the sizes as text are worked out by hand (three
significant digits, binary units)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
from test_dashboard_app import BIG, FIXTURES, SMALL, make_app, region_text, wait_for, wait_for_end
from test_dashboard_parts import feed_of

from ftwatch.runlog.event_fields import check_event
from ftwatch.runlog.state import RunState
from ftwatch.views.dashboard.breakdown import compute_breakdown
from ftwatch.views.dashboard.widgets.membar import ZoomBar, render_markers
from ftwatch.views.headless.report import ProgressPrinter, summary_text

CPU_LOG = FIXTURES / "cpu-finished" / "events.jsonl"
#: The split at the peak on the measured steps (every 10th): the fixture's weights, lora and
#: optimizer, no gradient yet, the activations but the loss's own 4100 bytes, and 6 MiB + 8 other.
SPLIT = {"weights": 664896, "lora": 16384, "grads": 0, "optimizer": 32800, "activations": 2578440 - 4100,
         "other": 6 * 2**20 + 8}
PEAK = 664896 + 16384 + 32800 + 2574340 + 6291464  # 9,579,884 bytes
PEAK_TEXT, OTHER_TEXT = "9.14 MiB", "6.00 MiB"  # 9579884 / 2**20 = 9.136; 6291464 / 2**20 = 6.000008
REPORT_PEAK, REPORT_OTHER = "9.1 MiB", "6.0 MiB"  # the headless report: one decimal


def measured_log(tmp_path: Path) -> Path:
    """The CPU fixture with the peak meter's fields on the snapshots of steps 10, 20, ... 60."""
    run = tmp_path / "cpu-true-peak"
    run.mkdir()
    lines = []
    for line in CPU_LOG.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "snapshot" and event.get("step") and event["step"] % 10 == 0:
            event["tensor_peak"], event["tensor_peak_split"] = PEAK, dict(SPLIT)
            assert check_event(event) is None
        lines.append(json.dumps(event))
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    (run / "worker.log").write_text("")
    return run / "events.jsonl"


def test_the_hand_worked_sizes() -> None:
    assert PEAK == sum(SPLIT.values()) == 9579884
    assert round(PEAK / 2**20, 2) == 9.14 and round(SPLIT["other"] / 2**20, 2) == 6.00


def test_the_fields_are_checked() -> None:
    bad = {"kind": "snapshot", "t": 1.0, "tensor_peak": -1}
    assert check_event(bad) is not None
    assert check_event({"kind": "snapshot", "t": 1.0, "tensor_peak_split": {"other": "x"}}) is not None


def test_the_state_folds_the_largest_true_peak(tmp_path: Path) -> None:
    state = RunState()
    state.apply_all([json.loads(line) for line in measured_log(tmp_path).read_text().splitlines()])
    assert state.tensor_peak == PEAK and state.tensor_peak_split == SPLIT and state.tensor_peak_step == 10
    assert state.last_tensor_peak is not None and state.last_tensor_peak["step"] == 60
    assert state.summary()["tensor_peak_bytes"] == {**SPLIT, "total": PEAK, "step": 10}
    text = summary_text(state)
    assert f"true peak of live tensors (step 10): {REPORT_PEAK}" in text
    assert re.search(rf"other {re.escape(REPORT_OTHER)}", text), text


def test_the_step_lines_show_the_true_peak(tmp_path: Path) -> None:
    out = io.StringIO()
    reporter = ProgressPrinter(out, every=10)
    state = RunState()
    for line in measured_log(tmp_path).read_text().splitlines():
        event = json.loads(line)
        state.apply(event)
        reporter.handle(state, event)
    step_lines = [line for line in out.getvalue().splitlines() if "] step 20/" in line]
    assert step_lines and step_lines[0].endswith(f"| true peak {REPORT_PEAK}")


def test_a_live_view_draws_the_latest_measured_step() -> None:
    view = feed_of(CPU_LOG).view()
    latest = {"kind": "snapshot", "step": 40, "tensor_peak": 1000,
              "tensor_peak_split": {"weights": 600, "activations": 300, "other": 100}}
    bd = compute_breakdown(dataclasses.replace(view, tensor_peak=latest, summary=None))
    assert bd.true_peak == 1000 and bd.true_peak_step == 40
    assert {p.name: p.bytes for p in bd.tensor_parts} == {"weights": 600, "lora": 0, "grads": 0, "optimizer": 0,
                                                          "activations": 300, "other": 100}
    assert compute_breakdown(dataclasses.replace(view, tensor_peak=None, summary=None)).true_peak is None


def test_the_cpu_bar_is_the_split_at_the_true_peak(tmp_path: Path) -> None:
    bd = compute_breakdown(feed_of(measured_log(tmp_path)).view())
    assert bd.true_peak == PEAK and bd.true_peak_step == 10  # an ended run: its largest, first reached at 10
    names = [p.name for p in bd.parts]
    assert names == ["weights", "lora", "grads", "optimizer", "activations", "other", "process_rest"]
    assert {p.name: p.bytes for p in bd.tensor_parts} == SPLIT
    assert bd.tensor_total == PEAK
    line = render_markers(bd, 118).plain
    assert f"true peak {PEAK_TEXT}" in line and "△" in line


def test_without_the_fields_the_cpu_bar_is_as_before() -> None:
    bd = compute_breakdown(feed_of(CPU_LOG).view())
    assert bd.true_peak is None
    assert "other" not in [p.name for p in bd.parts]


@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_the_true_peak_and_other_are_on_screen(tmp_path: Path, size) -> None:
    log = measured_log(tmp_path)
    app = make_app(log, None)
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        await wait_for(pilot, lambda: "true peak" in region_text(app, app.query_one(ZoomBar)))
        assert f"true peak {PEAK_TEXT}" in region_text(app, app.query_one(ZoomBar))
        memory = region_text(app, app.w_memory)
        assert re.search(rf"other +{re.escape(OTHER_TEXT)}", memory), memory
        assert re.search(r"grads +0 B", memory), memory


def test_the_report_gives_the_estimates_other_a_row_so_both_columns_add_up(tmp_path: Path) -> None:
    events = [json.loads(line) for line in measured_log(tmp_path).read_text().splitlines()]
    state = RunState()
    state.apply_all(events)
    peaks = state.summary()["peak_bytes"]
    guess = {name: peaks[name] for name in ("weights", "lora", "grads", "optimizer", "activations")}
    guess["other"] = 3 * 2**20
    guess["total"] = sum(guess.values())
    state.apply({"v": 1, "t": events[1]["t"], "kind": "estimate", "verdict": "fits", "estimate_bytes": guess})
    rows = {line.split()[0]: line for line in summary_text(state).splitlines()
            if line.startswith("  ") and line.split()[0] in guess}
    assert list(rows) == [*guess]  # other before the total, as in the estimate
    assert rows["other"].split()[1] == "–" and "in the true peak below" in rows["other"]
    assert rows["other"].endswith("3.0 MiB")
    assert rows["total"].endswith(f"{guess['total'] / 2**20:.1f} MiB")
