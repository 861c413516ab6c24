"""The module view's table: a ``modules`` payload's blocks, its decoder layers under their block,
and the parts of the layers the user opened, sorted by a key.

:func:`visible_rows` is the plain logic (which rows, in which order, how deep); :class:`ModuleTable`
draws them in a Textual ``DataTable`` sized to its width (the names, a column per category with
bytes, the total, the share of the whole, a bar of each layer against the largest layer).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from ftwatch.views.headless.modules_table import (
    BAR,
    SHORT,
    SIZE_COLUMN,
    SORTS,
    ModuleRow,
    bar_cells,
    block_rows,
    fit_categories,
    grand_total,
    layer_rows,
    share_text,
    shown_categories,
    size_text,
    sort_rows,
)

#: What the caption says of each sort.
SORT_LABELS = {"module": "module order", "total": "largest total first", "activations": "largest activations first"}
#: The names' column: as wide as its longest label within these (a longer one loses its start).
NAME_MIN, NAME_MAX = 8, 16
SHARE_WIDTH = 6
#: Below this many cells the bar is left out; it never takes more than BAR_MAX.
BAR_MIN, BAR_MAX = 4, 30


@dataclass(frozen=True)
class TableLine:
    """One visible row: its key in the table, its depth (0 block, 1 layer, 2 part) and the row."""

    key: str
    depth: int
    row: ModuleRow

    @property
    def label(self) -> str:
        """The name with its indent."""
        return "  " * self.depth + self.row.label


def layers_block(payload: Mapping[str, Any], blocks: Sequence[ModuleRow]) -> str | None:
    """The name of the block that holds the decoder layers (``model.layers``), if it is there."""
    layers = layer_rows(payload)
    if not layers or "." not in layers[0].path:
        return None
    container = layers[0].path.rsplit(".", 1)[0]
    return container if any(b.path == container for b in blocks) else None


def short_name(name: str, container: str | None) -> str:
    """A block's name without the model's own prefix (``model.embed_tokens`` -> ``embed_tokens``
    when the layers are ``model.layers``)."""
    if container and "." in container:
        prefix = container.rsplit(".", 1)[0] + "."
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def row_key(row: ModuleRow) -> str:
    """A row's key in the table: stable across sorts and new payloads."""
    if row.kind == "block":
        return f"b:{row.path}"
    if row.kind == "layer":
        return f"l:{row.index}"
    return f"p:{row.index}:{row.label}"


def visible_rows(payload: Mapping[str, Any], sort: str = "module", expanded: Collection[int] = ()) -> list[TableLine]:
    """The rows to show: the blocks sorted by ``sort``, the decoder layers (sorted) under their
    block, each layer in ``expanded`` followed by its parts (sorted). Layers whose block is missing
    come after the blocks."""
    blocks = block_rows(payload)
    container = layers_block(payload, blocks)
    layers = sort_rows(layer_rows(payload), sort)
    lines: list[TableLine] = []

    def add_layers() -> None:
        for layer in layers:
            lines.append(TableLine(row_key(layer), 1, layer))
            if layer.index in expanded:
                lines.extend(TableLine(row_key(part), 2, part) for part in sort_rows(layer.parts, sort))

    for block in sort_rows(blocks, sort):
        named = ModuleRow(block.kind, short_name(block.label, container), block.nbytes, path=block.path,
                          order=block.order)
        lines.append(TableLine(row_key(block), 0, named))
        if block.path == container:
            add_layers()
    if container is None:
        add_layers()
    return lines


