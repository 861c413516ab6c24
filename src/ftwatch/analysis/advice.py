"""Quantified fixes: what to change in the config, and how many bytes each change saves.

Every config suggestion is priced by re-running the estimate with that one change applied
(:func:`suggest`); on a live or finished run the same ratios are applied to the measured
breakdown (:func:`suggest_for_measured`), which also prices ``expandable_segments`` (from the
allocator cache) and freeing the GPU memory of other processes.

Ranking: when the run does not fit (or is tight), the changes that alone make it fit come first,
the least intrusive first (:data:`TIERS`); then the rest by bytes saved, those that would still
die while loading the model last. When it fits, everything is ranked by bytes saved. Changes that
do not apply (already on) or save next to nothing (under :data:`MIN_SAVING_SHARE` of the largest
saving) are left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.advice_candidates import (
    GRADED_CHANGES,
    SINGLE_CHANGES,
    Candidate,
    Setting,
)
from ftwatch.analysis.estimate import (
    DTYPE_BYTES,
    Estimate,
    EstimateInputs,
    estimate,
    estimate_inputs,
    judge,
    with_changes,
)
from ftwatch.analysis.quantization_why import why_so_little
from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError
from ftwatch.common.units import format_bytes

#: How much a change alters the run, least first: ties among the fixes that make a run fit go to
#: the lower tier. 0: outside the training (allocator, other processes); 1: half-precision base
#: weights; 2: recomputation (slower, same result); 3: same effective batch in smaller pieces;
#: 4: 8-bit optimizer state; 5/6: 8-bit/4-bit base weights; 7: shorter sequences; 8: smaller adapters.
TIERS = {"env": 0, "process": 0, "dtype": 1, "checkpointing": 2, "batch": 3, "optimizer": 4,
         "load_in_8bit": 5, "load_in_4bit": 6, "max_length": 7, "rank": 8, "targets": 8}
#: The smallest cache worth an ``expandable_segments`` suggestion: this share of capacity, and 256 MiB.
CACHE_SHARE = 0.05
CACHE_MIN_BYTES = 256 * 1024**2

#: Changes to the base weights: priced on an estimate, they save on the full model, which can be more
#: than a run that died while loading held (98.5 GiB with 77.5 GiB held): :func:`of_full_model` says so.
WEIGHT_KINDS = ("dtype", "load_in_4bit", "load_in_8bit")
FULL_MODEL = "the saving is of the full model"

#: Savings below this share of the largest saving are noise (a paged optimizer on a tiny adapter): not shown.
MIN_SAVING_SHARE = 0.001



@dataclass
class Suggestion:
    """One change, what it saves, and whether it alone is enough."""

    kind: str
    change: str
    settings: tuple[Setting, ...]
    saves_bytes: int
    fits_after: bool | None = None
    fails_at_after: str | None = None
    resolves: bool = False
    #: Why it saves much less than a user would guess (4-bit next to 16-bit weights), and the
    #: combination that saves more; ``None`` when nothing is surprising.
    why: str | None = None

    @property
    def tier(self) -> int:
        """How intrusive the change is (see :data:`TIERS`)."""
        return TIERS.get(self.kind, 9)

    @property
    def config(self) -> str:
        """The exact line(s) to change, ``; ``-separated: ``[model] dtype = "bfloat16"``."""
        return "; ".join(_render(setting) for setting in self.settings)

    def to_json(self) -> dict[str, Any]:
        """``{change, config, saves_bytes, fits_after, fails_at_after}``, and ``why`` when it is said."""
        out = {"change": self.change, "config": self.config, "saves_bytes": int(self.saves_bytes),
               "fits_after": self.fits_after, "fails_at_after": self.fails_at_after}
        if self.why:
            out["why"] = self.why
        return out


def of_full_model(change: str, *, joined: bool = False) -> str:
    """``change`` saying its saving is of the full model: in its closing parenthesis, in one of its
    own, or after ``; `` when ``joined`` (a combination's ``together: a; b``)."""
    if joined:
        return f"{change}; {FULL_MODEL}"
    if change.endswith(")"):
        return f"{change[:-1]}; {FULL_MODEL})"
    return f"{change} ({FULL_MODEL})"


def _render(setting: Setting) -> str:
    section, key, value = setting
    if section == "env":
        return f"{key}={value}"
    if section == "process":
        return f"kill {value}"
    return f"[{section}] {key} = {_toml(value)}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def estimate_and_advise(cfg: Config, capacity_bytes: int | None = None, *, on_gpu: bool | None = None,
                        capacity_source: str | None = None) -> Estimate:
    """The estimate of the run a config describes (:func:`~ftwatch.analysis.estimate.estimate`) with
    its ranked fixes attached (:func:`suggest`): what ``ftwatch estimate`` shows."""
    result = estimate(cfg, capacity_bytes, on_gpu=on_gpu, capacity_source=capacity_source)
    try:
        result.suggestions = suggest(result)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    return result


