"""``ftwatch replay LOG``: a recorded run, in the dashboard or as a headless report.

LOG is an ``events.jsonl`` (or ``.jsonl.gz``) or a run directory. Corrupt lines and events of
unknown kinds are skipped and counted; a log cut mid-line (a killed process) is read up to the cut.
"""

from __future__ import annotations

import argparse
import json
import sys

from ftwatch.events import EventDecoder, SchemaVersionError, read_events, resolve_log_path
from ftwatch.report import summary_text
from ftwatch.state import RunState

HELP = "replay a recorded run log (events.jsonl or its run directory)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch replay``."""
    parser.add_argument("log", help="events.jsonl, events.jsonl.gz, or a run directory")
    parser.add_argument("--headless", action="store_true", help="print the report instead of the dashboard")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object")


def load_state(log: str) -> tuple[RunState, EventDecoder]:
    """Fold a whole log into a run state; raise ``FileNotFoundError``/``SchemaVersionError`` clearly."""
    path = resolve_log_path(log)
    decoder = EventDecoder()
    state = RunState()
    for event in read_events(path, decoder):
        state.apply(event)
    return state, decoder


def main(args: argparse.Namespace) -> int:
    """Print the report (or JSON summary) of a recorded run, or show it in the dashboard."""
    try:
        state, decoder = load_state(args.log)
    except SchemaVersionError as exc:
        print(f"ftwatch replay: {args.log}: {exc}", file=sys.stderr)
        return 2
    except IsADirectoryError:
        print(f"ftwatch replay: {args.log} is a directory without events.jsonl", file=sys.stderr)
        return 2
    if decoder.stats.events == 0:
        print(f"ftwatch replay: {args.log}: no events in this log "
              f"({decoder.stats.corrupt_lines} corrupt lines)", file=sys.stderr)
        return 2
    if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
        try:
            from ftwatch.tui.app import run_dashboard
        except ImportError:
            pass
        else:
            run_dashboard(resolve_log_path(args.log), None, title=state.header.get("name"))
            return 0
    if state.exit is None:
        state.notes.append({"code": "no_exit", "message": "the log ends without an exit event "
                                                          "(the process was killed, or is still running)"})
    if args.json:
        summary = state.summary()
        summary["log"] = {"events": decoder.stats.events, "corrupt_lines": decoder.stats.corrupt_lines,
                          "unknown_kinds": decoder.stats.unknown_kinds,
                          "truncated_tail": decoder.stats.truncated_tail}
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(summary_text(state, decoder.stats))
    return 0