class ModuleTable(DataTable):
    """The rows of :func:`visible_rows` (a row cursor: the arrow keys move it, Enter opens a layer)."""

    BINDINGS = [Binding("enter", "select_cursor", "Open layer")]

    DEFAULT_CSS = """
    ModuleTable {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", cell_padding=0, zebra_stripes=False, **kwargs)
        self.payload: Mapping[str, Any] = {}
        self.sort = SORTS[0]
        self.expanded: set[int] = set()
        self.lines: list[TableLine] = []
        self.categories: list[str] = []
        self.bar_width = 0
        self._drawn_width = -1

    def show(self, payload: Mapping[str, Any]) -> None:
        """Draw ``payload`` (the cursor stays on the row it was on)."""
        self.payload = payload
        self.rebuild()

    def cycle_sort(self) -> str:
        """The next sort of :data:`SORTS`; returns it."""
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.rebuild()
        return self.sort

    def current(self) -> TableLine | None:
        """The row under the cursor."""
        if not self.lines or not 0 <= self.cursor_row < len(self.lines):
            return None
        return self.lines[self.cursor_row]

    def toggle_layer(self) -> bool:
        """Open the layer under the cursor into its parts, or close it (on a part: its layer). False
        when the cursor is on no layer."""
        line = self.current()
        if line is None or line.row.kind == "block" or line.row.index is None:
            return False
        index = line.row.index
        if index in self.expanded:
            self.expanded.discard(index)
            self.rebuild(keep=f"l:{index}")
        else:
            self.expanded.add(index)
            self.rebuild()
        return True

    def on_resize(self) -> None:
        """Fit the columns to the new width."""
        if self.size.width != self._drawn_width:
            self.rebuild()

    def rebuild(self, keep: str | None = None) -> None:
        """Fill the table again from the payload, at this width; the cursor stays on ``keep`` (else
        on the row it was on, else where it was)."""
        current = self.current()
        keep = keep or (current.key if current is not None else None)
        old_row = self.cursor_row
        self.lines = visible_rows(self.payload, self.sort, self.expanded)
        self._layout_columns()
        self.clear(columns=True)
        self.add_column("module", width=self.name_width, key="name")
        for category in self.categories:
            self.add_column(Text(SHORT[category], justify="right"), width=SIZE_COLUMN, key=category)
        self.add_column(Text("total", justify="right"), width=SIZE_COLUMN, key="total")
        self.add_column(Text("share", justify="right"), width=SHARE_WIDTH, key="share")
        if self.bar_width:
            self.add_column(" layer", width=self.bar_width + 1, key="bar")
        whole = grand_total(self.payload)
        largest = max((ln.row.total for ln in self.lines if ln.row.kind == "layer"), default=0)
        for line in self.lines:
            self.add_row(*self._cells(line, whole, largest), key=line.key)
        keys = [ln.key for ln in self.lines]
        target = keys.index(keep) if keep in keys else min(max(old_row, 0), max(len(keys) - 1, 0))
        if keys:
            self.move_cursor(row=target, animate=False)
        self._drawn_width = self.size.width

    def _layout_columns(self) -> None:
        width = self.size.width or 80
        room = max(width - 1, 20)  # the vertical scrollbar
        rows = [ln.row for ln in self.lines]
        tail = SIZE_COLUMN + SHARE_WIDTH
        longest = max((len(ln.label) for ln in self.lines), default=NAME_MIN)
        wanted = max(NAME_MIN, min(longest, NAME_MAX))  # whole names before a category: they say what a row is
        self.categories = fit_categories(shown_categories(rows), rows, max(room - wanted - tail, SIZE_COLUMN))
        fixed = len(self.categories) * SIZE_COLUMN + tail
        self.name_width = max(NAME_MIN, min(longest, NAME_MAX, room - fixed))
        bar = min(room - fixed - self.name_width - 1, BAR_MAX)
        self.bar_width = bar if bar >= BAR_MIN else 0

    def _cells(self, line: TableLine, whole: int, largest: int) -> list[Text]:
        row = line.row
        label = line.label
        if row.kind == "layer" and row.parts:  # the indent shows whether the layer is open
            label = ("▾ " if row.index in self.expanded else "▸ ") + row.label
        if len(label) > self.name_width:
            label = "…" + label[len(label) - self.name_width + 1:]
        style = "bold" if line.depth == 0 else ("dim" if line.depth == 2 else "")
        cells = [Text(label, style=style, no_wrap=True, overflow="ellipsis")]
        for category in self.categories:
            value = row.get(category)
            cells.append(Text(size_text(value) if value else "-", justify="right"))
        cells.append(Text(size_text(row.total), justify="right"))
        cells.append(Text(share_text(row.total, whole), justify="right"))
        if self.bar_width:
            n = bar_cells(row.total, largest, self.bar_width) if row.kind != "block" else 0
            cells.append(Text(" " + BAR * n, style="dim" if row.kind == "part" else ""))
        return cells
