"""The arithmetic of a calibrated estimate: measured truncated copies -> the full depth.

``ftwatch estimate --calibrate`` trains copies of the model cut to 1 and 2 decoder layers (the
training side measures them: :mod:`ftwatch.training.calibrate`); each gives a peak and its split
by category (:class:`CopyPeak`). A decoder's memory is a fixed part (embeddings, the head, the
logits and the loss buffers, the CUDA context) plus the same amount again for every layer, so,
for every category and for the peak::

    per_layer = copy(2) - copy(1)
    fixed     = copy(1) - per_layer
    full      = fixed + per_layer x L

The weights and the adapters of the full model are known exactly from its parameter count (the
meta estimate has them): those two categories are taken from the count, every other one from the
extrapolated measurement. Where the layers are alike both agree; where they are not (a model
whose first layers are dense and the rest sparse) the count is right and the measurement is not.
Categories in :data:`FIXED_CATEGORIES` (what the CUDA process holds beyond its tensors) do not grow
with depth: they are the larger copy's, not extrapolated (NVML counts in 2 MiB steps; times the
depth that would be noise).

:func:`at_micro_batch` carries two calibrations at two micro-batches to a third (``ftwatch fit
--calibrate``): at a fixed sequence length every category is linear in the micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Categories taken from the parameter count (exact), not from the measurement.
COUNTED_CATEGORIES = ("weights", "lora")
#: Categories that do not grow with the depth: the larger copy's figure stands for the full model.
FIXED_CATEGORIES = ("non_torch",)


@dataclass(frozen=True)
class CopyPeak:
    """One measured truncated copy: its ``layers``, the peak of its steady step (bytes), that peak's
    split by category (sums to ``peak``; on CUDA it includes ``cache`` and ``non_torch``) and the
    peak of every step it trained (the first one has no optimizer state yet)."""

    layers: int
    peak: int
    categories: Mapping[str, int]
    step_peaks: Sequence[int] = ()

    def to_json(self) -> dict[str, Any]:
        """The copy as a JSON object."""
        return {"layers": self.layers, "peak_bytes": int(self.peak), "categories": dict(self.categories),
                "step_peak_bytes": [int(p) for p in self.step_peaks]}


@dataclass
class Calibration:
    """A calibrated estimate: the copies measured, the per-layer and fixed cost per category, the
    extrapolated measurement and the calibrated categories (with the counted ones)."""

    full_layers: int
    copies: list[CopyPeak]
    per_layer: dict[str, int]
    fixed: dict[str, int]
    extrapolated: dict[str, int]
    categories: dict[str, int]
    meta_total: int | None = None
    device: str = "cpu"
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The calibrated peak: every category together."""
        return sum(self.categories.values())

    @property
    def extrapolated_peak(self) -> int:
        """The measured peak carried to the full depth, before the counted categories replace theirs."""
        return sum(self.extrapolated.values())

    @property
    def difference(self) -> int | None:
        """Calibrated minus meta estimate (bytes), when the meta estimate is known."""
        return None if self.meta_total is None else self.total - self.meta_total

    def to_json(self) -> dict[str, Any]:
        """The ``calibrated`` object of ``ftwatch estimate --calibrate --json``."""
        return {
            "device": self.device,
            "full_layers": self.full_layers,
            "copies": [c.to_json() for c in self.copies],
            "per_layer_bytes": {**self.per_layer, "total": sum(self.per_layer.values())},
            "fixed_bytes": {**self.fixed, "total": sum(self.fixed.values())},
            "extrapolated_bytes": {**self.extrapolated, "total": self.extrapolated_peak},
            "estimate_bytes": {**self.categories, "total": self.total},
            "counted_categories": list(COUNTED_CATEGORIES),
            "meta_total_bytes": self.meta_total,
            "difference_bytes": self.difference,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
            "notes": list(self.notes),
        }


def extrapolate(copies: Sequence[CopyPeak], full_layers: int, counted: Mapping[str, int],
                meta_total: int | None = None) -> Calibration:
    """The full-depth figures from one or two measured copies (fewest layers first).

    ``counted``: the full model's exact bytes of :data:`COUNTED_CATEGORIES` (the meta estimate's).
    One copy is only enough when it is the full model (a 1-layer model); with two the line through
    them is carried to ``full_layers``.
    """
    copies = sorted(copies, key=lambda c: c.layers)
    if not copies:
        raise ValueError("no measured copy to extrapolate from")
    names = list(dict.fromkeys(name for c in copies for name in c.categories))
    if len(copies) == 1:
        only = copies[0]
        if only.layers != full_layers:
            raise ValueError(f"one copy of {only.layers} layers cannot be carried to {full_layers}")
        per_layer = dict.fromkeys(names, 0)
        fixed = {n: int(only.categories.get(n, 0)) for n in names}
    else:
        small, large = copies[0], copies[-1]
        span = large.layers - small.layers
        if span <= 0:
            raise ValueError("the two copies must differ in depth")
        per_layer, fixed = {}, {}
        for n in names:
            a, b = int(small.categories.get(n, 0)), int(large.categories.get(n, 0))
            if n in FIXED_CATEGORIES:
                per_layer[n], fixed[n] = 0, b
                continue
            slope = (b - a) / span
            per_layer[n] = round(slope)
            fixed[n] = round(a - slope * small.layers)
    extrapolated = {n: max(fixed[n] + per_layer[n] * full_layers, 0) for n in names}
    categories = dict(extrapolated)
    for n in COUNTED_CATEGORIES:
        if n in counted:
            categories[n] = int(counted[n])
    calibration = Calibration(full_layers=full_layers, copies=list(copies), per_layer=per_layer, fixed=fixed,
                              extrapolated=extrapolated, categories=categories, meta_total=meta_total)
    if len(copies) > 1 and sum(per_layer.values()) <= 0:
        calibration.notes.append("the 2-layer copy's peak is not above the 1-layer copy's: the extrapolation "
                                 "to the full depth is not meaningful")
    return calibration


def at_micro_batch(first: tuple[int, Calibration], second: tuple[int, Calibration], micro_batch: int) -> dict[str, int]:
    """The calibrated categories at ``micro_batch`` from calibrations at two micro-batches
    ``(batch, calibration)``: each category on the line through the two (never below zero)."""
    (b1, c1), (b2, c2) = sorted((first, second), key=lambda pair: pair[0])
    if b1 == b2:
        raise ValueError("two calibrations at different micro-batches are needed")
    out = {}
    for n in dict.fromkeys([*c1.categories, *c2.categories]):
        v1, v2 = c1.categories.get(n, 0), c2.categories.get(n, 0)
        out[n] = max(round(v1 + (v2 - v1) * (micro_batch - b1) / (b2 - b1)), 0)
    return out
