"""What the ranks panel shows: one :class:`RankRow` per rank, folded from that rank's
:class:`~ftwatch.runlog.state.RunState`, and the :class:`RanksView` of a whole torchrun job. Plain
data: the feeds fill it, the widgets draw it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftwatch.runlog.occupancy import occupied_bytes, risk_level
from ftwatch.runlog.state import RunState

#: The ``error_type`` of an exit recorded for a rank whose process vanished.
VANISHED = "WorkerVanished"


@dataclass(frozen=True)
class RankRow:
    """One rank as the ranks panel shows it."""

    rank: int
    local_rank: int | None
    host: str | None
    device: str  # "cuda:1", "cpu", "?" before the rank's header
    status: str  # waiting | running | finished | stopped | failed | oom
    vanished: bool  # its process vanished without an exit event (recorded by a monitor)
    step: int
    max_steps: int | None
    occupied: int | None  # bytes the rank leaves unavailable (:func:`ftwatch.runlog.occupancy.occupied_bytes`)
    capacity: int | None
    risk: int  # 0 ok, 1 watch, 2 danger (0 once the rank has ended)
    peak: int | None
    warning: dict[str, Any] | None = None  # the latest warning, while the rank runs
    message: str | None = None  # the exit message

    @property
    def fraction(self) -> float | None:
        """The occupied share of the capacity (``None`` while either is unknown)."""
        if self.occupied is None or not self.capacity:
            return None
        return self.occupied / self.capacity

    @property
    def ended(self) -> bool:
        """True once the rank has an exit."""
        return self.status not in ("waiting", "running")


@dataclass(frozen=True)
class RanksView:
    """Every rank of a multi-process run, and which one the panels show."""

    rows: list[RankRow]  # the launched ranks and every rank with a log, in rank order
    focus: int | None  # the rank the panels show
    worst: int | None
    following_worst: bool  # the focus follows the worst rank (no rank picked with [ or ])
    world_size: int
    missing: list[int]  # launched, no log yet
    status: str  # waiting | running, then the worst rank's ending
    ended: bool

    def row(self, rank: int | None) -> RankRow | None:
        """The row of ``rank`` (``None`` for none)."""
        return next((r for r in self.rows if r.rank == rank), None)

    @property
    def worst_row(self) -> RankRow | None:
        """The worst rank's row."""
        return self.row(self.worst)

    @property
    def started(self) -> int:
        """Ranks whose log has appeared."""
        return sum(1 for r in self.rows if r.status != "waiting")


def device_label(state: RunState) -> str:
    """``cuda:1``, ``cpu`` (``?`` before the header)."""
    device = state.device
    kind = device.get("type")
    if not kind:
        return "?"
    index = device.get("index")
    return f"{kind}:{index}" if kind == "cuda" and index is not None else str(kind)


def rank_row(rank: int, state: RunState | None) -> RankRow:
    """What the ranks panel shows of one rank (``state`` is ``None`` before its log appears)."""
    if state is None or not state.header:
        return RankRow(rank=rank, local_rank=None, host=None, device="?", status="waiting", vanished=False,
                       step=state.step if state else 0, max_steps=None, occupied=None, capacity=None, risk=0,
                       peak=None)
    header, exit_event = state.header, state.exit or {}
    local = header.get("local_rank")
    return RankRow(
        rank=rank,
        local_rank=int(local) if isinstance(local, int) else None,
        host=header.get("host"),
        device=device_label(state),
        status=str(exit_event.get("status") or "failed") if state.exit else "running",
        vanished=exit_event.get("error_type") == VANISHED,
        step=state.step,
        max_steps=state.max_steps,
        occupied=occupied_bytes(state),
        capacity=state.capacity,
        risk=risk_level(state),
        peak=state.peak_total or None,
        warning=state.warnings[-1] if state.warnings and not state.exit else None,
        message=exit_event.get("message"),
    )
