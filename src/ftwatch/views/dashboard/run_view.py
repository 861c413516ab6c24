"""The dashboard's plain data: :class:`RunView`, the consistent copy of a run that one render draws
(taken under a feed's lock), and :class:`ReplayInfo`, where a replay stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftwatch.runlog.state import PhaseRecord, TimelinePoint

if TYPE_CHECKING:
    from ftwatch.views.dashboard.rank_rows import RanksView


@dataclass(frozen=True)
class ReplayInfo:
    """Where a replay stands (see :mod:`ftwatch.views.dashboard.replay`); ``None`` on a live view."""

    playing: bool
    rate: float | None  # run seconds per second of playback; None while still unknown
    position: int  # events shown so far
    total: int | None  # events in the log, once it has been read to its end
    loaded: float  # share of the log read so far (0..1)
    run_seconds: float  # where the replay stands, from the start of the run
    duration: float | None  # the whole recording, when known
    at_end: bool
    loading: bool = False  # the screen follows the log as it is read, up to its end (``--speed max``)


@dataclass
class RunView:
    """A consistent copy of what the screen shows, taken under the feed's lock."""

    version: int
    header: dict[str, Any]
    model: dict[str, Any]
    phase: str | None
    phases: list[PhaseRecord]
    step: int
    loss: float | None
    categories: dict[str, int]
    snapshot: dict[str, Any] | None
    sample: dict[str, Any] | None
    peaks: dict[str, int]
    peak_total: int
    peak_rss: int
    warnings: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    exit: dict[str, Any] | None
    timeline: list[TimelinePoint]
    samples: int
    snapshots: int
    steps_per_second: float | None
    elapsed: float
    capacity: int | None
    is_cuda: bool
    max_steps: int | None
    log_lines: list[str]
    log_version: int
    log_exists: bool
    worker_alive: bool | None
    stop_requested_at: float | None
    last_event_wall: float | None
    error: str | None
    summary: dict[str, Any] | None
    skipped: dict[str, int] = field(default_factory=dict)
    replay: ReplayInfo | None = None
    #: Every rank of a multi-process run (the rest of the view is the focused rank's); else None.
    ranks: RanksView | None = None
    #: The latest snapshot carrying a CPU true peak (``tensor_peak``, ``tensor_peak_split``), else None.
    tensor_peak: dict[str, Any] | None = None

    @property
    def true_peak(self) -> tuple[int, dict[str, int], int | None] | None:
        """The CPU true peak to draw: ``(bytes, split, step)``. Once the run has ended, the run's
        largest (first reached, from its summary); while it runs, the latest measured step's
        (:attr:`tensor_peak`). Not from the last snapshot alone: only one step in
        ``activations_every`` carries it, and the bar would flicker."""
        measured = (self.summary or {}).get("tensor_peak_bytes")
        event = self.tensor_peak
        if event and event.get("tensor_peak") is not None and not (self.ended and measured):
            return int(event["tensor_peak"]), dict(event.get("tensor_peak_split") or {}), event.get("step")
        if measured and measured.get("total") is not None:
            split = {k: int(v) for k, v in measured.items() if k not in ("total", "step") and v is not None}
            return int(measured["total"]), split, measured.get("step")
        return None

    @property
    def status(self) -> str:
        """``waiting`` before the first event, ``running`` until the exit event, then its status."""
        if self.exit is not None:
            return str(self.exit.get("status") or "failed")
        return "running" if self.header or self.samples else "waiting"

    @property
    def run_status(self) -> str:
        """The whole run's status: :attr:`status`, or over every rank of a multi-process run."""
        return self.ranks.status if self.ranks is not None else self.status

    @property
    def run_ended(self) -> bool:
        """True once the whole run has ended (every rank of a multi-process run)."""
        return self.ranks.ended if self.ranks is not None else self.ended

    @property
    def device(self) -> dict[str, Any]:
        """The header's device description."""
        return self.header.get("device") or {}

    @property
    def ended(self) -> bool:
        """True once the run has an exit (written by the worker, or recorded by this viewer)."""
        return self.exit is not None

    @property
    def external(self) -> bool:
        """True for a process watched from outside (``attach PID`` without a probe): no breakdown."""
        return bool(self.header.get("external"))
