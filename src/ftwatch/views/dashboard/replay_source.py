"""The bytes of a log being replayed: its lines read with a bound on each, a gzipped log spooled to a
private file so it can be read again from any offset, and the time of a plain log's last event.

An over-long line is read past, never held (:class:`SkippedLine`), so the positions in bytes that
the checkpoints keep stay true whatever the log holds.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import IO

from ftwatch.runlog import line_chunks
from ftwatch.runlog.event_reader import EventDecoder, SchemaVersionError


def tail_time(path: Path, nbytes: int = 256 * 1024) -> float | None:
    """The time of the last event in a plain log, read from its tail (``None`` if none is found)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - nbytes, 0))
        lines = handle.read().split(b"\n")
    if size > nbytes:
        lines = lines[1:]  # the first one is cut
    decoder = EventDecoder()
    for line in reversed(lines):
        try:
            event = decoder.decode_line(line.decode("utf-8", "replace"))
        except SchemaVersionError:
            continue
        if event is not None:
            return float(event["t"])
    return None


#: The most a replay reads of one line: the rest of a longer line is read past, never held, and the
#: line counted as too long (as the decoder does).
MAX_LINE_BYTES = line_chunks.MAX_LINE_BYTES


class SkippedLine(bytes):
    """An over-long line that was read past: a blank line that remembers how many bytes it took."""

    consumed: int


def read_line(stream: IO[bytes], copy_to: IO[bytes] | None = None) -> bytes:
    """The next line of ``stream`` (``b""`` at its end), at most :data:`MAX_LINE_BYTES` of it held:
    a longer one comes back as a :class:`SkippedLine`. ``copy_to`` gets every byte read."""
    line = stream.readline(MAX_LINE_BYTES)
    if copy_to is not None and line:
        copy_to.write(line)
    if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    consumed = len(line)
    while True:
        more = stream.readline(MAX_LINE_BYTES)
        if copy_to is not None and more:
            copy_to.write(more)
        consumed += len(more)
        if not more or more.endswith(b"\n"):
            break
    skipped = SkippedLine(b"\n")
    skipped.consumed = consumed
    return skipped


def line_length(line: bytes) -> int:
    """How many bytes of the log ``line`` took (a skipped line's whole length)."""
    return line.consumed if isinstance(line, SkippedLine) else len(line)


class LogSource:
    """A log's bytes: read once in order (by the scanner) and again from any offset (by the cursor).

    A plain file is simply opened twice. A gzipped log is decompressed into a private temporary
    file as the scan goes (deleted at once, gone when closed), so going back never decompresses
    the log again from its start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = max(path.stat().st_size, 1)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._spool: IO[bytes] | None = None
        if path.suffix == ".gz":
            self._stream: IO[bytes] = gzip.GzipFile(fileobj=self._raw)
            fd, name = tempfile.mkstemp(prefix="ftwatch-replay-", suffix=".jsonl")
            self._spool = os.fdopen(fd, "wb")
            self.reader: IO[bytes] = open(name, "rb")  # noqa: SIM115 - closed in close()
            os.unlink(name)
        else:
            self._stream = self._raw
            self.reader = open(path, "rb")  # noqa: SIM115 - closed in close()

    def readline(self) -> bytes:
        """The next line of the log (with its newline; the last one may lack it), ``b""`` at the end;
        an over-long one as a :class:`SkippedLine`."""
        return read_line(self._stream, self._spool)

    def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes of the log (``b""`` at its end)."""
        data = self._stream.read(size)
        if self._spool is not None and data:
            self._spool.write(data)
        return data

    def flush(self) -> None:
        """Make what was read so far readable through :attr:`reader`."""
        if self._spool is not None:
            self._spool.flush()

    @property
    def loaded(self) -> float:
        """Share of the file read so far."""
        try:
            return min(self._raw.tell() / self.size, 1.0)
        except (OSError, ValueError):
            return 0.0

    def close(self) -> None:
        """Close every handle (the temporary file goes with them)."""
        for handle in (self._stream, self._raw, self._spool, self.reader):
            if handle is not None:
                handle.close()

