"""When a live feed tells the dashboard that it has something to draw.

The dashboard draws when its feed tells it (a coalesced message from the feed's thread), not on a
fast timer that mostly finds nothing new: a timer firing eight times a second cost a following
dashboard about 0.3% of a core on its own. :class:`DrawNotice` is the feed's side of that: what it
told the app since the app last took a view, and whether to tell it now.
"""

from __future__ import annotations

import math


class DrawNotice:
    """Whether the feed should tell the app, given what changed since the app's last view.

    News (a step, a phase, a warning, a worker log line, an end: anything but device samples) is
    told at once; device samples alone once ``samples_every`` seconds have passed since the last view
    (the app draws them no more often). Each is told once until the app takes its next view."""

    def __init__(self, samples_every: float) -> None:
        self.samples_every = samples_every
        #: The feed's version when the app last took a view (-1: never).
        self.viewed_version = -1
        self.viewed_at = -math.inf
        self._told = False
        self._told_news = False

    def viewed(self, version: int, now: float) -> None:
        """The app took a view of ``version`` at ``now`` (``time.monotonic()``)."""
        self.viewed_version, self.viewed_at = version, now
        self._told = self._told_news = False

    def due(self, version: int, only_samples: bool, now: float) -> bool:
        """True when the app should be told now that the feed is at ``version`` (``only_samples``:
        every change since the last view came of device samples); a True answer counts as told."""
        if version == self.viewed_version:
            return False
        if only_samples:
            if self._told or now - self.viewed_at < self.samples_every:
                return False
        elif self._told_news:
            return False
        else:
            self._told_news = True
        self._told = True
        return True
