"""Following a run without the dashboard: fold its events and print progress until it ends.

Used by ``ftwatch run --headless`` and ``ftwatch attach --headless``; a multi-process run (one log
per rank) is followed by :func:`follow_ranks_headless`.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ftwatch import registry
from ftwatch.events import EVENTS_FILE, EventWriter
from ftwatch.ranks import (
    MultiLogFollower,
    RankedRun,
    process_alive,
    read_launch,
    record_vanished_rank,
    vanished_ranks,
)
from ftwatch.report import ProgressPrinter
from ftwatch.sources import LogFollower, WorkerHandle
from ftwatch.state import RunState

POLL_SECONDS = 0.1
EXIT_GRACE_SECONDS = 1.0


def follow_headless(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
                    publish: Callable[[RunState], None] | None = None) -> tuple[RunState, Any]:
    """Follow the run log until the worker ends, printing progress; Ctrl-C asks for a clean stop.

    ``publish`` (e.g. a metrics server's) is handed the state after every batch of events and
    once more at the end, in this thread.
    """
    follower = LogFollower(run_dir / EVENTS_FILE)
    state = RunState()
    printer = ProgressPrinter(out, every=every)
    previous = signal.signal(signal.SIGINT, interrupt_handler(handle, out))
    try:
        while True:
            alive = handle.is_alive()
            events = follower.poll()
            for event in events:
                state.apply(event)
                printer.handle(state, event)
            if events and publish is not None:
                publish(state)
            if not alive or state.exit is not None:
                break
            time.sleep(POLL_SECONDS)
        deadline = time.time() + EXIT_GRACE_SECONDS  # an outside watcher writes the exit a moment later
        while state.exit is None and time.time() < deadline:
            time.sleep(POLL_SECONDS / 2)
            for event in follower.poll():
                state.apply(event)
                printer.handle(state, event)
        for event in follower.finish():
            state.apply(event)
            printer.handle(state, event)
    finally:
        signal.signal(signal.SIGINT, previous)
        follower.close()
    if state.exit is None:
        record_vanished_worker(run_dir, handle, state)
        printer.handle(state, state.exit)
    if publish is not None:
        publish(state)
    return state, follower.decoder.stats


def interrupt_handler(handle: WorkerHandle, out: TextIO, whom: str = "") -> Callable[[int, Any], None]:
    """A SIGINT handler for a headless viewer: the first Ctrl-C asks the training to stop at the next
    step boundary, the next ones to stop now (a launcher's whole process group is signalled)."""
    interrupts = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            handle.request_stop()
            message = f"stopping {whom}at the next step boundary (Ctrl-C again to stop now)"
        else:
            if handle.group:
                handle.terminate()
            else:
                handle.request_stop()
            message = "stopping now"
        out.write(f"ftwatch: {message}\n")
        out.flush()

    return on_interrupt


def record_vanished_worker(run_dir: Path, handle: WorkerHandle, state: RunState) -> None:
    """The worker ended without an exit event (killed): record that in its log, marked as ours."""
    code = handle.returncode()
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    message = f"the training process ended without an exit event ({how})"
    fields = {"status": "failed", "step": state.step, "error_type": "WorkerVanished", "message": message,
              "by": "monitor"}
    writer = EventWriter(run_dir / EVENTS_FILE)
    writer.emit("exit", **fields)
    writer.close()
    registry.unregister(handle.pid)
    state.apply({"v": 1, "t": time.time(), "kind": "exit", **fields})


#: Above this many ranks only the lowest prints step lines (every rank still prints the rest).
STEP_LINES_MAX_RANKS = 4
#: How often the rank processes are checked for having vanished.
VANISH_CHECK_SECONDS = 1.0


def follow_ranks_headless(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
                          publish: Callable[[RankedRun], None] | None = None) -> tuple[RankedRun, Any]:
    """:func:`follow_headless` for a multi-process run: every rank's log, lines prefixed with the
    rank. A rank whose process is gone without an exit event is recorded as vanished in its own
    log at once (the others keep reporting); it ends when the launcher and every rank have."""
    follower = MultiLogFollower(run_dir)
    run = RankedRun(read_launch(run_dir))
    printers: dict[int, ProgressPrinter] = {}
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
                    record_vanished_rank(run_dir, rank, run.ranks[rank], apply=False)
            fold(follower.poll())  # the exit events just written, read like any other

    previous = signal.signal(signal.SIGINT, interrupt_handler(handle, out, "every rank "))
    try:
        while True:
            launcher_alive = handle.is_alive()
            pairs = follower.poll()
            fold(pairs)
            if pairs and publish is not None:
                publish(run)
            now = time.time()
            if now - last_check >= VANISH_CHECK_SECONDS or not launcher_alive:
                last_check = now
                check_vanished()
            if run.ended or (not launcher_alive and not _ranks_running(run, host)):
                break
            time.sleep(POLL_SECONDS)
        deadline = time.time() + EXIT_GRACE_SECONDS
        while not run.ended and time.time() < deadline:
            time.sleep(POLL_SECONDS / 2)
            fold(follower.poll())
        fold(follower.finish())
        check_vanished()
    finally:
        signal.signal(signal.SIGINT, previous)
        follower.close()
    registry.unregister(handle.pid)
    if publish is not None:
        publish(run)
    return run, follower.stats


def _ranks_running(run: RankedRun, host: str) -> bool:
    """True while a rank on this host has not ended and its process is still there."""
    return any(state.exit is None and state.header.get("host") == host
               and process_alive(state.header.get("pid"), state.first_t) for state in run.ranks.values())
