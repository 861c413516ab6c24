"""What the memory bar shows: the parts, the scale they are drawn against, and the markers.

Pure functions of a :class:`~ftwatch.views.dashboard.run_view.RunView`, so they are tested without a screen.

- CUDA, training: the last step's snapshot (a calm, exact split that changes once per step).
- CUDA, other phases: the latest device sample split with the last snapshot's tensor figures, so
  the bar grows while the weights load (before the first snapshot, what the allocator holds while
  ``loading_model`` runs is shown as ``weights``, marked as estimated).
- CPU: the tensor categories plus the rest of the process's resident memory, against the budget
  or the RAM; the tensors are also shown zoomed when they are too small to read.
- After an out-of-memory exit: the breakdown recorded at the failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftwatch.runlog.categories import derive_device_categories, process_total
from ftwatch.runlog.events import CATEGORIES, TENSOR_CATEGORIES
from ftwatch.views.dashboard.palette import OUTSIDE, PROCESS_REST

try:  # the marker sits where the forecaster starts to warn
    from ftwatch.analysis.forecast_levels import WATCH_ENTER_HEADROOM as _HEADROOM
except ImportError:  # pragma: no cover - the dashboard works without the analysis package
    _HEADROOM = 0.15

#: Where the warning marker goes when no budget is set: this share of the capacity.
WARN_FRACTION = round(1.0 - _HEADROOM, 4)
#: Below this share of the bar the tensor categories also get a zoomed bar of their own.
ZOOM_BELOW = 0.1


@dataclass(frozen=True)
class Part:
    """One segment of the bar."""

    name: str
    bytes: int
    estimated: bool = False


@dataclass
class Breakdown:
    """Everything the memory panel draws."""

    parts: list[Part] = field(default_factory=list)
    scale: int = 0
    used: int | None = None
    peak: int | None = None
    threshold: int | None = None
    threshold_label: str = ""
    source: str = "none"
    capacity_label: str = ""

    @property
    def tensor_parts(self) -> list[Part]:
        """The parts measured from tensors."""
        return [p for p in self.parts if p.name in TENSOR_CATEGORIES]

    @property
    def tensor_total(self) -> int:
        """Bytes in the tensor categories."""
        return sum(p.bytes for p in self.tensor_parts)

    def share(self, nbytes: int | None) -> float | None:
        """``nbytes`` as a fraction of the bar."""
        if nbytes is None or self.scale <= 0:
            return None
        return nbytes / self.scale

    @property
    def needs_zoom(self) -> bool:
        """True when the tensor categories are too small on the main bar to be read."""
        total = self.tensor_total
        return self.scale > 0 and total > 0 and total / self.scale < ZOOM_BELOW


@dataclass(frozen=True)
class BarSegment:
    """A part laid out on a bar of a given width (in terminal cells)."""

    name: str
    start: int
    cells: int
    bytes: int


def layout_segments(parts: list[tuple[str, int]], scale: int, width: int) -> list[BarSegment]:
    """Lay parts out left to right on ``width`` cells, each boundary rounded half up.

    Boundary ``i`` sits at ``round_half_up(cumulative_bytes_i / scale * width)``, so the cells add
    up to exactly the share of the bar the parts fill, and a part smaller than half a cell may
    get none (the legend still lists it). Parts beyond the scale are clipped at the bar's end.
    """
    out: list[BarSegment] = []
    if width <= 0 or scale <= 0:
        return out
    cumulative = 0
    previous = 0
    for name, nbytes in parts:
        cumulative += max(int(nbytes), 0)
        end = min((2 * cumulative * width + scale) // (2 * scale), width)
        out.append(BarSegment(name, previous, end - previous, int(nbytes)))
        previous = end
    return out


def _tensor_figures(categories: dict[str, Any]) -> dict[str, int]:
    return {c: int(categories[c]) for c in TENSOR_CATEGORIES if categories.get(c) is not None}


def _ordered(categories: dict[str, Any]) -> list[Part]:
    return [Part(c, int(categories[c])) for c in CATEGORIES if categories.get(c) is not None]


def compute_breakdown(view: Any) -> Breakdown:
    """The bar for the run as ``view`` (a :class:`~ftwatch.views.dashboard.run_view.RunView`) last saw it."""
    if view.header.get("external"):
        return _set_threshold(outside_breakdown(view), view)
    device = view.device
    capacity = view.capacity
    snapshot = view.snapshot or {}
    sample = view.sample or {}
    oom = (view.exit or {}).get("oom") or {}
    last = oom.get("last_categories") if isinstance(oom, dict) else None
    out = Breakdown()
    if view.is_cuda:
        cats: dict[str, Any] | None = None
        parts: list[Part] = []
        if last:
            cats, out.source = dict(last), "oom"
        elif snapshot and (view.phase == "training" or view.ended or not sample
                           or float(snapshot.get("t", 0)) >= float(sample.get("t", 0))):
            cats, out.source = dict(snapshot.get("categories") or {}), "snapshot"
        elif sample.get("cuda"):
            cats, estimated = _live_categories(snapshot, sample, view.phase)
            out.source = "live"
            parts = [Part(p.name, p.bytes, estimated and p.name == "weights") for p in _ordered(cats)]
        if cats is not None and not parts:
            parts = _ordered(cats)
        out.parts = parts
        out.used = process_total({p.name: p.bytes for p in parts}) if parts else None
        out.peak = view.peak_total or None
        total = sum(p.bytes for p in parts)
        out.scale = max(capacity or 0, total)
        out.capacity_label = f"GPU {device.get('index', 0)}"
    else:
        tensors = _tensor_figures(last or snapshot.get("categories") or {})
        parts = [Part(c, tensors[c]) for c in TENSOR_CATEGORIES if c in tensors]
        tensor_total = sum(tensors.values())
        rss = sample.get("rss")
        if rss is not None:
            parts.append(Part(PROCESS_REST, max(int(rss) - tensor_total, 0)))
            out.used = max(int(rss), tensor_total)
        elif parts:
            out.used = tensor_total
        out.parts = parts
        out.source = "oom" if last else ("snapshot" if snapshot else ("live" if sample else "none"))
        out.peak = max(view.peak_rss or 0, view.peak_total or 0) or None
        out.scale = max(capacity or 0, out.used or 0)
        out.capacity_label = "budget" if device.get("capacity_source") == "budget" else "RAM"
    return _set_threshold(out, view)


def _set_threshold(out: Breakdown, view: Any) -> Breakdown:
    """The marker: the budget when one is set below the scale, else the warning share of the scale."""
    budget = view.header.get("budget")
    if budget and (out.scale == 0 or int(budget) < out.scale):
        out.threshold, out.threshold_label = int(budget), "budget"
    elif out.scale > 0:
        out.threshold, out.threshold_label = int(out.scale * WARN_FRACTION), f"{round(WARN_FRACTION * 100)}%"
    return out


def outside_breakdown(view: Any) -> Breakdown:
    """A process watched from outside (no probe in it): what it holds as one part, never split.

    CUDA: its NVML usage, then the other processes and what is free; CPU: its resident memory.
    """
    sample = view.sample or {}
    device = view.device
    out = Breakdown(source="outside")
    if view.is_cuda:
        nvml = sample.get("nvml") or {}
        process, used = nvml.get("process"), nvml.get("used")
        total = nvml.get("total") or view.capacity
        if process is not None:
            out.parts.append(Part(OUTSIDE, int(process)))
            out.used = int(process)
        if used is not None and process is not None:
            out.parts.append(Part("other_processes", max(int(used) - int(process), 0)))
        if used is not None and total:
            out.parts.append(Part("free", max(int(total) - int(used), 0)))
        out.peak = view.peak_total or None
        out.capacity_label = f"GPU {device.get('index', 0)}"
    else:
        rss = sample.get("rss")
        if rss is not None:
            out.parts.append(Part(OUTSIDE, int(rss)))
            out.used = int(rss)
        out.peak = view.peak_rss or None
        out.capacity_label = "budget" if device.get("capacity_source") == "budget" else "RAM"
    out.scale = max(view.capacity or 0, sum(p.bytes for p in out.parts))
    return out


def _live_categories(snapshot: dict[str, Any], sample: dict[str, Any], phase: str | None,
                     ) -> tuple[dict[str, int], bool]:
    """Split the latest device sample, using the last snapshot's tensor figures when there is one."""
    cuda = sample.get("cuda") or {}
    nvml = sample.get("nvml") or {}
    allocated = int(cuda.get("allocated") or 0)
    reserved = int(cuda.get("reserved") or 0)
    tensors = _tensor_figures(snapshot.get("categories") or {}) if snapshot else {}
    estimated = False
    if not tensors and phase in (None, "loading_model"):
        tensors, estimated = {"weights": allocated}, True
    derived = derive_device_categories(
        tensors, allocated=allocated, reserved=reserved, total=nvml.get("total"), used=nvml.get("used"),
        process_used=nvml.get("process"))
    return {**tensors, **derived}, estimated