def suggest(before: Estimate) -> list[Suggestion]:
    """Ranked config changes for an estimate, each priced by re-estimating with it applied.

    ``before`` must come from :func:`~ftwatch.analysis.estimate.estimate` or
    :func:`~ftwatch.analysis.estimate.estimate_inputs` (it carries its inputs).
    """
    if before.inputs is None:
        raise ValueError("the estimate carries no inputs to vary")
    capacity = before.capacity_bytes

    def price(candidate: Candidate) -> Suggestion:
        after = estimate_inputs(candidate.inputs, capacity)
        priced = _suggestion(candidate, before.total - after.total, after.verdict, after.fails_at, before.verdict)
        if candidate.kind in WEIGHT_KINDS:
            priced.change = of_full_model(priced.change)
        priced.why = why_so_little(candidate.kind, before.categories, after.categories, dtype_bytes)
        if priced.why and not candidate.inputs.gradient_checkpointing:
            both = estimate_inputs(with_changes(candidate.inputs, training={"gradient_checkpointing": True}), capacity)
            if before.total - both.total > max(priced.saves_bytes, 0):
                priced.why += (f"; with gradient checkpointing as well ([training] gradient_checkpointing = true) "
                               f"it saves {format_bytes(before.total - both.total)}")
        return priced

    dtype_bytes = DTYPE_BYTES[before.inputs.resolved_dtype]
    # Batch and sequence length never shrink the weights: when loading fails, only their strongest
    # option is worth pricing.
    loading = before.fails_at == "loading_model"
    priced_all = _collect(before.inputs, price, before.verdict, strongest_only=loading)
    before.notes += [_would_not_help(s) for s in priced_all if s.why and s.saves_bytes <= 0]
    ranked = rank(priced_all, before.verdict)
    if before.verdict == "does_not_fit" and not any(s.resolves for s in ranked):
        combined = combine(before)
        if combined is not None:
            ranked.insert(0, combined)
    return ranked


def _would_not_help(s: Suggestion) -> str:
    """The note for a quantization change left out of the fixes because it adds to the peak."""
    reason = (s.why or "").removeprefix("why so little: ")
    return f"{s.config} would not help: it adds {format_bytes(-s.saves_bytes)} to the peak. {reason}"


#: The most changes a combined suggestion applies.
MAX_COMBINED = 4
#: While no change fits, a combination takes the mildest change saving at least this share of the best.
COMBINE_SHARE = 0.5


def combine(before: Estimate) -> Suggestion | None:
    """When no single change makes the run fit: changes applied one after another until it fits,
    each time the least intrusive one that fits, else the least intrusive of those that save at
    least :data:`COMBINE_SHARE` of the best saving (bfloat16 before 4-bit loading).

    Returns the combination as one suggestion (``kind="combined"``), ``None`` if even
    :data:`MAX_COMBINED` changes together do not make it fit.
    """
    assert before.inputs is not None
    capacity = before.capacity_bytes
    inputs, steps, after = before.inputs, [], before
    for _ in range(MAX_COMBINED):
        options = []
        for make in SINGLE_CHANGES + GRADED_CHANGES:
            for candidate in make(inputs):
                estimate = estimate_inputs(candidate.inputs, capacity)
                options.append((candidate, estimate))
        useful = [(c, e) for c, e in options if e.total < after.total]
        if not useful:
            return None
        fitting = [(c, e) for c, e in useful if e.verdict != "does_not_fit"]
        if not fitting:  # the mildest change among those that save at least half of the best saving
            best = after.total - min(e.total for _, e in useful)
            fitting = [(c, e) for c, e in useful if after.total - e.total >= COMBINE_SHARE * best]
        candidate, after = min(fitting, key=lambda ce: (TIERS.get(ce[0].kind, 9), ce[1].total))
        steps.append(candidate)
        inputs = candidate.inputs
        if after.verdict != "does_not_fit":
            settings = tuple(setting for c in steps for setting in c.settings)
            change = "together: " + "; ".join(c.change for c in steps)
            if any(c.kind in WEIGHT_KINDS for c in steps):
                change = of_full_model(change, joined=True)
            return Suggestion(kind="combined", change=change, settings=settings,
                              saves_bytes=int(before.total - after.total), fits_after=True,
                              fails_at_after=None, resolves=True)
    return None


def suggest_for_measured(
    inputs: EstimateInputs,
    measured: Mapping[str, int | None],
    capacity_bytes: int | None,
    *,
    other_processes: Iterable[tuple[int, int]] = (),
    alloc_conf: str | None = None,
) -> list[Suggestion]:
    """Ranked fixes for a measured breakdown (a live or finished run).

    Each config change scales the measured categories it affects by the ratio
    ``estimate_after / estimate_before`` of that category. ``measured`` holds category bytes (the
    snapshot's ``categories``; ``free`` is ignored), ``capacity_bytes`` the device total.
    A large ``cache`` adds ``expandable_segments`` (unless ``alloc_conf``, default the environment's
    ``PYTORCH_CUDA_ALLOC_CONF``, has it); each ``(pid, bytes)`` of ``other_processes`` adds
    stopping that process.
    """
    used = sum(int(v or 0) for k, v in measured.items() if k != "free")
    base = estimate_inputs(inputs)
    verdict, _ = judge(used, 0, capacity_bytes)

    def price(candidate: Candidate) -> Suggestion:
        after = estimate_inputs(candidate.inputs)
        saves = scaled_savings(measured, base.categories, after.categories)
        priced = _measured_suggestion(candidate.kind, candidate.change, candidate.settings, saves, used,
                                      capacity_bytes, verdict)
        priced.why = why_so_little(candidate.kind, base.categories, after.categories,
                                   DTYPE_BYTES[inputs.resolved_dtype])
        return priced

    out = _collect(inputs, price, verdict)
    out += _environment(measured, used, capacity_bytes, verdict, other_processes, alloc_conf)
    return rank(out, verdict)


