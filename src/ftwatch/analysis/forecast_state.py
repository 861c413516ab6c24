"""What the OOM forecaster keeps of a run, and the projections on that series of steps.

:class:`ForecastState` holds every figure and state the forecaster has folded, and projects its
window of :class:`StepPoint` steps: the peak level and slope, steps until the capacity is
crossed, the category behind the peak, a category's leak-like trend, the peak bytes per token.
When to warn about any of it is :mod:`ftwatch.analysis.forecast_checks` and
:mod:`ftwatch.analysis.forecast`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Any

from ftwatch.analysis.forecast_trend import (
    MIN_TREND_STEPS,
    TREND_WINDOW,
    Trend,
    _rising_at_all,
    fit_trend,
    theil_sen,
)

#: Training steps ignored at the start (optimizer state and allocator cache appear there).
WARMUP_STEPS = 2
#: A leak needs this many steps and this share of step-to-step changes going up (or a rise
#: of :data:`LEAK_STRONG_FACTOR` times the noise).
LEAK_MIN_STEPS = 12
LEAK_UP_FRACTION = 0.6
LEAK_STRONG_FACTOR = 6.0
#: Growth counts as explained by sequence length when seq_len's relative growth per step is at
#: least this share of the category's relative growth per step.
SEQ_EXPLAINS_SHARE = 0.5
#: Categories that scale with the sequence length.
SEQ_SCALED = ("activations", "other", "cache")
#: The bytes per token are fitted only once this many steps with a seq_len have been seen.
MIN_SEQ_HISTORY = 3

_HISTORY = 256


@dataclass
class StepPoint:
    """One optimizer step as the forecaster keeps it."""

    step: int
    occupied: int
    categories: dict[str, int]
    seq_len: int | None


class ForecastState:
    """The steps and states an OOM forecaster has folded, and the projections on its window."""

    def __init__(self, expected_load_bytes: int | None = None, max_length: int | None = None) -> None:
        self.expected_load_bytes = expected_load_bytes
        self.max_length = max_length
        self.capacity: int | None = None
        self.is_cuda = False
        self.max_steps: int | None = None
        self.phase: str | None = None
        self.step: int | None = None
        self.points: deque[StepPoint] = deque(maxlen=_HISTORY)
        self.oom_level = "ok"
        self._oom_last: tuple[int, int | None] | None = None  # step, steps_to_oom of the last oom_risk
        self.leaks: dict[str, dict[str, Any]] = {}
        self.seq_level = "ok"  # only projections to max_length persist; the headroom is oom_level's
        self._seq_emitted = "ok"
        self._max_seq: int | None = None
        self.load_level = "ok"
        self._load_base: int | None = None
        self._last_used: int | None = None
        self._retries: int | None = None
        self._retry_steps: list[int] = []
        self.retry_level = "ok"
        self.last_forecast: dict[str, Any] = {}

    def _window(self) -> list[StepPoint]:
        recent = [p for p in self.points if p.step > WARMUP_STEPS]
        return recent[-TREND_WINDOW:]

    def _steps_until(self, level: float, slope: float) -> int | None:
        """Steps until ``level`` growing by ``slope`` per step crosses capacity (None: not growing)."""
        if self.capacity is None or slope <= 0:
            return None
        return max(int(math.floor((self.capacity - level) / slope)), 0)

    def _within_run(self, steps: int | None) -> int | None:
        """``steps`` unless the run's planned end comes first."""
        if steps is None or self.max_steps is None or self.step is None:
            return steps
        return steps if self.step + steps <= self.max_steps else None

    def _forecast(self, window: list[StepPoint]) -> dict[str, Any]:
        ys = [float(p.occupied) for p in window]
        trend = fit_trend([float(p.step) for p in window], ys) if _rising_at_all(ys) else None
        slope = trend.slope if trend is not None and trend.significant else 0.0
        now = window[-1].step
        level = max(p.occupied + slope * (now - p.step) for p in window)
        assert self.capacity is not None
        headroom = (self.capacity - level) / self.capacity
        steps = self._within_run(self._steps_until(level, slope))
        return {"level_bytes": int(level), "headroom": headroom, "slope": slope, "steps_to_oom": steps}

    def _driver(self, window: list[StepPoint], growing: bool) -> str | None:
        """The category behind the peak: the fastest-growing one, else the one that varies most."""
        names = {k for p in window for k in p.categories}
        if not names:
            return None
        if growing and len(window) >= MIN_TREND_STEPS:
            xs = [float(p.step) for p in window]
            slopes = {k: theil_sen(xs, [float(p.categories.get(k, 0)) for p in window])[0] for k in names}
            return max(slopes, key=lambda k: slopes[k])
        spread = {k: max(p.categories.get(k, 0) for p in window) - min(p.categories.get(k, 0) for p in window)
                  for k in names}
        if max(spread.values()) > 0:
            return max(spread, key=lambda k: spread[k])
        return max(names, key=lambda k: window[-1].categories.get(k, 0))

    def _leak_trend(self, name: str, window: list[StepPoint]) -> Trend | None:
        points = [p for p in window if name in p.categories]
        ys = [float(p.categories[name]) for p in points]
        if len(points) < LEAK_MIN_STEPS or not _rising_at_all(ys):
            return None
        trend = fit_trend([float(p.step) for p in points], ys)
        if trend is None or not trend.significant:
            return None
        steady = trend.up_fraction >= LEAK_UP_FRACTION or trend.rise >= LEAK_STRONG_FACTOR * trend.noise
        if not steady or self._explained_by_seq_len(name, points, trend.slope, ys):
            return None
        return trend

    def _explained_by_seq_len(self, name: str, points: list[StepPoint], slope: float, ys: list[float]) -> bool:
        """True when sequences grow (relative to their size) at least about as fast as the category."""
        if name not in SEQ_SCALED:
            return False
        seq = [(float(p.step), float(p.seq_len)) for p in points if p.seq_len]
        if len(seq) < MIN_TREND_STEPS or median(ys) <= 0:
            return False
        seq_slope, _ = theil_sen([s for s, _ in seq], [v for _, v in seq])
        seq_rel = seq_slope / median(v for _, v in seq)
        return seq_rel > 0 and seq_rel >= SEQ_EXPLAINS_SHARE * slope / median(ys)

    def _bytes_per_token(self, point: StepPoint) -> float | None:
        """Peak bytes per extra token of sequence, Theil-Sen over the steps seen (None: not positive)."""
        pairs = [(float(p.seq_len), float(p.occupied))
                 for p in self.points if p.seq_len and p.step > WARMUP_STEPS]
        if len(pairs) < MIN_SEQ_HISTORY:
            return None
        pairs.append((float(point.seq_len or 0), float(point.occupied)))
        slope, _ = theil_sen([s for s, _ in pairs], [o for _, o in pairs])
        return slope if slope > 0 else None
