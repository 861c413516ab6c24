"""Event sources: follow a live run's log, or read a recorded one. Every viewer reads through here.

A live run and an attached run are both a log that is still growing; a replay is a log that has
stopped. :class:`LogFollower` serves all three: ``poll()`` returns the complete events written
since the last call and never blocks, so a slow viewer loses nothing (the file is the buffer) and
can come and go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ftwatch.runlog.event_reader import EventDecoder, open_log, resolve_log_path
from ftwatch.runlog.events import EVENTS_FILE, encode_event, make_event

if TYPE_CHECKING:
    from ftwatch.runlog.state import RunState


class LogFollower:
    """Incrementally reads a run log that may still be growing (or may not exist yet)."""

    def __init__(self, path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / EVENTS_FILE
        self.decoder = EventDecoder()
        self.chunk_size = chunk_size
        self._handle: Any = None

    def poll(self, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """Events completed since the last poll (empty if none, or if the file is not there yet)."""
        if self._handle is None:
            if not self.path.exists():
                return []
            self._handle = open_log(resolve_log_path(self.path))
        events: list[dict[str, Any]] = []
        budget = max_bytes
        while True:
            size = self.chunk_size if budget is None else min(self.chunk_size, budget)
            chunk = self._handle.read(size)
            if not chunk:
                break
            events.extend(self.decoder.feed(chunk))
            if budget is not None:
                budget -= len(chunk)
                if budget <= 0:
                    break
        return events

    def log_deleted(self) -> bool:
        """True when the log this follower has open was deleted (unlinked) from its directory."""
        handle = self._handle
        if handle is None:
            return False
        try:
            return os.fstat(handle.fileno()).st_nlink == 0
        except (OSError, ValueError, AttributeError):
            return False

    def finish(self) -> list[dict[str, Any]]:
        """Call once the writer is gone: returns a last line that had no newline, if it parses."""
        return self.poll() + self.decoder.finish()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class WorkerHandle:
    """The viewer's grip on a training process it started (or attached to): stop, detach, status."""

    def __init__(self, pid: int, run_dir: Path, process: subprocess.Popen[bytes] | None = None,
                 group: bool = False) -> None:
        self.pid = pid
        self.run_dir = Path(run_dir)
        self.process = process
        #: The pid leads a process group of its own (a ``torchrun`` launcher and its ranks):
        #: :meth:`terminate` signals the whole group.
        self.group = group

    def is_alive(self) -> bool:
        """True while the training process runs (a zombie waiting to be reaped has ended)."""
        if self.process is not None:
            return self.process.poll() is None
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    def returncode(self) -> int | None:
        """The exit code when we started the process and it ended; else ``None``."""
        return self.process.poll() if self.process is not None else None

    def request_stop(self) -> None:
        """Ask the worker to stop cleanly at the next step boundary (SIGINT; a ``torchrun``
        launcher passes it on to its ranks as SIGTERM, and they agree on the step)."""
        self._signal(signal.SIGINT)

    def terminate(self) -> None:
        """Ask the worker to stop now (SIGTERM: it still writes its exit event); for a launcher,
        every process of its group gets it (a rank that sees two signals stops at once)."""
        if self.group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            return
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def reattach_hint(self) -> str:
        """How a user gets back to this run."""
        log = self.run_dir if self.group else self.run_dir / EVENTS_FILE
        return f"training continues (pid {self.pid}); follow it with: ftwatch attach {self.pid}  (log: {log})"


def record_monitor_exit(log_path: str | os.PathLike[str], state: RunState, **fields: Any) -> dict[str, Any]:
    """Append the exit of a process that ended without writing one (killed), marked ``by: monitor``,
    and return it (not folded into ``state``: the caller does that, or reads it back).

    It is stamped at the process's last event, when it was last seen alive, not when the viewer
    noticed (so a replay's duration ends there), and carries that time as ``last_event_t``
    (``null``, and stamped now, when it never wrote an event). Raises ``OSError`` when the log
    cannot be written.
    """
    last = state.last_t
    record = make_event("exit", {"status": "failed", "step": state.step, **fields, "by": "monitor",
                                 "last_event_t": last}, t=last if last is not None else time.time())
    data = encode_event(record).encode("utf-8")
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        while data:  # whole lines only
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    return record
