"""The field types of each event kind, checked in one place: the reader.

Every consumer of a run log (the state fold, replay's report, CSV and chart, the dashboard,
attach, the Prometheus exporter) trusts what :class:`ftwatch.runlog.event_reader.EventDecoder` hands it: byte
figures are integers within int64 (capacities and categories never negative), other numbers are
finite, ``categories`` maps names to byte counts, ``device`` is an object, strings are strings.
An event that breaks any of that is skipped and counted like a corrupt line instead of reaching them.

The checks are strict about the fields consumers read and tolerant of everything else: unknown
fields, and unknown keys inside the objects, pass untouched. A field that is absent or ``null``
always passes (a figure that is not known is ``null``), except for the few a consumer indexes
directly (``phase.name``, ``exit.status``; ``t`` on every kind).

The table below is the schema (``docs/events.md`` in words). It is turned once, at import, into
one plain function per kind made of ``type(v) is ...`` tests, so a normal event costs about a
microsecond: replay reads a million events.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: Byte figures and counts are below this (they must fit an int64).
INT64_LIMIT = 1 << 63
#: Small indices (ranks, GPU indices) and PIDs are below this (they must fit a C int).
INT32_LIMIT = 1 << 31
#: Event times are unix seconds from 0 to this (the year 5138): anything else is not a time.
TIME_LIMIT = 1e11
_FLOAT_MAX = sys.float_info.max
#: How a run can end (re-exported as ``ftwatch.runlog.events.END_STATUSES``).
END_STATUSES: tuple[str, ...] = ("finished", "failed", "oom", "stopped")

#: One test per type name: an expression on ``{v}`` (never ``None`` when it runs).
_TESTS: dict[str, str] = {
    "str": "_type({v}) is _str",
    "end_status": "_type({v}) is _str and {v} in _END_STATUSES",
    "bytes": "_type({v}) is _int and -9223372036854775808 <= {v} < 9223372036854775808",
    "size": "_type({v}) is _int and 0 <= {v} < 9223372036854775808",
    "count": "_type({v}) is _int and 0 <= {v} < 9223372036854775808",
    "index": "_type({v}) is _int and 0 <= {v} < 2147483648",
    "pid": "_type({v}) is _int and 0 < {v} < 2147483648",
    "number": "_type({v}) in _NUMBER and -1.7976931348623157e308 <= {v} <= 1.7976931348623157e308",  # NaN fails
    "time": "_type({v}) in _NUMBER and 0 <= {v} <= 1e11",
    "bool": "_type({v}) is _bool",
    "dict": "_type({v}) is _dict",
    "list": "_type({v}) is _list",
    "str_list": "_type({v}) is _list and all(_type(x) is _str for x in {v})",
    "text": "_type({v}) is _str or (_type({v}) is _list and all(_type(x) is _str for x in {v}))",
    "byte_map": "_byte_map({v})",
    "suggestions": "_suggestions({v})",
    "pid_bytes": "_pid_bytes({v})",
    "module_blocks": "_module_rows({v}, 'name', False)",
    "module_layers": "_module_layers({v})",
    "module_tree": "_module_rows({v}, 'path', False)",
}

#: Objects nested in events: their own table (checked by a generated function, like the kinds).
OBJECTS: dict[str, dict[str, str]] = {
    "device": {"type": "str", "index": "index", "name": "str", "capacity": "size", "capacity_source": "str"},
    "cuda": {"allocated": "bytes", "reserved": "bytes", "max_allocated": "bytes", "alloc_retries": "count",
             "ooms": "count"},
    "nvml": {"total": "bytes", "used": "bytes", "free": "bytes", "process": "bytes", "others": "pid_bytes",
             "util": "number"},
    "oom": {"phase": "str", "message": "str", "requested_bytes": "bytes", "last_categories": "byte_map",
            "capacity_bytes": "bytes", "free_bytes": "bytes", "process_bytes": "bytes",
            "allocated_bytes": "bytes", "reserved_unallocated_bytes": "bytes", "private_pools_bytes": "bytes",
            "format": "str", "other_processes": "list"},
    "suggestion": {"change": "str", "config": "str", "saves_bytes": "bytes", "why": "str"},
    "modules_context": {"batch": "count", "seq_len": "count", "checkpointing": "bool", "vocab_size": "count",
                        "dtype": "str"},
}

#: Every kind's fields and their types (``t`` is checked on all of them).
KIND_FIELDS: dict[str, dict[str, str]] = {
    "header": {"run_id": "str", "name": "str", "config_path": "str", "pid": "pid", "host": "str", "user": "str",
               "versions": "dict", "model": "str", "device": "device", "budget": "size", "sample_hz": "number",
               "max_steps": "count", "rank": "index", "world_size": "index", "local_rank": "index",
               "local_world_size": "index", "node_rank": "index", "modules": "str"},
    "estimate": {"params_total": "count", "params_trainable": "count", "estimate_bytes": "byte_map",
                 "loading_bytes": "bytes", "capacity_bytes": "bytes", "capacity_source": "str", "verdict": "str",
                 "fails_at": "str", "suggestions": "suggestions"},
    "phase": {"name": "str", "max_steps": "count"},
    "model": {"params_total": "count", "params_trainable": "count", "lora_targets": "str_list"},
    "sample": {"phase": "str", "rss": "bytes", "sys_used": "bytes", "sys_total": "bytes", "cpu_percent": "number",
               "cuda": "cuda", "nvml": "nvml"},
    "snapshot": {"phase": "str", "step": "count", "loss": "number", "lr": "number", "tokens": "count",
                 "seq_len": "count", "activations_measured": "bool", "categories": "byte_map",
                 "allocated_peak": "bytes", "reserved": "bytes", "tensor_peak": "size",
                 "tensor_peak_split": "byte_map"},
    "modules": {"phase": "str", "step": "count", "totals": "byte_map", "blocks": "module_blocks",
                "layers": "module_layers", "tree": "module_tree", "context": "modules_context"},
    "warning": {"code": "str", "level": "str", "message": "str", "category": "str", "step": "count",
                "steps_to_oom": "number", "suggestions": "suggestions"},
    "note": {"code": "str", "message": "str", "part": "str", "lost_events": "count", "lost_from_t": "time",
             "lost_to_t": "time"},
    "exit": {"status": "end_status", "step": "count", "error_type": "str", "message": "str", "traceback": "text",
             "oom": "oom", "suggestions": "suggestions", "by": "str", "last_event_t": "time",
             "lost_events": "count"},
}

#: Fields a consumer reads without a default: they must be there (and not null).
REQUIRED: dict[str, tuple[str, ...]] = {"phase": ("name",), "exit": ("status",),
                                        "modules": ("totals", "blocks", "layers")}


def _byte_map(value: Any) -> bool:
    """``{name: bytes or null}``, as ``categories`` and ``estimate_bytes``."""
    if type(value) is not dict:
        return False
    for key, v in value.items():
        if type(key) is not str or (v is not None and (type(v) is not int or not 0 <= v < INT64_LIMIT)):
            return False
    return True


def _module_rows(value: Any, key: str, layer: bool) -> bool:
    """A ``modules`` list of rows: each an object with a string ``key`` (``name`` or ``path``) and a
    ``bytes`` byte map; ``layer`` rows also have an ``index``, a ``parts`` map of byte maps and an
    optional ``input`` size."""
    if type(value) is not list:
        return False
    for row in value:
        if type(row) is not dict or type(row.get(key)) is not str or not _byte_map(row.get("bytes")):
            return False
        if layer:
            index, parts, nbytes = row.get("index"), row.get("parts"), row.get("input")
            if type(index) is not int or not 0 <= index < INT32_LIMIT or type(parts) is not dict:
                return False
            if not all(type(k) is str and _byte_map(v) for k, v in parts.items()):
                return False
            if nbytes is not None and (type(nbytes) is not int or not 0 <= nbytes < INT64_LIMIT):
                return False
    return True


def _module_layers(value: Any) -> bool:
    """The ``modules`` event's ``layers``: rows with ``path``, ``index``, ``bytes``, ``parts``, ``input``."""
    return _module_rows(value, "path", True)


