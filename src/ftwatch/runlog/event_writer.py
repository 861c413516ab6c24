"""The run log's writer: robust appends that never raise into training, and lost-event accounting.

:class:`EventWriter` appends one encoded event (:mod:`ftwatch.runlog.events`) per ``write(2)``; a
write that fails is counted and reported in the log (an ``events_lost`` note) once writing works again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import say
from ftwatch.runlog.events import encode_event, make_event


class EventWriter:
    """Appends events to a run log; safe to call from several threads; never raises into its caller.

    Each event is written and flushed at once (one ``write(2)``), so the file is complete up to the
    last event even if the process is killed (the data sits in the kernel's page cache). The file
    is private to its owner (mode 0600).

    A write that fails (disk full, a read-only or immutable file, an I/O error, a closed descriptor)
    never reaches the caller: the event is dropped and counted in :attr:`lost_events`, the first
    failure is said once on stderr, and every later event tries again. When writing works again a
    ``note`` (``events_lost``) goes first, in the same write, saying how many were lost since. A
    line cut by a full disk is ended with a newline before the next event, so no event is glued
    onto it. ``retry_open``: a log that cannot even be opened now is not an error either (events
    are counted as lost and the open is tried again at each event); by default it raises, as before.
    """

    def __init__(self, path: str | os.PathLike[str], *, retry_open: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        #: Events that could not be written (all the run long).
        self.lost_events = 0
        #: Events lost since the last ``events_lost`` note (or since the start).
        self._unreported = 0
        self._lost_from_t: float | None = None
        self._lost_to_t: float | None = None
        self.last_error: OSError | None = None
        self._said = False
        self._cut_line = False  # the file ends inside a line (a write cut short by a full disk)
        self._fd: int | None = None
        try:
            self._fd = self._open()
        except OSError as exc:
            if not retry_open:
                raise
            self._failed(exc)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def emit(self, kind: str, **fields: Any) -> None:
        """Write one event, then hand it to the listeners (which must be quick and never raise
        into the caller). Never raises: a closed writer drops late events (late sampler ticks),
        a failed write is counted (:attr:`lost_events`)."""
        try:
            record = make_event(kind, fields)
            data = encode_event(record).encode("utf-8", "replace")
        except Exception as exc:  # an event we cannot even encode is lost, not fatal
            with self._lock:
                if not self._closed:
                    self._failed(OSError(f"an event could not be encoded ({exc})"))
            return
        with self._lock:
            if self._closed:
                return
            self._write(data, record["t"])
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                listener(record)

    def _write(self, data: bytes, t: float) -> None:
        """Write one encoded event (holding the lock), preceded by the pending ``events_lost`` note."""
        note_end = 0  # bytes before the event's own line: a newline ending a cut line, the note
        if self._unreported or self._cut_line:
            prefix = self._recovery_prefix()
            note_end, data = len(prefix), prefix + data
        done = 0
        try:
            if self._fd is None:
                self._fd = self._open()
            while done < len(data):  # one write(2) per event: in the kernel at once, whole lines only
                written = os.write(self._fd, data[done:] if done else data)
                if written <= 0:
                    raise OSError(errno.EIO, "the run log took no bytes")
                done += written
        except OSError as exc:
            if done:  # part of it is in the file: does the file now end inside a line?
                self._cut_line = data[done - 1] != 0x0A
            if exc.errno == errno.EBADF:  # someone closed our descriptor: open the log again next time
                self._fd = None
            if note_end and done >= note_end:  # the note made it, the event did not
                self._reported()
            self._failed(exc, t)
            return
        if note_end:  # the pending newline and note went in with this event
            self._cut_line = False
            self._reported()

    def _reported(self) -> None:
        self._unreported = 0
        self._lost_from_t = self._lost_to_t = None

    def _recovery_prefix(self) -> bytes:
        """What goes before the next event: a newline ending a cut line, the ``events_lost`` note."""
        prefix = b"\n" if self._cut_line else b""
        if self._unreported:
            error = self.last_error
            reason = (error.strerror or str(error)) if error is not None else "unknown error"
            n = self._unreported
            note = make_event("note", {
                "code": "events_lost", "lost_events": n, "lost_from_t": self._lost_from_t,
                "lost_to_t": self._lost_to_t,
                "message": f"{n} event{'s' if n != 1 else ''} could not be written to this log ({reason}) "
                           "and are lost; training went on",
            })
            prefix += encode_event(note).encode("utf-8", "replace")
        return prefix

    def _failed(self, exc: OSError, t: float | None = None) -> None:
        """Count one lost event; say so on stderr the first time."""
        self.lost_events += 1
        self._unreported += 1
        now = time.time() if t is None else t
        self._lost_from_t = self._lost_from_t or now
        self._lost_to_t = now
        self.last_error = exc
        if not self._said:
            self._said = True
            reason = exc.strerror or str(exc)
            say(f"cannot write the run log {self.path} ({reason}): its events are dropped and counted "
                 "until writing works again; training goes on")

    def close(self) -> None:
        """Flush and close the log; later ``emit`` calls are ignored. Never raises."""
        with self._lock:
            if not self._closed:
                self._closed = True
                fd, self._fd = self._fd, None
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.fsync(fd)
                    with contextlib.suppress(OSError):
                        os.close(fd)
