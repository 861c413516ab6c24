"""``ftwatch replay LOG``: a recorded run, in the dashboard or as a headless report, CSV or chart.

LOG is an ``events.jsonl`` (or ``.jsonl.gz``) or a run directory. Corrupt lines and events of
unknown kinds are skipped and counted; a log cut mid-line (a killed process) is read up to the cut.

On a terminal the run plays in the dashboard (:mod:`ftwatch.views.dashboard.replay`); ``--speed`` sets how
fast: ``max`` (the default) opens at the end, which is what the morning after a run needs (the
outcome, the peaks, the whole timeline, the post-mortem); ``home`` and ``space`` then play it from
the start at the ``auto`` rate (the whole run in about a minute), ``+``/``-`` change the rate.

A multi-process run directory (``rank0/``, ``rank1/``, ...) replays every rank: the report gives a
line per rank and the worst rank's details, ``--json`` the summary with ``ranks``, ``--csv`` a
``rank`` column, ``--plot`` the worst rank; ``--rank N`` replays one rank alone (with playback).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.runlog import registry
from ftwatch.runlog.events import (
    CATEGORIES,
    TENSOR_CATEGORIES,
    EventDecoder,
    ReadStats,
    SchemaVersionError,
    read_events,
    resolve_log_path,
)
from ftwatch.runlog.ranks import MultiLogFollower, RankedRun, find_rank_dirs, is_multi_rank_dir, read_launch
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import corrupt_causes, ranks_summary_text, summary_text

HELP = "replay a recorded run log (events.jsonl or its run directory)"

#: ``--csv`` columns: where the run stands, the breakdown then, and the sample's device figures.
CSV_COLUMNS: tuple[str, ...] = ("t", "elapsed", "phase", "step", *TENSOR_CATEGORIES, "rss", "allocated",
                                "reserved", "nvml_used", "nvml_process")
#: ``--plot`` size when the output is not a terminal (and COLUMNS/LINES are not set).
PLOT_DEFAULT_SIZE = (100, 30)
PLOT_MAX_HEIGHT = 30
UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))


class LogUnreadable(Exception):
    """The log cannot be replayed (no events, unreadable): one line for the user, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch replay``."""
    parser.add_argument("log", help="events.jsonl, events.jsonl.gz, or a run directory")
    parser.add_argument("--headless", action="store_true", help="print the report instead of the dashboard")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    output.add_argument("--csv", action="store_true",
                        help="print the time series as CSV: one row per device sample, with the breakdown then")
    output.add_argument("--plot", action="store_true", help="print a chart of the categories over the run")
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
    from ftwatch.views.dashboard.replay import parse_speed  # no textual: the dashboard loads only when shown

    try:
        return parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--speed takes ")) from None


def load_state(log: str | os.PathLike[str]) -> tuple[RunState, EventDecoder]:
    """Fold a whole log into a run state; raise ``FileNotFoundError``/``SchemaVersionError`` clearly."""
    path = resolve_log_path(log)
    decoder = EventDecoder()
    state = RunState()
    for event in read_events(path, decoder):
        state.apply(event)
    return state, decoder


def main(args: argparse.Namespace) -> int:
    """Print the report (JSON summary, CSV, chart) of a recorded run, or show it in the dashboard."""
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
        if args.csv:
            return print_csv(path, sys.stdout)
        if args.plot:
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


def _usage_error(message: str) -> int:
    print(f"ftwatch replay: {safe(message, one_line=True)}", file=sys.stderr)
    return 2


def no_events_message(stats: ReadStats) -> str:
    """Why a log gave nothing to replay (one line)."""
    if not (stats.corrupt_lines or stats.unknown_kinds or stats.truncated_tail):
        return "the log is empty: no events in it"
    if stats.json_array:
        return ("not an ftwatch run log: it holds a JSON array, and a run log (events.jsonl) is one JSON "
                "event per line")
    if stats.unknown_kinds and not stats.corrupt_lines:
        names = ", ".join(sorted(stats.unknown_kind_names))
        return (f"no event this ftwatch can read: {stats.unknown_kinds} events of unknown kinds ({names}; "
                "written by a newer ftwatch?)")
    return f"not an ftwatch run log: no valid event in it ({skipped_text(stats)})"


def skipped_text(stats: ReadStats) -> str:
    """``3 corrupt lines (1 with fields of the wrong type: snapshot.loss), 0 events of unknown kinds``."""
    detail = corrupt_causes(stats)
    return (f"{stats.corrupt_lines} corrupt lines{detail}, {stats.unknown_kinds} events of unknown kinds"
            + (", a cut last line" if stats.truncated_tail else ""))


def log_stats_json(stats: ReadStats) -> dict[str, Any]:
    """The ``log`` object of ``--json``: what was read and what was skipped."""
    return {"events": stats.events, "corrupt_lines": stats.corrupt_lines, "unknown_kinds": stats.unknown_kinds,
            "truncated_tail": stats.truncated_tail, "unknown_kind_names": sorted(stats.unknown_kind_names),
            "invalid_events": stats.invalid_events, "invalid_fields": sorted(stats.invalid_fields),
            "long_lines": stats.long_lines}


def first_event(path: Path) -> dict[str, Any]:
    """The log's first event (checks the schema version); raises :class:`LogUnreadable` if none."""
    decoder = EventDecoder()
    for event in read_events(path, decoder):
        return event
    raise LogUnreadable(no_events_message(decoder.stats))