def scaled_savings(measured: Mapping[str, int | None], before: Mapping[str, int],
                   after: Mapping[str, int]) -> int:
    """Bytes saved on a measured breakdown when each category shrinks as the estimate does."""
    saved = 0.0
    for category, value in measured.items():
        if value and before.get(category):
            saved += int(value) * (1 - after.get(category, 0) / before[category])
    return int(round(saved))


def _collect(inputs: EstimateInputs, price: Callable[[Candidate], Suggestion],
             verdict: str | None, strongest_only: bool = False) -> list[Suggestion]:
    out = [price(c) for make in SINGLE_CHANGES for c in make(inputs)]
    for make in GRADED_CHANGES:
        options = make(inputs)
        chosen = _mildest_enough(options[-1:] if strongest_only else options, price, verdict)
        if chosen is not None:
            out.append(chosen)
    return out


def _mildest_enough(options: Sequence[Candidate], price: Callable[[Candidate], Suggestion],
                    verdict: str | None) -> Suggestion | None:
    """The mildest option that resolves the problem; else the strongest; the mildest if all is well."""
    chosen = None
    for option in options:
        chosen = price(option)
        if verdict in (None, "fits") or chosen.resolves:
            break
    return chosen


def _suggestion(candidate: Candidate, saves: int, verdict_after: str | None, fails_at_after: str | None,
                verdict_before: str | None) -> Suggestion:
    fits_after = None if verdict_after is None else verdict_after != "does_not_fit"
    return Suggestion(kind=candidate.kind, change=candidate.change, settings=candidate.settings,
                      saves_bytes=int(saves), fits_after=fits_after, fails_at_after=fails_at_after,
                      resolves=_resolves(verdict_before, verdict_after))


def _resolves(verdict_before: str | None, verdict_after: str | None) -> bool:
    if verdict_before == "does_not_fit":
        return verdict_after in ("fits", "tight")
    if verdict_before == "tight":
        return verdict_after == "fits"
    return False


def _measured_suggestion(kind: str, change: str, settings: tuple[Setting, ...], saves: int, used: int,
                         capacity: int | None, verdict: str | None) -> Suggestion:
    verdict_after, fails_at = judge(used - saves, 0, capacity)
    fits_after = None if verdict_after is None else verdict_after != "does_not_fit"
    return Suggestion(kind=kind, change=change, settings=settings, saves_bytes=int(saves), fits_after=fits_after,
                      fails_at_after=fails_at, resolves=_resolves(verdict, verdict_after))


def _environment(measured: Mapping[str, int | None], used: int, capacity: int | None, verdict: str | None,
                 other_processes: Iterable[tuple[int, int]], alloc_conf: str | None) -> list[Suggestion]:
    """``expandable_segments`` for a large allocator cache, and stopping other processes on the GPU."""
    out = []
    cache = int(measured.get("cache") or 0)
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") if alloc_conf is None else alloc_conf
    threshold = max(CACHE_MIN_BYTES, int(CACHE_SHARE * capacity) if capacity else 0)
    if cache >= threshold and "expandable_segments:true" not in conf.replace(" ", "").lower():
        out.append(_measured_suggestion(
            "env", f"let the allocator grow segments instead of caching fragments ({format_bytes(cache)} cached)",
            (("env", "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),), cache, used, capacity, verdict))
    for pid, held in other_processes:
        if held and held > 0:
            out.append(_measured_suggestion(
                "process", f"stop process {pid}, which holds {format_bytes(held)} on this GPU",
                (("process", "pid", int(pid)),), int(held), used, capacity, verdict))
    return out


def rank(suggestions: Iterable[Suggestion], verdict: str | None) -> list[Suggestion]:
    """Order suggestions (see the module docstring)."""

    def key(s: Suggestion) -> tuple[Any, ...]:
        if s.resolves:
            return (0, s.tier, -s.saves_bytes)
        still_loading = verdict == "does_not_fit" and s.fails_at_after == "loading_model"
        return (1, still_loading, -s.saves_bytes)

    suggestions = list(suggestions)
    floor = MIN_SAVING_SHARE * max((s.saves_bytes for s in suggestions), default=0)
    return sorted((s for s in suggestions if s.saves_bytes > max(floor, 0)), key=key)
