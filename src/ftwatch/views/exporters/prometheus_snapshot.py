"""The snapshot a Prometheus scrape renders: plain values copied from a run's folded state.

:func:`snapshot_of` turns a :class:`~ftwatch.runlog.state.RunState` into an immutable
:class:`MetricsSnapshot` in the thread that folds it, so a scrape never sees a half-applied event.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ftwatch.runlog.occupancy import occupied_bytes, risk_level
from ftwatch.runlog.state import RunState, sample_used

#: Label values are cut to this many characters (an outside process's command line can be long).
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape shows: plain values copied from a :class:`RunState` in the folding thread."""

    run: str
    rank: str
    device: str
    info: dict[str, str]
    status: str
    phase: str | None
    memory: dict[str, int]
    peaks: dict[str, int]
    peak_total: int | None
    process_bytes: int | None
    rss_bytes: int | None
    peak_rss_bytes: int | None
    capacity: int | None
    headroom: int | None
    risk: int
    step: int
    max_steps: int | None
    loss: float | None
    steps_per_second: float | None
    warnings: dict[tuple[str, str], int] = field(default_factory=dict)
    start_t: float | None = None
    last_t: float | None = None

    @property
    def base(self) -> list[str]:
        """The values of :data:`~ftwatch.views.exporters.prometheus_metrics.BASE_LABELS`."""
        return [self.run, self.rank, self.device]


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _label(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def device_label(device: dict[str, Any]) -> str:
    """``cuda:0``, ``cpu``: the device's type and index as torch writes them."""
    kind = str(device.get("type") or "unknown")
    index = device.get("index")
    return f"{kind}:{index}" if index is not None else kind


def snapshot_of(state: RunState) -> MetricsSnapshot | None:
    """A consistent copy of what the metrics show; ``None`` until the header has been read.

    Call it in the thread that folds ``state`` (it reads the state without a lock).
    """
    header = state.header
    if not header:
        return None
    device = state.device
    memory = {k: int(v) for k, v in state.categories.items() if _int(v) is not None}
    capacity = state.capacity
    occupied = occupied_bytes(state)
    last_sample = state.last_sample or {}
    info = {
        "run_id": _label(header.get("run_id")),
        "model": _label(header.get("model")),
        "host": _label(header.get("host")),
        "pid": _label(header.get("pid")),
        "device_name": _label(device.get("name")),
        "capacity_source": _label(device.get("capacity_source")),
        "world_size": _label(header.get("world_size") or 1),
        "external": "true" if header.get("external") else "false",
        "ftwatch_version": _label((header.get("versions") or {}).get("ftwatch")),
    }
    warnings = Counter((str(w.get("code") or "unknown"), str(w.get("level") or "unknown"))
                       for w in state.warnings)
    return MetricsSnapshot(
        run=_label(header.get("name") or header.get("run_id") or "run"),
        rank=str(_int(header.get("rank")) or 0),
        device=device_label(device),
        info=info,
        status=state.status,
        phase=state.phase,
        memory=memory,
        peaks={k: int(v) for k, v in state.peaks.items()},
        peak_total=state.peak_total or None,
        process_bytes=sample_used(last_sample) if last_sample else None,
        rss_bytes=_int(last_sample.get("rss")),
        peak_rss_bytes=state.peak_rss or None,
        capacity=capacity,
        headroom=capacity - occupied if capacity is not None and occupied is not None else None,
        risk=risk_level(state),
        step=state.step,
        max_steps=state.max_steps,
        loss=state.loss,
        steps_per_second=state.steps_per_second,
        warnings=dict(warnings),
        start_t=state.first_t,
        last_t=state.last_t,
    )
