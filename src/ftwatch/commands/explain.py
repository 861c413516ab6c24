"""``ftwatch explain [FILE|-] [--json]``: say what a pasted CUDA out-of-memory message means.

Reads the message (or a whole traceback or log holding one) from FILE, or from stdin with ``-``
or no argument, and prints its figures in plain terms with the fixes they support. Exit codes:
0 when a message was explained, 2 when the input holds none, holds one whose figures cannot be
true (a free memory above the capacity, a negative or 5,000-digit size, a unit such as ZiB: it
says which and why, and reasons from none of them), or cannot be read.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path
from typing import Any

from ftwatch.analysis.oom import (
    OomDiagnosis,
    findings,
    implausible_text,
    suggest_from_oom,
)
from ftwatch.analysis.oom_parse import FORMAT_VERSIONS, parse_oom_message
from ftwatch.commands.usage import EXIT_OK, EXIT_USAGE, UsageError
from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes

# Input larger than this is read only up to here: an OOM message is short, a log may not be.
_MAX_READ = 64 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``FILE`` and ``--json``."""
    parser.add_argument("file", nargs="?", default="-", metavar="FILE",
                        help="a file holding the message, traceback or log; '-' or nothing reads stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def main(args: argparse.Namespace) -> int:
    """Explain the message; 0 when one was found, 2 when the input holds none."""
    source, text = _read_input(args.file)
    source = safe(source, one_line=True)
    if not text.strip():
        return _usage(f"{source} is empty: paste the out-of-memory message or pass the file that holds it")
    diag = parse_oom_message(text)
    if diag is None:
        return _usage(f"no CUDA out-of-memory message found in {source} (looked for \"out of memory. "
                      "Tried to allocate ...\" and \"CUDA error: out of memory\")")
    if diag.problems:
        return _usage(f"the out-of-memory message in {source} has figures that cannot be true, so it is not "
                      f"explained from them: {implausible_text(diag)}")
    if args.json:
        print(json.dumps(diag.to_json(), indent=2))
    else:
        print(safe(render_text(diag)))  # the message's own words come from the input
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"ftwatch explain: {safe(message, one_line=True)}", file=sys.stderr)
    return EXIT_USAGE


def _read_input(name: str) -> tuple[str, str]:
    """The input's name for messages and its text; unreadable files are usage errors."""
    if name == "-":
        if sys.stdin is None:
            raise UsageError("no stdin to read: pass the file that holds the message")
        if sys.stdin.isatty():
            print("Paste the error message, then press Ctrl-D:", file=sys.stderr)
        return "stdin", sys.stdin.read(_MAX_READ)
    path = Path(name)
    if not path.exists():
        raise UsageError(f"no such file: {name}")
    if path.is_dir():
        raise UsageError(f"{name} is a directory, not a file holding the message")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise UsageError(f"{name} is a device or socket, not a file holding the message (pipe text in with '-')")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return name, handle.read(_MAX_READ)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


# --- text output -------------------------------------------------------------------------------

def _size(n: int | None) -> str:
    return format_bytes(n, 2) if n is not None else "not given"


def _figure_rows(diag: OomDiagnosis) -> list[tuple[str, int | None, str]]:
    rows: list[tuple[str, int | None, str]] = [
        ("requested", diag.requested_bytes, "the allocation that failed"),
        ("capacity", diag.capacity_bytes, "all memory of the GPU"),
        ("free", diag.free_bytes, "free on the GPU when it failed"),
    ]
    if diag.allowed_bytes is not None:
        rows.append(("allowed", diag.allowed_bytes, "this process's cap (set_per_process_memory_fraction)"))
    own = ("held by this process" if diag.self_pid_guess is None
           else f"held by PID {diag.self_pid_guess} (this process?)")
    rows += [
        (own, diag.process_bytes, "all of it, CUDA context included"),
        ("  allocated by PyTorch", diag.allocated_bytes, "live tensors"),
        ("  reserved, unallocated", diag.reserved_unallocated_bytes,
         "cached by the allocator, unused (fragmentation)"),
        ("  private pools", diag.private_pools_bytes, "CUDA Graphs; counted in 'allocated'"),
        ("  outside PyTorch", diag.non_pytorch_bytes, "CUDA context, cuBLAS/cuDNN, NCCL"),
    ]
    return rows


def _figures(diag: OomDiagnosis) -> list[str]:
    lines = [f"  {label:<32} {_size(value):>12}   {note if value is not None else ''}".rstrip()
             for label, value, note in _figure_rows(diag) if value is not None or not label.startswith("  ")]
    if diag.other_processes:
        for proc in diag.other_processes:
            lines.append(f"  {'held by PID ' + str(proc.pid):<32} {_size(proc.bytes):>12}   another process")
    elif diag.processes_listed:
        lines.append(f"  {'other processes':<32} {'none':>12}")
    else:
        lines.append(f"  {'other processes':<32} {'not given':>12}")
    return lines


def _suggestion_lines(suggestions: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for number, item in enumerate(suggestions, 1):
        saves = item.get("saves_bytes")
        gain = f"   (frees up to {format_bytes(saves, 2)})" if saves is not None else ""
        lines.append(f"  {number}. {item['change']}{gain}")
        if item.get("config"):
            lines.append(f"       {item['config']}")
    return lines


def render_text(diag: OomDiagnosis) -> str:
    """The human explanation: headline, figures, what they say, ranked suggestions."""
    where = f" on GPU {diag.device_index}" if diag.device_index is not None else ""
    kind = f"{diag.error_type}: " if diag.error_type else ""
    lines = [f"{kind}{diag.device_kind} out of memory{where}  [format {diag.format}: "
             f"{FORMAT_VERSIONS.get(diag.format, '?')}]", ""]
    if diag.has_numbers:
        lines += _figures(diag) + [""]
    lines.append("What it says:")
    lines += [f"  - {line}" for line in findings(diag)]
    suggestions = suggest_from_oom(diag)
    if suggestions:
        lines += ["", "Suggestions (figures from the message alone; the rest cannot be sized from it):"]
        lines += _suggestion_lines(suggestions)
    return "\n".join(lines)
