"""``ftwatch estimate CONFIG --calibrate`` (and ``ftwatch fit --calibrate``): measure, then extrapolate.

The training side trains copies of the model cut to 1 and 2 decoder layers on the target device
(:mod:`ftwatch.training.calibrate`); analysis carries their peaks to the full depth
(:mod:`ftwatch.analysis.estimate.calibration`). Here: the cheap refusals first (one line, exit 2),
the progress lines on stderr while the copies train, the notes on what the copies cannot stand
for, and the section of the text output.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ftwatch.commands.usage import UsageError
from ftwatch.common.config import Config
from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes


def say_progress(message: str) -> None:
    """A progress line on stderr (the copies train for seconds to minutes)."""
    print(f"ftwatch: {message}", file=sys.stderr, flush=True)


def check(cfg: Config, model_config: Any, device: str) -> None:
    """Refuse what cannot be calibrated (:class:`UsageError`), before anything is built."""
    from ftwatch.training.calibrate.copies import check_calibration
    from ftwatch.training.calibrate.truncated_model import CannotBuild

    try:
        check_calibration(cfg, model_config, device)
    except CannotBuild as exc:
        raise UsageError(safe(str(exc), one_line=True)) from None


def calibrate(cfg: Config, result: Any, device: str, batch: int | None = None) -> Any:
    """The :class:`~ftwatch.analysis.estimate.calibration.Calibration` of the run ``result`` (a meta
    :class:`~ftwatch.analysis.estimate.Estimate`) describes, at its micro-batch unless ``batch``
    says otherwise (then ``meta_total`` is left unknown). A copy that cannot be built or trained is
    a :class:`UsageError` (one line)."""
    from ftwatch.analysis.estimate.calibration import extrapolate
    from ftwatch.analysis.estimate.truncate import layer_count, unrepresented_kinds
    from ftwatch.training.calibrate.copies import measure_copies
    from ftwatch.training.calibrate.steps import MAX_ACCUMULATION, MAX_ACCUMULATION_NOTE
    from ftwatch.training.calibrate.truncated_model import CannotBuild

    inputs = result.inputs
    model_config = inputs.model_config
    check(cfg, model_config, device)
    started = time.perf_counter()
    try:
        copies = measure_copies(cfg, model_config, device, batch or inputs.batch_size, inputs.max_length,
                                progress=say_progress)
    except CannotBuild as exc:
        raise UsageError(safe(str(exc), one_line=True)) from None
    calibration = extrapolate(copies, layer_count(model_config), result.categories,
                              result.total if batch is None else None)
    calibration.device = device
    calibration.seconds = time.perf_counter() - started
    depth = max(c.layers for c in copies)
    missing = unrepresented_kinds(model_config, depth)
    if missing:
        kinds = ", ".join(f"{safe(kind, one_line=True)} x{n}" for kind, n in missing.items())
        calibration.notes.append(f"the full model's layers are not all like its first {depth}: none of the copies "
                                 f"has a layer of the kinds {kinds}; their per-layer cost is taken to be the "
                                 "copies' own")
    if inputs.grad_accumulation > MAX_ACCUMULATION:
        calibration.notes.append(MAX_ACCUMULATION_NOTE)
    if inputs.world_size > 1:
        calibration.notes.append("the copies train in one process, without DDP: its gradient buckets (a second "
                                 "copy of the grads) are not in the measurement")
    return calibration


def judge_calibrated(result: Any, calibration: Any) -> tuple[str | None, str | None]:
    """``(verdict, fails_at)`` of the calibrated peak against the estimate's capacity."""
    from ftwatch.analysis.estimate import judge

    loading = calibration.categories.get("weights", 0) + calibration.categories.get("non_torch", 0)
    return judge(calibration.total, loading, result.capacity_bytes)


def to_json(result: Any, calibration: Any) -> dict[str, Any]:
    """The ``calibrated`` object of ``--json``: the calibration with its verdict."""
    verdict, fails_at = judge_calibrated(result, calibration)
    return {**calibration.to_json(), "verdict": verdict, "fails_at": fails_at}


def render(result: Any, calibration: Any) -> list[str]:
    """The text section: what was measured, how it was carried to the full depth, the difference."""
    from ftwatch.analysis.estimate.calibration import COUNTED_CATEGORIES

    c = calibration
    seconds = f", {c.seconds:.1f} s" if c.seconds is not None else ""
    depths = " and ".join(str(copy.layers) for copy in c.copies)
    lines = [f"  calibrated   measured on {c.device}: copies of {depths} layer{'s' if len(c.copies) > 1 else ''} "
             f"(random weights), real training steps{seconds}"]
    for copy in c.copies:
        steps = ", ".join(format_bytes(p) for p in copy.step_peaks)
        lines.append(f"    {copy.layers} layer{'s' if copy.layers != 1 else ' '}  peak {format_bytes(copy.peak):>10}"
                     f"   (steps: {steps})")
    lines += ["", f"    {'category':<12} {'per layer':>10} {'fixed':>10} {f'x{c.full_layers} layers':>11} "
                  f"{'meta':>10}"]
    meta = result.categories
    for name, value in c.categories.items():
        counted = " (count)" if name in COUNTED_CATEGORIES else ""  # only those differ from the extrapolation
        lines.append(f"    {name:<12} {format_bytes(c.per_layer.get(name, 0)):>10} {format_bytes(c.fixed.get(name, 0)):>10} "
                     f"{format_bytes(value):>11} {format_bytes(meta.get(name, 0)):>10}{counted}")
    lines.append(f"    {'peak':<12} {format_bytes(sum(c.per_layer.values())):>10} {format_bytes(sum(c.fixed.values())):>10} "
                 f"{format_bytes(c.total):>11} {format_bytes(result.total):>10}")
    lines.append("    (count): the full model's exact bytes from its parameter count; the rest is fixed + per layer "
                 f"x {c.full_layers}")
    if c.meta_total:
        share = c.difference / c.meta_total
        lines.append(f"    calibrated peak {format_bytes(c.total)}: {format_bytes(abs(c.difference))} "
                     f"{'above' if c.difference >= 0 else 'below'} the meta estimate ({share:+.1%})")
    verdict, fails_at = judge_calibrated(result, c)
    if verdict is not None:
        words = {"fits": "fits", "tight": "TIGHT", "does_not_fit": "DOES NOT FIT"}[verdict]
        where = {"loading_model": ": out of memory while loading the model",
                 "training": ": out of memory during training"}.get(fails_at or "", "")
        if verdict != "does_not_fit":
            where = f" ({format_bytes(result.capacity_bytes - c.total)} left at the calibrated peak)"
        lines.append(f"    calibrated verdict {words}{where}")
    lines += [f"    note: {note}" for note in c.notes]
    return lines
