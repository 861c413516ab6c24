"""The config that fits, decided before loading: ``ftwatch fit``'s search.

First the recipe is kept and only the micro-batch changes (``per_device_train_batch_size``), the
effective batch (micro-batch x ``gradient_accumulation_steps``) kept exactly: only divisors of the
effective batch are tried, from the config's own micro-batch up (while it fits) or down (until it
fits). The largest micro-batch whose estimated peak is at most ``capacity x (1 - headroom)`` wins.

When even a micro-batch of 1 does not fit, the fixes advice knows are priced at micro-batch 1
(:func:`ftwatch.analysis.advice.suggest`): the least intrusive single change that makes it fit
(advice's tiers), else advice's combination (:func:`ftwatch.analysis.advice.combine`); then the
micro-batch search runs again with those changes applied. Every estimate goes through the same
machinery as ``ftwatch estimate`` (:func:`ftwatch.analysis.estimate.estimate_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftwatch.analysis import advice
from ftwatch.analysis.advice_candidates import GRADED_CHANGES, SINGLE_CHANGES, Candidate, Setting
from ftwatch.analysis.estimate import Estimate, EstimateInputs, estimate_inputs, with_changes
from ftwatch.analysis.estimate.core import context_fills, context_note

#: ``estimator(inputs, capacity_bytes)`` -> an :class:`Estimate` (its ``total`` is the peak).
Estimator = Callable[..., Estimate]

MICRO = ("training", "per_device_train_batch_size")
ACCUMULATION = ("training", "gradient_accumulation_steps")


@dataclass(frozen=True)
class Trial:
    """One configuration tried: micro-batch, accumulation, its estimated peak, whether it fits."""

    micro_batch: int
    accumulation: int
    peak_bytes: int
    fits: bool
    with_fixes: bool = False
    keeps_effective: bool = True

    def to_json(self) -> dict[str, Any]:
        """The trial as a JSON object."""
        return {"micro_batch": self.micro_batch, "gradient_accumulation_steps": self.accumulation,
                "peak_bytes": int(self.peak_bytes), "fits": self.fits, "with_fixes": self.with_fixes,
                "keeps_effective_batch": self.keeps_effective}


@dataclass(frozen=True)
class Fix:
    """One setting of the changes fit applied beyond the micro-batch, with what it saved."""

    change: str
    setting: Setting
    saves_bytes: int

    def to_json(self) -> dict[str, Any]:
        """The fix as a JSON object."""
        section, key, value = self.setting
        return {"change": self.change, "section": section, "key": key, "value": value,
                "saves_bytes": int(self.saves_bytes)}


@dataclass
class FitResult:
    """What the search found: the trials, the fixes, the settings to change, the fitted peak."""

    capacity_bytes: int
    headroom: float
    limit_bytes: int
    effective_batch: int
    original_micro_batch: int
    trials: list[Trial] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    micro_batch: int | None = None
    accumulation: int | None = None
    peak_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fitted(self) -> bool:
        """Whether a config that fits was found."""
        return self.micro_batch is not None

    @property
    def settings(self) -> list[Setting]:
        """The config lines to change: the fixes' settings, then micro-batch and accumulation if changed."""
        out = [fix.setting for fix in self.fixes]
        if self.micro_batch is not None and self.micro_batch != self.original_micro_batch:
            out += [(*MICRO, self.micro_batch), (*ACCUMULATION, self.accumulation)]
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``ftwatch fit --json`` core object."""
        return {"fits": self.fitted, "capacity_bytes": self.capacity_bytes, "headroom": self.headroom,
                "limit_bytes": self.limit_bytes, "effective_batch": self.effective_batch,
                "micro_batch": self.micro_batch, "gradient_accumulation_steps": self.accumulation,
                "peak_bytes": self.peak_bytes, "trials": [t.to_json() for t in self.trials],
                "fixes": [f.to_json() for f in self.fixes],
                "changes": [{"section": s, "key": k, "value": v} for s, k, v in self.settings],
                "notes": list(self.notes)}


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending (the micro-batches that keep an effective batch of ``n``)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def fit(inputs: EstimateInputs, capacity_bytes: int, headroom: float = 0.10, *,
        estimator: Estimator | None = None) -> FitResult:
    """Search the config that fits ``capacity_bytes x (1 - headroom)`` (see the module docstring)."""
    estimator = estimator or estimate_inputs
    micro, accumulation = inputs.batch_size, inputs.grad_accumulation
    limit = int(capacity_bytes * (1 - headroom))
    result = FitResult(capacity_bytes=capacity_bytes, headroom=headroom, limit_bytes=limit,
                       effective_batch=micro * accumulation, original_micro_batch=micro)
    chosen = _search(inputs, result, estimator, with_fixes=False)
    if chosen is None:
        fixed = _apply_fixes(inputs, result, estimator)
        if fixed is not None:
            chosen = _search(fixed, result, estimator, with_fixes=True)
    if chosen is not None:
        result.micro_batch, result.accumulation, result.peak_bytes = chosen
    return result


def with_micro_batch(inputs: EstimateInputs, micro: int, effective: int) -> EstimateInputs:
    """``inputs`` with micro-batch ``micro`` and the accumulation that keeps ``effective`` (rounded up)."""
    steps = -(-effective // micro)
    return with_changes(inputs, training={MICRO[1]: micro, ACCUMULATION[1]: steps})


def _search(inputs: EstimateInputs, result: FitResult, estimator: Estimator,
            with_fixes: bool) -> tuple[int, int, int] | None:
    """The largest divisor micro-batch that fits, walking from the config's own micro-batch;
    ``(micro, accumulation, peak)`` or ``None``. Each estimate is recorded in ``result.trials``."""
    effective = result.effective_batch
    options = divisors(effective)
    start = max(d for d in options if d <= result.original_micro_batch)

    def trial(micro: int) -> Trial:
        peak = estimator(with_micro_batch(inputs, micro, effective), result.limit_bytes).total
        made = Trial(micro, -(-effective // micro), int(peak), peak <= result.limit_bytes, with_fixes,
                     effective % micro == 0)
        if made.keeps_effective or made.fits:  # a non-divisor is shown only when it would have fitted
            result.trials.append(made)
        return made

    index = options.index(start)
    first = trial(start)
    if first.fits:
        best = first
        for micro in options[index + 1:]:
            nxt = trial(micro)
            if not nxt.fits:
                _say_non_divisor(result, trial, best.micro_batch, micro)
                break
            best = nxt
        return best.micro_batch, best.accumulation, best.peak_bytes
    for micro in reversed(options[:index]):
        nxt = trial(micro)
        if nxt.fits:
            above = options[options.index(micro) + 1]
            _say_non_divisor(result, trial, micro, above)
            return nxt.micro_batch, nxt.accumulation, nxt.peak_bytes
    return None


def _say_non_divisor(result: FitResult, trial: Callable[[int], Trial], best: int, too_big: int) -> None:
    """When a micro-batch between the chosen divisor and the next one (which does not fit) would fit,
    say that the effective batch could not have been kept with it."""
    if best + 1 >= too_big:
        return
    between = trial(best + 1)
    if between.fits:
        effective = result.effective_batch
        result.notes.append(
            f"a micro-batch of {best + 1} would fit too, but the effective batch of {effective} is not a "
            f"multiple of it ({best + 1} x {between.accumulation} = {(best + 1) * between.accumulation}): "
            f"kept {best} x {effective // best} = {effective} exactly")


def _apply_fixes(inputs: EstimateInputs, result: FitResult, estimator: Estimator) -> EstimateInputs | None:
    """At micro-batch 1: advice's mildest change (or combination) that fits; ``inputs`` with it applied
    (``None`` when advice knows none), its settings priced one by one in ``result.fixes``."""
    one = with_micro_batch(inputs, 1, result.effective_batch)
    before = estimator(one, result.limit_bytes)
    picked = next((s for s in advice.suggest(before) if s.resolves), None)
    if picked is None:
        result.notes.append(context_note(result.limit_bytes) if context_fills(before, result.limit_bytes)
                            else "no change advice knows makes even a micro-batch of 1 fit")
        return None
    fixed, peak, settings = one, before.total, tuple(picked.settings)
    while settings:
        step = _candidate_for(fixed, settings)
        words = step.change if step is not None else picked.change
        taken = step.settings if step is not None else settings[:1]
        fixed = step.inputs if step is not None else apply_setting(fixed, settings[0])
        after = estimator(fixed, result.limit_bytes).total
        for n, setting in enumerate(taken):  # a change of two settings: its saving on its first line
            result.fixes.append(Fix(words, setting, int(peak - after) if n == 0 else 0))
        peak, settings = after, settings[len(taken):]
    return with_micro_batch(fixed, result.original_micro_batch, result.effective_batch)


def _candidate_for(inputs: EstimateInputs, settings: tuple[Setting, ...]) -> Candidate | None:
    """The change advice knows whose settings open ``settings`` (its words and its inputs)."""
    for make in SINGLE_CHANGES + GRADED_CHANGES:
        for candidate in make(inputs):
            if settings[:len(candidate.settings)] == candidate.settings:
                return candidate
    return None


def apply_setting(inputs: EstimateInputs, setting: Setting) -> EstimateInputs:
    """``inputs`` with one config setting (``(section, key, value)``) applied."""
    section, key, value = setting
    if section == "training":
        return with_changes(inputs, training={key: value})
    if section == "lora":
        return with_changes(inputs, lora={key: value})
    if section == "data" and key == "max_length":
        return with_changes(inputs, max_length=int(value))
    if section == "model" and key in ("dtype", "load_in_4bit", "load_in_8bit"):
        return with_changes(inputs, **{key: value})
    raise ValueError(f"fit cannot apply [{section}] {key}")


def apply_settings(inputs: EstimateInputs, settings: Sequence[Setting]) -> EstimateInputs:
    """``inputs`` with every setting applied in order."""
    for setting in settings:
        inputs = apply_setting(inputs, setting)
    return inputs
