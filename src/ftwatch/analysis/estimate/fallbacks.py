"""What the estimate says when part of it could not come from the meta trace: which part, why, what
stood in, and how far off that stand-in is expected to be.

Two stand-ins exist, each a last resort:

- ``formula``: the meta forward trace could not run the model (an op without a meta kernel, a
  model that reads a tensor's value): the activations come from a per-layer formula for
  Llama-style decoders (:mod:`.activation_formula`), and the backward's peak from the
  approximation below.
- ``approximation``: the forward was traced but the meta training step could not run (an op
  without a meta backward), or checkpoints are offloaded to the host, which meta tensors cannot
  be: the backward's peak (``other``) is the larger of the two float32 loss buffers and the
  largest recomputed layer (:func:`~ftwatch.analysis.estimate.activations.approximate_backward_bytes`).

The expected errors are what ``benchmarks/estimate_truth.py`` prints for each stand-in forced on
every row it measures (18 architectures, eager and SDPA, float32 and bfloat16, checkpointing off
and on, sliding windows and batch 1): the lowest and highest ``estimate / measured - 1``. A model
the trace cannot run is by definition none of those, so the range is a guide, not a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``(lowest, highest)`` error of the peak with the formula (and the approximation) standing in, over the
#: rows of ``benchmarks/estimate_truth.py`` (its ``formula`` column): the formula knows Llama-style
#: layers with fused attention; lowest with eager attention on a long sequence (no attention
#: matrices), highest on falcon and opt.
FORMULA_ERROR = (-0.595, 0.231)
#: The same with only the approximation standing in for the training step (its ``approx.``
#: column): close where the peak is the loss's backward, low where it is in a layer's backward
#: (the layer's gradients come on top of the recomputed layer).
APPROXIMATION_ERROR = (-0.394, 0.011)
#: Where those figures come from.
SOURCE = "benchmarks/estimate_truth.py"

_WHAT = {
    "formula": ("activations", "other"),
    "approximation": ("other",),
}


@dataclass(frozen=True)
class Fallback:
    """One stand-in the estimate used: ``kind`` (``formula`` or ``approximation``), the categories it
    sized, why the trace could not, and the expected error of the peak."""

    kind: str
    reason: str

    @property
    def categories(self) -> tuple[str, ...]:
        """The estimate's categories the stand-in sized."""
        return _WHAT[self.kind]

    @property
    def expected_error(self) -> tuple[float, float]:
        """``(lowest, highest)`` of ``estimate / measured - 1`` with this stand-in, on the benchmark."""
        return FORMULA_ERROR if self.kind == "formula" else APPROXIMATION_ERROR

    def note(self) -> str:
        """The line ``ftwatch estimate`` prints."""
        low, high = self.expected_error
        if self.kind == "formula":
            what = ("activations come from the Llama-style formula and the backward's peak from an "
                    "approximation, not from the meta trace")
        else:
            what = "the backward's peak (`other`) is approximated, not traced by the meta training step"
        return (f"{what} ({self.reason}); expect the peak {low:+.1%} to {high:+.1%} off the true one "
                f"(this stand-in on every row of {SOURCE})")

    def to_json(self) -> dict[str, Any]:
        """The ``fallbacks`` entry of ``ftwatch estimate --json``."""
        low, high = self.expected_error
        return {"kind": self.kind, "categories": list(self.categories), "reason": self.reason,
                "expected_error": {"low": low, "high": high, "source": SOURCE}}


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