def _show_dashboard(path: Path, speed: float | str, first: dict[str, Any]) -> bool:
    try:
        from ftwatch.views.dashboard.app import run_dashboard
        from ftwatch.views.dashboard.replay import ReplayFeed
    except ImportError:
        return False
    title = safe(first.get("name") or "", one_line=True) or None if first.get("kind") == "header" else None
    run_dashboard(path, None, title=title, feed=ReplayFeed(path, speed))
    return True


# -- the report ---------------------------------------------------------------------------------
def print_report(path: Path, as_json: bool, out: Any) -> int:
    """The text report, or the summary as JSON with what the reader skipped under ``log``."""
    state, decoder = load_state(path)
    stats = decoder.stats
    if stats.events == 0:
        raise LogUnreadable(no_events_message(stats))
    if state.exit is None:
        state.notes.append({"code": "no_exit", "message": _no_exit_message(state)})
    if as_json:
        summary = state.summary()
        summary["log"] = log_stats_json(stats)
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.write(summary_text(state, stats))
        if stats.unknown_kind_names:
            out.write(f"log: unknown kinds (from a newer ftwatch?): {', '.join(sorted(stats.unknown_kind_names))}\n")
    return 0


# -- multi-process runs --------------------------------------------------------------------------
def load_ranks(run_dir: Path) -> tuple[RankedRun, ReadStats]:
    """Fold every rank's log of a multi-process run directory."""
    follower = MultiLogFollower(run_dir)
    run = RankedRun(read_launch(run_dir))
    try:
        run.apply_all(follower.poll())
        run.apply_all(follower.finish())
    finally:
        follower.close()
    return run, follower.stats


def replay_ranks(run_dir: Path, args: argparse.Namespace) -> int:
    """``replay`` of a multi-process run directory: every rank (see the module's docstring)."""
    if args.csv:
        return print_csv_ranks(run_dir, sys.stdout)
    run, stats = load_ranks(run_dir)
    if stats.events == 0:
        raise LogUnreadable(no_events_message(stats))
    for state in run.ranks.values():
        if state.exit is None:
            state.notes.append({"code": "no_exit", "message": _no_exit_message(state)})
    worst = run.worst_rank()
    if args.plot:
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


def print_csv_ranks(run_dir: Path, out: Any) -> int:
    """The CSV of every rank, one after the other, with a leading ``rank`` column."""
    writer = csv.writer(out, lineterminator="\n")
    decoder = EventDecoder()
    wrote_header = False
    for rank, path in find_rank_dirs(run_dir).items():
        for row in csv_rows(read_events(path, decoder)):
            if not wrote_header:
                writer.writerow(("rank", *CSV_COLUMNS))
                wrote_header = True
            writer.writerow((rank, *row))
    if not wrote_header:
        raise LogUnreadable(no_events_message(decoder.stats))
    return 0


# -- CSV ----------------------------------------------------------------------------------------
def csv_rows(events: Iterable[dict[str, Any]]) -> Iterator[list[Any]]:
    """One row per ``sample`` event (see :data:`CSV_COLUMNS`); unknown figures are ``None``.

    The categories are the latest snapshot's (the breakdown at that time), ``step`` the last
    training step completed (``None`` before the first), ``elapsed`` seconds since the first event.
    """
    first_t: float | None = None
    categories: dict[str, Any] = {}
    step: int | None = None
    phase: str | None = None
    for event in events:
        t = float(event["t"])
        if first_t is None:
            first_t = t
        kind = event["kind"]
        if kind == "sample":
            cuda = event.get("cuda") or {}
            nvml = event.get("nvml") or {}
            yield [event["t"], round(t - first_t, 4), event.get("phase") or phase, step,
                   *(categories.get(c) for c in TENSOR_CATEGORIES), event.get("rss"), cuda.get("allocated"),
                   cuda.get("reserved"), nvml.get("used"), nvml.get("process")]
        elif kind == "snapshot":
            categories = event.get("categories") or {}
            if event.get("step") is not None:
                step = int(event["step"])
        elif kind == "phase":
            phase = event.get("name")


