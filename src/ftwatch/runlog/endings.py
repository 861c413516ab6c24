"""How a watched run ended when it could not say so itself: exit codes, vanished workers, lost logs.

What a follower (headless, or the dashboard's feed) concludes about a run's end and records into
its log: the exit code a viewer returns for a run's status, the ``exit`` of a worker that ended
without writing one (stamped by :func:`~ftwatch.runlog.sources.record_monitor_exit`), and the
in-memory ends of a rank whose log cannot be written or a run directory deleted meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

from ftwatch.runlog import registry
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.sources import WorkerHandle, record_monitor_exit
from ftwatch.runlog.state import RunState

#: The exit code of a headless viewer (``run``, ``attach``) for how the run ended; any other
#: status (none: the run's end is unknown) is a failure.
EXIT_CODES: dict[str, int] = {"finished": 0, "failed": 1, "oom": 1, "stopped": 130}
#: The ``error_type`` of the end a follower records when the run directory was deleted under it.
DIRECTORY_DELETED = "RunDirectoryDeleted"


#: ``error_type`` of the end a replay gives a log that has no exit event (nothing says how it ended).
NO_EXIT_EVENT = "NoExitEvent"


def exit_code(status: str | None) -> int:
    """The exit code for a run that ended with ``status`` (:data:`EXIT_CODES`, else 1)."""
    return EXIT_CODES.get(status or "", 1)


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



def record_vanished_rank_in_memory(rank: int, state: RunState) -> None:
    """The end :func:`~ftwatch.runlog.ranks.record_vanished_rank` writes, folded into ``state`` only."""
    state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                 "step": state.step, "error_type": "WorkerVanished",
                 "message": f"the training process of rank {rank} ended without an exit event",
                 "by": "monitor", "last_event_t": state.last_t})
