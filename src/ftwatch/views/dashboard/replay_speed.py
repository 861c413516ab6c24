"""The replay's speeds and its clock: how fast a recorded run plays, and which events are due.

- :func:`parse_speed` reads ``--speed``; :func:`auto_rate` and :func:`next_rate` pick the rates.
- :class:`ReplayClock` maps the wall clock onto the run's clock: ``rate`` run seconds per second;
  a quiet stretch in the log never holds the replay more than :data:`MAX_WAIT` seconds.

Speeds: a number (``1``: as it happened; ``60``: a minute of the run per second), ``auto`` (the
whole recording in about :data:`AUTO_SECONDS` seconds, never slower than real time) or ``max``
(everything at once: the replay opens at the end; playing it again from an earlier point then
goes at the auto rate).

Plain Python (no Textual): the command line reads ``--speed`` with it before any dashboard loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX, AUTO = "max", "auto"
#: ``auto``: the whole recording plays in about this many seconds.
AUTO_SECONDS = 60.0
#: A quiet stretch of the log (a stalled run) holds the replay at most this long, in seconds.
MAX_WAIT = 2.0
#: The rates ``+`` and ``-`` move between (run seconds per second).
RATES: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800)


def parse_speed(text: str) -> float | str:
    """A ``--speed`` value: a positive number (``10`` or ``10x``), ``auto`` or ``max``."""
    value = text.strip().lower()
    if value in (MAX, AUTO):
        return value
    try:
        number = float(value.removesuffix("x"))
    except ValueError:
        raise ValueError(f"--speed takes a positive number, auto or max, not {text!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"--speed takes a positive number, auto or max, not {text!r}")
    return number


def auto_rate(duration: float) -> float:
    """The ``auto`` rate for a recording of ``duration`` seconds: about a minute, never slow motion."""
    return max(duration / AUTO_SECONDS, 1.0)


def next_rate(rate: float, direction: int) -> float:
    """The next rate of :data:`RATES` above (``direction > 0``) or below ``rate``."""
    if direction > 0:
        return next((r for r in RATES if r > rate * 1.0001), RATES[-1])
    return next((r for r in reversed(RATES) if r < rate / 1.0001), RATES[0])


class ReplayClock:
    """Run time as a function of wall time: ``rate`` run seconds per second from an anchor."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.rate = 1.0
        self._anchor: tuple[float, float] | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._anchor is not None

    def start(self, run_t: float, rate: float) -> None:
        """Run time ``run_t`` is now; from here it moves ``rate`` times faster than the wall clock."""
        self.rate = rate
        self._anchor = (self.now(), run_t)

    def stop(self) -> None:
        """Stop; the next :meth:`start` says where the run stands."""
        self._anchor = None

    def due(self) -> float:
        """The run time reached now: events stamped up to it are due."""
        assert self._anchor is not None
        wall, run_t = self._anchor
        return run_t + (self.now() - wall) * self.rate

    def set_rate(self, rate: float) -> None:
        """Change speed from the run time reached now (no jump)."""
        if self._anchor is not None:
            self._anchor = (self.now(), self.due())
        self.rate = rate

    def skip_gap(self, next_t: float) -> None:
        """Before a quiet stretch, make the next event due within :data:`MAX_WAIT` seconds."""
        due = self.due()
        if self._anchor is not None and (next_t - due) / self.rate > MAX_WAIT:
            wall, run_t = self._anchor
            self._anchor = (wall, run_t + (next_t - due) - MAX_WAIT * self.rate)