def print_csv(path: Path, out: Any) -> int:
    """Write the time series as CSV (streamed: any length of log in constant memory)."""
    decoder = EventDecoder()
    writer = csv.writer(out, lineterminator="\n")
    events = read_events(path, decoder)
    first = next(events, None)
    if first is None:
        raise LogUnreadable(no_events_message(decoder.stats))
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(_chain(first, events)))
    return 0


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


# -- the chart ----------------------------------------------------------------------------------
def plot_size(out: Any) -> tuple[int, int]:
    """Width and height of the chart: the terminal's (COLUMNS/LINES win), else a default."""
    columns, lines = shutil.get_terminal_size(PLOT_DEFAULT_SIZE)
    if not _isatty(out) and "COLUMNS" not in os.environ:
        columns = PLOT_DEFAULT_SIZE[0]
    if not _isatty(out) and "LINES" not in os.environ:
        lines = PLOT_DEFAULT_SIZE[1]
    return max(columns, 40), max(min(lines - 2, PLOT_MAX_HEIGHT), 12)


def _isatty(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def print_plot(path: Path, out: Any) -> int:
    """Print a chart of the process's memory and each category over the run."""
    state, decoder = load_state(path)
    if decoder.stats.events == 0:
        raise LogUnreadable(no_events_message(decoder.stats))
    width, height = plot_size(out)
    colour = _isatty(out) and not os.environ.get("NO_COLOR")
    out.write(plot_text(state, width, height, colour) + "\n")
    return 0


def plot_lines(state: RunState) -> tuple[list[float], dict[str, list[int]]]:
    """Seconds since the start, and bytes per line: ``process`` then each category that is ever
    above zero (``free`` left out), from the state's bounded timeline (peaks survive)."""
    points = state.timeline.all_points()
    t0 = state.first_t if state.first_t is not None else (points[0].t if points else 0.0)
    xs = [p.t - t0 for p in points]
    lines: dict[str, list[int]] = {"process": [p.used for p in points]}
    for name in CATEGORIES:
        if name != "free" and any(p.categories.get(name) for p in points):
            lines[name] = [int(p.categories.get(name) or 0) for p in points]
    return xs, lines


def plot_text(state: RunState, width: int, height: int, colour: bool) -> str:
    """The chart as text, ``width`` x ``height`` cells (ANSI colours only when ``colour``)."""
    import plotext as plt

    from ftwatch.views.dashboard.palette import LOOKS

    xs, lines = plot_lines(state)
    if len(xs) < 2:
        return f"ftwatch replay: only {len(xs)} memory samples in this log: nothing to draw"
    span = max(xs[-1], 1e-9)
    x_div, x_unit = (1.0, "s") if span < 180 else ((60.0, "min") if span < 3 * 3600 else (3600.0, "h"))
    top = max(max(values) for values in lines.values())
    y_unit, y_div = next(((n, d) for n, d in UNITS if top >= d), UNITS[-1])
    markers = iter(("•", "x", "+", "o", "*", "#", "=", ":", "~", "%", "@"))
    plt.clear_figure()
    plt.limitsize(False, False)  # our size, not plotext's guess of the terminal's
    plt.plotsize(width, height)
    plt.theme("pro" if colour else "clear")
    for name, values in lines.items():
        look = LOOKS.get(name)
        label = "process" if look is None else look.label
        rgb = _rgb(look.colour) if look is not None else (228, 228, 228)
        plt.plot([x / x_div for x in xs], [v / y_div for v in values], label=label,
                 marker="hd" if colour else next(markers, "."), color=rgb if colour else "default")
    status = state.exit["status"] if state.exit else "no exit event"
    name = safe(str(state.header.get("name") or "run"), one_line=True)
    plt.title(f"{name}: memory over the run ({safe(str(status), one_line=True)}, {state.step} steps)")
    plt.xlabel(f"time ({x_unit})")
    plt.ylabel(y_unit)
    text = plt.build()
    return text if colour else plt.uncolorize(text)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _no_exit_message(state: RunState) -> str:
    """Why a log has no exit event: the run is still going (then: attach), or it was killed."""
    pid = state.header.get("pid")
    if isinstance(pid, int):
        entry = registry.find(pid)
        if entry is not None and registry.is_alive(entry):
            return f"the run is still going (PID {pid}): watch it live with ftwatch attach {pid}"
    return "the log ends without an exit event (the process was killed, or is still running elsewhere)"
