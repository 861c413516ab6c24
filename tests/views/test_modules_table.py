"""The module table as text (``ftwatch replay --modules``, ``ftwatch estimate --by-module``): its
figures against the raw payload summed here, its width, its bars, its sorts, hostile payloads.

The payload is the ``modules`` event of tests/fixtures/logs/modules-tiny (a recorded run of the worker
on the bundled tiny config: 4 steps on a CPU; read here as JSON, not through the fold), whose byte
counts are the tiny Llama's shapes (hidden 64, intermediate 176,
vocabulary 512, 2 layers, LoRA r 8 on q and v, fp32; batch 4 x 64 tokens).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from conftest import FIXTURES_ROOT
from ftwatch.views.headless import modules_table
from ftwatch.views.headless.modules_table import (
    MODULE_CATEGORIES,
    NOT_YET,
    OFF,
    block_rows,
    layer_rows,
    no_modules_reason,
    render_modules_table,
    sort_rows,
)

CELL = re.compile(r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)|<1%|\d+%|(?<= )-(?= |$)|█+")
LOG = FIXTURES_ROOT / "logs" / "modules-tiny" / "events.jsonl"


def fixture_event() -> dict[str, Any]:
    events = [json.loads(line) for line in LOG.read_text().splitlines()]
    return [e for e in events if e["kind"] == "modules"][-1]


def size3(n: int) -> str:
    """Three significant figures in the largest binary unit under 1000 (written here, not imported)."""
    value, step = float(n), 0
    while value >= 1000 and step < 4:
        value, step = value / 1024, step + 1
    unit = ("B", "KiB", "MiB", "GiB", "TiB")[step]
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.2f} {unit}" if value < 10 else (f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}")


def row_of(text: str, label: str) -> list[str]:
    """The cells of the table row that starts with ``label``: the label, sizes, dashes, shares, the bar."""
    for line in text.splitlines():
        if line.startswith(label + " "):
            return [label, *CELL.findall(line[len(label):])]
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_the_fixture_holds_the_tiny_llamas_weights_by_hand_count() -> None:
    event = fixture_event()
    h, inter, vocab = 64, 176, 512
    layer_weights = 4 * h * h * 4 + 3 * h * inter * 4 + 2 * h * 4  # q k v o, gate up down, two RMSNorms; fp32
    layer_lora = 2 * (8 * h + h * 8) * 4  # A (r x h) and B (h x r) on q and v
    for layer in event["layers"]:
        assert layer["bytes"]["weights"] == layer_weights and layer["bytes"]["lora"] == layer_lora
        assert layer["input"] == 4 * 64 * h * 4  # one hidden-state tensor: batch x seq x hidden
    blocks = {b["name"]: b["bytes"] for b in event["blocks"]}
    assert blocks["model.embed_tokens"]["weights"] == blocks["lm_head"]["weights"] == vocab * h * 4
    # Internally consistent: blocks sum to the totals, the totals are the snapshot's of the same step.
    for c in MODULE_CATEGORIES:
        assert sum(b.get(c, 0) for b in blocks.values()) == event["totals"].get(c, 0)
    snapshot = next(json.loads(line) for line in LOG.read_text().splitlines()
                    if '"kind":"snapshot"' in line and f'"step":{event["step"]},' in line)
    assert {c: v for c, v in snapshot["categories"].items() if v} == event["totals"]


@pytest.mark.parametrize("width", [80, 120])
def test_every_row_shows_its_bytes_total_and_share_of_the_whole(width: int) -> None:
    event = fixture_event()
    text = render_modules_table(event, width)
    whole = sum(event["totals"].values())
    assert "measured at step 1 (training)" in text and "batch 4 × seq 64" in text and "float32" in text
    for block in event["blocks"]:
        cells = row_of(text, block["name"])
        total = sum(block["bytes"].values())
        expected = [size3(block["bytes"][c]) if block["bytes"].get(c) else "-" for c in MODULE_CATEGORIES]
        share = f"{100 * total / whole:.0f}%" if total / whole >= 0.005 else "<1%"
        assert cells[1:] == [*expected, size3(total), share], (block["name"], cells)
    for layer in event["layers"]:
        cells = row_of(text, f"layer {layer['index']}")
        total = sum(layer["bytes"].values())
        assert cells[1:6] == [size3(layer["bytes"][c]) if layer["bytes"].get(c) else "-" for c in MODULE_CATEGORIES]
        assert cells[6:8] == [size3(total), f"{100 * total / whole:.0f}%"]
    assert row_of(text, "all")[6:8] == [size3(whole), "100%"]


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
def test_no_line_is_wider_than_asked_and_total_and_share_stay(width: int) -> None:
    event = fixture_event()
    text = render_modules_table(event, width)
    assert max(len(line) for line in text.splitlines()) <= width
    heading = next(line for line in text.splitlines() if line.startswith("block"))
    assert "total" in heading and "share" in heading
    if width >= 80:  # the whole table at 80 columns: every category
        assert all(short in heading for short in ("weights", "lora", "grads", "optim", "activ"))
    if width == 60:  # narrower: the categories with the fewest bytes go first
        assert "activ" in heading and "weights" in heading and "lora" not in heading
    if width == 40:  # the largest category alone
        assert "activ" in heading and "weights" not in heading


def payload_with_layers(totals: list[int]) -> dict[str, Any]:
    layers = [{"index": i, "path": f"model.layers.{i}", "bytes": {"activations": t} if t else {}, "parts": {}}
              for i, t in enumerate(totals)]
    total = sum(totals)
    return {"totals": {"activations": total}, "blocks": [{"name": "model.layers", "bytes": {"activations": total}}],
            "layers": layers}


def test_each_layers_bar_is_its_total_against_the_largest_layers() -> None:
    text = render_modules_table(payload_with_layers([800, 400, 200, 1, 0]), 80)
    bars = {}
    for line in text.splitlines():
        match = re.match(r"(layer \d+)\s.*?([█]*)$", line)
        if match:
            bars[match.group(1)] = len(match.group(2))
    full = bars["layer 0"]
    assert full >= 8
    assert bars["layer 1"] == round(full / 2) and bars["layer 2"] == round(full / 4)
    assert bars["layer 3"] == 1 and bars["layer 4"] == 0  # a tiny layer shows; an empty one does not


def test_sorts_keep_module_order_for_ties() -> None:
    rows = layer_rows(payload_with_layers([5, 9, 9, 1]))
    assert [r.index for r in sort_rows(rows, "module")] == [0, 1, 2, 3]
    assert [r.index for r in sort_rows(rows, "total")] == [1, 2, 0, 3]
    assert [r.index for r in sort_rows(rows, "activations")] == [1, 2, 0, 3]
    event = fixture_event()
    by_total = [r.label for r in sort_rows(block_rows(event), "total")]
    expected = [b["name"] for b in sorted(event["blocks"], key=lambda b: -sum(b["bytes"].values()))]
    assert by_total == expected


def test_names_from_a_log_cannot_reach_the_terminal_as_controls() -> None:
    event = fixture_event()
    event["blocks"][0]["name"] = "evil\x1b]0;owned\x07\x1b[2J[bold]x\u202e"
    event["context"]["dtype"] = "\x1b[31mred"
    text = render_modules_table(event, 80)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil[bold]x" in text or "…" in text


@pytest.mark.parametrize("junk", [
    {"totals": "x", "blocks": "y", "layers": 3},
    {"blocks": [None, 1, {"name": 5, "bytes": {"weights": "12", "activations": -4, "grads": True}}]},
    {"layers": [{"index": "a", "bytes": {"activations": float("nan")}, "parts": {"mlp": [1]}}, None]},
    {},
])
def test_a_malformed_payload_gives_a_table_not_an_error(junk: dict[str, Any]) -> None:
    text = render_modules_table(junk, 80)
    assert text.startswith("Memory by module")


def test_an_estimate_payload_says_it_is_estimated() -> None:
    event = fixture_event()
    estimate = {k: v for k, v in event.items() if k not in ("v", "t", "kind", "step", "phase")}
    assert "Memory by module: estimated" in render_modules_table(estimate, 80)


def test_the_advice_is_printed_under_the_table() -> None:
    from ftwatch.analysis.module_advice import module_advice

    event = fixture_event()
    advice = module_advice(event)
    assert advice, "the tiny model without checkpointing gets checkpointing advice"
    text = render_modules_table(event, 80)
    below = text[text.index("\nAdvice\n"):]
    for item in advice:
        assert " ".join(item.title.split()) in " ".join(below.split())
    assert max(len(line) for line in text.splitlines()) <= 80


def test_advice_that_fails_costs_nothing_but_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    import ftwatch.analysis.module_advice as advice_module

    def broken(payload: dict, needed_bytes: int | None = None) -> list:
        raise RuntimeError("boom")

    monkeypatch.setattr(advice_module, "module_advice", broken)
    text = render_modules_table(fixture_event(), 80)
    assert "Advice" not in text and "layer 1" in text
    assert modules_table.advice_lines(fixture_event()) == []


def test_why_there_are_no_module_figures() -> None:
    assert no_modules_reason({"modules": "off"}, 5, False) == OFF
    assert no_modules_reason({}, 0, False) == NOT_YET
    assert no_modules_reason({}, 1, False) == NOT_YET  # step 1's event follows its snapshot
    assert OFF in no_modules_reason({}, 3, False)  # training went on past the first measured step
    assert "before its first measured training step" in no_modules_reason({}, 0, True)
    assert OFF in no_modules_reason({}, 60, True) and "without it" in no_modules_reason({}, 60, True)
