"""The event schema: the one contract between the training side and every viewer.

Every run writes ``events.jsonl``: one JSON object per line, each with ``v`` (schema version),
``t`` (unix time, seconds) and ``kind``. The kinds and their fields are documented in
``docs/events.md``. This module holds the names, the codec and a tolerant incremental reader;
it imports nothing heavy (no torch, no textual) so every consumer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ftwatch.common.safe_text import safe, safe_value, say
from ftwatch.runlog.event_fields import CHECKS as _FIELD_CHECKS
from ftwatch.runlog.event_fields import END_STATUSES as _END_STATUSES

SCHEMA_VERSION = 1

#: Categories measured exactly from tensors, on any device.
TENSOR_CATEGORIES: tuple[str, ...] = ("weights", "lora", "grads", "optimizer", "activations")
#: Categories derived from the CUDA allocator and NVML (CUDA runs only).
DEVICE_CATEGORIES: tuple[str, ...] = ("other", "cache", "non_torch", "other_processes", "free")
#: Every category of the stacked bar, bottom to top.
CATEGORIES: tuple[str, ...] = TENSOR_CATEGORIES + DEVICE_CATEGORIES

#: Training phases, in the order a run goes through them.
PHASES: tuple[str, ...] = ("loading_model", "applying_lora", "preparing_trainer", "training")
#: How a run can end.
END_STATUSES = _END_STATUSES

KINDS: tuple[str, ...] = ("header", "estimate", "phase", "model", "sample", "snapshot", "warning", "note", "exit")

EVENTS_FILE = "events.jsonl"


def make_event(kind: str, fields: dict[str, Any], t: float | None = None) -> dict[str, Any]:
    """The event dict: ``v``, ``t`` (now unless given), ``kind``, then the fields."""
    record = {"v": SCHEMA_VERSION, "t": round(time.time() if t is None else t, 4), "kind": kind}
    record.update(fields)
    return record


def encode_event(record: dict[str, Any]) -> str:
    """Encode an event dict as a JSON line (with the trailing newline).

    Never raises for a value JSON cannot hold: a non-finite float (a NaN loss) becomes ``null``
    (not known) and an object JSON does not know becomes its ``str``.
    """
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_json_safe(record), separators=(",", ":"), allow_nan=False) + "\n"


def encode(kind: str, fields: dict[str, Any], t: float | None = None) -> str:
    """Encode one event as a JSON line (with the trailing newline)."""
    return encode_event(make_event(kind, fields, t))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` with what JSON cannot hold replaced: non-finite floats by ``None``, unknown objects
    by their text (the slow path of :func:`encode_event`, taken only when the fast one refused)."""
    if depth > MAX_DEPTH:
        return None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    try:
        converted = _json_default(value)
    except Exception:
        return str(value)
    return _json_safe(converted, depth + 1) if converted is not value else str(value)


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number an event may hold")


#: ``json`` without its wrapper, refusing NaN and Infinity (which are not JSON, and not figures).
_raw_decode = json.JSONDecoder(parse_constant=_reject_constant).raw_decode

