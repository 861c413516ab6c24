"""The run log's reader: a tolerant incremental decoder, and finding and opening a log to read.

:class:`EventDecoder` turns text into events (skipping and counting in :class:`ReadStats` what is
not one); :func:`resolve_log_path` and :func:`open_log` find and open a log (a run directory, a
``.gz``) without ever blocking on what is no file; :func:`read_events` reads a whole log.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ftwatch.common.safe_text import safe, safe_value
from ftwatch.runlog.event_fields import CHECKS as _FIELD_CHECKS
from ftwatch.runlog.events import EVENTS_FILE, MAX_DEPTH, SCHEMA_VERSION


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number an event may hold")


#: ``json`` without its wrapper, refusing NaN and Infinity (which are not JSON, and not figures).
_raw_decode = json.JSONDecoder(parse_constant=_reject_constant).raw_decode


def _fast_parser() -> Any:
    """msgspec's JSON decoder when it is installed (3x the standard parser on a log), else ``None``.

    It reads exactly the lines ``json`` reads, with the same result (integers of any size kept
    exact, the last of duplicate keys), and refuses NaN, Infinity and trailing text as the reader
    does. What it refuses beyond that (a lone surrogate escape such as ``"\\udcff"``, which a
    non-UTF-8 file name gives; ``1e400``) goes to ``json``, so the outcome never depends on which
    parser is installed."""
    try:
        import msgspec
    except ImportError:
        return None
    return msgspec.json.Decoder().decode


_fast_decode = _fast_parser()

#: A line longer than this (in characters) is skipped and counted, never held whole in memory:
#: real events are far shorter (the longest, an exit with its traceback, is some KiB).
MAX_LINE_CHARS = 1 << 20
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


def _decode(line: str) -> Any:
    """The JSON value of a stripped line: the fast parser, and ``json`` for what it refuses (raises
    ``ValueError`` for what neither reads, trailing text after the value included)."""
    if _fast_decode is not None:
        try:
            return _fast_decode(line)
        except ValueError:
            pass
    value, end = _raw_decode(line)  # json.loads without its wrapper: the line is stripped already
    if end != len(line):  # trailing garbage after the object
        raise ValueError("trailing text after the JSON value")
    return value


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
        text = self.take_lines(chunk)
        if text is None:
            return
        decode = self.decode_line
        for line in text.split("\n"):
            event = decode(line)
            if event is not None:
                yield event

    def take_lines(self, chunk: str) -> str | None:
        """The complete lines that ``chunk`` ends (with the partial line kept from before), as one
        text without its last newline, for :meth:`decode_line` one by one or a block reader;
        ``None`` when ``chunk`` ends none. The new partial line is kept (an over-long one skipped
        and counted)."""
        if self._skipping:
            newline = chunk.find("\n")
            if newline < 0:
                return None
            chunk, self._skipping = chunk[newline + 1:], False
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind("\n")
        partial = data[cut + 1:]
        if len(partial) > MAX_LINE_CHARS:
            self._too_long()
            partial, self._skipping = "", True
        self._partial = partial
        return data[:cut] if cut >= 0 else None

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
            event = _decode(line)
        except (ValueError, RecursionError):  # not JSON, NaN, a number past the int limit, nested too deep
            return self._corrupt(line)
        if type(event) is not dict:
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
    return io.TextIOWrapper(open_log_bytes(path), encoding="utf-8", errors="replace")


def open_log_bytes(path: Path) -> IO[bytes]:
    """:func:`open_log`, for reading bytes (gunzipped)."""
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
    return _OwnGzipFile(raw) if path.suffix == ".gz" else raw


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
