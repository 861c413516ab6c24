"""``ftwatch replay LOG``: a recorded run, in the dashboard or as a headless report, CSV or chart.

LOG is an ``events.jsonl`` (or ``.jsonl.gz``) or a run directory. Corrupt lines and events of
unknown kinds are skipped and counted; a log cut mid-line (a killed process) is read up to the cut.

On a terminal the run plays in the dashboard (:mod:`ftwatch.views.dashboard.replay`); ``--speed`` sets how
fast: ``max`` (the default) opens at the end, which is what the morning after a run needs (the
outcome, the peaks, the whole timeline, the post-mortem); ``home`` and ``space`` then play it from
the start at the ``auto`` rate (the whole run in about a minute), ``+``/``-`` change the rate.

``--modules`` prints where inside the model the memory was: the table of the log's last ``modules``
event (:mod:`ftwatch.views.headless.modules_table`), or one line on stderr saying why the log has
none (exit 1).

A multi-process run directory (``rank0/``, ``rank1/``, ...) replays every rank: the report gives a
line per rank and the worst rank's details, ``--json`` the summary with ``ranks``, ``--csv`` a
``rank`` column, ``--plot`` the worst rank; ``--rank N`` replays one rank alone (with playback).

This module reads the arguments and picks the output; the outputs are views: the report in
:mod:`ftwatch.views.headless.replay_report`, the CSV in :mod:`ftwatch.views.headless.replay_csv`,
the chart in :mod:`ftwatch.views.dashboard.replay_plot`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.runlog.event_reader import SchemaVersionError, resolve_log_path
from ftwatch.runlog.ranks import RankedRun, find_rank_dirs, is_multi_rank_dir
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.replay_report import (
    LogUnreadable,
    _no_exit_message,
    first_event,
    load_ranks,
    load_state,
    log_stats_json,
    no_events_message,
    print_report,
)
from ftwatch.views.headless.report import ranks_summary_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch replay``."""
    parser.add_argument("log", help="events.jsonl, events.jsonl.gz, or a run directory")
    parser.add_argument("--headless", action="store_true", help="print the report instead of the dashboard")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    output.add_argument("--csv", action="store_true",
                        help="print the time series as CSV: one row per device sample, with the breakdown then")
    output.add_argument("--plot", action="store_true", help="print a chart of the categories over the run")
    parser.add_argument("--modules", action="store_true",
                        help="print the memory by module (blocks, decoder layers, advice) of the log's last "
                             "modules event")
    parser.add_argument("--rank", type=_rank, metavar="N",
                        help="a multi-process run: replay this rank alone (its rankN/events.jsonl)")
    parser.add_argument("--speed", type=_speed, default="max", metavar="N|auto|max",
                        help="dashboard: run seconds per second (1 = as it happened), auto (the whole run "
                             "in about a minute) or max (open at the end; the default)")


def _rank(text: str) -> int:
    """``--rank N``: a rank is a whole number from 0."""
    value = int(text) if text.strip().lstrip("+-").isdigit() and len(text) <= 10 else None
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a rank (0, 1, ...), got {text[:30]!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"a rank is 0 or more, got {value}")
    return value


def _speed(text: str) -> float | str:
    # no textual: the dashboard loads only when shown
    from ftwatch.views.dashboard.replay_speed import parse_speed

    try:
        return parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--speed takes ")) from None


def main(args: argparse.Namespace) -> int:
    """Print the report (JSON summary, CSV, chart, module table) of a recorded run, or show it in the dashboard."""
    if getattr(args, "modules", False):
        clash = next((flag for flag, on in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot),
                                             ("--speed", args.speed != "max")) if on), None)
        if clash is not None:
            return _usage_error(f"--modules prints the module table; it does not combine with {clash}")
    try:
        if is_multi_rank_dir(args.log):
            if args.rank is None:
                return replay_ranks(Path(args.log), args)
            ranks = find_rank_dirs(args.log)
            if args.rank not in ranks:
                return _usage_error(f"{args.log} has no log of rank {args.rank} (it has ranks "
                                    f"{', '.join(map(str, ranks)) or 'none'})")
            args.log = str(ranks[args.rank])
        elif args.rank is not None and args.rank != 0:
            return _usage_error(f"{args.log} is the log of one process; --rank takes a multi-process run directory")
        path = resolve_log_path(args.log)
        if getattr(args, "modules", False):
            return print_modules(path, sys.stdout)
        if args.csv:  # (each output's view is imported when it is asked for: a replay starts light)
            from ftwatch.views.headless.replay_csv import print_csv

            return print_csv(path, sys.stdout)
        if args.plot:
            from ftwatch.views.dashboard.replay_plot import print_plot

            return print_plot(path, sys.stdout)
        if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
            first = first_event(path)
            if _show_dashboard(path, args.speed, first):
                return 0
        return print_report(path, args.json, sys.stdout)
    except SchemaVersionError as exc:
        return _usage_error(f"{args.log}: {exc}")
    except IsADirectoryError:
        return _usage_error(f"{args.log} is a directory without events.jsonl")
    except (FileNotFoundError, BrokenPipeError):
        raise  # the command line prints the first as one line, and ends quietly on the second
    except LogUnreadable as exc:
        return _usage_error(f"{args.log}: {exc}")
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged .gz
        return _usage_error(f"{args.log}: cannot read it: {exc}")


