"""``ftwatch ls``: the monitored runs on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ftwatch import registry
from ftwatch.categories import process_total
from ftwatch.events import EventDecoder, SchemaVersionError
from ftwatch.state import RunState, sample_used
from ftwatch.units import format_bytes, format_duration

HELP = "list the monitored runs on this machine"
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
            first = handle.readline()
            state.apply_all(decoder.feed(first if first.endswith("\n") else first + "\n"))
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


def describe(entry: registry.RunEntry) -> dict[str, Any]:
    """One row of ``ftwatch ls``."""
    state = peek(entry.log_path)
    used = None
    if state.last_snapshot:
        used = process_total(state.categories)
    if state.is_cuda and state.last_sample:
        used = sample_used(state.last_sample)
    return {"pid": entry.pid, "name": entry.name, "phase": state.phase, "step": state.step,
            "max_steps": state.max_steps, "used_bytes": used, "capacity_bytes": state.capacity,
            "age_seconds": round(time.time() - entry.started, 1), "log": str(entry.log_path)}


def main(args: argparse.Namespace) -> int:
    """Print the live runs."""
    rows = [describe(entry) for entry in registry.live_runs()]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if not rows:
        print("no monitored runs on this machine (start one with: ftwatch run CONFIG)")
        return 0
    print(f"{'PID':>8}  {'NAME':<20} {'PHASE':<18} {'STEP':>11}  {'MEMORY':<24} {'AGE':>7}  LOG")
    for r in rows:
        step = f"{r['step']}/{r['max_steps']}" if r["max_steps"] else str(r["step"])
        memory = f"{format_bytes(r['used_bytes'])} / {format_bytes(r['capacity_bytes'])}"
        print(f"{r['pid']:>8}  {r['name'][:20]:<20} {str(r['phase'] or '-'):<18} {step:>11}  {memory:<24} "
              f"{format_duration(r['age_seconds']):>7}  {r['log']}")
    return 0
