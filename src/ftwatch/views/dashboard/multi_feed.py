"""The dashboard's data side for a multi-process (torchrun) run: every rank's log, one view.

:class:`MultiRunFeed` is a :class:`~ftwatch.views.dashboard.feed.RunFeed` whose background thread follows
every ``rankN/events.jsonl`` of a run directory (:class:`~ftwatch.runlog.ranks.MultiLogFollower`) and
folds them into a :class:`~ftwatch.runlog.ranks.RankedRun`. Its :class:`~ftwatch.views.dashboard.run_view.RunView` is the
one of the *focused* rank (the worst rank unless the user picked one), so every single-run panel
works unchanged, plus :class:`RanksView`: one :class:`RankRow` per rank for the ranks panel.

While live it notices a rank whose process vanished (killed) and records its exit in that rank's
log, as ``ftwatch run`` does; the run ends when every rank has ended, or when the launcher is
gone and no rank process remains. Light: no torch.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ftwatch.runlog.event_reader import ReadStats
from ftwatch.runlog.ranks import (
    MultiLogFollower,
    RankedRun,
    multi_rank_root,
    process_alive,
    read_launch,
    record_vanished_rank,
    vanished_ranks,
)
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.views.dashboard.feed import RunFeed
from ftwatch.views.dashboard.rank_rows import VANISHED, RanksView, rank_row
from ftwatch.views.dashboard.run_view import RunView


class MultiRunFeed(RunFeed):
    """Follows every rank of a multi-process run from a background thread.

    ``handle`` is the launcher's (``None`` for a replay: the final state is shown). ``host`` is
    this machine's name (the ranks whose process it can check); ``vanish_interval`` the seconds
    between two checks for vanished rank processes.
    """

    def __init__(self, run_dir: str | os.PathLike[str], handle: WorkerHandle | None = None, *,
                 poll_interval: float = 0.05, batch_bytes: int = 256 * 1024, timeline_capacity: int = 2048,
                 log_lines: int = 2000, exit_grace: float = 1.5, vanish_interval: float = 1.0,
                 host: str | None = None) -> None:
        root = multi_rank_root(run_dir) or Path(run_dir)
        super().__init__(root, handle, poll_interval=poll_interval, batch_bytes=batch_bytes,
                         timeline_capacity=timeline_capacity, log_lines=log_lines, exit_grace=exit_grace)
        self.log_path = self.run_dir = root
        self.follower: MultiLogFollower = MultiLogFollower(root)  # type: ignore[assignment]
        self.lock = threading.RLock()  # type: ignore[assignment]  # view() nests RunFeed.view()
        self.run = RankedRun(read_launch(root), timeline_capacity=timeline_capacity)
        self.host = host or socket.gethostname()
        self.vanish_interval = vanish_interval
        #: The rank the user picked (``None``: follow the worst rank).
        self.picked: int | None = None
        #: The rank the panels show now.
        self.focus: int | None = None
        self._empty = self.state
        self._recorded: set[int] = set()
        self._next_vanish_check = 0.0

    # -- one round ---------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        """True once every rank has ended (or the run was read to its end / its processes are gone)."""
        return self.run.ended or self._finished_reading

    def _fold(self, pairs: list[tuple[int, dict[str, Any]]], now: float) -> None:  # type: ignore[override]
        """Fold a batch of every rank's events; a batch of device samples alone that leaves the focus
        where it was is marked as such (``samples_only``: drawn at the slower cadence, as
        :meth:`RunFeed._fold` does), anything else is news."""
        with self.lock:
            focus = self.focus
            self.run.apply_all(pairs)
            self._refocus()
            self.last_event_wall = now
            if self.focus == focus and all(event["kind"] == "sample" for _, event in pairs):
                start, end = self.samples_only
                self.samples_only = (start if end == self.version else self.version, self.version + 1)
            self.version += 1

    def _caught_up(self, now: float) -> None:
        if not self.run.launch:  # written by the launcher's starter, maybe after we began
            self.run.launch = read_launch(self.run_dir)
        if self.handle is not None and now >= self._next_vanish_check:
            self._next_vanish_check = now + self.vanish_interval
            self._record_vanished()

    def _stream_was_cut(self) -> bool:
        # poll() stops after batch_bytes per rank; a full batch likely means more is waiting.
        for follower in self.follower.followers.values():
            handle = follower._handle
            try:
                if handle is not None and handle.tell() < os.fstat(handle.fileno()).st_size:
                    return True
            except (OSError, ValueError, AttributeError):
                continue
        return False

    def _record_vanished(self) -> None:
        """Write the exit of each rank on this host whose process is gone without one (read back
        by the follower on its next round). Only this thread changes the run, so no lock."""
        for rank in vanished_ranks(self.run, self.host):
            if rank in self._recorded:
                continue
            self._recorded.add(rank)
            try:
                record_vanished_rank(self.run_dir, rank, self.run.ranks[rank], apply=False)
            except OSError:
                continue  # a read-only run directory: the end of the run records it in memory

    def _rank_process_running(self) -> bool:
        """True while a rank on this host that has not ended still has its process."""
        for state in self.run.ranks.values():
            header = state.header
            if state.exit is None and header.get("host") == self.host and header.get("pid") \
                    and process_alive(int(header["pid"]), state.first_t):
                return True
        return False

    handle_name = "launcher"

    def _ended_or_read(self) -> bool:
        return self.ended

    def _recording_complete(self, had_events: bool) -> bool:
        return not had_events and bool(self.run.ranks)

    def _still_writing(self) -> bool:
        return self._rank_process_running()  # a rank may outlive its launcher

    def _finish(self, message: str) -> None:
        """The writers are gone: read the last lines, and end in memory every rank left without an exit."""
        if self.handle is not None:
            self._record_vanished()
        pairs = self.follower.finish()
        with self.lock:
            self.run.apply_all(pairs)
            for state in self.run.ranks.values():
                if state.exit is None and state.header:
                    state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                                 "step": state.step, "by": "monitor", "error_type": VANISHED,
                                 "message": message, "last_event_t": state.last_t})
            self._finished_reading = True
            self._refocus()
            self.version += 1

    # -- focus (the UI side) -------------------------------------------------------------------
    def _refocus(self) -> None:
        """Point ``state`` at the picked rank, else the worst one (called under the lock)."""
        rank = self.picked if self.picked in self.run.ranks else self.run.worst_rank()
        self.focus = rank
        self.state = self.run.ranks[rank] if rank is not None else self._empty

    def focus_step(self, direction: int) -> int | None:
        """Show the next (``+1``) or previous (``-1``) rank that has a log; returns it."""
        with self.lock:
            ranks = list(self.run.ranks)
            if not ranks:
                return None
            current = self.focus if self.focus in ranks else ranks[0]
            self.picked = ranks[(ranks.index(current) + direction) % len(ranks)]
            self._refocus()
            self.version += 1
            return self.picked

    def follow_worst(self) -> int | None:
        """Show the worst rank again (and keep following it as it changes); returns it."""
        with self.lock:
            self.picked = None
            self._refocus()
            self.version += 1
            return self.focus

    # -- views ---------------------------------------------------------------------------------
    def read_stats(self) -> ReadStats:
        """What the reader skipped so far, over every rank's log."""
        return self.follower.stats

    def ranks_view(self) -> RanksView:
        """Every rank's row and the focus (takes the lock)."""
        with self.lock:
            run = self.run
            ranks = sorted(set(run.expected_ranks) | set(run.ranks))
            ended = self.ended
            status = ("running" if not ended else run.worst.status) if run.ranks else "waiting"
            return RanksView(rows=[rank_row(r, run.ranks.get(r)) for r in ranks], focus=self.focus,
                             worst=run.worst_rank(), following_worst=self.picked not in run.ranks,
                             world_size=run.world_size, missing=run.missing_ranks, status=status, ended=ended)

    def view(self, log_lines: int = 200) -> RunView:
        """The focused rank's view, with every rank's row."""
        with self.lock:
            return dataclasses.replace(super().view(log_lines), ranks=self.ranks_view())
