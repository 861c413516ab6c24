"""Step-time statistics for comparing training steps under different monitors, robust to the
machine's hiccups and fair to a monitor whose cost comes on some steps only.

A shared machine slows a step now and then (another tenant, a page-fault storm): a few steps of a
round take 30-60% longer whatever runs in them. The mean of a round carries those into the ratio
as noise of several percent; the median of all steps would drop them, but it would also drop a
monitor's cost that comes every tenth step (ftwatch measures activations, the true peak and the
module tree on every ``activations_every``-th step). :func:`cadence_time` takes the median at each
position of that cadence (step number modulo the cadence) and averages the positions: a step
that is slow at every tenth step is counted at its weight, a random hiccup is not.

:func:`paired_cost` sets a variant against the baseline measured in the same rounds and gives a
bootstrap interval over the rounds (resampled in pairs, so a round's load hits both sides).
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

#: One round of one variant: (step number, seconds of that step) for every step it timed.
Round = Sequence[tuple[int, float]]


def cadence_time(steps: Sequence[tuple[int, float]], cadence: int) -> float:
    """The mean over the positions ``step % cadence`` of the median step time at each position."""
    if cadence < 1:
        raise ValueError("cadence must be at least 1")
    by_position: dict[int, list[float]] = defaultdict(list)
    for step, seconds in steps:
        by_position[step % cadence].append(seconds)
    if not by_position:
        raise ValueError("no steps")
    return statistics.fmean(statistics.median(times) for times in by_position.values())


def position_times(steps: Sequence[tuple[int, float]], positions: set[int], cadence: int) -> list[float]:
    """The step times at these positions of the cadence (``step % cadence`` in ``positions``)."""
    return [seconds for step, seconds in steps if step % cadence in positions]


@dataclass(frozen=True)
class Cost:
    """What a variant adds to a step, as a fraction of the baseline's step (0.01: 1% slower).

    ``point`` from all rounds; ``low`` and ``high`` the bootstrap interval over rounds."""

    point: float
    low: float
    high: float


def paired_cost(variant: Sequence[Round], baseline: Sequence[Round], cadence: int, *, resamples: int = 2000,
                level: float = 0.90, seed: int = 0) -> Cost:
    """The variant's cadence time over the baseline's, less one, and its bootstrap interval.

    ``variant[i]`` and ``baseline[i]`` are the same round: the interval resamples round indices
    with replacement and takes both sides of each drawn round."""
    if len(variant) != len(baseline) or not variant:
        raise ValueError("the variant and the baseline need the same, non-zero number of rounds")

    def cost(indices: Sequence[int]) -> float:
        mine = [s for i in indices for s in variant[i]]
        base = [s for i in indices for s in baseline[i]]
        return cadence_time(mine, cadence) / cadence_time(base, cadence) - 1

    everything = range(len(variant))
    rng = random.Random(seed)
    draws = sorted(cost([rng.randrange(len(variant)) for _ in everything]) for _ in range(resamples))
    tail = (1 - level) / 2
    return Cost(point=cost(everything), low=draws[int(tail * (resamples - 1))],
                high=draws[int((1 - tail) * (resamples - 1))])
