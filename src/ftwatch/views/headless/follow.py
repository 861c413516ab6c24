"""Following a run without the dashboard: fold its events and print progress until it ends.

Used by ``ftwatch run --headless`` and ``ftwatch attach --headless``; a multi-process run (one log
per rank) is followed by :func:`follow_ranks_headless`.

What Ctrl-C does depends on who started the run: ``run`` started it, so the first Ctrl-C asks for
a clean stop (``ctrl_c="stop"``); ``attach`` did not, so Ctrl-C only detaches (``ctrl_c="detach"``)
and the watched process gets no signal at all. While following, a quiet log is reported once
(:class:`StallWatch`: the process is stopped, or still running and writing nothing), and a run
directory deleted under the follower ends the follow (its log is gone) instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import psutil

from ftwatch.runlog import registry
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.ranks import (
    MultiLogFollower,
    RankedRun,
    process_alive,
    read_launch,
    record_vanished_rank,
    vanished_ranks,
)
from ftwatch.runlog.sources import LogFollower, WorkerHandle, record_monitor_exit
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import ProgressPrinter

POLL_SECONDS = 0.1
EXIT_GRACE_SECONDS = 1.0

#: The exit code of a headless viewer (``run``, ``attach``) for how the run ended; any other
#: status (none: the run's end is unknown) is a failure.
EXIT_CODES: dict[str, int] = {"finished": 0, "failed": 1, "oom": 1, "stopped": 130}

#: What Ctrl-C does in a headless follower: ask the run to stop (the viewer started it), or detach.
CtrlC = Literal["stop", "detach"]

#: A log quiet this long (at least) is reported; see :func:`stall_seconds`.
STALL_MIN_SECONDS = 10.0
#: ... or this many sampler periods, when the sampler is slow (``sample_hz`` below 2).
STALL_SAMPLE_PERIODS = 20
#: How often a quiet process's state (stopped or running) is looked at.
STALL_CHECK_SECONDS = 1.0
#: The ``error_type`` of the end a follower records when the run directory was deleted under it.
DIRECTORY_DELETED = "RunDirectoryDeleted"


def exit_code(status: str | None) -> int:
    """The exit code for a run that ended with ``status`` (:data:`EXIT_CODES`, else 1)."""
    return EXIT_CODES.get(status or "", 1)


@dataclass
class Followed:
    """How a headless follow ended: the folded state (a :class:`RankedRun` for several ranks),
    what the reader skipped, and whether the user detached (the run goes on; its end is unknown)."""

    state: Any
    stats: Any
    detached: bool = False


def follow_headless(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
                    publish: Callable[[RunState], None] | None = None, *, ctrl_c: CtrlC = "stop",
                    stall_after: float | None = None) -> tuple[RunState, Any]:
    """Follow the run log until the worker ends, printing progress (see :func:`follow_run`)."""
    followed = follow_run(run_dir, handle, out, every, publish, ctrl_c=ctrl_c, stall_after=stall_after)
    return followed.state, followed.stats


def follow_run(run_dir: Path, handle: WorkerHandle, out: TextIO, every: int | None = None,
               publish: Callable[[RunState], None] | None = None, *, ctrl_c: CtrlC = "stop",
               stall_after: float | None = None) -> Followed:
    """Follow the run log until the worker ends, printing progress.

    Ctrl-C: ``"stop"`` asks for a clean stop (then a stop now), ``"detach"`` leaves at once with
    the process untouched (``detached`` is then true and the state has no exit). ``publish``
    (e.g. a metrics server's) is handed the state after every batch of events and once more at
    the end, in this thread. ``stall_after``: seconds of silence before saying so (default:
    :func:`stall_seconds` of the run's ``sample_hz``). A run directory (or log) deleted meanwhile
    ends the follow with a ``failed`` exit in memory (nothing can be written there any more).
    """
    follower = LogFollower(run_dir / EVENTS_FILE)
    state = RunState()
    printer = ProgressPrinter(out, every=every)
    stall = StallWatch(out, handle.pid, stall_after)
    detach = _DetachFlag()
    on_interrupt = detach if ctrl_c == "detach" else interrupt_handler(handle, out)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    gone: str | None = None
    try:
        while not detach.set:
            alive = handle.is_alive()
            events = follower.poll()
            for event in events:
                state.apply(event)
                printer.handle(state, event)
            if events and publish is not None:
                publish(state)
            now = time.monotonic()
            if events:
                stall.saw_events(now)
            elif alive and not state.header.get("external"):  # an outside view's samples are ours
                stall.check(now, state)
            if not alive or state.exit is not None:
                break
            gone = log_gone(run_dir, follower)
            if gone is not None:
                break
            time.sleep(POLL_SECONDS)
        deadline = time.time() + EXIT_GRACE_SECONDS  # an outside watcher writes the exit a moment later
        while gone is None and not detach.set and state.exit is None and time.time() < deadline:
            time.sleep(POLL_SECONDS / 2)
            for event in follower.poll():
                state.apply(event)
                printer.handle(state, event)
        if not detach.set:
            for event in follower.finish():
                state.apply(event)
                printer.handle(state, event)
    finally:
        signal.signal(signal.SIGINT, previous)
        follower.close()
    if detach.set:
        _say(out, f"detached (Ctrl-C); process {handle.pid} was sent no signal and goes on")
        if publish is not None:
            publish(state)
        return Followed(state, follower.decoder.stats, detached=True)
    if state.exit is None and gone is None:
        gone = log_gone(run_dir, follower)
    if state.exit is None and gone is not None:
        _record_lost(state, gone, handle)
        printer.handle(state, state.exit)
    elif state.exit is None:
        record_vanished_worker(run_dir, handle, state)
        printer.handle(state, state.exit)
    if publish is not None:
        publish(state)
    return Followed(state, follower.decoder.stats)


class _DetachFlag:
    """A SIGINT handler that only remembers it was called (``set``): the follower then leaves."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.set = True


def interrupt_handler(handle: WorkerHandle, out: TextIO, whom: str = "") -> Callable[[int, Any], None]:
    """A SIGINT handler for a headless viewer that started the run: the first Ctrl-C asks the
    training to stop at the next step boundary, the next ones to stop now (a launcher's whole
    process group is signalled)."""
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


#: How a worker that exited with these codes ended (its own exit event missing from the log).
_ENDED_BY_CODE = {0: "finished", 130: "stopped"}


def record_vanished_worker(run_dir: Path, handle: WorkerHandle, state: RunState, message: str | None = None) -> None:
    """The worker ended without an exit event (killed): record that in its log, marked as ours,
    stamped at its last event (:func:`~ftwatch.runlog.sources.record_monitor_exit`), and fold it into
    ``state``. A log that cannot be written any more gets it in ``state`` only."""
    code = handle.returncode()
    fields: dict[str, Any] = {"error_type": "WorkerVanished"}
    ended = _ENDED_BY_CODE.get(code) if code is not None else None
    if ended is not None:
        # It ended well but its own exit event is not in the log (a full or read-only disk: the worker
        # counts what it could not write): say how it really ended, not that it was killed.
        fields = {"status": ended, "message": f"the training process {ended} (exit code {code}); its own exit "
                                              "event could not be written to the log"}
    else:
        if message is None:
            how = f"killed by {signal_name(-code)}" if code is not None and code < 0 else \
                f"exit code {code}" if code is not None else "its exit status is not visible from here"
            message = f"the training process ended without an exit event ({how})"
        fields["message"] = message
    try:
        record = record_monitor_exit(run_dir / EVENTS_FILE, state, **fields)
    except OSError:
        record = {"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                  "step": state.step, **fields, "by": "monitor", "last_event_t": state.last_t}
    with contextlib.suppress(OSError):  # a registry that cannot be written (refused) costs nothing here
        registry.unregister(handle.pid)
    state.apply(record)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9 (``signal 99`` for a number that names none)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def log_gone(run_dir: Path, follower: LogFollower) -> str | None:
    """Why the followed log is gone (its run directory, or the log itself, deleted); else None."""
    if not run_dir.is_dir():
        return f"the run directory {run_dir} was deleted; the log is gone"
    if follower.log_deleted():
        return f"the run log {follower.path} was deleted"
    return None


def _record_lost(state: RunState, why: str, handle: WorkerHandle) -> None:
    """End ``state`` in memory: the log is gone, so nothing more can be known of the run."""
    still = f"; process {handle.pid} is still running" if handle.is_alive() else ""
    state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                 "step": state.step, "error_type": DIRECTORY_DELETED, "message": why + still, "by": "monitor",
                 "last_event_t": state.last_t})


def _say(out: TextIO, text: str) -> None:
    out.write(f"ftwatch: {text}\n")
    out.flush()


def stall_seconds(sample_hz: Any) -> float:
    """After how long without an event a log counts as quiet: the sampler writes ``sample_hz``
    events a second whatever the training does, so :data:`STALL_MIN_SECONDS` (10 s: a hundred
    samples at the default 10 Hz), or :data:`STALL_SAMPLE_PERIODS` periods of a slower sampler."""
    try:
        hz = float(sample_hz)
    except (TypeError, ValueError):
        return STALL_MIN_SECONDS
    if not math.isfinite(hz) or hz <= 0:
        return STALL_MIN_SECONDS
    return max(STALL_MIN_SECONDS, STALL_SAMPLE_PERIODS / hz)


def process_condition(pid: int | None) -> str | None:
    """``"stopped"`` (SIGSTOP, Ctrl-Z, a debugger), ``"running"``, or None (gone, a zombie, unknown)."""
    if not pid:
        return None
    try:
        status = psutil.Process(int(pid)).status()
    except (psutil.Error, ValueError, OverflowError):
        return None
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return "stopped"
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return None
    return "running"


class StallWatch:
    """Says once when a followed log has gone quiet, and why (its process is stopped, or runs and
    writes nothing); says again when events come back. Armed by the first event: a worker that
    is still starting (importing torch) has written nothing yet."""

    def __init__(self, out: TextIO, pid: int | None, after: float | None = None, prefix: str = "") -> None:
        self.out = out
        self.pid = pid
        self.after = after
        self.prefix = prefix
        self.last_event: float | None = None
        self.reported: str | None = None  # the condition already reported for this silence
        self._next_check = 0.0

    def saw_events(self, now: float) -> None:
        """Events arrived at ``now`` (monotonic seconds)."""
        if self.reported is not None and self.last_event is not None:
            _say(self.out, f"{self.prefix}events again after {now - self.last_event:.0f} s")
        self.reported = None
        self.last_event = now

    def check(self, now: float, state: RunState) -> None:
        """No events this round: report a silence longer than the limit (once per condition)."""
        if self.last_event is None or now < self._next_check:
            return
        limit = self.after if self.after is not None else stall_seconds(state.header.get("sample_hz"))
        quiet = now - self.last_event
        if quiet < limit:
            return
        self._next_check = now + min(STALL_CHECK_SECONDS, limit)
        condition = process_condition(self.pid)
        if condition is None or condition == self.reported:
            return
        self.reported = condition
        if condition == "stopped":
            _say(self.out, f"{self.prefix}no events for {quiet:.0f} s (process stopped); "
                           f"kill -CONT {self.pid} resumes it")
        else:
            _say(self.out, f"{self.prefix}no events for {quiet:.0f} s; process still running (pid {self.pid})")


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


def record_vanished_rank_in_memory(rank: int, state: RunState) -> None:
    """The end :func:`~ftwatch.runlog.ranks.record_vanished_rank` writes, folded into ``state`` only."""
    state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                 "step": state.step, "error_type": "WorkerVanished",
                 "message": f"the training process of rank {rank} ended without an exit event",
                 "by": "monitor", "last_event_t": state.last_t})


def _ranks_running(run: RankedRun, host: str) -> bool:
    """True while a rank on this host has not ended and its process is still there."""
    return any(state.exit is None and state.header.get("host") == host
               and process_alive(state.header.get("pid"), state.first_t) for state in run.ranks.values())