#: A line longer than this (in characters) is skipped and counted, never held whole in memory:
#: real events are far shorter (the longest, an exit with its traceback, is some KiB).
MAX_LINE_CHARS = 1 << 20
#: Events nest a few levels (``exit.oom.last_categories``); a line nested deeper is not an event.
MAX_DEPTH = 32
#: Lines with more brackets than this get their nesting measured before they are parsed.
_DEPTH_SCAN_FROM = 64
#: How many distinct unknown kind names (and invalid field names) the stats keep.
_MAX_NAMES = 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
#: In a raw line: a control character in a string, escaped as JSON writes it (``\u001b``,
#: ``\u009b``, ``\u007f``, ``\b``, ``\f``, ``\r``, the bidi controls ``\u202e``...) or raw (DEL, C1,
#: bidi). Only such lines are sanitised.
_CONTROL_IN_LINE = re.compile(r"\\u00[0189][0-9a-fA-F]|\\u007[fF]|\\[bfr]|[\x7f-\x9f]"
                              r"|\\u(?:061[cC]|200[eEfF]|202[a-eA-E]|206[6-9])|[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class SchemaVersionError(ValueError):
    """The log was written by an incompatible ftwatch schema version."""


class NotALogError(FileNotFoundError):
    """The path is no run log: a FIFO, a device, a socket (reading one would block or never end)."""


@dataclass
class ReadStats:
    """What a reader skipped, so consumers can report it instead of losing it silently.

    ``corrupt_lines`` counts every line skipped as unreadable; ``invalid_events`` (events whose
    fields do not fit their kind, see :mod:`ftwatch.runlog.event_fields`) and ``long_lines`` (over
    :data:`MAX_LINE_CHARS`) are the part of it with those causes.
    """

    events: int = 0
    corrupt_lines: int = 0
    unknown_kinds: int = 0
    truncated_tail: bool = False
    unknown_kind_names: set[str] = field(default_factory=set)
    invalid_events: int = 0
    invalid_fields: set[str] = field(default_factory=set)
    long_lines: int = 0
    #: The first line read was a JSON array (``[...]``): a JSON file, not a log of one event per line.
    json_array: bool = False

    def add(self, other: ReadStats) -> None:
        """Add another reader's counts to these (the logs of a multi-process run)."""
        self.events += other.events
        self.corrupt_lines += other.corrupt_lines
        self.unknown_kinds += other.unknown_kinds
        self.truncated_tail = self.truncated_tail or other.truncated_tail
        self.unknown_kind_names |= other.unknown_kind_names
        self.invalid_events += other.invalid_events
        self.invalid_fields |= other.invalid_fields
        self.long_lines += other.long_lines
        self.json_array = self.json_array or other.json_array


def _too_deep(line: str) -> bool:
    """True when the JSON in ``line`` nests deeper than :data:`MAX_DEPTH` (strings ignored)."""
    depth = 0
    for char in _JSON_STRING.sub("", line):
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


class EventDecoder:
    """Turns chunks of text (a followed file, a pipe) into events.

    Incomplete trailing lines are kept until their newline arrives (up to :data:`MAX_LINE_CHARS`:
    a longer line is skipped and counted); lines that are not JSON objects, and events whose
    fields do not fit their kind (:mod:`ftwatch.runlog.event_fields`), are skipped and counted; kinds
    from a newer version are skipped and counted; a log of another major schema version raises
    ``SchemaVersionError``. Every string of an event that holds control characters is made safe
    for a terminal (:func:`ftwatch.common.safe_text.safe_value`) before anyone sees it.
    """

    def __init__(self) -> None:
        self.stats = ReadStats()
        self._partial = ""
        self._skipping = False  # inside an over-long line: drop text up to its newline

    def feed(self, chunk: str) -> list[dict[str, Any]]:
        """Decode the complete lines in ``chunk`` (plus any partial line kept from before)."""
        return list(self.iter_feed(chunk))

    def iter_feed(self, chunk: str) -> Iterator[dict[str, Any]]:
        """Like :meth:`feed`, one event at a time (a big chunk's events are never all alive at once,
        which keeps the garbage collector out of long reads)."""
        if self._skipping:
            newline = chunk.find("\n")
            if newline < 0:
                return
            chunk, self._skipping = chunk[newline + 1:], False
        data = self._partial + chunk if self._partial else chunk
        lines = data.split("\n")
        partial = lines.pop()
        if len(partial) > MAX_LINE_CHARS:
            self._too_long()
            partial, self._skipping = "", True
        self._partial = partial
        decode = self.decode_line
        for line in lines:
            event = decode(line)
            if event is not None:
                yield event

    def count_long_line(self) -> None:
        """Count a line over :data:`MAX_LINE_CHARS` that its reader skipped unread."""
        self.stats.corrupt_lines += 1
        self.stats.long_lines += 1

    _too_long = count_long_line

    def finish(self) -> list[dict[str, Any]]:
        """Decode what is left at the end of a finished log (a last line without newline)."""
        rest, self._partial, self._skipping = self._partial, "", False
        if not rest.strip():
            return []
        stats = self.stats
        before = (stats.corrupt_lines, stats.invalid_events, stats.long_lines)
        event = self.decode_line(rest)
        cut = stats.corrupt_lines > before[0] and (stats.invalid_events, stats.long_lines) == before[1:]
        if event is None and cut and stats.events:
            # A killed writer leaves a cut line: report it as such rather than as corruption (only
            # after a good event: a file of nothing but one broken line is no log cut short).
            stats.corrupt_lines -= 1
            stats.truncated_tail = True
            return []
        if event is None:  # corrupt, or a whole event of an unknown kind just without its newline
            return []
        return [event]

    def decode_line(self, line: str) -> dict[str, Any] | None:
        """Decode one line; ``None`` for blank, corrupt, invalid or unknown-kind lines (counted)."""
        line = line.strip()
        if not line:
            return None
        stats = self.stats
        if len(line) > MAX_LINE_CHARS:
            self._too_long()
            return None
        try:
            if line[0] != "{" or (line.count("{") + line.count("[") > _DEPTH_SCAN_FROM and _too_deep(line)):
                return self._corrupt(line)
            event, end = _raw_decode(line)  # json.loads without its wrapper: the line is stripped already
        except (ValueError, RecursionError):  # not JSON, NaN, a number past the int limit, nested too deep
            return self._corrupt(line)
        if end != len(line) or type(event) is not dict:  # trailing garbage after the object
            return self._corrupt(line)
        kind = event.get("kind")
        if type(kind) is not str:
            return self._corrupt(line)
        if kind == "header":
            version = event.get("v")
            if type(version) is int and version != SCHEMA_VERSION:
                shown = f"v{version}" if 0 <= version < 10**6 else "an unknown version"
                raise SchemaVersionError(f"this log uses event schema {shown}; this ftwatch reads v{SCHEMA_VERSION}")
        check = _FIELD_CHECKS.get(kind)
        if check is None:
            stats.unknown_kinds += 1
            if len(stats.unknown_kind_names) < _MAX_NAMES:
                stats.unknown_kind_names.add(safe(kind, one_line=True)[:60])
            return None
        bad_field = check(event)
        if bad_field is not None:
            stats.corrupt_lines += 1
            stats.invalid_events += 1
            if len(stats.invalid_fields) < _MAX_NAMES:
                stats.invalid_fields.add(f"{kind}.{bad_field}")
            return None
        if ("\\" in line or "\x7f" in line or not line.isascii()) and _CONTROL_IN_LINE.search(line):
            try:
                event = safe_value(event)
            except RecursionError:
                return self._corrupt(line)
        stats.events += 1
        return event

    def _corrupt(self, line: str) -> None:
        stats = self.stats
        if not (stats.events or stats.corrupt_lines or stats.unknown_kinds) and line[:1] == "[":
            stats.json_array = True
        stats.corrupt_lines += 1
        return None


def _check_readable(p: Path) -> None:
    """Refuse what is neither a regular file nor a directory, before anything opens it."""
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, ValueError):  # (ValueError: a NUL in the name)
        raise FileNotFoundError(f"no such file: {p}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotALogError(f"{p} is {_file_kind(mode)}, not a run log: give an events.jsonl file or its run "
                           "directory")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def resolve_log_path(path: str | os.PathLike[str]) -> Path:
    """A run directory stands for its ``events.jsonl``; a file stands for itself.

    Raises ``FileNotFoundError`` (one line for the user) for a missing path, a directory without a
    log, and (as :class:`NotALogError`) a path that is no regular file: a FIFO, a device, a socket.
    """
    p = Path(path)
    _check_readable(p)
    if p.is_dir():
        for name in (EVENTS_FILE, EVENTS_FILE + ".gz"):
            if (p / name).exists():
                _check_readable(p / name)
                return p / name
        ranks = sorted(p.glob(f"rank*/{EVENTS_FILE}*"))
        if ranks:
            names = ", ".join(f.parent.name for f in ranks)
            raise FileNotFoundError(f"{p} is a multi-process run ({names}): give it to ftwatch replay or "
                                    f"attach as it is, or name one rank's directory")
        runs = p.glob(f"*/{EVENTS_FILE}*")
        multi = (f.parent for f in p.glob(f"*/rank*/{EVENTS_FILE}*"))  # a multi-process run's ranks
        newest = sorted([*runs, *multi], key=lambda f: f.stat().st_mtime)
        hint = f"; the newest run in it is {newest[-1].parent}" if newest else ""
        raise FileNotFoundError(f"{p} is a directory without an {EVENTS_FILE}{hint}")
    return p


def open_log(path: Path) -> IO[str]:
    """Open a run log for reading text, transparently gunzipping ``.gz`` files.

    Opened without blocking and checked on the open file: a FIFO or device put in the log's place
    after :func:`resolve_log_path` looked raises :class:`NotALogError` instead of hanging.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotALogError(f"{path} is {_file_kind(mode)}, not a run log")
        os.set_blocking(fd, True)
        raw = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    if path.suffix == ".gz":
        return io.TextIOWrapper(_OwnGzipFile(raw), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


class _OwnGzipFile(gzip.GzipFile):
    """A gzip reader that closes the file it was given when it is closed."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        """Close the gzip stream, then the file under it."""
        try:
            super().close()
        finally:
            self._raw.close()


def read_events(path: str | os.PathLike[str], decoder: EventDecoder | None = None) -> Iterator[dict[str, Any]]:
    """Yield every event of a finished (or still growing) log; ``decoder.stats`` counts the skips."""
    decoder = decoder or EventDecoder()
    with open_log(resolve_log_path(path)) as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            yield from decoder.iter_feed(chunk)
    yield from decoder.finish()
