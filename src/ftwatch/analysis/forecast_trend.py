"""The trend maths of the OOM forecast: robust Theil-Sen fits over a window of steps.

Trends are Theil-Sen slopes (the median of pairwise slopes) over the last :data:`TREND_WINDOW`
steps, for the total and per category, so a few long-sequence batches do not bend them. A slope
counts only when the rise it implies over the window is at least :data:`MIN_RISE_BYTES` and
:data:`RISE_NOISE_FACTOR` times the median absolute residual. The current level is the upper
envelope of the window (each step's peak carried forward along the slope), so the big batches
that have been seen, not the average one, set the headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

MiB = 1024**2

#: Steps of history the trends are fitted on, and the fewest a trend needs.
TREND_WINDOW = 48
MIN_TREND_STEPS = 8
#: A trend counts when its rise over the window reaches this many bytes ...
MIN_RISE_BYTES = 32 * MiB
#: ... and this many times the median absolute residual around the fitted line, ...
RISE_NOISE_FACTOR = 3.0
#: ... and each half of the window rises at least at this share of the whole window's slope.
HALF_SLOPE_SHARE = 0.3


@dataclass
class Trend:
    """A Theil-Sen fit over a window: slope per step and what it implies."""

    slope: float
    rise: float
    noise: float
    significant: bool
    up_fraction: float


def theil_sen(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Median of the pairwise slopes and the matching median intercept (``(0, median)`` if flat in x)."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    slope = median(slopes) if slopes else 0.0
    intercept = median(y - slope * x for x, y in zip(xs, ys, strict=True))
    return slope, intercept


def fit_trend(xs: list[float], ys: list[float]) -> Trend | None:
    """The robust trend of ``ys`` over ``xs``; ``None`` with fewer than :data:`MIN_TREND_STEPS` points."""
    if len(xs) < MIN_TREND_STEPS:
        return None
    slope, intercept = theil_sen(xs, ys)
    noise = median(abs(y - (intercept + slope * x)) for x, y in zip(xs, ys, strict=True))
    rise = slope * (xs[-1] - xs[0])
    diffs = [b - a for a, b in zip(ys[:-1], ys[1:], strict=True)]
    up = sum(1 for d in diffs if d > 0) / len(diffs) if diffs else 0.0
    significant = (slope > 0 and rise >= max(MIN_RISE_BYTES, RISE_NOISE_FACTOR * noise)
                   and _both_halves_rise(xs, ys, slope))
    return Trend(slope=slope, rise=rise, noise=noise, significant=significant, up_fraction=up)


def _both_halves_rise(xs: list[float], ys: list[float], slope: float) -> bool:
    """A growth, not one level shift: each half of the window rises at a good share of the slope.

    A single jump (a longer batch, the optimizer state appearing) tilts the fit over a window
    that straddles it, yet each half on its own is flat.
    """
    half = len(xs) // 2
    first, _ = theil_sen(xs[:half], ys[:half])
    second, _ = theil_sen(xs[half:], ys[half:])
    return min(first, second) >= HALF_SLOPE_SHARE * slope


def _rising_at_all(ys: list[float]) -> bool:
    """Cheap pre-check: the last third's median above the first third's (skips most flat series)."""
    third = max(len(ys) // 3, 1)
    return median(ys[-third:]) - median(ys[:third]) >= MIN_RISE_BYTES / 2
