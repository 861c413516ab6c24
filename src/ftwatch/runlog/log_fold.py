"""A whole log folded into a run state at the speed of its parser: the reads that need no event one by one.

``replay --headless`` and the module table need the state at the log's end, not each event.
:func:`fold_log` reads the log's bytes in chunks (:class:`~ftwatch.runlog.line_chunks.LineChunks`)
and cuts each into blocks of ``sample`` and ``snapshot``
lines (nearly all of a long log), which :mod:`ftwatch.runlog.typed_events` decodes and checks in
one call and :meth:`RunState.apply_typed` folds in runs. Every other line (the header, phases,
warnings, the exit, and any block the typed decoder leaves) goes through the ordinary
:class:`~ftwatch.runlog.event_reader.EventDecoder` and :meth:`RunState.apply`, so the state and
the reader's counts come out as a line-by-line read gives them.
"""

from __future__ import annotations

import os
import re

from ftwatch.runlog.event_reader import MAX_LINE_CHARS, EventDecoder, open_log_bytes, resolve_log_path
from ftwatch.runlog.line_chunks import LineChunks
from ftwatch.runlog.state import RunState
from ftwatch.runlog.typed_events import AVAILABLE, SnapshotEvent, block_is_plain, decode_block

#: Where a line of another kind than the block kinds starts its ``kind``, as the writer spells it.
#: A line it misses (spelt otherwise, or no event at all) fails the block's typed decode, which
#: then goes line by line.
_OTHER_KIND = re.compile(rb'"kind":"(?!(?:sample|snapshot)")')


def fold_log(path: str | os.PathLike[str], state: RunState | None = None,
             decoder: EventDecoder | None = None, chunk_bytes: int | None = None) -> tuple[RunState, EventDecoder]:
    """Fold the whole log at ``path`` into ``state`` (a new one by default); returns the state and the
    decoder whose ``stats`` count what was skipped. Raises what :func:`read_events` raises."""
    state = state if state is not None else RunState()
    decoder = decoder if decoder is not None else EventDecoder()
    with open_log_bytes(resolve_log_path(path)) as stream:
        chunks = LineChunks(stream, decoder) if chunk_bytes is None else LineChunks(stream, decoder, chunk_bytes)
        while (lines := chunks.next_lines()) is not None:
            if lines:
                fold_text(lines[:-1], state, decoder)
        for event in chunks.tail_events():
            state.apply(event)
    return state, decoder


def fold_text(text: bytes, state: RunState, decoder: EventDecoder, marks: list[int] | None = None,
              base: int = 0) -> int:
    """Fold complete lines (``text`` without its last newline): blocks of samples and snapshots
    typed, the lines between them one by one. Returns how many events it folded; with ``marks``,
    appends the position (``base`` plus the events folded up to it) right after each snapshot of a
    training step, as the dashboard's replay keeps them."""
    if not AVAILABLE:
        return _fold_lines(text, state, decoder, marks, base)
    # Most chunks of a long log hold nothing but samples and snapshots: one block. Only a chunk that
    # fails as one is searched for the lines of other kinds.
    folded = _fold_block(text, state, decoder, marks, base, whole=True)
    if folded is not None:
        return folded
    start, count = 0, 0
    for match in _OTHER_KIND.finditer(text):
        line_start = text.rfind(b"\n", 0, match.start()) + 1
        if line_start < start:  # a second match on a line already read
            continue
        line_end = text.find(b"\n", match.end())
        line_end = len(text) if line_end < 0 else line_end
        if line_start > start:
            count += _fold_block(text[start:line_start - 1], state, decoder, marks, base + count)
        count += _fold_lines(text[line_start:line_end], state, decoder, marks, base + count)
        start = line_end + 1
    if start < len(text):
        count += _fold_block(text[start:], state, decoder, marks, base + count)
    return count


def _fold_block(block: bytes, state: RunState, decoder: EventDecoder, marks: list[int] | None, base: int,
                whole: bool = False) -> int | None:
    """A block typed, else line by line (``whole``: else ``None``, and nothing folded)."""
    events = decode_block(block) if block_is_plain(block, MAX_LINE_CHARS) else None
    if events is None:
        return None if whole else _fold_lines(block, state, decoder, marks, base)
    decoder.stats.events += len(events)
    state.apply_typed(events, block)
    if marks is not None:
        snapshot = SnapshotEvent
        marks.extend(base + k + 1 for k, event in enumerate(events)
                     if event.__class__ is snapshot and event.step is not None)
    return len(events)


def _fold_lines(text: bytes, state: RunState, decoder: EventDecoder, marks: list[int] | None, base: int) -> int:
    decode, apply, count = decoder.decode_line, state.apply, 0
    for line in text.decode("utf-8", "replace").split("\n"):
        event = decode(line)
        if event is not None:
            apply(event)
            count += 1
            if marks is not None and event["kind"] == "snapshot" and event.get("step") is not None:
                marks.append(base + count)
    return count
