"""``ftwatch ls``: the monitored runs on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes, format_duration
from ftwatch.runlog import registry
from ftwatch.runlog.categories import process_total
from ftwatch.runlog.event_reader import EventDecoder, SchemaVersionError
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.ranks import find_rank_dirs, is_multi_rank_dir, run_key
from ftwatch.runlog.state import RunState, sample_used

TAIL_BYTES = 256 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch ls``."""
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def peek(log_path: os.PathLike[str] | str) -> RunState:
    """The state of a run from its header and the tail of its log (fast on logs of any size)."""
    state = RunState()
    decoder = EventDecoder()
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            first = ""
            for _ in range(4):  # the header: the first line, or after the worker's ``starting`` note
                line = handle.readline()
                first += line
                state.apply_all(decoder.feed(line if line.endswith("\n") else line + "\n"))
                if state.header or not line:
                    break
            size = os.fstat(handle.fileno()).st_size
            start = max(handle.tell(), size - TAIL_BYTES)
            handle.seek(start)
            if start > len(first):
                handle.readline()  # skip the partial line we landed in
            events = decoder.feed(handle.read())
    except (OSError, SchemaVersionError):
        return state
    for event in events:
        if event["kind"] in ("phase", "snapshot", "sample", "model", "exit"):
            state.apply(event)
    return state


def where_it_stands(log_path: os.PathLike[str] | str) -> dict[str, Any]:
    """Phase, step and memory of a run from the tail of its log."""
    state = peek(log_path)
    used = None
    if state.last_snapshot:
        used = process_total(state.categories)
    if state.is_cuda and state.last_sample:
        used = sample_used(state.last_sample)
    # The phase event may be long out of the tail: every snapshot and sample names its phase too.
    phase = state.phase or (state.last_snapshot or {}).get("phase") or (state.last_sample or {}).get("phase")
    return {"phase": phase, "step": state.step, "max_steps": state.max_steps, "used_bytes": used,
            "capacity_bytes": state.capacity}


def describe(entry: registry.RunEntry) -> dict[str, Any]:
    """One row of ``ftwatch ls``."""
    return {"pid": entry.pid, "name": entry.name, **where_it_stands(entry.log_path),
            "age_seconds": round(time.time() - entry.started, 1), "log": str(entry.log_path)}


def describe_ranks(root: Path, entries: list[registry.RunEntry]) -> dict[str, Any]:
    """One row for a multi-process run: its launcher's pid (else the lowest), the slowest rank's
    step, the fullest rank's memory, every rank's pid."""
    rank_rows = [where_it_stands(d / EVENTS_FILE) for d in find_rank_dirs(root).values()]
    launcher = next((e for e in entries if Path(e.run_dir) == root), None)
    first = launcher or min(entries, key=lambda e: e.pid)
    fullest = max(rank_rows, key=lambda r: (r["used_bytes"] or 0) / (r["capacity_bytes"] or 1), default=None)
    slowest = min(rank_rows, key=lambda r: r["step"] or 0, default=None)
    return {"pid": first.pid, "name": first.name, "phase": (slowest or {}).get("phase"),
            "step": (slowest or {}).get("step") or 0, "max_steps": (slowest or {}).get("max_steps"),
            "used_bytes": (fullest or {}).get("used_bytes"), "capacity_bytes": (fullest or {}).get("capacity_bytes"),
            "age_seconds": round(time.time() - first.started, 1), "log": str(root),
            "ranks": len(rank_rows), "pids": sorted(e.pid for e in entries)}


def rows_of(entries: list[registry.RunEntry]) -> list[dict[str, Any]]:
    """The rows of ``ftwatch ls``: one per run (a multi-process run's launcher and ranks are one)."""
    groups: dict[Path, list[registry.RunEntry]] = {}
    for entry in entries:
        groups.setdefault(run_key(entry.run_dir), []).append(entry)
    rows = []
    for key, members in groups.items():
        if is_multi_rank_dir(key):
            rows.append(describe_ranks(key, members))
        else:
            rows.extend(describe(entry) for entry in members)
    return rows


def main(args: argparse.Namespace) -> int:
    """Print the live runs."""
    rows = rows_of(registry.live_runs())
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if not rows:
        print("no monitored runs on this machine (start one with: ftwatch run CONFIG)")
        return 0
    print(f"{'PID':>8}  {'NAME':<20} {'PHASE':<18} {'STEP':>11}  {'MEMORY':<24} {'AGE':>7}  LOG")
    for r in rows:
        print(table_line(r))
    return 0


def table_line(row: dict[str, Any]) -> str:
    """One line of the ``ftwatch ls`` table; every string from the registry or a log is made
    :func:`~ftwatch.common.safe_text.safe` on one line (a crafted name cannot reach the terminal)."""
    step = f"{row['step']}/{row['max_steps']}" if row["max_steps"] else str(row["step"])
    step = safe(step, one_line=True)
    memory = f"{format_bytes(row['used_bytes'])} / {format_bytes(row['capacity_bytes'])}"
    name = safe(row["name"], one_line=True)
    if row.get("ranks"):
        name = f"{name} ({row['ranks']} ranks)"
    phase = safe(str(row["phase"] or "-"), one_line=True)
    log = safe(row["log"], one_line=True)
    return (f"{row['pid']:>8}  {name[:20]:<20} {phase:<18} {step:>11}  {memory:<24} "
            f"{format_duration(row['age_seconds']):>7}  {log}")
