"""Following a multi-process run without the dashboard: every rank's log, until launcher and ranks end.

Used by ``ftwatch run --headless`` and ``ftwatch attach --headless`` for a run with one log per rank;
the single-log follower, the Ctrl-C handling and the stall watch it shares are in
:mod:`ftwatch.views.headless.follow`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ftwatch.runlog import registry
from ftwatch.runlog.endings import DIRECTORY_DELETED, record_vanished_rank_in_memory
from ftwatch.runlog.ranks import (
    MultiLogFollower,
    RankedRun,
    process_alive,
    read_launch,
    record_vanished_rank,
    vanished_ranks,
)
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.views.headless.follow import (
    EXIT_GRACE_SECONDS,
    POLL_SECONDS,
    CtrlC,
    Followed,
    StallWatch,
    _DetachFlag,
    _say,
    interrupt_handler,
)
from ftwatch.views.headless.report import ProgressPrinter

#: Above this many ranks only the lowest prints step lines (every rank still prints the rest).
STEP_LINES_MAX_RANKS = 4
#: How often the rank processes are checked for having vanished.
VANISH_CHECK_SECONDS = 1.0


def follow_ranks_headless(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
                          publish: Callable[[RankedRun], None] | None = None, *, ctrl_c: CtrlC = "stop",
                          stall_after: float | None = None) -> tuple[RankedRun, Any]:
    """Follow every rank of a multi-process run (see :func:`follow_ranks`)."""
    followed = follow_ranks(run_dir, handle, out, every, publish, ctrl_c=ctrl_c, stall_after=stall_after)
    return followed.state, followed.stats


def follow_ranks(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
                 publish: Callable[[RankedRun], None] | None = None, *, ctrl_c: CtrlC = "stop",
                 stall_after: float | None = None) -> Followed:
    """:func:`follow_run` for a multi-process run: every rank's log, lines prefixed with the
    rank. A rank whose process is gone without an exit event is recorded as vanished in its own
    log at once (the others keep reporting); it ends when the launcher and every rank have. A
    quiet rank is reported as a single run's log is; a deleted run directory ends the follow
    (every rank still running gets a ``failed`` exit in memory)."""
    follower = MultiLogFollower(run_dir)
    run = RankedRun(read_launch(run_dir))
    printers: dict[int, ProgressPrinter] = {}
    stalls: dict[int, StallWatch] = {}
    host = socket.gethostname()
    last_check = 0.0

    def printer(rank: int) -> ProgressPrinter:
        if rank not in printers:
            many = len(run.expected_ranks) > STEP_LINES_MAX_RANKS
            printers[rank] = ProgressPrinter(out, every=every, prefix=f"rank {rank}: ",
                                             steps=not many or rank == min(run.expected_ranks or [rank]))
        return printers[rank]

    def fold(pairs: list[tuple[int, dict[str, Any]]]) -> None:
        for rank, event in pairs:
            run.apply(rank, event)
            printer(rank).handle(run.ranks[rank], event)

    def check_vanished() -> None:
        gone = vanished_ranks(run, host)
        if gone:
            fold(follower.poll())  # what they wrote before they went
            for rank in gone:
                if run.ranks[rank].exit is None:
                    try:
                        record_vanished_rank(run_dir, rank, run.ranks[rank], apply=False)
                    except OSError:  # its log cannot be written: the end is recorded in memory
                        record_vanished_rank_in_memory(rank, run.ranks[rank])
            fold(follower.poll())  # the exit events just written, read like any other

    def check_stalls(pairs: list[tuple[int, dict[str, Any]]], now: float) -> None:
        active = {rank for rank, _ in pairs}
        for rank, state in run.ranks.items():
            if rank not in stalls:
                pid = state.header.get("pid") if state.header.get("host") == host else None
                stalls[rank] = StallWatch(out, pid if isinstance(pid, int) else None, stall_after,
                                          prefix=f"rank {rank}: ")
            if rank in active:
                stalls[rank].saw_events(now)
            elif state.exit is None:
                stalls[rank].check(now, state)

    detach = _DetachFlag()
    on_interrupt = detach if ctrl_c == "detach" else interrupt_handler(handle, out, "every rank ")
    previous = signal.signal(signal.SIGINT, on_interrupt)
    deleted: str | None = None
    try:
        while not detach.set:
            launcher_alive = handle.is_alive()
            pairs = follower.poll()
            fold(pairs)
            if pairs and publish is not None:
                publish(run)
            check_stalls(pairs, time.monotonic())
            if not run_dir.is_dir():
                deleted = f"the run directory {run_dir} was deleted; the logs are gone"
                break
            now = time.time()
            if now - last_check >= VANISH_CHECK_SECONDS or not launcher_alive:
                last_check = now
                check_vanished()
            if run.ended or (not launcher_alive and not _ranks_running(run, host)):
                break
            time.sleep(POLL_SECONDS)
        deadline = time.time() + EXIT_GRACE_SECONDS
        while deleted is None and not detach.set and not run.ended and time.time() < deadline:
            time.sleep(POLL_SECONDS / 2)
            fold(follower.poll())
        if deleted is None and not detach.set:
            fold(follower.finish())
            check_vanished()
    finally:
        signal.signal(signal.SIGINT, previous)
        follower.close()
    if detach.set:
        _say(out, f"detached (Ctrl-C); process {handle.pid} and its ranks were sent no signal and go on")
        if publish is not None:
            publish(run)
        return Followed(run, follower.stats, detached=True)
    if deleted is not None:
        _say(out, deleted)
        for state in run.ranks.values():
            if state.exit is None:
                state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                             "step": state.step, "error_type": DIRECTORY_DELETED, "message": deleted,
                             "by": "monitor", "last_event_t": state.last_t})
    else:
        with contextlib.suppress(OSError):
            registry.unregister(handle.pid)
    if publish is not None:
        publish(run)
    return Followed(run, follower.stats)


def _ranks_running(run: RankedRun, host: str) -> bool:
    """True while a rank on this host has not ended and its process is still there."""
    return any(state.exit is None and state.header.get("host") == host
               and process_alive(state.header.get("pid"), state.first_t) for state in run.ranks.values())
