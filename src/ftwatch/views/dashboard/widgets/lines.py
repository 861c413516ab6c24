"""Widgets that repaint only the rows whose text changed.

A dashboard panel that follows a live run changes a few cells at a time: the step number in the
status line, a size in the legend. Textual's ``refresh()`` renders every line of a widget again
(turning rich text into strips is most of what a redraw costs) and sends them all to the terminal.
:class:`ChangedLines` keeps the strip of each line of ``render()``'s text: :meth:`ChangedLines.redraw`
takes the new text, keeps the strips of the lines that are the same, renders the others, and
repaints only their rows.

The strips are made as Textual makes them for the whole text: the changed lines go through the same
``Visual.to_strips`` in one text, at their own rows (the other lines left blank), so even the
offsets that text selection reads are the same. A text that is not one row per line (a line wider
than the widget wraps) is rendered whole, and a full ``refresh()`` (a resize, a style change, a
change of layout) drops every strip kept. While text is selected in the widget, or with a content
alignment other than left-top, Textual renders it as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.content import Content
from textual.geometry import Region
from textual.strip import Strip
from textual.style import Style as VisualStyle
from textual.visual import Visual, visualize
from textual.widget import Widget

#: What identifies a source line's strips: its row, its text, its spans and its base style.
LineKey = tuple[Any, ...]


@dataclass
class _Frame:
    """What one render of the widget's text drew, at one size and style: one strip per source line
    (``keys`` and ``strips`` in step), or, for text that is not drawn line for line (a line that
    wraps, a renderable that is not a ``Text``), the whole render under a single key."""

    width: int
    height: int
    style: VisualStyle
    keys: list[LineKey] = field(default_factory=list)
    strips: list[Strip] = field(default_factory=list)

    @property
    def by_line(self) -> bool:
        """True when each key has its strip (the rows can be compared one by one)."""
        return len(self.keys) == len(self.strips)


def line_key(row: int, line: Text) -> LineKey:
    """The key of source line ``row`` of a text: two lines with the same key render the same strip."""
    return row, line.plain, tuple(line.spans), line.style


class ChangedLines(Widget):
    """A widget whose ``render()`` returns a rich ``Text``; :meth:`redraw` repaints only the rows
    that changed (call it where a widget would call ``refresh()`` after its data changed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frame: _Frame | None = None

    # -- drawing -----------------------------------------------------------------------------
    def redraw(self, *, layout: bool = False) -> None:
        """The widget's data changed: repaint the rows whose text differs from what is on screen.

        Every row is repainted (a plain ``refresh``) when ``layout`` is asked for, when nothing was
        drawn yet at this size and style, or when the text is not drawn one row per line."""
        old = self._frame
        if layout or old is None or not self.is_mounted or not self._by_lines() or not self._current(old):
            self.refresh(layout=layout)
            return
        new = self._render_frame(old)
        if not (new.by_line and old.by_line and len(new.keys) == len(old.keys)):
            self.refresh()
            return
        self._frame = new
        rows = [row for row, (key, was) in enumerate(zip(new.keys, old.keys, strict=True)) if key != was]
        if rows:
            super().refresh(*(Region(0, row, new.width, 1) for row in rows))

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> ChangedLines:
        """As ``Widget.refresh``; a refresh of the whole widget also drops the strips kept."""
        if repaint and not regions:
            self._frame = None
        super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)
        return self

    def render_line(self, y: int) -> Strip:
        """Row ``y`` of the content, from the strips of the last frame (rendered when there is none)."""
        if not self._by_lines():
            return super().render_line(y)
        frame = self._frame
        if frame is None or not self._current(frame):
            frame = self._frame = self._render_frame(None)
        if y < len(frame.strips):
            return frame.strips[y]
        return Strip.blank(frame.width, frame.style.rich_style)

    # -- the frame ---------------------------------------------------------------------------
    def _by_lines(self) -> bool:
        """False while text is selected here or the content is aligned: those render as a whole."""
        return self.text_selection is None and tuple(self.styles.content_align) == ("left", "top")

    def _current(self, frame: _Frame) -> bool:
        width, height = self.size
        return frame.width == width and frame.height == height and frame.style == self.visual_style

    def _render_frame(self, old: _Frame | None) -> _Frame:
        """Render ``render()``'s text one strip per line, rendering only the lines ``old`` lacks."""
        width, height = self.size
        frame = _Frame(width, height, self.visual_style)
        renderable = self.render()
        if isinstance(renderable, Text):
            lines = renderable.split("\n", allow_blank=True)[:height]
            frame.keys = [line_key(row, line) for row, line in enumerate(lines)]
            kept = dict(zip(old.keys, old.strips, strict=True)) if old is not None and old.by_line else {}
            missing = [row for row, key in enumerate(frame.keys) if key not in kept]
            drawn = self._render_rows(lines, missing, frame) if missing else {}
            if drawn is not None:
                frame.strips = [kept[key] if key in kept else drawn[row] for row, key in enumerate(frame.keys)]
                return frame
        # Not one strip per line: the whole render, as Textual draws it, under a key never seen again.
        visual = visualize(self, renderable, markup=self._render_markup)
        frame.strips = Visual.to_strips(self, visual, width, height, frame.style)
        frame.keys = [(object(),)]
        return frame

    def _render_rows(self, lines: list[Text], rows: list[int], frame: _Frame) -> dict[int, Strip] | None:
        """The strips of ``lines[row]`` for each of ``rows``, rendered in one text with the other lines
        blank (so each keeps its row's offsets); None when a line does not make exactly one strip."""
        wanted = set(rows)
        last = rows[-1]
        text = Text("\n").join(line if row in wanted else Text() for row, line in enumerate(lines[:last + 1]))
        content = Content.from_rich_text(text, console=self.app.console)
        strips = Visual.to_strips(self, content, frame.width, None, frame.style)
        if len(strips) != last + 1:
            return None
        return {row: strips[row] for row in rows}
