"""A binary log read a chunk at a time as runs of complete lines, with a bound on what one line may hold.

The whole-log fold (:mod:`ftwatch.runlog.log_fold`) and the dashboard's replay scan read the log's
bytes, not text: a block of ASCII lines goes to msgspec as it is, and only a block that is not
ASCII is decoded (``errors="replace"``, as the text reader decodes).

A line's start is kept until its newline arrives, up to ``max_line_bytes``: a longer line is read
past, never held whole, and counted by the decoder as too long once its end is found (or the log
ends). A run of complete lines longer than the bound may hold such a line whole (it came in one
chunk): it is made blank, as many bytes, and counted. :attr:`consumed` is the byte offset after
what was handed out, over-long lines included, so positions stay true.
"""

from __future__ import annotations

from typing import IO, Any

from ftwatch.runlog.event_reader import MAX_LINE_CHARS, EventDecoder

#: Bytes read at a time: some 170 lines of samples, the block size that folds fastest (fewer objects
#: alive at once; a fresh process folded a 1M-event log in 2.3-2.5 s with 64 KiB, 2.7-2.8 s with
#: 256 KiB and 3.4-3.6 s with 512 KiB).
CHUNK_BYTES = 1 << 16
#: The most one line may hold (a UTF-8 character is at most 4 bytes, so no line the decoder would
#: take as one, :data:`~ftwatch.runlog.event_reader.MAX_LINE_CHARS` characters, is cut).
MAX_LINE_BYTES = 4 * MAX_LINE_CHARS


class LineChunks:
    """The complete lines of ``stream``, a chunk at a time (:meth:`next_lines`), then its last line
    without a newline (:meth:`tail`). Over-long lines are counted in ``decoder``'s stats."""

    def __init__(self, stream: IO[bytes], decoder: EventDecoder, chunk_bytes: int = CHUNK_BYTES,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self.decoder = decoder
        self.chunk_bytes = chunk_bytes
        self.max_line_bytes = max_line_bytes
        #: Bytes of the log before the next line to hand out.
        self.consumed = 0
        self._partial = b""
        self._skipped: int | None = None  # inside an over-long line: its bytes so far

    def next_lines(self) -> bytes | None:
        """The next complete lines, each with its newline (``b""`` when a chunk completed none);
        ``None`` at the end of the stream. :attr:`consumed` counts them once they are handed out."""
        chunk = self.stream.read(self.chunk_bytes)
        if not chunk:
            return None
        if self._skipped is not None:  # inside an over-long line: drop it up to its newline
            newline = chunk.find(b"\n")
            if newline < 0:
                self._skipped += len(chunk)
                return b""
            self.consumed += self._skipped + newline + 1
            self._skipped = None
            self.decoder.count_long_line()
            chunk = chunk[newline + 1:]
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n") + 1
        lines, self._partial = data[:cut], data[cut:]
        if len(self._partial) >= self.max_line_bytes:
            self._skipped, self._partial = len(self._partial), b""
        if len(lines) > self.max_line_bytes:  # it may hold an over-long line whole
            lines = self._blank_long_lines(lines)
        self.consumed += len(lines)
        return lines

    def tail(self) -> bytes:
        """At the end of the stream: the last line if it has no newline (``b""`` if none, or if it was
        over-long: then it is counted). :attr:`consumed` then covers the whole log."""
        if self._skipped is not None:
            self.consumed += self._skipped
            self._skipped = None
            self.decoder.count_long_line()
            return b""
        rest, self._partial = self._partial, b""
        self.consumed += len(rest)
        return rest

    def tail_events(self) -> list[dict[str, Any]]:
        """At the end of the stream: the event of a last line without its newline (none when it does
        not parse: the decoder counts it as a cut tail), after :meth:`tail`."""
        rest = self.tail()
        if rest:
            self.decoder.feed(rest.decode("utf-8", "replace"))
        return self.decoder.finish()

    def _blank_long_lines(self, lines: bytes) -> bytes:
        """``lines`` with each line over the bound counted and made blank (as many bytes, so the
        offsets stay true; a blank line is no event)."""
        parts = lines.split(b"\n")
        for k, part in enumerate(parts):
            if len(part) + 1 > self.max_line_bytes:
                parts[k] = b" " * len(part)
                self.decoder.count_long_line()
        return b"\n".join(parts)
