"""The run state model: one fold over the event stream, shared by every viewer.

Live runs, attach and replay all feed events into :class:`RunState`; the dashboard, the headless
printer and the report read it. It keeps bounded history (a downsampled timeline), so a run of
any length costs the viewer a fixed amount of memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ftwatch.runlog.categories import NOT_HELD, process_total
from ftwatch.runlog.events import CATEGORIES, TENSOR_CATEGORIES
from ftwatch.runlog.typed_events import SampleEvent, line_event


@dataclass
class PhaseRecord:
    """One phase of the run and what the process held while it lasted."""

    name: str
    start_t: float
    end_t: float | None = None
    start_used: int | None = None
    end_used: int | None = None
    peak_used: int | None = None

    @property
    def added(self) -> int | None:
        """Bytes the phase added to the process (used at its end minus used at its start)."""
        if self.start_used is None or self.end_used is None:
            return None
        return self.end_used - self.start_used


@dataclass
class TimelinePoint:
    """One point of the timeline: time, step, process usage and the tensor categories then."""

    t: float
    step: int | None
    used: int
    categories: dict[str, int] = field(default_factory=dict)


class Timeline:
    """A bounded series that keeps the whole run visible.

    When it is full, neighbouring points are merged pairwise (keeping the larger usage, so peaks
    survive) and the stride doubles: memory stays bounded, the start of the run is never dropped.
    """

    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = max(capacity, 4)
        self.points: list[TimelinePoint] = []
        self.stride = 1
        self._pending: TimelinePoint | None = None
        self._pending_count = 0

    def add(self, point: TimelinePoint) -> None:
        """Add a point (merged into the current bucket when the stride is above one)."""
        if self._pending is None:
            self._pending, self._pending_count = point, 1
        else:
            self._pending = _merge(self._pending, point)
            self._pending_count += 1
        if self._pending_count >= self.stride:
            self._close_bucket()

    def add_block(self, times: list[float], used: list[int], runs: list[tuple[int, int | None, dict[str, int]]]) -> None:
        """Add the points of a block of device samples, with the result :meth:`add` gives them one
        by one, at a cost per bucket rather than per point.

        ``times[i]`` and ``used[i]`` are a point's time and usage; ``runs`` splits the points into
        runs that share a step and a breakdown (the samples between two snapshots): ``(end, step,
        categories)`` covers the points from the previous run's ``end`` up to its own, none empty.
        A bucket keeps the point of the largest usage (the later one of equal usages), the last
        known step and the largest of each category, as :func:`_merge` does."""
        n, i, r = len(times), 0, 0
        ends = [run[0] for run in runs]
        while i < n:
            take = min(self.stride - self._pending_count, n - i)
            stop = i + take
            # The last of the largest usages of the bucket's share (max keeps the first of equals,
            # so it walks the share backwards).
            j = i if take == 1 else max(range(stop - 1, i - 1, -1), key=used.__getitem__)
            while ends[r] <= i:
                r += 1
            q = r
            while ends[q] < stop:
                q += 1
            step = next((runs[k][1] for k in range(q, r - 1, -1) if runs[k][1] is not None), None)
            cats = runs[r][2] if q == r else _largest([run[2] for run in runs[r:q + 1]])
            point = TimelinePoint(t=times[j], step=step, used=used[j], categories=cats)
            if self._pending is None:
                self._pending, self._pending_count = point, take
            else:
                self._pending = _merge(self._pending, point)
                self._pending_count += take
            i = stop
            if self._pending_count >= self.stride:
                self._close_bucket()

    def _close_bucket(self) -> None:
        """Store the filled bucket; when the points reach the capacity, merge them pairwise and double
        the stride."""
        self.points.append(self._pending)
        self._pending, self._pending_count = None, 0
        if len(self.points) >= self.capacity:
            self.points = [
                _merge(self.points[i], self.points[i + 1]) if i + 1 < len(self.points) else self.points[i]
                for i in range(0, len(self.points), 2)
            ]
            self.stride *= 2

    def all_points(self) -> list[TimelinePoint]:
        """The stored points plus the bucket still filling."""
        return self.points + ([self._pending] if self._pending is not None else [])


class _Maxima(dict):
    """A merged breakdown: per category the larger of two. ``covers`` holds (by identity) two plain
    breakdowns it is at least as large as in every category (its first and its latest source; the
    same one twice when there is one), so merging one of them in again needs no per-key max. Only
    plain breakdowns are held, so a merge keeps no chain of older merges alive. Never changed in
    place."""

    __slots__ = ("covers",)


def _merge(a: TimelinePoint, b: TimelinePoint) -> TimelinePoint:
    ca, cb = a.categories, b.categories
    # Points between two snapshots share one breakdown, and a bucket merges each sample's breakdown
    # into a point that already holds it: nothing to merge then (identity checks only).
    if ca is cb or (type(cb) is _Maxima and (ca is cb.covers[0] or ca is cb.covers[1])):
        cats = cb
    elif type(ca) is _Maxima and (cb is ca.covers[0] or cb is ca.covers[1]):
        cats = ca
    elif ca == cb:
        cats = cb
    else:
        if len(ca) == len(cb) and tuple(ca) == tuple(cb):  # the same names in the same order: the usual case
            cats = _Maxima(zip(ca, map(max, ca.values(), cb.values()), strict=True))
        else:
            cats = _Maxima({k: max(ca.get(k, 0), cb.get(k, 0)) for k in ca.keys() | cb.keys()})
        cats.covers = (ca.covers[0] if type(ca) is _Maxima else ca, cb.covers[1] if type(cb) is _Maxima else cb)
    keep = b if b.used >= a.used else a
    step = b.step if b.step is not None else a.step
    if keep.categories is cats and keep.step == step:
        return keep  # the merge is that point itself (points are never changed in place)
    return TimelinePoint(t=keep.t, step=step, used=keep.used, categories=cats)


def _largest(breakdowns: list[dict[str, int]]) -> dict[str, int]:
    """Per category the largest of several breakdowns, as merging them in order gives it."""
    first = breakdowns[0]
    names = tuple(first)
    if all(len(c) == len(names) and tuple(c) == names for c in breakdowns):
        cats = _Maxima(zip(names, map(max, *(c.values() for c in breakdowns)), strict=True))
        cats.covers = (first, breakdowns[-1])
        return cats
    point = TimelinePoint(t=0.0, step=None, used=0, categories=first)
    for other in breakdowns[1:]:
        point = _merge(point, TimelinePoint(t=0.0, step=None, used=0, categories=other))
    return point.categories


def _last_position(events: list[Any], match: Any) -> int:
    """The position of the last of ``events`` that ``match(event)`` holds for, searched from the end
    (it is usually near it)."""
    return next(k for k in range(len(events) - 1, -1, -1) if match(events[k]))


def timeline_categories(categories: dict[str, int | None] | None) -> dict[str, int]:
    """The copy of a snapshot's breakdown that timeline points carry: the known figures (a ``null``
    category, a figure the run did not know, is left out)."""
    return {k: v for k, v in categories.items() if v is not None} if categories else {}


def sample_used(sample: dict[str, Any]) -> int | None:
    """What the process holds according to a device sample: NVML, else allocator, else RSS."""
    nvml = sample.get("nvml") or {}
    if nvml.get("process") is not None:
        return int(nvml["process"])
    cuda = sample.get("cuda") or {}
    if cuda.get("reserved") is not None:
        return int(cuda["reserved"])
    rss = sample.get("rss")
    return int(rss) if rss is not None else None


#: Event kind -> the ``RunState._on_<kind>`` handler (or None), filled as kinds are first seen.
_HANDLERS: dict[str, Any] = {}


class RunState:
    """Everything a viewer knows about a run, folded from its events."""

    def __init__(self, timeline_capacity: int = 2048) -> None:
        self.header: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.estimate: dict[str, Any] | None = None
        #: The step total the ``training`` phase event carries (a script's header does not know it).
        self.phase_max_steps: int | None = None
        self.phase: str | None = None
        self.phases: list[PhaseRecord] = []
        self.step: int = 0
        self.loss: float | None = None
        self.last_sample: dict[str, Any] | None = None
        self.last_snapshot: dict[str, Any] | None = None
        self.peaks: dict[str, int] = {}
        self.peak_total: int = 0
        self.peak_rss: int = 0
        #: CPU measured steps (``tensor_peak``): the latest such snapshot, and the run's largest
        #: true peak with its split and step.
        self.last_tensor_peak: dict[str, Any] | None = None
        self.tensor_peak: int | None = None
        self.tensor_peak_split: dict[str, int] = {}
        self.tensor_peak_step: int | None = None
        #: The last ``modules`` event's payload with its ``step`` and ``phase`` (where inside the
        #: model, on the latest attributed step); ``None`` before one.
        self.modules: dict[str, Any] | None = None
        self.warnings: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.exit: dict[str, Any] | None = None
        self.timeline = Timeline(timeline_capacity)
        self.samples = 0
        self.snapshots = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self._step_times: list[tuple[float, int]] = []
        self._cats_cache: tuple[dict[str, Any], dict[str, int]] | None = None

    # -- folding -----------------------------------------------------------------------------
    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state.

        Time never runs backwards in the fold: an event stamped before the one that came before it
        (a clock stepped back, or a crafted log) is taken as happening at that event's time, so no
        duration is negative."""
        t = float(event["t"])
        if self.first_t is None:
            self.first_t = t
        elif self.last_t is not None and t < self.last_t:
            t = self.last_t
        self.last_t = t
        kind = event["kind"]
        try:
            handler = _HANDLERS[kind]
        except KeyError:
            handler = _HANDLERS.setdefault(kind, getattr(RunState, "_on_" + kind, None))
        if handler is not None:
            handler(self, event, t)

    def apply_all(self, events: list[dict[str, Any]]) -> None:
        """Fold several events in order."""
        for event in events:
            self.apply(event)

    def apply_typed(self, events: list[Any], block: bytes) -> None:
        """Fold a block of samples and snapshots decoded as structs
        (:func:`ftwatch.runlog.typed_events.decode_block`) from the lines of ``block``, with the state
        :meth:`apply` gives their event dicts one by one (``tests/runlog/test_typed_fold.py`` holds
        the two to each other).

        The samples only gather their times and usages here, the snapshots their breakdowns: the
        timeline, the peaks and the phase take them as a whole (:meth:`Timeline.add_block`,
        :meth:`_fold_typed_snapshots`). Only the events the state keeps (the last sample and
        snapshot) become event dicts, parsed again from their lines."""
        if not events:
            return
        if self.first_t is None:
            self.first_t = events[0].t
        sample_type, peak_rss, step = SampleEvent, self.peak_rss, self.step
        clock = self.last_t if self.last_t is not None else -math.inf  # the fold's time: never backwards
        timeline_step = step if self.snapshots else None
        cats = self._timeline_cats(self.last_snapshot)
        times: list[float] = []
        used_list: list[int] = []
        add_time, add_used = times.append, used_list.append
        runs: list[tuple[int, int | None, dict[str, int]]] = []
        snapshots: list[tuple[float, Any, dict[str, int]]] = []
        for event in events:
            t = event.t
            if t > clock:
                clock = t
            if event.__class__ is sample_type:
                rss = event.rss
                if rss is not None and rss > peak_rss:
                    peak_rss = rss
                nvml = event.nvml
                used = nvml.process if nvml is not None else None
                if used is None:
                    cuda = event.cuda
                    used = cuda.reserved if cuda is not None and cuda.reserved is not None else rss
                if used is not None:
                    add_time(clock)
                    add_used(used)
                continue
            runs.append((len(times), timeline_step, cats))
            cats = event.categories
            if not cats:
                cats = {}
            elif None in cats.values():
                cats = timeline_categories(cats)
            snapshots.append((clock, event, cats))
            if event.step is not None:
                step = event.step
            timeline_step = step
        runs.append((len(times), timeline_step, cats))
        # A run without samples (two snapshots in a row) gives the timeline no point.
        runs = [run for k, run in enumerate(runs) if run[0] > (runs[k - 1][0] if k else 0)]
        self.samples += len(events) - len(snapshots)
        self.peak_rss, self.last_t = peak_rss, clock
        if snapshots:
            self._fold_typed_snapshots(snapshots, events, block)
        if used_list:
            self._add_samples(times, used_list, runs)
        if len(snapshots) < len(events):
            last = _last_position(events, lambda event: event.__class__ is sample_type)
            self.last_sample = line_event(block, last, len(events))
        if snapshots:
            self._cats_cache = (self.last_snapshot, cats)

    def _add_samples(self, times: list[float], used: list[int], runs: list[tuple[int, int | None, dict[str, int]]]) -> None:
        """The device samples of a block: the peaks, the phase's usage, the timeline."""
        top = max(used)
        if self.is_cuda:
            self.peak_total = max(self.peak_total, top)
        if self.phases:
            current = self.phases[-1]
            current.peak_used = top if current.peak_used is None else max(current.peak_used, top)
            current.end_used = used[-1]
        self.timeline.add_block(times, used, runs)

    def _fold_typed_snapshots(self, snapshots: list[tuple[float, Any, dict[str, int]]], events: list[Any],
                              block: bytes) -> None:
        """The snapshot structs ``(time, struct, breakdown without nulls)`` of a block's ``events``,
        as :meth:`_on_snapshot` folds their dicts one by one."""
        self.snapshots += len(snapshots)
        step_times, loss, tensor_peak_event = self._step_times, self.loss, None
        for t, event, _ in snapshots:
            step = event.step
            if step is not None:
                self.step = step
                step_times.append((t, step))
            if event.loss is not None:
                loss = event.loss
            peak = event.tensor_peak
            if peak is not None:
                tensor_peak_event = event
                if self.tensor_peak is None or peak > self.tensor_peak:
                    self.tensor_peak = peak
                    self.tensor_peak_split = dict(event.tensor_peak_split or {})
                    self.tensor_peak_step = step
        del step_times[:-20]
        self.loss = None if loss is None else float(loss)
        breakdowns = [cats for _, _, cats in snapshots]
        names = tuple(breakdowns[0])
        peaks = self.peaks
        if all(len(c) == len(names) and tuple(c) == names for c in breakdowns):
            columns = list(zip(*(c.values() for c in breakdowns), strict=True)) if names else []
            for name, column in zip(names, columns, strict=True):
                top = max(column)
                old = peaks.get(name)
                if old is None or top > old:
                    peaks[name] = top
            held = [column for name, column in zip(names, columns, strict=True) if name not in NOT_HELD]
            totals = list(map(sum, zip(*held, strict=True))) if held else [0]
            self.peak_total = max(self.peak_total, max(totals))
        else:
            for cats in breakdowns:
                for name, value in cats.items():
                    old = peaks.get(name)
                    if old is None or value > old:
                        peaks[name] = value
                self.peak_total = max(self.peak_total, process_total(cats))
        last = snapshots[-1][1]
        self.last_snapshot = line_event(block, _last_position(events, lambda event: event is last), len(events))
        if tensor_peak_event is not None:
            self.last_tensor_peak = (self.last_snapshot if tensor_peak_event is last
                                     else line_event(block, _last_position(events, lambda event: event is tensor_peak_event), len(events)))

    def _on_header(self, event: dict[str, Any], t: float) -> None:
        self.header = event
        if self.notes:  # the worker's ``starting`` note said what the wait was for: it is over
            self.notes = [n for n in self.notes if n.get("code") != "starting"]

    def _on_model(self, event: dict[str, Any], t: float) -> None:
        self.model = event
        if not self.header.get("model") and isinstance(event.get("name"), str) and event["name"]:
            self.header = {**self.header, "model": event["name"]}  # a script's header: written before the model

    def _on_estimate(self, event: dict[str, Any], t: float) -> None:
        self.estimate = event

    def _on_phase(self, event: dict[str, Any], t: float) -> None:
        used = sample_used(self.last_sample) if self.last_sample else None
        if self.phases and self.phases[-1].end_t is None:
            self.phases[-1].end_t = t
            self.phases[-1].end_used = used
        self.phase = event["name"]
        steps = event.get("max_steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
            self.phase_max_steps = steps
        self.phases.append(PhaseRecord(name=event["name"], start_t=t, start_used=used, peak_used=used))

    def _on_sample(self, event: dict[str, Any], t: float) -> None:
        self.samples += 1
        self.last_sample = event
        used = sample_used(event)
        rss = event.get("rss")
        if rss is not None:
            self.peak_rss = max(self.peak_rss, int(rss))
        if used is None:
            return
        if self.is_cuda:
            self.peak_total = max(self.peak_total, used)
        if self.phases:
            current = self.phases[-1]
            current.peak_used = used if current.peak_used is None else max(current.peak_used, used)
            current.end_used = used
        cats = self._timeline_cats(self.last_snapshot)
        self.timeline.add(TimelinePoint(t=t, step=self.step if self.snapshots else None, used=used, categories=cats))

    def _timeline_cats(self, snapshot: dict[str, Any] | None) -> dict[str, int]:
        """The breakdown timeline points carry: one copy per snapshot, shared by the samples after it
        (points are never changed in place, and the timeline merges shared breakdowns cheaply)."""
        if snapshot is None:
            return {}
        cached = self._cats_cache
        if cached is None or cached[0] is not snapshot:
            cached = self._cats_cache = (snapshot, timeline_categories(snapshot.get("categories")))
        return cached[1]

    def _on_snapshot(self, event: dict[str, Any], t: float) -> None:
        self.snapshots += 1
        self.last_snapshot = event
        if event.get("step") is not None:
            self.step = int(event["step"])
            self._step_times.append((t, self.step))
            del self._step_times[:-20]
        if event.get("loss") is not None:
            self.loss = float(event["loss"])
        if event.get("tensor_peak") is not None:
            self.last_tensor_peak = event
            if self.tensor_peak is None or int(event["tensor_peak"]) > self.tensor_peak:
                self.tensor_peak = int(event["tensor_peak"])
                self.tensor_peak_split = dict(event.get("tensor_peak_split") or {})
                self.tensor_peak_step = event.get("step")
        cats = event.get("categories") or {}
        for name, value in cats.items():
            if value is not None:
                self.peaks[name] = max(self.peaks.get(name, 0), int(value))
        self.peak_total = max(self.peak_total, process_total(cats))

    def _on_modules(self, event: dict[str, Any], t: float) -> None:
        self.modules = {k: v for k, v in event.items() if k not in ("v", "t", "kind")}

    def _on_warning(self, event: dict[str, Any], t: float) -> None:
        self.warnings.append(event)

    def _on_note(self, event: dict[str, Any], t: float) -> None:
        self.notes.append(event)

    def _on_exit(self, event: dict[str, Any], t: float) -> None:
        self.exit = event
        if self.phases and self.phases[-1].end_t is None:
            self.phases[-1].end_t = t

    # -- reading -----------------------------------------------------------------------------
    @property
    def device(self) -> dict[str, Any]:
        """The header's device description (type, name, capacity)."""
        return self.header.get("device") or {}

    @property
    def is_cuda(self) -> bool:
        """True when the run trains on a CUDA device."""
        return self.device.get("type") == "cuda"

    @property
    def capacity(self) -> int | None:
        """What the bar is drawn against: device capacity, else the budget, else the RAM."""
        cap = self.device.get("capacity")
        return int(cap) if cap else None

    @property
    def status(self) -> str:
        """``running`` until the exit event, then its status."""
        return self.exit["status"] if self.exit else "running"

    @property
    def categories(self) -> dict[str, int]:
        """The latest breakdown (from the last snapshot)."""
        return dict((self.last_snapshot or {}).get("categories") or {})

    @property
    def max_steps(self) -> int | None:
        """The planned number of optimizer steps, when known."""
        value = self.header.get("max_steps") or self.phase_max_steps
        return int(value) if value else None

    @property
    def origin(self) -> str | None:
        """Who started the run's probe (the header's ``origin``: ``worker``, ``callback``, ``command``)."""
        value = self.header.get("origin")
        return value if isinstance(value, str) else None

    @property
    def steps_per_second(self) -> float | None:
        """Recent training speed, from the last snapshots' timestamps."""
        if len(self._step_times) < 2:
            return None
        (t0, s0), (t1, s1) = self._step_times[0], self._step_times[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    @property
    def elapsed(self) -> float:
        """Seconds from the first to the latest event."""
        if self.first_t is None or self.last_t is None:
            return 0.0
        return self.last_t - self.first_t

    def summary(self) -> dict[str, Any]:
        """The run summary object of DESIGN.md (the ``--json`` output); stable key names."""
        status = self.exit["status"] if self.exit else "failed"
        peak = {name: self.peaks[name] for name in CATEGORIES if name in self.peaks}
        peak["total"] = self.peak_total
        exit_event = self.exit or {}
        return {
            "status": status,
            "steps": self.step,
            "capacity_bytes": self.capacity,
            "capacity_source": self.device.get("capacity_source"),
            "device": self.device.get("name"),
            "peak_bytes": peak,
            "peak_rss_bytes": self.peak_rss or None,
            "tensor_peak_bytes": {**self.tensor_peak_split, "total": self.tensor_peak, "step": self.tensor_peak_step}
            if self.tensor_peak is not None else None,
            "phases": [
                {"name": p.name, "peak_bytes": p.peak_used, "added_bytes": p.added,
                 "seconds": round(p.end_t - p.start_t, 3) if p.end_t is not None else None}
                for p in self.phases
            ],
            "warnings": [
                {k: w.get(k) for k in ("code", "level", "message", "category", "suggestions") if k in w}
                for w in self.warnings
            ],
            "notes": [n.get("message") for n in self.notes],
            "oom": exit_event.get("oom"),
            "error": exit_event.get("message") if status in ("failed", "oom") else None,
            "suggestions": exit_event.get("suggestions") or [],
            "model": self.header.get("model"),
            "params_total": self.model.get("params_total"),
            "params_trainable": self.model.get("params_trainable"),
            "loss": self.loss,
            "elapsed_seconds": round(self.elapsed, 3),
            "estimate": {k: self.estimate.get(k) for k in ("verdict", "fails_at", "estimate_bytes", "capacity_bytes")}
            if self.estimate else None,
            "lost_events": self.lost_events,
        }

    @property
    def lost_events(self) -> int:
        """Events the training process could not write to its log (a full or read-only disk): the
        exit event's count, else the sum of the ``events_lost`` notes written when writing worked
        again (a lower bound when the run's own exit event is missing)."""
        counted = (self.exit or {}).get("lost_events")
        if isinstance(counted, int):
            return counted
        return sum(int(n.get("lost_events") or 0) for n in self.notes if n.get("code") == "events_lost")

    def tensor_total(self) -> int:
        """Sum of the tensor categories in the latest breakdown."""
        cats = self.categories
        return sum(int(cats.get(c) or 0) for c in TENSOR_CATEGORIES)
