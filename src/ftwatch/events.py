"""The event schema: the one contract between the training side and every viewer.

Every run writes ``events.jsonl``: one JSON object per line, each with ``v`` (schema version),
``t`` (unix time, seconds) and ``kind``. The kinds and their fields are documented in
``docs/events.md``. This module holds the names, the codec and a tolerant incremental reader;
it imports nothing heavy (no torch, no textual) so every consumer can use it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
END_STATUSES: tuple[str, ...] = ("finished", "failed", "oom", "stopped")

KINDS: tuple[str, ...] = ("header", "estimate", "phase", "model", "sample", "snapshot", "warning", "note", "exit")

EVENTS_FILE = "events.jsonl"


def make_event(kind: str, fields: dict[str, Any], t: float | None = None) -> dict[str, Any]:
    """The event dict: ``v``, ``t`` (now unless given), ``kind``, then the fields."""
    record = {"v": SCHEMA_VERSION, "t": round(time.time() if t is None else t, 4), "kind": kind}
    record.update(fields)
    return record


def encode_event(record: dict[str, Any]) -> str:
    """Encode an event dict as a JSON line (with the trailing newline)."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default) + "\n"


def encode(kind: str, fields: dict[str, Any], t: float | None = None) -> str:
    """Encode one event as a JSON line (with the trailing newline)."""
    return encode_event(make_event(kind, fields, t))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class EventWriter:
    """Appends events to a run log; safe to call from several threads.

    Each event is written and flushed at once, so the file is complete up to the last event even
    if the process is killed (the data sits in the kernel's page cache). The file is private to
    its owner (mode 0600).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()
        self._closed = False
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        """Write one event, then hand it to the listeners (which must be quick and never raise
        into the caller). Never raises on a closed writer (late sampler ticks are dropped)."""
        record = make_event(kind, fields)
        line = encode_event(record)
        data = line.encode("utf-8")
        with self._lock:
            if self._closed:
                return
            while data:  # one write(2) per event: in the kernel at once, whole lines only
                written = os.write(self._fd, data)
                data = data[written:]
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                listener(record)

    def close(self) -> None:
        """Flush and close the log; later ``emit`` calls are ignored."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
                os.close(self._fd)


_raw_decode = json.JSONDecoder().raw_decode


class SchemaVersionError(ValueError):
    """The log was written by an incompatible ftwatch schema version."""


@dataclass
class ReadStats:
    """What a reader skipped, so consumers can report it instead of losing it silently."""

    events: int = 0
    corrupt_lines: int = 0
    unknown_kinds: int = 0
    truncated_tail: bool = False
    unknown_kind_names: set[str] = field(default_factory=set)


class EventDecoder:
    """Turns chunks of text (a followed file, a pipe) into events.

    Incomplete trailing lines are kept until their newline arrives; lines that are not JSON
    objects are skipped and counted; kinds from a newer version are skipped and counted; a log
    of another major schema version raises ``SchemaVersionError``.
    """

    def __init__(self) -> None:
        self.stats = ReadStats()
        self._partial = ""

    def feed(self, chunk: str) -> list[dict[str, Any]]:
        """Decode the complete lines in ``chunk`` (plus any partial line kept from before)."""
        return list(self.iter_feed(chunk))

    def iter_feed(self, chunk: str) -> Iterator[dict[str, Any]]:
        """Like :meth:`feed`, one event at a time (a big chunk's events are never all alive at once,
        which keeps the garbage collector out of long reads)."""
        data = self._partial + chunk
        lines = data.split("\n")
        self._partial = lines.pop()
        decode = self.decode_line
        for line in lines:
            event = decode(line)
            if event is not None:
                yield event

    def finish(self) -> list[dict[str, Any]]:
        """Decode what is left at the end of a finished log (a last line without newline)."""
        rest, self._partial = self._partial, ""
        if not rest.strip():
            return []
        corrupt_before = self.stats.corrupt_lines
        event = self.decode_line(rest)
        if event is None and self.stats.corrupt_lines > corrupt_before:
            # A killed writer leaves a cut line: report it as such rather than as corruption.
            self.stats.corrupt_lines -= 1
            self.stats.truncated_tail = True
            return []
        if event is None:  # a whole event of an unknown kind, just without its newline
            return []
        return [event]

    def decode_line(self, line: str) -> dict[str, Any] | None:
        """Decode one line; ``None`` for blank, corrupt or unknown-kind lines (counted)."""
        line = line.strip()
        if not line:
            return None
        try:
            event, end = _raw_decode(line)  # json.loads without its wrapper: the line is stripped already
        except ValueError:
            self.stats.corrupt_lines += 1
            return None
        if end != len(line):  # trailing garbage after the object
            self.stats.corrupt_lines += 1
            return None
        if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
            self.stats.corrupt_lines += 1
            return None
        version = event.get("v")
        if event["kind"] == "header" and isinstance(version, int) and version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"this log uses event schema v{version}; this ftwatch reads v{SCHEMA_VERSION}"
            )
        if event["kind"] not in KINDS:
            self.stats.unknown_kinds += 1
            self.stats.unknown_kind_names.add(event["kind"])
            return None
        if not isinstance(event.get("t"), (int, float)):
            self.stats.corrupt_lines += 1
            return None
        self.stats.events += 1
        return event


def resolve_log_path(path: str | os.PathLike[str]) -> Path:
    """A run directory stands for its ``events.jsonl``; a file stands for itself."""
    p = Path(path)
    if p.is_dir():
        for name in (EVENTS_FILE, EVENTS_FILE + ".gz"):
            if (p / name).exists():
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
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    return p


def open_log(path: Path) -> IO[str]:
    """Open a run log for reading text, transparently gunzipping ``.gz`` files."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


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
