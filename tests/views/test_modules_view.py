"""The module view (key ``m``) driven through Textual's Pilot: at 80x24 and 120x36, in a replay and
in a live run; its figures read back from the screen and checked against the log's ``modules``
event summed here (tests/fixtures/logs/modules-tiny, see tests/views/test_modules_table.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_app import (
    BIG,
    FIXTURES,
    SMALL,
    FakeHandle,
    append,
    eventually,
    live_dir,
    make_app,
    screen_text,
    wait_for,
    wait_for_end,
)
from test_modules_table import size3

from ftwatch.runlog.module_tree import LAYER_PARTS, MODULE_CATEGORIES
from ftwatch.views.dashboard.modules_screen import ModulesScreen
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.screens import HelpScreen
from ftwatch.views.dashboard.widgets.modules import ModuleTable

LOG = FIXTURES / "modules-tiny" / "events.jsonl"
CELL = re.compile(r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)|<1%|\d+%|(?<= )-(?= |$)")


def events(path: Path = LOG) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def modules_event() -> dict[str, Any]:
    return [e for e in events() if e["kind"] == "modules"][-1]


def screen_row(app, label: str) -> list[str]:
    """The figures on the screen row whose name (after an indent or a ▸/▾) is ``label``."""
    for line in screen_text(app).splitlines():
        match = re.match(rf"^\s*(?:[▸▾] )?{re.escape(label)}\s", line)
        if match:
            return CELL.findall(line[match.end() - 1:])
    raise AssertionError(f"no row {label!r} on screen:\n{screen_text(app)}")


def expected_cells(nbytes: dict[str, int], whole: int) -> list[str]:
    total = sum(nbytes.values())
    share = "<1%" if 0 < total / whole < 0.005 else f"{100 * total / whole:.0f}%"
    return [*(size3(nbytes[c]) if nbytes.get(c) else "-" for c in MODULE_CATEGORIES), size3(total), share]


async def open_view(pilot) -> ModulesScreen:
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ModulesScreen))
    return pilot.app.screen


@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_m_shows_every_block_and_layer_with_their_figures(size) -> None:
    event = modules_event()
    whole = sum(event["totals"].values())
    app = make_app(LOG, None, feed=ReplayFeed(LOG, "max"))
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        await open_view(pilot)

        def shown() -> None:
            text = screen_text(app)
            assert "measured at step 1 (training)" in text and "batch 4 × seq 64" in text  # the caption
            for block in event["blocks"]:  # names without the model's "model." prefix
                assert screen_row(app, block["name"].removeprefix("model.")) == expected_cells(block["bytes"], whole)
            for layer in event["layers"]:
                assert screen_row(app, f"layer {layer['index']}") == expected_cells(layer["bytes"], whole)
            footer = text.rstrip("\n").splitlines()[-1]
            assert "Back" in footer and "Sort" in footer and "Open layer" in footer
            assert max(len(line.rstrip()) for line in text.splitlines()) <= size[0]

        await eventually(pilot, shown)
        table = app.screen.query_one(ModuleTable)
        assert table.bar_width >= 4  # a bar per layer, even at 80 columns
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ModulesScreen))
        await eventually(pilot, lambda: _assert("m Modules" in screen_text(app).splitlines()[-1]))


def _assert(condition: bool) -> None:
    assert condition


async def test_enter_opens_a_layer_into_its_parts_and_s_sorts() -> None:
    event = modules_event()
    whole = sum(event["totals"].values())
    layer0 = event["layers"][0]
    app = make_app(LOG, None, feed=ReplayFeed(LOG, "max"))
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        screen = await open_view(pilot)
        table = screen.query_one(ModuleTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        keys = [line.key for line in table.lines]
        for _ in range(keys.index("l:0")):
            await pilot.press("down")
        await pilot.press("enter")
        await wait_for(pilot, lambda: 0 in table.expanded)
        parts = [p for p in LAYER_PARTS if p in layer0["parts"]]
        assert parts and sum(sum(v.values()) for v in layer0["parts"].values()) == sum(layer0["bytes"].values())

        def opened() -> None:
            for part in parts:
                assert screen_row(app, part) == expected_cells(layer0["parts"][part], whole)
            assert "▾ layer 0" in screen_text(app) and "▸ layer 1" in screen_text(app)

        await eventually(pilot, opened)
        await pilot.press("s")  # largest total first: blocks, the layers under theirs, the parts under their layer
        await wait_for(pilot, lambda: table.sort == "total")
        blocks = sorted(event["blocks"], key=lambda b: -sum(b["bytes"].values()))
        shown_blocks = [line.row.path for line in table.lines if line.depth == 0]
        assert shown_blocks == [b["name"] for b in blocks]
        shown_parts = [line.row.label for line in table.lines if line.depth == 2]
        assert shown_parts == sorted(parts, key=lambda p: -sum(layer0["parts"][p].values()))
        await eventually(pilot, lambda: _assert("largest total first" in screen_text(app)))
        assert table.current() is not None and table.current().key == "l:0"  # the cursor stayed on its row
        await pilot.press("enter")
        await wait_for(pilot, lambda: 0 not in table.expanded)
        assert all(line.depth < 2 for line in table.lines)
        await pilot.press("m")  # m closes it too
        await wait_for(pilot, lambda: not isinstance(app.screen, ModulesScreen))


async def test_the_table_fits_the_terminal_again_after_a_resize() -> None:
    event = modules_event()
    whole = sum(event["totals"].values())
    app = make_app(LOG, None, feed=ReplayFeed(LOG, "max"))
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        screen = await open_view(pilot)
        table = screen.query_one(ModuleTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        narrow = table.bar_width
        await pilot.resize_terminal(*BIG)
        await wait_for(pilot, lambda: table.bar_width > narrow)
        await pilot.resize_terminal(60, 20)  # narrower than the table: the smallest categories go, not the total

        def fits() -> None:
            text = screen_text(app)
            heading = next(line for line in text.splitlines() if line.startswith("module"))
            assert "total" in heading and "share" in heading and "activ" in heading
            assert "lora" not in heading  # the smallest (tied with grads: the first of the two goes)
            cells = screen_row(app, "layer 1")
            layer = event["layers"][1]["bytes"]
            assert cells[-2:] == [size3(sum(layer.values())), f"{100 * sum(layer.values()) / whole:.0f}%"]

        await eventually(pilot, fits)


@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_a_log_without_modules_says_why_in_one_line(size) -> None:
    log = FIXTURES / "cpu-finished" / "events.jsonl"
    app = make_app(log, None, feed=ReplayFeed(log, "max"))
    async with app.run_test(size=size) as pilot:
        await wait_for_end(pilot)
        await open_view(pilot)

        def said() -> None:
            flat = " ".join(screen_text(app).split())
            assert "No module figures:" in flat and "module attribution is off ([monitor] modules)" in flat

        await eventually(pilot, said)


async def test_a_live_run_shows_the_figures_once_its_first_measured_step_wrote_them(tmp_path: Path) -> None:
    lines = LOG.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"kind":"modules"' in line)
    run = live_dir(tmp_path, lines[:cut])
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.step == 1)
        await open_view(pilot)
        await eventually(pilot, lambda: _assert("measured on the first measured training step" in screen_text(app)))
        append(run, [lines[cut]])
        event = modules_event()
        whole = sum(event["totals"].values())
        await eventually(pilot, lambda: _assert(
            screen_row(app, "layer 1") == expected_cells(event["layers"][1]["bytes"], whole)))


async def test_a_live_run_past_its_first_step_without_figures_has_attribution_off(tmp_path: Path) -> None:
    lines = [line for line in LOG.read_text().splitlines(keepends=True) if '"kind":"modules"' not in line]
    cut = next(i for i, line in enumerate(lines) if '"kind":"snapshot"' in line and '"step":3,' in line)
    run = live_dir(tmp_path, lines[:cut + 1])
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.step == 3)
        await open_view(pilot)
        await eventually(pilot, lambda: _assert(
            "after 3 steps: module attribution is off ([monitor] modules)" in " ".join(screen_text(app).split())))


async def test_help_lists_the_module_view() -> None:
    app = make_app(LOG, None, feed=ReplayFeed(LOG, "max"))
    async with app.run_test(size=SMALL) as pilot:
        await wait_for_end(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "memory by module" in screen_text(app)
