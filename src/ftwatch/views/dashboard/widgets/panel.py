"""A bordered panel whose title can change without repainting what is inside it.

The memory panel's title says how much is used, of what, at which step: it changes at every step.
Textual repaints a whole widget when its ``border_title`` is set; :meth:`Panel.set_title` repaints
only the top row, where the title is drawn (the panels' ``border-top``).
"""

from __future__ import annotations

from typing import Any

from textual.containers import Vertical
from textual.geometry import Region


class Panel(Vertical):
    """A vertical container with a border title; :meth:`set_title` repaints the title row alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._title_row_only = False
        #: Titles set by :meth:`set_title` that repainted the title row alone (for tests).
        self.title_repaints = 0

    def set_title(self, title: str) -> None:
        """Show ``title`` (console markup) on the top border, repainting that row only."""
        if self.border_title == title:
            return
        if not self.is_mounted:
            self.border_title = title
            return
        self._title_row_only = True
        try:
            self.border_title = title
        finally:
            self._title_row_only = False
        self.title_repaints += 1

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> Panel:
        """As ``Widget.refresh``; while :meth:`set_title` sets the title, only the top row."""
        if self._title_row_only and not (regions or layout or recompose):
            gutter = self.content_offset  # regions are relative to the content, inside the border
            regions = (Region(-gutter.x, -gutter.y, self.outer_size.width, 1),)
        super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)
        return self
