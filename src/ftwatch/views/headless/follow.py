"""Following a run without the dashboard: fold its events and print progress until it ends.

Used by ``ftwatch run --headless`` and ``ftwatch attach --headless``; a multi-process run (one log
per rank) is followed by :func:`ftwatch.views.headless.follow_multi.follow_ranks_headless`; how a run
that wrote no end of its own ended is concluded in :mod:`ftwatch.runlog.endings`.

What Ctrl-C does depends on who started the run: ``run`` started it, so the first Ctrl-C asks for
a clean stop (``ctrl_c="stop"``); ``attach`` did not, so Ctrl-C only detaches (``ctrl_c="detach"``)
and the watched process gets no signal at all. While following, a quiet log is reported once
(:class:`StallWatch`: the process is stopped, or still running and writing nothing), and a run
directory deleted under the follower ends the follow (its log is gone) instead of waiting forever.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import psutil

from ftwatch.runlog.endings import DIRECTORY_DELETED, record_vanished_worker
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.sources import LogFollower, WorkerHandle
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import ProgressPrinter

POLL_SECONDS = 0.1
EXIT_GRACE_SECONDS = 1.0

#: What Ctrl-C does in a headless follower: ask the run to stop (the viewer started it), or detach.
CtrlC = Literal["stop", "detach"]

#: A log quiet this long (at least) is reported; see :func:`stall_seconds`.
STALL_MIN_SECONDS = 10.0
#: ... or this many sampler periods, when the sampler is slow (``sample_hz`` below 2).
STALL_SAMPLE_PERIODS = 20
#: How often a quiet process's state (stopped or running) is looked at.
STALL_CHECK_SECONDS = 1.0


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
    caught_up = False
    try:
        while not detach.set:
            alive = handle.is_alive()
            events = follower.poll()
            for event in events:
                state.apply(event)
                printer.handle(state, event)
            if not caught_up:  # the first poll read the log to its end: say where the run stands
                caught_up = True
                printer.catch_up(state)
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
