"""Where inside the model, as text: the rows of a ``modules`` payload and the plain-text table of them.

A ``modules`` payload (the probe's ``modules`` event, or the estimate's ``modules``; its shape is in
:mod:`ftwatch.runlog.module_tree`) becomes :class:`ModuleRow` rows here: its blocks, then one row
per decoder layer with its parts. :func:`render_modules_table` prints them (``ftwatch replay LOG
--modules``, ``ftwatch estimate --by-module``); the dashboard's module view draws the same rows.
Below the table come the advice lines of :mod:`ftwatch.analysis.module_advice` (when it is there).

A payload read from a log is not trusted: a value that is not a byte count counts 0, and every
name goes through :func:`ftwatch.common.safe_text.safe`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_size3
from ftwatch.runlog.module_tree import LAYER_PARTS, MODULE_CATEGORIES

#: Column headings of the categories (at most 6 characters, to fit 80 columns).
SHORT = {"weights": "weights", "lora": "lora", "grads": "grads", "optimizer": "optim", "activations": "activ"}
#: How the rows can be sorted: module order, largest total first, largest activations first.
SORTS = ("module", "total", "activations")
#: A byte column: up to ``9.99 GiB`` / ``999 MiB`` (8 characters) and a space.
SIZE_COLUMN = 9
SHARE_COLUMN = 6
#: The block names' column: as wide as the longest name, within these (longer names lose their start).
MIN_NAME, MAX_NAME = 12, 28
#: The widest bar of a layer's total.
MAX_BAR = 16
BAR = "█"


@dataclass(frozen=True)
class ModuleRow:
    """One row of the module table: a block, a decoder layer, or a part of a layer."""

    kind: str  # "block", "layer" or "part"
    label: str  # what the first column shows (safe text)
    nbytes: dict[str, int]  # bytes per category (absent: 0)
    index: int | None = None  # the layer's index (a part: its layer's)
    path: str = ""  # the module path (a block's name, a layer's path), safe text
    parts: tuple[ModuleRow, ...] = field(default=(), compare=False)  # a layer's parts, in LAYER_PARTS order
    order: int = 0  # position in module order

    @property
    def total(self) -> int:
        """Bytes over every category."""
        return sum(self.nbytes.values())

    def get(self, category: str) -> int:
        """Bytes of one category (0 when absent)."""
        return self.nbytes.get(category, 0)


def byte_count(value: Any) -> int:
    """A byte count from a payload: a non-negative whole number, else 0 (a crafted log's junk)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        return 0
    return int(value)


def byte_dict(values: Any) -> dict[str, int]:
    """The categories of a payload's byte dict, zero ones left out."""
    if not isinstance(values, Mapping):
        return {}
    out = {c: byte_count(values.get(c)) for c in MODULE_CATEGORIES}
    return {c: v for c, v in out.items() if v}


def label_text(value: Any, limit: int = 80) -> str:
    """A name from a payload made safe for a terminal, on one line and at most ``limit`` characters."""
    text = safe(value if isinstance(value, str) else str(value), one_line=True).strip()
    return text[:limit]


def block_rows(payload: Mapping[str, Any]) -> list[ModuleRow]:
    """The payload's top-level blocks, in module order."""
    blocks = payload.get("blocks")
    rows: list[ModuleRow] = []
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        if isinstance(block, Mapping):
            name = label_text(block.get("name", "?")) or "?"
            rows.append(ModuleRow("block", name, byte_dict(block.get("bytes")), path=name, order=i))
    return rows


def layer_rows(payload: Mapping[str, Any]) -> list[ModuleRow]:
    """One row per decoder layer, each with its parts (those with bytes, in :data:`LAYER_PARTS` order)."""
    layers = payload.get("layers")
    rows: list[ModuleRow] = []
    for i, layer in enumerate(layers if isinstance(layers, list) else []):
        if not isinstance(layer, Mapping):
            continue
        index = layer.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else i
        raw_parts = layer.get("parts") if isinstance(layer.get("parts"), Mapping) else {}
        parts = tuple(ModuleRow("part", part, byte_dict(raw_parts.get(part)), index=index, order=j)
                      for j, part in enumerate(LAYER_PARTS) if byte_dict(raw_parts.get(part)))
        rows.append(ModuleRow("layer", f"layer {index}", byte_dict(layer.get("bytes")), index=index,
                              path=label_text(layer.get("path", "")), parts=parts, order=i))
    return rows


def sort_rows(rows: Sequence[ModuleRow], by: str = "module") -> list[ModuleRow]:
    """``rows`` by :data:`SORTS`: ``module`` order, largest ``total`` first, largest ``activations`` first
    (ties keep module order)."""
    if by == "total":
        return sorted(rows, key=lambda r: (-r.total, r.order))
    if by == "activations":
        return sorted(rows, key=lambda r: (-r.get("activations"), r.order))
    return sorted(rows, key=lambda r: r.order)


def grand_total(payload: Mapping[str, Any]) -> int:
    """Bytes over every category of the payload's ``totals`` (else of its blocks)."""
    totals = byte_dict(payload.get("totals"))
    if totals:
        return sum(totals.values())
    return sum(row.total for row in block_rows(payload))


def shown_categories(rows: Sequence[ModuleRow]) -> list[str]:
    """The categories any row has bytes of, in :data:`MODULE_CATEGORIES` order."""
    return [c for c in MODULE_CATEGORIES if any(row.get(c) for row in rows)]


def size_text(n: int | float | None) -> str:
    """Bytes in binary units with three significant digits (``15.0 GiB``, ``530 MiB``); at most 8 characters."""
    return format_size3(n)


def share_text(part: int, whole: int) -> str:
    """A share as a whole percentage (``<1%`` for a tiny non-zero one); empty without a whole."""
    if whole <= 0:
        return ""
    fraction = part / whole
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction * 100:.0f}%"


