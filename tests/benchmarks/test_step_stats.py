"""The peers benchmark's step statistics, on step series whose answers are counted by hand."""

from __future__ import annotations

import pytest

from conftest import load_benchmark

step_stats = load_benchmark("step_stats")


def test_a_cost_every_tenth_step_counts_at_its_weight() -> None:
    # 40 steps of 1 s, and every step 1, 11, 21, 31 takes 2 s: on average a step takes 1.1 s
    steps = [(n, 2.0 if n % 10 == 1 else 1.0) for n in range(1, 41)]
    assert step_stats.cadence_time(steps, 10) == pytest.approx(1.1)


def test_hiccups_at_random_positions_are_not_counted() -> None:
    # four steps per position; three hiccups (1.6 s) fall on three different positions
    steps = [(n, 1.6 if n in (7, 13, 38) else 1.0) for n in range(1, 41)]
    assert step_stats.cadence_time(steps, 10) == pytest.approx(1.0)
    assert sum(s for _, s in steps) / len(steps) == pytest.approx(1.045)  # the mean would carry them


def test_positions_pick_their_steps() -> None:
    steps = [(n, float(n)) for n in range(1, 25)]
    assert step_stats.position_times(steps, {1}, 10) == [1.0, 11.0, 21.0]


def test_a_variant_five_percent_slower_in_every_round_costs_five_percent() -> None:
    # rounds at different machine speeds (the third 1.5x slower): pairing keeps the cost exact
    speeds = [1.0, 1.1, 1.5, 0.9]
    baseline = [[(n, speed) for n in range(1, 21)] for speed in speeds]
    variant = [[(n, speed * 1.05) for n in range(1, 21)] for speed in speeds]
    cost = step_stats.paired_cost(variant, baseline, 10, resamples=200)
    assert cost.point == pytest.approx(0.05)
    assert cost.low == pytest.approx(0.05) and cost.high == pytest.approx(0.05)


def test_the_interval_widens_with_disagreeing_rounds() -> None:
    baseline = [[(n, 1.0) for n in range(1, 11)] for _ in range(6)]
    variant = [[(n, 1.0 + extra) for n in range(1, 11)] for extra in (0.0, 0.0, 0.0, 0.1, 0.1, 0.1)]
    cost = step_stats.paired_cost(variant, baseline, 10, resamples=500)
    assert cost.low < cost.point < cost.high
    assert cost.low >= 0.0 and cost.high <= 0.1 + 1e-9


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError):
        step_stats.paired_cost([[(1, 1.0)]], [], 10)
    with pytest.raises(ValueError):
        step_stats.cadence_time([], 10)