def _suggestions(value: Any) -> bool:
    """A list of ``{change, config, saves_bytes}`` objects."""
    if type(value) is not list:
        return False
    check = _OBJECT_CHECKS["suggestion"]
    return all(type(item) is dict and check(item) for item in value)


def _pid_bytes(value: Any) -> bool:
    """``[[pid, bytes], ...]`` (NVML's other processes)."""
    if type(value) is not list:
        return False
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            return False
        pid, nbytes = pair
        if type(pid) is not int or not 0 <= pid < INT32_LIMIT or type(nbytes) is not int \
                or not 0 <= nbytes < INT64_LIMIT:
            return False
    return True


def _field_lines(fields: dict[str, str], required: tuple[str, ...], obj: str, prefix: str, indent: str,
                 bad: str, depth: int = 0) -> list[str]:
    """Source lines testing ``fields`` of the dict named ``obj``; a misfit runs ``bad`` with the
    field's dotted name. Nested objects are tested inline (no call per object)."""
    var = f"v{depth}"
    lines = [f"{indent}g{depth} = {obj}.get"]
    for name, type_name in fields.items():
        where = prefix + name
        lines.append(f"{indent}{var} = g{depth}({name!r})")
        if type_name in OBJECTS:
            lines.append(f"{indent}if {var} is not None:")
            lines.append(f"{indent}    if type({var}) is not dict:")
            lines.append(f"{indent}        " + bad.format(where))
            lines += _field_lines(OBJECTS[type_name], (), var, where + ".", indent + "    ", bad, depth + 1)
            continue
        test = _TESTS[type_name].format(v=var)
        absent = f"{var} is None or " if name in required else f"{var} is not None and "
        lines.append(f"{indent}if {absent}not ({test}):")
        lines.append(f"{indent}    " + bad.format(where))
    return lines


