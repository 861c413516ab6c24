"""The folding of a recorded log up to any point: one scan that keeps checkpoints, and cursors.

- :class:`LogScanner` reads the log once from the start and folds it, keeping a copy of the folded
  state (a checkpoint) every ``checkpoint_every`` events and where each training step ends.
- :class:`Cursor` is the position on screen: a state folded up to some event. Going back restores
  the nearest checkpoint before the target and folds forward from there, so a step back costs at
  most ``checkpoint_every`` events (a few milliseconds) whatever the length of the log.

Plain Python (no Textual, no threads): :class:`~ftwatch.views.dashboard.replay.ReplayFeed` drives it.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
from dataclasses import dataclass
from typing import IO, Any

from ftwatch.runlog import line_chunks
from ftwatch.runlog.event_reader import EventDecoder, ReadStats
from ftwatch.runlog.line_chunks import LineChunks
from ftwatch.runlog.log_fold import fold_text
from ftwatch.runlog.state import RunState, Timeline
from ftwatch.views.dashboard import replay_source
from ftwatch.views.dashboard.replay_source import LogSource, SkippedLine, line_length, read_line

#: Events between two saved states: bounds the work of a step back.
CHECKPOINT_EVERY = 5000
#: Bytes the scan reads at a time.
SCAN_CHUNK = line_chunks.CHUNK_BYTES


def clone_state(state: RunState) -> RunState:
    """An independent copy of a run state, cheap enough to keep one every few thousand events.

    The fold never changes an event dict or a timeline point in place, so those are shared; the
    containers it does change (lists, dicts, phase records, the timeline's point list) are copied.
    """
    new = copy.copy(state)
    for name, value in vars(state).items():
        setattr(new, name, _clone_value(value))
    return new


def _clone_value(value: Any) -> Any:
    if isinstance(value, Timeline):
        timeline = copy.copy(value)
        timeline.points = list(value.points)
        return timeline
    if isinstance(value, list):
        return [dataclasses.replace(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
                for v in value]
    if isinstance(value, (dict, set)):
        return value.copy()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value)
    return value


@dataclass
class Checkpoint:
    """The state after the first ``index`` events, which end at byte ``offset`` of the log."""

    index: int
    offset: int
    state: RunState


class LogScanner:
    """Reads the whole log once, in batches: folds it, saves checkpoints, finds the step ends."""

    def __init__(self, source: LogSource, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.source = source
        self.every = max(int(checkpoint_every), 1)
        self.state = RunState()
        self.decoder = EventDecoder()
        self.index = 0
        self.offset = 0
        self.done = False
        self.checkpoints = [Checkpoint(0, 0, clone_state(self.state))]
        #: Positions (events folded) right after each training step's snapshot.
        self.marks: list[int] = []
        self._chunks = LineChunks(source, self.decoder, SCAN_CHUNK, replay_source.MAX_LINE_BYTES)
        self._lines = b""  # complete lines read, not folded yet

    @property
    def stats(self) -> ReadStats:
        """What the scan skipped so far."""
        return self.decoder.stats

    def advance(self, limit: int) -> int:
        """Read and fold up to ``limit`` more events (the caller holds the feed's lock); returns how many.

        The log is read in chunks (:class:`~ftwatch.runlog.line_chunks.LineChunks`, which reads
        past over-long lines) and folded a block of lines at a time
        (:func:`~ftwatch.runlog.log_fold.fold_text`: samples and snapshots typed, the rest line by
        line). A block ends where a checkpoint falls, so each checkpoint holds the state after
        exactly a multiple of ``checkpoint_every`` events and the byte offset where they end.
        """
        every, index = self.every, self.index
        end = index + limit
        while index < end:
            if not self._lines and not self._read():
                index = self._finish(index)
                self.done = True
                break
            index = self._fold(self._take(min(every - index % every, end - index)), index)
        read, self.index = index - self.index, index
        self.source.flush()
        return read

    def _read(self) -> bool:
        """Read the next complete lines to fold; ``False`` at the end of the log."""
        lines = self._chunks.next_lines()
        if lines is None:
            return False
        self._lines = lines
        return True

    def _take(self, lines: int) -> bytes:
        """The first ``lines`` complete lines read (all there are, if fewer), with their newlines."""
        held = self._lines
        if held.count(b"\n") <= lines:
            self._lines = b""
            return held
        cut = -1
        for _ in range(lines):
            cut = held.find(b"\n", cut + 1)
        self._lines = held[cut + 1:]
        return held[:cut + 1]

    def _fold(self, lines: bytes, index: int) -> int:
        """Fold complete lines; a checkpoint when the events folded reach a multiple of the spacing."""
        folded = fold_text(lines[:-1], self.state, self.decoder, self.marks, index) if lines else 0
        self.offset = self._chunks.consumed - len(self._lines)
        index += folded
        if folded and index % self.every == 0:
            self.checkpoints.append(Checkpoint(index, self.offset, clone_state(self.state)))
        return index

    def _finish(self, index: int) -> int:
        """The end of the log: a last line without its newline folded (an event if it parses, else a
        truncated tail; an over-long one is only counted)."""
        events = self._chunks.tail_events()
        self.offset = self._chunks.consumed
        for event in events:
            self.state.apply(event)
            index += 1
            if event["kind"] == "snapshot" and event.get("step") is not None:
                self.marks.append(index)
            if index % self.every == 0:
                self.checkpoints.append(Checkpoint(index, self.offset, clone_state(self.state)))
        return index

    def checkpoint_before(self, index: int) -> Checkpoint:
        """The latest saved state at or before ``index`` (the scan's own state when it is there)."""
        if index >= self.index:
            return Checkpoint(self.index, self.offset, self.state)
        i = bisect.bisect_right([c.index for c in self.checkpoints], index) - 1
        return self.checkpoints[max(i, 0)]


class Cursor:
    """The replay's position: the state after ``index`` events, and the reader of the ones after."""

    def __init__(self, reader: IO[bytes], start: Checkpoint) -> None:
        self.reader = reader
        self.state = clone_state(start.state)
        self.index = start.index
        self.offset = start.offset
        self.decoder = EventDecoder()
        self._next: dict[str, Any] | None = None
        reader.seek(start.offset)

    def peek(self, limit: int) -> dict[str, Any] | None:
        """The next event without folding it; ``None`` once ``limit`` events are folded."""
        if self._next is None and self.index < limit:
            self._next = self._read_event()
        return self._next

    def take(self) -> dict[str, Any]:
        """Consume the event :meth:`peek` returned (the caller folds it)."""
        event, self._next = self._next, None
        assert event is not None
        self.index += 1
        return event

    def fold_to(self, target: int) -> None:
        """Fold forward until ``target`` events are in the state (or the log ends)."""
        while self.index < target and self.peek(target) is not None:
            self.state.apply(self.take())

    def _read_event(self) -> dict[str, Any] | None:
        while True:
            line = read_line(self.reader)
            if not line:
                return None
            self.offset += line_length(line)
            if isinstance(line, SkippedLine):
                continue
            event = self.decoder.decode_line(line.decode("utf-8", "replace"))
            if event is not None:
                return event


