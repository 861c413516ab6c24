"""Typed decoding of the log's two frequent kinds, device samples and snapshots, for whole-log reads.

A replay's log is nine parts in ten ``sample`` events. Checking each one's fields in Python after
parsing it (:mod:`ftwatch.runlog.event_fields`) costs more than the parse. Here msgspec decodes
blocks of ``sample`` and ``snapshot`` lines straight into structs and checks every field while it
parses, in C. The struct types are generated from the same table the checks are
(:data:`~ftwatch.runlog.event_fields.KIND_FIELDS`), so the two cannot drift apart.

The structs are stricter than the checks, never looser: an unknown field, a ``null`` where the
table has an object, anything that is not exactly one event per line makes :func:`decode_block`
return ``None``, and the caller reads that block line by line through the ordinary decoder
instead. So a block either gives exactly the events the ordinary decoder would give, or is left to
it. :func:`line_event` gives the event dict of one line of a block, for the few events a fold
keeps (the last sample, the last snapshot).

Without msgspec installed, :data:`AVAILABLE` is false and every read goes line by line.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

from ftwatch.runlog.event_fields import INT32_LIMIT, INT64_LIMIT, KIND_FIELDS, OBJECTS, TIME_LIMIT
from ftwatch.runlog.events import SCHEMA_VERSION

try:
    import msgspec
except ImportError:  # the reader falls back to json, and reads line by line
    msgspec = None  # type: ignore[assignment]

#: True when blocks can be decoded here (msgspec is installed).
AVAILABLE = msgspec is not None
_FLOAT_MAX = sys.float_info.max
#: The kinds decoded in blocks: the ones a long log is made of.
BLOCK_KINDS = ("sample", "snapshot")
#: How the writer starts every line (:func:`ftwatch.runlog.events.encode_event`); a block whose
#: lines start otherwise is read line by line.
LINE_START = b'{"v":%d,"t":' % SCHEMA_VERSION
_NEXT_LINE_START = b"\n" + LINE_START


def _field_types() -> dict[str, Any]:
    """The event table's type names as msgspec types with the same bounds."""
    meta = msgspec.Meta
    size = Annotated[int, meta(ge=0, le=INT64_LIMIT - 1)]
    return {
        "str": str,
        "bytes": Annotated[int, meta(ge=-INT64_LIMIT, le=INT64_LIMIT - 1)],
        "size": size,
        "count": size,
        "index": Annotated[int, meta(ge=0, le=INT32_LIMIT - 1)],
        "number": Annotated[float, meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)],
        "time": Annotated[float, meta(ge=0, le=TIME_LIMIT)],
        "bool": bool,
        "byte_map": dict[str, size | None],
        "pid_bytes": list[tuple[Annotated[int, meta(ge=0, le=INT32_LIMIT - 1)], size]],
    }


def _struct(name: str, fields: dict[str, str], types: dict[str, Any], kind: str | None = None) -> type:
    """A struct of the table's ``fields`` (all optional, ``None`` when absent); with ``kind`` an event
    (tagged by ``kind``, with ``t`` required and ``v`` of any value, as the checks take it)."""
    members: list[Any] = [("t", types["time"])] if kind else []
    if kind:
        members.append(("v", Any, None))
    for field_name, type_name in fields.items():
        if type_name in OBJECTS:
            nested = _struct(f"{name}_{field_name}", OBJECTS[type_name], types)
            members.append((field_name, nested | None, None))
        elif type_name in types:
            members.append((field_name, types[type_name] | None, None))
        else:  # a type this module has no struct form of: the kind cannot be read in blocks
            raise TypeError(f"{name}.{field_name}: no typed form of {type_name!r}")
    options: dict[str, Any] = {"tag_field": "kind", "tag": kind} if kind else {}
    return msgspec.defstruct(name, members, forbid_unknown_fields=True, gc=False, **options)


if AVAILABLE:
    _TYPES = _field_types()
    #: ``kind`` -> the struct type its events are decoded into.
    STRUCTS: dict[str, type] = {kind: _struct(kind.title(), KIND_FIELDS[kind], _TYPES, kind) for kind in BLOCK_KINDS}
    SampleEvent: type = STRUCTS["sample"]
    SnapshotEvent: type = STRUCTS["snapshot"]
    _decode_lines = msgspec.json.Decoder(SampleEvent | SnapshotEvent).decode_lines  # type: ignore[operator]
    _decode_line = msgspec.json.Decoder().decode
    _BLOCK_ERRORS: tuple[type[Exception], ...] = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)
else:
    STRUCTS = {}
    SampleEvent = SnapshotEvent = type(None)


def decode_block(block: bytes) -> list[Any] | None:
    """The events of ``block`` (lines of ``sample`` and ``snapshot`` events, no newline at its end),
    as structs; ``None`` when any line is not exactly one such event that fits the table (the
    block is then for the ordinary decoder, line by line).

    The caller makes sure ``block`` holds no control character the reader would make safe and no
    line longer than the reader takes (:func:`block_is_plain`)."""
    if not AVAILABLE or not block.startswith(LINE_START):
        return None
    try:
        events = _decode_lines(block)
    except _BLOCK_ERRORS:
        return None
    # A line that starts as the writer starts every line gives one event or more (two objects on a
    # line give two), any other line none (blank) or more (" {...}"), or fails. So the events are
    # as many as the lines starting so exactly when each of those is one event and the rest are
    # blank, which the reader skips too. (Counting this long a pattern costs half of counting "\n{".)
    return events if len(events) == block.count(_NEXT_LINE_START) + 1 else None


def block_is_plain(block: bytes, max_chars: int) -> bool:
    """True when no line of ``block`` can hold a control character the reader makes safe (no
    backslash escape, no DEL, nothing but ASCII) and no line is over ``max_chars`` (the block is
    not)."""
    return len(block) <= max_chars and block.isascii() and b"\\" not in block and b"\x7f" not in block


def line_event(block: bytes, index: int, count: int) -> dict[str, Any]:
    """The event dict of line ``index`` of a block of ``count`` lines that :func:`decode_block` took,
    exactly as the ordinary decoder gives it (parsed again from its line: a block holds nothing
    the decoder would change)."""
    if index == 0:  # a block starts with its first event
        return _decode_line(block.split(b"\n", 1)[0])
    lines = block.rsplit(b"\n", count - index)  # the line and those after it, as many as their events...
    if any(not line.strip() for line in lines[1:]):  # ...unless a blank line (no event) is among them
        lines = [b""] + [line for line in block.split(b"\n") if line.strip()][index:]
    return _decode_line(lines[1])
