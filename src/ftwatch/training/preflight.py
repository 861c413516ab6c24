"""Training-side glue to the analysis: the pre-flight estimate and the fixes attached to warnings.

The worker calls :func:`preflight` before any weight loads: the estimate goes into the run log as
an ``estimate`` event, and a run that will not fit gets a warning with quantified fixes before
``from_pretrained`` is called (the out-of-memory that motivated ftwatch happened while loading).
:func:`warning_suggester` gives the live forecast's warnings the fixes for the measured breakdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftwatch.common.config import Config
from ftwatch.common.units import format_bytes

_PHASE = {"loading_model": "while loading the model", "training": "during training"}
MAX_SUGGESTIONS = 6


def preflight_capacity(device: dict[str, Any], budget: int | None) -> tuple[int | None, str]:
    """What the estimate is judged against: the budget, else the GPU's free memory now, else the
    device capacity of the header (the RAM on a CPU run)."""
    if budget:
        return budget, "budget"
    if device.get("type") == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device.get("index") or 0)
        return int(free), "free GPU memory"
    return device.get("capacity"), str(device.get("capacity_source") or "ram")


def preflight(cfg: Config, device: dict[str, Any], emit: Callable[..., None]) -> Any:
    """Estimate the run, write the ``estimate`` event (and a warning when it will not fit).

    Returns the :class:`~ftwatch.analysis.estimate.Estimate`, or ``None`` when the model cannot be
    estimated (written as a note; training goes on regardless).
    """
    from ftwatch.analysis.estimate import estimate

    on_gpu = device.get("type") == "cuda"
    try:
        capacity, source = preflight_capacity(device, cfg.monitor.budget)
        result = estimate(cfg, capacity, on_gpu=on_gpu, capacity_source=source)
        if result.verdict in ("tight", "does_not_fit"):
            from ftwatch.analysis.advice import suggest

            result.suggestions = suggest(result)
    except Exception as exc:  # an estimate must never keep a run from starting
        emit("note", code="preflight_failed", message=f"no pre-flight estimate: {exc}")
        return None
    data = result.to_json()
    emit("estimate", **{k: data[k] for k in ("params_total", "params_trainable", "estimate_bytes", "loading_bytes",
                                             "capacity_bytes", "capacity_source", "verdict", "fails_at",
                                             "suggestions")}, made="before loading")
    if result.verdict in ("tight", "does_not_fit"):
        emit("warning", **preflight_warning(result, data["suggestions"]))
    if cfg.data is not None and not cfg.data.packing and result.fails_at != "loading_model":
        preflight_longest_batch(cfg, result, emit)
    return result


def preflight_longest_batch(cfg: Config, result: Any, emit: Callable[..., None]) -> Any:
    """Scan the data's lengths; a ``longest_batch_will_not_fit`` warning when the longest batch does
    not fit while a typical one does. Returns the :class:`~ftwatch.training.longest_batch.LongestBatch`
    (``None`` when the scan failed: a note; training goes on)."""
    try:
        from ftwatch.training.data_lengths import scan_lengths
        from ftwatch.training.longest_batch import check_longest_batch

        longest = check_longest_batch(cfg, scan_lengths(cfg), result)
    except Exception as exc:  # the data is read again (and its errors told) when the Trainer is built
        emit("note", code="longest_batch_failed", message=f"no estimate of the longest batch: {exc}")
        return None
    if longest.warn:
        emit("warning", code="longest_batch_will_not_fit", level="danger", message=longest.message(),
             category="activations", step=None, steps_to_oom=None, suggestions=longest.fixes,
             at_step=longest.step, sample={"index": longest.sample_index, "where": longest.sample_where,
                                           "tokens": longest.sample_tokens})
    return longest


def preflight_warning(result: Any, suggestions: list[dict[str, Any]]) -> dict[str, Any]:
    """The warning a tight or failing estimate raises before loading."""
    if result.verdict == "does_not_fit":
        needs = result.loading_bytes if result.fails_at == "loading_model" else result.total
        message = (f"pre-flight estimate: will run out of memory {_PHASE.get(result.fails_at, '')} "
                   f"(needs {format_bytes(needs)}, {result.capacity_source} {format_bytes(result.capacity_bytes)})")
        code = "load_will_not_fit" if result.fails_at == "loading_model" else "will_not_fit"
        level = "danger"
    else:
        message = (f"pre-flight estimate: tight, peak {format_bytes(result.total)} of "
                   f"{format_bytes(result.capacity_bytes)} (under 10% headroom)")
        code, level = "tight_fit", "watch"
    return {"code": code, "level": level, "message": message, "category": None, "step": None,
            "steps_to_oom": None, "suggestions": suggestions[:MAX_SUGGESTIONS]}


class WarningSuggester:
    """Fixes for a live warning, priced on the last measured breakdown (the estimate's inputs are
    read once, on the first warning, in the analysis thread)."""

    def __init__(self, cfg: Config, on_gpu: bool, capacity: int | None) -> None:
        self.cfg = cfg
        self.on_gpu = on_gpu
        self.capacity = capacity
        self._inputs: Any = None

    def __call__(self, warning: dict[str, Any], snapshot: dict[str, Any] | None,
                 sample: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Up to :data:`MAX_SUGGESTIONS` ranked ``{change, config, saves_bytes, ...}``."""
        if not snapshot or not snapshot.get("categories"):
            return []
        from ftwatch.analysis.advice import suggest_for_measured
        from ftwatch.analysis.estimate import inputs_from_config

        if self._inputs is None:
            self._inputs = inputs_from_config(self.cfg, self.on_gpu)
        others = ((sample or {}).get("nvml") or {}).get("others") or []
        fixes = suggest_for_measured(self._inputs, snapshot["categories"], self.capacity,
                                     other_processes=[(pid, b) for pid, b in others if b])
        return [f.to_json() for f in fixes[:MAX_SUGGESTIONS]]
