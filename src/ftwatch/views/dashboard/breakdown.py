"""What the memory bar shows: the parts, the scale they are drawn against, and the markers.

Pure functions of a :class:`~ftwatch.views.dashboard.run_view.RunView`, so they are tested without a screen.

- CUDA, training: the last step's snapshot (a calm, exact split that changes once per step).
- CUDA, other phases: the latest device sample split with the last snapshot's tensor figures, so
  the bar grows while the weights load (before the first snapshot, what the allocator holds while
  ``loading_model`` runs is shown as ``weights``, marked as estimated).
- CPU: the tensor categories plus the rest of the process's resident memory, drawn against the
  process itself (its peak RSS), not the RAM: the tensors of a small model are a sliver of the RAM.
  Once a step was measured by the peak meter, the tensor parts are the true peak's split (what was
  live at the step's peak of live tensor bytes, ``other`` included) and the true peak has a marker.
  The RAM or the budget (``scale``) stays in the panel title and places the warning marker; the
  tensors are also shown zoomed when they are too small to read.

Every part that holds bytes gets at least one cell of a bar (:func:`layout_segments` with
``min_cell``), so no category is dropped from a bar because it is small; its legend entry gives
its true size and share.
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
    """Everything the memory panel draws.

    ``scale`` is what the run is measured against (the device, the budget or the RAM: the title's
    "of ...", the warning threshold); ``bar_scale``, when set, is what the bar is drawn against
    instead (a CPU run: the process's own memory). ``peak_label`` names what ``peak`` measures.
    """

    parts: list[Part] = field(default_factory=list)
    scale: int = 0
    used: int | None = None
    peak: int | None = None
    threshold: int | None = None
    threshold_label: str = ""
    source: str = "none"
    capacity_label: str = ""
    bar_scale: int = 0
    peak_label: str = "peak"
    scale_note: str = ""
    #: CPU: the measured peak of live tensor bytes (its parts are the split at it) and its step.
    true_peak: int | None = None
    true_peak_step: int | None = None

    @property
    def drawn_scale(self) -> int:
        """The bytes the full width of the bar stands for."""
        return self.bar_scale or self.scale

    @property
    def tensor_parts(self) -> list[Part]:
        """The parts measured from tensors (with a true peak, its ``other`` too)."""
        names = (*TENSOR_CATEGORIES, "other") if self.true_peak is not None else TENSOR_CATEGORIES
        return [p for p in self.parts if p.name in names]

    @property
    def tensor_total(self) -> int:
        """Bytes in the tensor categories."""
        return sum(p.bytes for p in self.tensor_parts)

    def share(self, nbytes: int | None) -> float | None:
        """``nbytes`` as a fraction of ``scale`` (the device, the budget or the RAM)."""
        if nbytes is None or self.scale <= 0:
            return None
        return nbytes / self.scale

    def bar_share(self, nbytes: int | None) -> float | None:
        """``nbytes`` as a fraction of the bar (of the process's memory on a CPU run)."""
        scale = self.drawn_scale
        if nbytes is None or scale <= 0:
            return None
        return nbytes / scale

    @property
    def needs_zoom(self) -> bool:
        """True when the tensor categories are too small on the main bar to be read."""
        total, scale = self.tensor_total, self.drawn_scale
        return scale > 0 and total > 0 and total / scale < ZOOM_BELOW


@dataclass(frozen=True)
class BarSegment:
    """A part laid out on a bar of a given width (in terminal cells)."""

    name: str
    start: int
    cells: int
    bytes: int


def layout_segments(parts: list[tuple[str, int]], scale: int, width: int,
                    min_cell: bool = False) -> list[BarSegment]:
    """Lay parts out left to right on ``width`` cells, each boundary rounded half up.

    Boundary ``i`` sits at ``round_half_up(cumulative_bytes_i / scale * width)``, so the cells add
    up to exactly the share of the bar the parts fill, and a part smaller than half a cell may
    get none. Parts beyond the scale are clipped at the bar's end.

    With ``min_cell`` (what the bars draw), each part that holds bytes but got no cell then takes
    one, in the bar's order, from the widest part (the first of equals) while that has more than
    one, else from the empty rest of the bar; only a bar narrower than its parts leaves one out.
    """
    if width <= 0 or scale <= 0:
        return []
    cells: list[int] = []
    cumulative = 0
    previous = 0
    for _, nbytes in parts:
        cumulative += max(int(nbytes), 0)
        end = min((2 * cumulative * width + scale) // (2 * scale), width)
        cells.append(end - previous)
        previous = end
    if min_cell:
        _give_minimum_cells(cells, [int(b) for _, b in parts], width)
    out: list[BarSegment] = []
    start = 0
    for (name, nbytes), n in zip(parts, cells, strict=True):
        out.append(BarSegment(name, start, n, int(nbytes)))
        start += n
    return out


def _give_minimum_cells(cells: list[int], sizes: list[int], width: int) -> None:
    """One cell for each part with bytes and no cell: from the widest part, else from the track."""
    for i, nbytes in enumerate(sizes):
        if nbytes <= 0 or cells[i] > 0:
            continue
        widest = max(range(len(cells)), key=lambda j: (cells[j], -j))
        if cells[widest] > 1:
            cells[widest] -= 1
            cells[i] = 1
        elif sum(cells) < width:
            cells[i] = 1


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
        _cpu_breakdown(out, view, last)
    return _set_threshold(out, view)


def _cpu_breakdown(out: Breakdown, view: Any, last: dict[str, Any] | None) -> None:
    """A CPU run: the tensors and the rest of the process's RSS, on a bar as long as its peak RSS.

    The peak is the samples' RSS (``peak RSS``), which is not the tensors' peak; before the first
    sample there is no RSS, and the bar and its peak are the tensors' own (``tensor peak``).
    """
    snapshot = view.snapshot or {}
    sample = view.sample or {}
    tensors = _tensor_figures(last or snapshot.get("categories") or {})
    true_peak = None if last else getattr(view, "true_peak", None)
    if true_peak is not None:  # the split at the measured peak: one moment, other included
        out.true_peak, split, out.true_peak_step = true_peak
        tensors = {c: int(split.get(c) or 0) for c in (*TENSOR_CATEGORIES, "other")}
    parts = [Part(c, v) for c, v in tensors.items()]
    tensor_total = sum(tensors.values())
    rss = sample.get("rss")
    if rss is not None:
        parts.append(Part(PROCESS_REST, max(int(rss) - tensor_total, 0)))
        out.used = max(int(rss), tensor_total)
        out.peak, out.peak_label = view.peak_rss or None, "peak RSS"
        out.scale_note = "bar: this process's RSS"
    elif parts:
        out.used = tensor_total
        if out.true_peak is not None:
            out.peak, out.peak_label = out.true_peak, "true peak"
        else:
            out.peak, out.peak_label = view.peak_total or None, "tensor peak"
        out.scale_note = "bar: the tensors"
    out.parts = parts
    out.source = "oom" if last else ("snapshot" if snapshot else ("live" if sample else "none"))
    out.scale = max(view.capacity or 0, out.used or 0)
    out.bar_scale = max(out.used or 0, out.peak or 0)
    out.capacity_label = "budget" if view.device.get("capacity_source") == "budget" else "RAM"


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