def print_modules(path: Path, out: Any) -> int:
    """``--modules``: the table of the log's last ``modules`` event; 1 with one line on stderr when
    it has none."""
    state, decoder = load_state(path)
    if decoder.stats.events == 0:
        raise LogUnreadable(no_events_message(decoder.stats))
    return _write_modules(state, out)


def _write_modules(state: RunState, out: Any) -> int:
    from ftwatch.views.headless.modules_table import no_modules_reason, render_modules_table

    payload = getattr(state, "modules", None)
    if not isinstance(payload, dict) or not payload:
        reason = no_modules_reason(state.header, state.step, True)
        print(f"ftwatch replay: no module figures: {safe(reason, one_line=True)}", file=sys.stderr)
        return 1
    out.write(render_modules_table(payload, shutil.get_terminal_size((80, 24)).columns))
    return 0


def _usage_error(message: str) -> int:
    print(f"ftwatch replay: {safe(message, one_line=True)}", file=sys.stderr)
    return 2


def _show_dashboard(path: Path, speed: float | str, first: dict[str, Any]) -> bool:
    try:
        from ftwatch.views.dashboard.app import run_dashboard
        from ftwatch.views.dashboard.replay import ReplayFeed
    except ImportError:
        return False
    title = safe(first.get("name") or "", one_line=True) or None if first.get("kind") == "header" else None
    run_dashboard(path, None, title=title, feed=ReplayFeed(path, speed))
    return True


# -- multi-process runs --------------------------------------------------------------------------
def replay_ranks(run_dir: Path, args: argparse.Namespace) -> int:
    """``replay`` of a multi-process run directory: every rank (see the module's docstring)."""
    if args.csv:
        from ftwatch.views.headless.replay_csv import print_csv_ranks

        return print_csv_ranks(run_dir, sys.stdout)
    run, stats = load_ranks(run_dir)
    if stats.events == 0:
        raise LogUnreadable(no_events_message(stats))
    for state in run.ranks.values():
        if state.exit is None:
            state.notes.append({"code": "no_exit", "message": _no_exit_message(state)})
    worst = run.worst_rank()
    if getattr(args, "modules", False):
        sys.stdout.write(f"rank {worst} (the worst of {len(run.ranks)}; --rank N for another)\n")
        return _write_modules(run.ranks[worst], sys.stdout)
    if args.plot:
        from ftwatch.views.dashboard.replay_plot import _isatty, plot_size, plot_text

        width, height = plot_size(sys.stdout)
        colour = _isatty(sys.stdout) and not os.environ.get("NO_COLOR")
        sys.stdout.write(f"rank {worst} (the worst of {len(run.ranks)}; --rank N for another)\n")
        sys.stdout.write(plot_text(run.ranks[worst], width, height - 1, colour) + "\n")
        return 0
    interactive = not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty()
    if interactive and _show_ranks_dashboard(run_dir, run, args.speed):
        return 0
    if args.json:
        summary = run.summary()
        summary["log"] = log_stats_json(stats)
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(ranks_summary_text(run, stats))
    return 0


def _show_ranks_dashboard(run_dir: Path, run: RankedRun, speed: float | str) -> bool:
    try:
        from ftwatch.views.dashboard.app import run_dashboard
    except ImportError:
        return False
    if speed != "max":
        print(f"ftwatch replay: playback is per rank (ftwatch replay {safe(str(run_dir), one_line=True)} --rank N "
              "--speed ...): showing every rank at its end", file=sys.stderr)
    title = run.worst.header.get("name")
    run_dashboard(run_dir, None, title=safe(title, one_line=True) if isinstance(title, str) else None)
    return True
