"""Following a run without the dashboard: fold its events and print progress until it ends.

Used by ``ftwatch run --headless`` and ``ftwatch attach --headless``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ftwatch import registry
from ftwatch.events import EVENTS_FILE, EventWriter
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
    interrupts = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        handle.request_stop()
        message = "stopping at the next step boundary (Ctrl-C again to stop now)" if interrupts == 1 \
            else "stopping now"
        out.write(f"ftwatch: {message}\n")
        out.flush()

    previous = signal.signal(signal.SIGINT, on_interrupt)
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
