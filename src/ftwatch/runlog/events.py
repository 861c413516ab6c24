"""The event schema: the one contract between the training side and every viewer.

Every run writes ``events.jsonl``: one JSON object per line, each with ``v`` (schema version),
``t`` (unix time, seconds) and ``kind``. The kinds and their fields are documented in
``docs/events.md``. This module holds the names (version, kinds, categories, phases, end statuses)
and the codec that turns an event into its line; the writer lives in
:mod:`ftwatch.runlog.event_writer`, the tolerant incremental reader in :mod:`ftwatch.runlog.event_reader`.
It imports nothing heavy (no torch, no textual) so every consumer can use it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

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

KINDS: tuple[str, ...] = ("header", "estimate", "phase", "model", "sample", "snapshot", "modules", "warning", "note",
                          "exit")

EVENTS_FILE = "events.jsonl"

#: Events nest a few levels (``exit.oom.last_categories``); a line nested deeper is not an event.
MAX_DEPTH = 32


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
