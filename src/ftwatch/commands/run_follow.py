"""Following a started run to its end, shared by ``ftwatch run CONFIG`` and ``ftwatch run -- COMMAND``:
the dashboard (one log, or the ranks of a launcher's job), and the ranks' ending and report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ftwatch.runlog.endings import EXIT_CODES, record_vanished_rank_in_memory, record_vanished_worker
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.ranks import (
    MultiLogFollower,
    RankedRun,
    read_launch,
    record_vanished_rank,
    vanished_ranks,
)
from ftwatch.runlog.sources import LogFollower, WorkerHandle
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import ranks_summary_text, summary_text

WORKER_LOG = "worker.log"

def _end_ranks(args: argparse.Namespace, run: RankedRun, stats: Any, run_dir: Path, out: Any) -> int:
    config_errors = [s for s in run.ranks.values() if _is_config_error(s)]
    if config_errors and len(config_errors) == len(run.ranks):
        print(f"ftwatch run: {config_errors[0].exit['message']}", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    if not run.ranks:
        print(f"ftwatch run: no rank started (see {run_dir / WORKER_LOG})", file=sys.stderr)
        if args.json:
            sys.stdout.write(json.dumps(run.summary(), indent=2) + "\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps({**run.summary(), "run_logs": os.path.abspath(run_dir)}, indent=2) + "\n")
    else:
        out.write(ranks_summary_text(run, stats))
        out.write(f"run logs: {run_dir}/rank*/{EVENTS_FILE}\n")
    return 0 if run.status == "finished" and not run.missing_ranks else EXIT_CODES.get(run.status, 1)


def _watch_ranks_in_dashboard(run_dashboard: Any, run_dir: Path, handle: WorkerHandle, name: str) -> int:
    ending = run_dashboard(run_dir, handle, title=name)
    if ending == "detached":
        print(handle.reattach_hint())
        return 0
    if ending == "stopped":
        deadline = time.time() + 40  # torchrun gives its ranks 30 s after the signal
        while handle.is_alive() and time.time() < deadline:
            time.sleep(0.1)
    follower = MultiLogFollower(run_dir)
    run = RankedRun(read_launch(run_dir))
    run.apply_all(follower.poll() + follower.finish())
    follower.close()
    if not handle.is_alive():
        for rank in vanished_ranks(run, socket.gethostname()):
            try:
                record_vanished_rank(run_dir, rank, run.ranks[rank])
            except OSError:  # the log cannot be written (a full disk, a deleted directory): the report still tells
                record_vanished_rank_in_memory(rank, run.ranks[rank])
    if not run.ended and handle.is_alive():
        print(ranks_summary_text(run, follower.stats), end="")
        print(handle.reattach_hint())
        return 0
    args = argparse.Namespace(json=False)
    return _end_ranks(args, run, follower.stats, run_dir, sys.stdout)


def _is_config_error(state: RunState) -> bool:
    """The worker stopped on a config error (before or after it started measuring): the run dir goes,
    one line says why."""
    return bool(state.exit) and state.exit.get("error_type") == "ConfigError"


def _load_dashboard() -> Any:
    try:
        from ftwatch.views.dashboard.app import run_dashboard
    except ImportError:
        return None
    return run_dashboard


def _watch_in_dashboard(run_dashboard: Any, run_dir: Path, handle: WorkerHandle, name: str) -> int:
    ending = run_dashboard(run_dir / EVENTS_FILE, handle, title=name)
    if ending == "detached":
        print(handle.reattach_hint())
        return 0
    if ending == "stopped":
        deadline = time.time() + 30
        while handle.is_alive() and time.time() < deadline:
            time.sleep(0.1)
    state = RunState()
    follower = LogFollower(run_dir / EVENTS_FILE)
    state.apply_all(follower.poll() + follower.finish())
    follower.close()
    if _is_config_error(state):
        print(f"ftwatch run: {state.exit['message']}", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    if state.exit is None and not handle.is_alive():
        record_vanished_worker(run_dir, handle, state)
    print(summary_text(state, follower.decoder.stats), end="")
    if state.exit is None:
        print(handle.reattach_hint())
        return 0
    return EXIT_CODES.get(state.status, 1)


def write_summary(args: argparse.Namespace, state: RunState, stats: Any, run_dir: Path, out: Any) -> None:
    """A headless run's ending: the summary as one JSON object on stdout (``--json``), else the text
    summary and where the run log is (unless its directory was deleted under the follower)."""
    from ftwatch.runlog.endings import DIRECTORY_DELETED

    kept = (state.exit or {}).get("error_type") != DIRECTORY_DELETED
    if args.json:
        log = {"run_log": os.path.abspath(run_dir / EVENTS_FILE) if kept else None}
        sys.stdout.write(json.dumps({**state.summary(), **log}, indent=2) + "\n")
        return
    out.write(summary_text(state, stats))
    if kept:
        out.write(f"run log: {run_dir / EVENTS_FILE}\n")
