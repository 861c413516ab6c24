"""The peak of the data's longest batch, priced before training (``ftwatch estimate``, the pre-flight).

With packing every block is ``max_length`` tokens: every batch is the longest, and its peak is the
estimate's. Without packing the collator pads each batch to its longest sample (cut to
``max_length``), so the longest sample sets the peak: a batch of micro-batch copies of it. A
typical batch is the median batch of the first epoch (padded to its own longest sample).

When the longest batch does not fit while a typical one does, :func:`check_longest_batch` names
the sample (its place in the file, its index, its length), the optimizer step it comes at when the
order is known (:func:`~ftwatch.training.data_lengths.sample_order`), and the fixes.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from ftwatch.analysis.estimate import Estimate, estimate_inputs, with_changes
from ftwatch.common.config import Config
from ftwatch.common.units import format_bytes
from ftwatch.training.data_lengths import LengthScan, groups_by_length, sample_order

#: Estimates a bisection for the largest ``max_length`` that fits may make.
MAX_BISECT = 12


@dataclass
class LongestBatch:
    """The longest and the typical batch of a run, their predicted peaks and (when needed) the fixes."""

    packing: bool
    examples: int | None  # None: packed, not scanned
    micro_batch: int
    max_length: int
    longest_tokens: int
    typical_tokens: int
    longest_bytes: int
    typical_bytes: int
    longest_verdict: str | None
    typical_verdict: str | None
    sample_index: int | None = None
    sample_where: str | None = None
    sample_tokens: int | None = None
    step: int | None = None
    order: str = ""
    fixes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def warn(self) -> bool:
        """The longest batch does not fit while a typical one does."""
        return self.longest_verdict == "does_not_fit" and self.typical_verdict != "does_not_fit"

    def to_json(self) -> dict[str, Any]:
        """The ``longest_batch`` object of ``ftwatch estimate --json``."""
        return {"packing": self.packing, "examples": self.examples, "micro_batch": self.micro_batch,
                "max_length": self.max_length, "longest_tokens": self.longest_tokens,
                "typical_tokens": self.typical_tokens, "longest_bytes": self.longest_bytes,
                "typical_bytes": self.typical_bytes, "longest_verdict": self.longest_verdict,
                "typical_verdict": self.typical_verdict, "warning": self.warn,
                "sample": None if self.sample_index is None else
                {"index": self.sample_index, "where": self.sample_where, "tokens": self.sample_tokens},
                "step": self.step, "order": self.order, "fixes": self.fixes}

    def message(self) -> str:
        """One line: the longest batch does not fit (or how it compares)."""
        if self.packing:
            return (f"packing: every batch is {self.micro_batch} x {self.max_length} tokens, so the longest "
                    f"batch is every batch (peak {format_bytes(self.longest_bytes)})")
        where = f"{self.sample_where} of the data file (example {self.sample_index}, {self.sample_tokens} tokens"
        where += f", cut to {self.max_length})" if (self.sample_tokens or 0) > self.max_length else ")"
        head = (f"the longest batch ({self.micro_batch} x {self.longest_tokens} tokens, "
                f"peak {format_bytes(self.longest_bytes)}) vs a typical one ({self.micro_batch} x "
                f"{self.typical_tokens}, {format_bytes(self.typical_bytes)})")
        if not self.warn:
            return f"{head}; longest sample: {where}"
        when = f"at step {self.step}" if self.step is not None else self.order
        return f"{head}: the longest will not fit; it comes from {where}, {when}"


def check_longest_batch(cfg: Config, scan: LengthScan, base: Estimate) -> LongestBatch:
    """Price the longest and a typical batch of ``scan`` like ``base`` (same inputs and capacity)."""
    assert base.inputs is not None
    inputs, capacity = base.inputs, base.capacity_bytes
    b = inputs.batch_size
    if scan.packing or not scan.lengths:
        examples = scan.examples if scan.lengths else None
        return LongestBatch(True, examples, b, scan.max_length, scan.max_length, scan.max_length, base.total,
                            base.total, base.verdict, base.verdict, order="every batch is equal")
    n = len(scan.lengths)
    order, how = sample_order(cfg, n)
    known, grouped = order is not None, groups_by_length(cfg)
    # the examples the run draws, in order: all, unless max_steps ends it within the first epoch;
    # an unknown order is stood in for by a shuffle (for the typical batch only)
    drawn = list(order) if order is not None else random.Random(0).sample(range(n), n)
    if grouped:  # batches of like lengths (LengthGroupedSampler sorts within megabatches)
        drawn = sorted(range(n), key=lambda i: -scan.lengths[i])
    max_steps = int(cfg.training.get("max_steps", -1) or -1)
    if order is not None and 0 < max_steps * b * inputs.grad_accumulation < n:
        drawn = drawn[: max_steps * b * inputs.grad_accumulation]
        how += f"; max_steps = {max_steps} draws {len(drawn)} of the {n} examples"
    # the first drawn of the longest (by index when the order is unknown)
    index = max(drawn if order is not None else range(n), key=lambda i: scan.lengths[i])
    batches = [max(scan.seq_len(i) for i in drawn[k:k + b]) for k in range(0, len(drawn), b)]
    typical = int(statistics.median_low(batches))
    longest = scan.seq_len(index)

    def at(length: int, batch: int = b) -> Estimate:
        if length == inputs.max_length and batch == b:
            return base
        varied = with_changes(inputs, max_length=length, training={"per_device_train_batch_size": batch})
        return estimate_inputs(varied, capacity, base.capacity_source)

    high, low = at(longest), at(typical)
    step = None
    if known:
        position = order.index(index)
        step = position // (b * inputs.grad_accumulation) + 1
    elif grouped and cfg.launch.world_size == 1:  # LengthGroupedSampler swaps the longest to the front
        step, how = 1, "grouped by length: the longest batch comes first"
    result = LongestBatch(False, n, b, scan.max_length, longest, typical, high.total, low.total,
                          high.verdict, low.verdict, sample_index=index, sample_where=scan.where[index],
                          sample_tokens=scan.lengths[index], step=step, order=how)
    if result.warn:
        result.fixes = _fixes(scan, result, at, inputs.grad_accumulation, grouped)
    return result


def _fixes(scan: LengthScan, lb: LongestBatch, at: Any, accumulation: int,
           grouped: bool) -> list[dict[str, Any]]:
    """``max_length`` (the largest that fits), a smaller micro-batch, ``group_by_length`` (unless on)."""
    fixes: list[dict[str, Any]] = []
    lo, hi = lb.typical_tokens, lb.longest_tokens  # fits at lo, not at hi
    for _ in range(MAX_BISECT):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid).verdict != "does_not_fit" else (lo, mid)
    cut = sum(1 for n in scan.lengths if n > lo)
    fixes.append(_fix(f"cut samples to {lo} tokens ({cut} of {lb.examples} samples are longer)",
                      f"[data] max_length = {lo}", lb.longest_bytes - at(lo).total, fits=True))
    for batch in range(lb.micro_batch - 1, 0, -1):
        smaller = at(lb.longest_tokens, batch)
        if smaller.verdict != "does_not_fit":
            total = lb.micro_batch * accumulation
            config = f"[training] per_device_train_batch_size = {batch}"
            change = f"micro-batch {batch}"
            if total % batch == 0:
                config += f"; [training] gradient_accumulation_steps = {total // batch}"
                change += f" x {total // batch} accumulation (same effective batch)"
            fixes.append(_fix(change, config, lb.longest_bytes - smaller.total, fits=True))
            break
    if grouped:
        return fixes
    fixes.append(_fix("group samples of similar length: less padding, and the longest batch comes first, so an "
                      "out-of-memory shows at step 1 instead of hours in (the peak stays)",
                      _group_by_length_setting(), 0))
    return fixes


def _fix(change: str, config: str, saves: int, fits: bool | None = None) -> dict[str, Any]:
    return {"change": change, "config": config, "saves_bytes": int(max(saves, 0)),
            "fits_after": fits, "fails_at_after": None}


def _group_by_length_setting() -> str:
    """The installed transformers' spelling: ``train_sampling_strategy`` (5.x) or ``group_by_length``."""
    try:
        from transformers import TrainingArguments

        if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
            return '[training] train_sampling_strategy = "group_by_length"'
    except ImportError:
        pass
    return "[training] group_by_length = true"
