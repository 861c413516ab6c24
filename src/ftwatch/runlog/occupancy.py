"""How close a run is to running out: what a step leaves unavailable (the measure the live forecast
takes its headroom on) and the figures the dashboard, the exporter and the rank view share.

Imports neither torch nor textual.
"""

from __future__ import annotations

from typing import Any

from ftwatch.runlog.categories import process_total
from ftwatch.runlog.events import TENSOR_CATEGORIES
from ftwatch.runlog.state import RunState

#: Warning level -> risk value (``ftwatch_risk_level``; higher is worse).
RISK_LEVELS: dict[str, int] = {"ok": 0, "watch": 1, "danger": 2}


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def step_occupied(snapshot: dict[str, Any], is_cuda: bool) -> int | None:
    """What a step left unavailable: this process's peak (plus other processes on CUDA)."""
    cats = {k: int(v) for k, v in (snapshot.get("categories") or {}).items() if isinstance(v, (int, float))}
    tensors = sum(cats.get(c, 0) for c in TENSOR_CATEGORIES)
    if not is_cuda:
        return tensors if cats else None
    if "other" in cats or "cache" in cats:
        own = process_total(cats)
    elif snapshot.get("allocated_peak") is not None:
        own = max(int(snapshot["allocated_peak"]), tensors)
    elif cats:
        own = tensors
    else:
        return None
    return own + cats.get("other_processes", 0)


def occupied_bytes(state: RunState) -> int | None:
    """What the run leaves unavailable, the measure the live forecast's headroom is taken on.

    The last snapshot's figure (CUDA: this process's peak in the step plus the other processes;
    CPU: the tensor categories, drawn against the budget or the RAM); on CUDA before any
    snapshot (loading), the latest sample's device usage (NVML, else this process, else the
    allocator's reservation).
    """
    if state.last_snapshot is not None:
        occupied = step_occupied(state.last_snapshot, state.is_cuda)
        if occupied is not None:
            return occupied
    if state.is_cuda and state.last_sample is not None:
        nvml = state.last_sample.get("nvml") or {}
        cuda = state.last_sample.get("cuda") or {}
        for value in (nvml.get("used"), nvml.get("process"), cuda.get("reserved")):
            if _int(value) is not None:
                return _int(value)
    return None


def risk_level(state: RunState) -> int:
    """0 ok, 1 watch, 2 danger: the level of the latest warning while the run goes on (the
    dashboard's rule: the forecast raises the level with a warning); 0 once the run has ended."""
    if state.exit is not None or not state.warnings:
        return 0
    return RISK_LEVELS.get(str(state.warnings[-1].get("level")), 0)


def used_fraction(state: RunState) -> float | None:
    """:func:`occupied_bytes` as a share of the capacity (``None`` while either is unknown)."""
    occupied, capacity = occupied_bytes(state), state.capacity
    if occupied is None or not capacity:
        return None
    return occupied / capacity
