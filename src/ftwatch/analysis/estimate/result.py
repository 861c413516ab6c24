"""The result of an estimate (:class:`Estimate`) and its verdict against a capacity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftwatch.analysis.estimate.activations import ActivationEstimate
from ftwatch.analysis.estimate.fallbacks import Fallback
from ftwatch.analysis.estimate.inputs import EstimateInputs

#: Below this share of free capacity left at the peak, the verdict is ``tight``.
TIGHT_HEADROOM = 0.10

VERDICTS = ("fits", "tight", "does_not_fit")


@dataclass
class Estimate:
    """The predicted memory of a run, and the verdict against a capacity."""

    params_total: int
    params_trainable: int
    params_base: int
    categories: dict[str, int]
    capacity_bytes: int | None = None
    capacity_source: str | None = None
    verdict: str | None = None
    fails_at: str | None = None
    activations: ActivationEstimate | None = None
    inputs: EstimateInputs | None = field(default=None, repr=False)
    suggestions: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The stand-ins for the meta trace this estimate used (last resorts; each also a note).
    fallbacks: list[Fallback] = field(default_factory=list)
    #: The module tree (the ``modules`` payload of :mod:`ftwatch.runlog.module_tree`), only when asked
    #: for (:func:`ftwatch.analysis.estimate.module_estimate.estimate_modules`); not in :meth:`to_json`.
    modules: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        """The predicted peak: every category together."""
        return sum(self.categories.values())

    @property
    def loading_bytes(self) -> int:
        """What loading the model needs: the weights (and the CUDA context on a GPU)."""
        return self.categories.get("weights", 0) + self.categories.get("non_torch", 0)

    def to_json(self) -> dict[str, Any]:
        """The ``ftwatch estimate --json`` object."""
        return {
            "params_total": self.params_total,
            "params_trainable": self.params_trainable,
            "params_base": self.params_base,
            "estimate_bytes": {**self.categories, "total": self.total},
            "loading_bytes": self.loading_bytes,
            "capacity_bytes": self.capacity_bytes,
            "capacity_source": self.capacity_source,
            "verdict": self.verdict,
            "fails_at": self.fails_at,
            "suggestions": [s.to_json() if hasattr(s, "to_json") else s for s in self.suggestions],
            "assumptions": self.assumptions(),
            "notes": list(self.notes),
            "fallbacks": [f.to_json() for f in self.fallbacks],
        }

    def assumptions(self) -> dict[str, Any]:
        """The settings the figures are for (what the estimate read from the config)."""
        if self.inputs is None:
            return {}
        i = self.inputs
        return {
            "dtype": i.resolved_dtype,
            "quantization": "4bit" if i.load_in_4bit else "8bit" if i.load_in_8bit else None,
            "batch_size": i.batch_size,
            "gradient_accumulation_steps": i.grad_accumulation,
            "seq_len": i.max_length,
            "optim": i.optim,
            "gradient_checkpointing": i.gradient_checkpointing,
            "mixed_precision": i.autocast_dtype,
            "device": "cuda" if i.on_gpu else "cpu",
            "activations_method": self.activations.method if self.activations else None,
            "activations_recompute": self.activations.recompute if self.activations else None,
        }


def judge(total: int, loading: int, capacity: int | None) -> tuple[str | None, str | None]:
    """``(verdict, fails_at)`` for a peak and a loading figure against a capacity (``None``: unknown)."""
    if capacity is None:
        return None, None
    if loading > capacity:
        return "does_not_fit", "loading_model"
    if total > capacity:
        return "does_not_fit", "training"
    if capacity - total < TIGHT_HEADROOM * capacity:
        return "tight", None
    return "fits", None