def bar_cells(value: int, largest: int, width: int) -> int:
    """Cells of a bar of ``value`` against ``largest`` over ``width`` cells: rounded half up, one at
    least for a non-zero value."""
    if largest <= 0 or value <= 0 or width <= 0:
        return 0
    return max(1, min(width, (2 * value * width + largest) // (2 * largest)))


def caption(payload: Mapping[str, Any]) -> str:
    """Where the figures come from: ``measured at step 3 (training) · batch 4 × seq 64 · float32 ·
    checkpointing off`` (no step: the estimate's)."""
    step = payload.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        phase = payload.get("phase")
        where = f"measured at step {step}" + (f" ({label_text(phase, 20)})" if isinstance(phase, str) and phase else "")
    else:
        where = "estimated"
    bits = [where]
    context = payload.get("context") if isinstance(payload.get("context"), Mapping) else {}
    batch, seq = byte_count(context.get("batch")), byte_count(context.get("seq_len"))
    if batch and seq:
        bits.append(f"batch {batch} × seq {seq}")
    if isinstance(context.get("dtype"), str) and context["dtype"]:
        bits.append(label_text(context["dtype"], 20))
    if isinstance(context.get("checkpointing"), bool):
        bits.append("checkpointing " + ("on" if context["checkpointing"] else "off"))
    return " · ".join(bits)


def advice_lines(payload: Mapping[str, Any], width: int = 80, needed_bytes: int | None = None) -> list[str]:
    """The advice of :mod:`ftwatch.analysis.module_advice` on this payload, wrapped to ``width``
    (none when that module is not there, or it fails on this payload)."""
    try:
        from ftwatch.analysis.module_advice import module_advice
    except ImportError:
        return []
    try:
        advice = module_advice(dict(payload), needed_bytes)
    except Exception:  # advice is extra: a payload it cannot read must not cost the table
        return []
    lines: list[str] = []
    for item in advice:
        title = label_text(getattr(item, "title", ""), 200)
        saving = byte_count(getattr(item, "saving_bytes", 0))
        detail = safe(str(getattr(item, "detail", "") or ""), one_line=True).strip()
        head = f"{title}: saves {size_text(saving)}" if saving and "save" not in title.lower() else title
        text = f"{head}. {detail}" if detail else head
        lines += textwrap.wrap(text, width=max(width, 20), initial_indent="- ", subsequent_indent="  ") or ["-"]
    return lines


def fit_categories(categories: list[str], rows: Sequence[ModuleRow], room: int) -> list[str]:
    """Drop the categories with the fewest bytes until the columns fit ``room`` characters."""
    kept = list(categories)
    while kept and len(kept) * SIZE_COLUMN > room:
        smallest = min(kept, key=lambda c: sum(r.get(c) for r in rows))
        kept.remove(smallest)
    return kept


def _cells(row_bytes: Mapping[str, int], categories: Sequence[str]) -> str:
    return "".join(f"{size_text(row_bytes.get(c, 0)) if row_bytes.get(c) else '-':>{SIZE_COLUMN}}"
                   for c in categories)


def _name(text: str, width: int) -> str:
    if len(text) <= width:
        return f"{text:<{width}}"
    keep = max(width - 1, 1)
    return "…" + text[-keep + 1:] if keep > 1 else text[:width]


def render_modules_table(payload: dict, width: int = 80, *, needed_bytes: int | None = None) -> str:
    """The payload as plain text no wider than ``width``: a caption, the blocks (bytes per category,
    total, share of the total), the decoder layers one row each (with a bar of each layer's total
    against the largest layer's), then the advice lines. Categories no row has are left out; on a
    narrow ``width`` the smallest categories go first, the total and share stay."""
    width = max(int(width), 40)
    blocks, layers = block_rows(payload), layer_rows(payload)
    whole = grand_total(payload)
    everything = [*blocks, *layers]
    tail = SIZE_COLUMN + SHARE_COLUMN  # total, share
    categories = fit_categories(shown_categories(everything), everything, width - MIN_NAME - tail)
    longest = max([len(r.label) for r in blocks] + [len("block")])
    name_width = max(min(longest, MAX_NAME, width - tail - len(categories) * SIZE_COLUMN), MIN_NAME)
    lines = textwrap.wrap(f"Memory by module: {caption(payload)}", width=width, subsequent_indent="  ")
    if not everything:
        lines.append("(no modules in this payload)")
        return "\n".join(lines) + "\n"

    def heading(first: str, name_w: int, extra: str = "") -> str:
        cols = "".join(f"{SHORT[c]:>{SIZE_COLUMN}}" for c in categories)
        return f"{first:<{name_w}}{cols}{'total':>{SIZE_COLUMN}}{'share':>{SHARE_COLUMN}}{extra}".rstrip()

    def line(label: str, name_w: int, row: ModuleRow, bar: str = "") -> str:
        text = (f"{_name(label, name_w)}{_cells(row.nbytes, categories)}{size_text(row.total):>{SIZE_COLUMN}}"
                f"{share_text(row.total, whole):>{SHARE_COLUMN}}")
        return (text + (" " + bar if bar else "")).rstrip()

    if blocks:
        lines += ["", heading("block", name_width)]
        lines += [line(row.label, name_width, row) for row in blocks]
        lines.append(line("all", name_width, ModuleRow("block", "all", byte_dict(payload.get("totals"))
                                                       or _summed(blocks))))
    if layers:
        layer_width = max(len(r.label) for r in layers)
        fixed = layer_width + len(categories) * SIZE_COLUMN + tail
        bar_width = min(MAX_BAR, width - fixed - 1)
        largest = max(r.total for r in layers)
        lines += ["", heading("layer", layer_width, "" if bar_width < 4 else (" of largest" if bar_width >= 10 else " bar"))]
        for row in layers:
            cells = bar_cells(row.total, largest, bar_width) if bar_width >= 4 else 0
            lines.append(line(row.label, layer_width, row, BAR * cells))
    advice = advice_lines(payload, width, needed_bytes)
    if advice:
        lines += ["", "Advice", *advice]
    return "\n".join(lines) + "\n"


def _summed(rows: Sequence[ModuleRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        for c, v in row.nbytes.items():
            out[c] = out.get(c, 0) + v
    return out


#: What a run whose attribution was turned off says (``[monitor] modules = "off"``).
OFF = "module attribution is off ([monitor] modules)"
#: What a run says before its first modules event.
NOT_YET = "measured on the first measured training step: none yet"


def no_modules_reason(header: Mapping[str, Any] | None, step: int, ended: bool) -> str:
    """Why a run has no ``modules`` event (one line): attribution is off (the header says so, or
    training went on past its first step without one), the run ended first, or it is not there yet."""
    mode = (header or {}).get("modules")
    if mode == "off":
        return OFF
    if ended:
        if step <= 0:
            return "the run ended before its first measured training step: no module figures"
        if mode in ("summary", "full"):
            return "no modules event in this log, though attribution was on (an error turns it off: see the notes)"
        return f"no modules event in this log: {OFF}, or it was written by an ftwatch without it"
    if step >= 2:  # the first training step is measured, and its modules event follows its snapshot
        return f"no modules event after {step} steps: {OFF}"
    return NOT_YET