def _compile(name: str, fields: dict[str, str], required: tuple[str, ...], with_time: bool) -> Callable[..., Any]:
    """One straight-line function checking ``fields``: it returns the dotted name of the first
    field that does not fit (``None`` when all do), or ``False``/``True`` for a nested object."""
    bad, good = ("return {!r}", "return None") if with_time else ("return False", "return True")
    # The names the tests use are the function's locals (fastest to look up), the limits literals.
    lines = [f"def check_{name}(e, _type=type, _int=int, _float=float, _str=str, _dict=dict, _list=list, "
             "_bool=bool, _NUMBER=(float, int)):"]
    if with_time:
        lines += ["    v0 = e.get('t')", f"    if v0 is None or not ({_TESTS['time'].format(v='v0')}):",
                  "        return 't'"]
    lines += _field_lines(fields, required, "e", "", "    ", bad)
    lines.append("    " + good)
    namespace: dict[str, Any] = {"_byte_map": _byte_map, "_suggestions": _suggestions, "_pid_bytes": _pid_bytes,
                                 "_module_rows": _module_rows, "_module_layers": _module_layers,
                                 "_END_STATUSES": END_STATUSES}
    exec(compile("\n".join(lines), f"<ftwatch.runlog.event_fields:{name}>", "exec"), namespace)  # noqa: S102
    return namespace[f"check_{name}"]


_OBJECT_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {}
for _name, _fields in OBJECTS.items():
    _OBJECT_CHECKS[_name] = _compile(_name, _fields, (), with_time=False)

#: Kind -> its check: ``check(event)`` is ``None`` when the event fits, else the offending field.
CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    kind: _compile(kind, fields, REQUIRED.get(kind, ()), with_time=True) for kind, fields in KIND_FIELDS.items()
}


def check_event(event: dict[str, Any]) -> str | None:
    """``None`` when ``event`` (a decoded dict with a known ``kind``) fits its kind's fields; else
    ``"kind.field"`` naming the first field that does not. Unknown kinds raise ``KeyError``."""
    field_name = CHECKS[event["kind"]](event)
    return None if field_name is None else f"{event['kind']}.{field_name}"
