"""``ftwatch fit``'s search (:mod:`ftwatch.analysis.fit`) against a fake estimator with monotone peaks.

The fake prices a run by hand: weights (float32 1000, bfloat16 500, 8-bit 300, 4-bit 200 bytes)
+ optimizer state 100 + micro-batch x max_length x (2 without checkpointing, 1 with). Every expected
figure below is computed from those numbers, not from the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest

from ftwatch.analysis import advice
from ftwatch.analysis.estimate import Estimate, EstimateInputs, judge
from ftwatch.analysis.fit import divisors, fit

WEIGHTS = {"float32": 1000, "bfloat16": 500}


def fake_estimate(inputs: EstimateInputs, capacity_bytes: int | None = None,
                  capacity_source: str | None = None) -> Estimate:
    """The hand price of a run (see the module docstring)."""
    weights = 200 if inputs.load_in_4bit else 300 if inputs.load_in_8bit else WEIGHTS[inputs.dtype]
    per_token = 1 if inputs.gradient_checkpointing else 2
    categories = {"weights": weights, "optimizer": 100,
                  "activations": inputs.batch_size * inputs.max_length * per_token}
    result = Estimate(params_total=0, params_trainable=0, params_base=0, categories=categories,
                      capacity_bytes=capacity_bytes, inputs=inputs)
    result.verdict, result.fails_at = judge(result.total, weights, capacity_bytes)
    return result


@pytest.fixture(autouse=True)
def fake_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """advice prices its fixes with the same fake."""
    monkeypatch.setattr(advice, "estimate_inputs", fake_estimate)


def inputs(micro: int, accumulation: int, max_length: int = 100, **extra: Any) -> EstimateInputs:
    training = {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
                "optim": "adamw_torch", "gradient_checkpointing": False}
    return EstimateInputs(model_config=None, dtype=extra.pop("dtype", "float32"),
                          lora={"r": 8, "target_modules": ["q_proj", "v_proj"]}, training=training,
                          max_length=max_length, on_gpu=extra.pop("on_gpu", False), **extra)


def table(result: Any) -> list[tuple[int, int, int, bool]]:
    return [(t.micro_batch, t.accumulation, t.peak_bytes, t.fits) for t in result.trials]


def test_divisors() -> None:
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(1) == [1]


def test_walks_down_to_the_largest_divisor_that_fits() -> None:
    # effective 8; peaks 1100 + 200 x micro: 8 -> 2700, 4 -> 1900, 2 -> 1500 (limit 1600)
    result = fit(inputs(8, 1), 1600, headroom=0, estimator=fake_estimate)
    assert table(result) == [(8, 1, 2700, False), (4, 2, 1900, False), (2, 4, 1500, True)]
    assert (result.micro_batch, result.accumulation, result.peak_bytes) == (2, 4, 1500)
    assert result.settings == [("training", "per_device_train_batch_size", 2),
                               ("training", "gradient_accumulation_steps", 4)]
    assert result.fixes == []


def test_walks_up_while_it_fits_and_keeps_the_effective_batch() -> None:
    # effective 8 from 1 x 8; limit 2000: 1 -> 1300, 2 -> 1500, 4 -> 1900 fit, 8 -> 2700 does not
    result = fit(inputs(1, 8), 2000, headroom=0, estimator=fake_estimate)
    assert table(result) == [(1, 8, 1300, True), (2, 4, 1500, True), (4, 2, 1900, True), (8, 1, 2700, False)]
    assert (result.micro_batch, result.accumulation) == (4, 2)
    assert result.micro_batch * result.accumulation == 8


def test_headroom_lowers_the_limit() -> None:
    # capacity 2000, 10% headroom: limit 1800, so 4 (1900) no longer fits; 2 (1500) does, and 3
    # (1700) would, but 8 is no multiple of 3 (3 x 3 = 9): it is shown and told, not chosen
    result = fit(inputs(4, 2), 2000, headroom=0.10, estimator=fake_estimate)
    assert result.limit_bytes == 1800
    assert table(result) == [(4, 2, 1900, False), (2, 4, 1500, True), (3, 3, 1700, True)]
    assert (result.micro_batch, result.accumulation) == (2, 4)
    assert any("3 x 3 = 9" in note for note in result.notes)


def test_a_non_divisor_that_would_fit_is_told() -> None:
    # effective 6: divisors 6 (2300) no, 3 (1700) yes with limit 1950; 4 (1900) would fit but 6 % 4 != 0
    result = fit(inputs(6, 1), 1950, headroom=0, estimator=fake_estimate)
    assert (result.micro_batch, result.accumulation) == (3, 2)
    assert (4, 2, 1900, True) in table(result)
    assert [t.keeps_effective for t in result.trials if t.micro_batch == 4] == [False]
    assert any("micro-batch of 4" in note and "effective batch of 6" in note for note in result.notes)


def test_when_micro_batch_one_does_not_fit_the_mildest_fix_then_the_micro_batch_again() -> None:
    # micro 1: 1000 + 100 + 200 = 1300 > 1000. bfloat16 (tier 1) gives 800 and fits; checkpointing
    # (tier 2) gives 1200, too little; no shorter max_length is offered (advice halves down to 64).
    # With bfloat16, micro 2 -> 1000 fits.
    result = fit(inputs(4, 1), 1000, headroom=0, estimator=fake_estimate)
    assert [(f.setting, f.saves_bytes) for f in result.fixes] == [(("model", "dtype", "bfloat16"), 500)]
    assert table(result)[:3] == [(4, 1, 1900, False), (2, 2, 1500, False), (1, 4, 1300, False)]
    assert table(result)[3:] == [(4, 1, 1400, False), (2, 2, 1000, True)]
    assert (result.micro_batch, result.accumulation) == (2, 2)
    assert result.settings[0] == ("model", "dtype", "bfloat16")


def test_a_cheaper_fix_wins_over_a_stronger_one() -> None:
    # bfloat16 model already; micro 1 at max_length 400: 500 + 100 + 800 = 1400 > 1100.
    # checkpointing (tier 2): 500 + 100 + 400 = 1000 fits; max_length 200 (tier 7): 1000 fits too.
    result = fit(inputs(1, 2, max_length=400, dtype="bfloat16"), 1100, headroom=0, estimator=fake_estimate)
    assert [f.setting for f in result.fixes] == [("training", "gradient_checkpointing", True)]
    assert result.fixes[0].saves_bytes == 400


def test_a_combination_when_no_single_change_is_enough() -> None:
    # micro 1, max_length 400: 1000 + 100 + 800 = 1900 > 900. Alone: bfloat16 1400, checkpointing
    # 1500, max_length 200 1500 or 100 1300 (advice halves down to 64): none fits. advice's combination starts with the mildest change that
    # saves at least half the best (bfloat16, 500 of 700); then, at 1400, the only single change that
    # fits is max_length 100: 500 + 100 + 200 = 800 (checkpointing 1000, max_length 200 1000 do not).
    result = fit(inputs(1, 1, max_length=400), 900, headroom=0, estimator=fake_estimate)
    assert [(f.setting, f.saves_bytes) for f in result.fixes] == [
        (("model", "dtype", "bfloat16"), 500), (("data", "max_length", 100), 600)]
    assert result.fixes[0].change.startswith("load the base model in bfloat16")
    assert result.fixes[1].change.startswith("train on sequences of 100 tokens")
    assert (result.micro_batch, result.peak_bytes) == (1, 800)


def test_nothing_fits_when_the_weights_alone_are_too_big() -> None:
    result = fit(inputs(2, 1), 150, headroom=0, estimator=fake_estimate)
    assert not result.fitted and result.settings == []
    assert result.notes
