"""The headless report of a recorded run (``ftwatch replay --headless``, ``--json``): the log folded
whole, the text or JSON summary, and the one-line reasons a log gives nothing to replay.

The CSV (:mod:`~ftwatch.views.headless.replay_csv`) and the chart
(:mod:`~ftwatch.views.dashboard.replay_plot`) read the log through the same helpers and raise the
same :class:`LogUnreadable`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ftwatch.runlog import registry
from ftwatch.runlog.event_reader import EventDecoder, ReadStats, read_events, resolve_log_path
from ftwatch.runlog.log_fold import fold_log
from ftwatch.runlog.ranks import MultiLogFollower, RankedRun, read_launch
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import corrupt_causes, counted, summary_text


class LogUnreadable(Exception):
    """The log cannot be replayed (no events, unreadable): one line for the user, exit code 2."""


def load_state(log: str | os.PathLike[str]) -> tuple[RunState, EventDecoder]:
    """Fold a whole log into a run state; raise ``FileNotFoundError``/``SchemaVersionError`` clearly."""
    return fold_log(resolve_log_path(log))


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
    return (f"{counted(stats.corrupt_lines, 'corrupt line')}{detail}, "
            f"{counted(stats.unknown_kinds, 'event of unknown kind', 'events of unknown kinds')}"
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
        summary["run_log"] = os.path.abspath(resolve_log_path(path))  # as `run --json` names it
        summary["log"] = log_stats_json(stats)
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.write(summary_text(state, stats))
        if stats.unknown_kind_names:
            out.write(f"log: unknown kinds (from a newer ftwatch?): {', '.join(sorted(stats.unknown_kind_names))}\n")
    return 0


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


def _no_exit_message(state: RunState) -> str:
    """Why a log has no exit event: the run is still going (then: attach), or it was killed."""
    pid = state.header.get("pid")
    if isinstance(pid, int):
        entry = registry.find(pid)
        if entry is not None and registry.is_alive(entry):
            return f"the run is still going (PID {pid}): watch it live with ftwatch attach {pid}"
    return "the log ends without an exit event (the process was killed, the log was cut, or the run goes on elsewhere)"
