"""``ftwatch fit CONFIG --calibrate``: the micro-batch search priced with calibrated peaks.

Calibrating at every micro-batch the search tries would train two copies per trial; instead the
config is calibrated at two micro-batches (its own, and half of it; 2 when it is 1) and every
trial of the config's own recipe is priced on the line through the two: at a fixed sequence
length every category of a step's peak is linear in the micro-batch (activations, logits and loss
buffers per sample; weights, adapters, gradients and optimizer state not at all). A trial with
changes beyond the micro-batch (the fixes fit applies when even a micro-batch of 1 does not fit:
checkpointing, another dtype...) is another recipe, which the copies did not train: it keeps the
meta estimate, and the output says so.

The copies accumulate as the config does (at most 2 micro-batches); a trial whose accumulation
differs is priced at the calibrated recipe's (LoRA's gradients, the only difference, are small).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ftwatch.common.config import Config

#: The ``[training]`` keys a trial of the same recipe may change.
_BATCH_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps")


def second_micro_batch(micro_batch: int) -> int:
    """The other micro-batch the config is calibrated at: half its own (rounded down), 2 for 1."""
    return micro_batch // 2 if micro_batch > 1 else 2


class CalibratedEstimator:
    """An estimator for :func:`ftwatch.analysis.fit.fit`: the meta estimate, with the categories of
    every trial of the calibrated recipe replaced by the calibrated ones at its micro-batch."""

    def __init__(self, cfg: Config, inputs: Any, device: str) -> None:
        from ftwatch.analysis.estimate import estimate_inputs
        from ftwatch.commands.estimate_calibrate import calibrate

        self.base = inputs
        meta = estimate_inputs(inputs)
        own, other = inputs.batch_size, second_micro_batch(inputs.batch_size)
        self.points = ((own, calibrate(cfg, meta, device)), (other, calibrate(cfg, meta, device, batch=other)))
        self.meta_trials = 0

    def same_recipe(self, inputs: Any) -> bool:
        """Whether ``inputs`` differs from the calibrated config at most in micro-batch and accumulation."""
        def recipe(i: Any) -> Any:
            return replace(i, training={k: v for k, v in i.training.items() if k not in _BATCH_KEYS})

        return recipe(inputs) == recipe(self.base)

    def __call__(self, inputs: Any, capacity_bytes: int | None = None) -> Any:
        """The estimate of ``inputs`` (calibrated when it is the calibrated recipe)."""
        from ftwatch.analysis.estimate import estimate_inputs, judge
        from ftwatch.analysis.estimate.calibration import at_micro_batch

        result = estimate_inputs(inputs, capacity_bytes)
        if not self.same_recipe(inputs):
            self.meta_trials += 1
            return result
        result.categories = at_micro_batch(self.points[0], self.points[1], inputs.batch_size)
        result.verdict, result.fails_at = judge(result.total, result.loading_bytes, capacity_bytes)
        return result

    def notes(self) -> list[str]:
        """What the fit's output says about the calibration."""
        (b0, c0), (b1, _c1) = self.points
        seconds = sum(c.seconds or 0 for _, c in self.points)
        notes = [f"calibrated: 1- and 2-layer copies trained on {c0.device} at micro-batches {b0} and {b1} "
                 f"({seconds:.1f} s); each peak of this recipe lies on the line through those two"]
        if self.meta_trials:
            notes.append("the trials with changes beyond the micro-batch are the meta estimate's: the copies "
                         "trained the config's own recipe only")
        notes += list(dict.fromkeys(n for _, c in self.points for n in c.notes))
        return notes
