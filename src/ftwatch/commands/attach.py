"""``ftwatch attach [PID]``: watch a run that is already going (after an SSH drop, or from another
terminal). A run ftwatch monitors is shown with its whole history; any other process of yours is
watched from the outside (NVML and psutil), without a category breakdown.

Attaching and detaching never touch the training process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ftwatch import registry
from ftwatch.cli import UsageError
from ftwatch.exporters.cli import add_metrics_arguments, start_metrics, stop_metrics
from ftwatch.follow import follow_headless, follow_ranks_headless
from ftwatch.ranks import launcher_of, multi_rank_root, run_key
from ftwatch.report import ranks_summary_text, summary_text
from ftwatch.sources import WorkerHandle

if TYPE_CHECKING:
    from ftwatch.exporters.prometheus import MetricsServer

HELP = "watch a run that is already going, by PID"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch attach``."""
    parser.add_argument("pid", nargs="?", type=_pid_or_dir, metavar="PID|DIR",
                        help="the training process, or a live run's directory (a multi-process run's too; "
                             "default: the only live run)")
    parser.add_argument("--headless", action="store_true", help="print progress lines instead of the dashboard")
    parser.add_argument("--json", action="store_true", help="with --headless: print the summary as JSON at the end")
    add_metrics_arguments(parser)


def _pid_or_dir(text: str) -> int | Path:
    return int(text) if text.strip().isdigit() else Path(text)


def run_in_directory(path: Path) -> registry.RunEntry:
    """The live registered run whose directory ``path`` is (or holds: a rank's directory or log)."""
    if not path.exists():
        raise UsageError(f"no such run directory: {path}")
    key = run_key(path.parent if path.is_file() else path)
    live = [e for e in one_entry_per_run(registry.live_runs()) if run_key(e.run_dir).resolve() == key.resolve()]
    if live:
        return live[0]
    raise UsageError(f"no live run in {path} (ftwatch ls lists them); a finished one replays with: "
                     f"ftwatch replay {path}")


def choose_run(pid: int | Path | None) -> registry.RunEntry | int:
    """The registered run to attach to, or the PID of an uninstrumented process; raises UsageError.

    The launcher and the ranks of one multi-process run count as one run.
    """
    if isinstance(pid, Path):
        return run_in_directory(pid)
    if pid is None:
        runs = one_entry_per_run(registry.live_runs())
        if not runs:
            raise UsageError("no monitored runs on this machine (ftwatch ls); give a PID to watch any process")
        if len(runs) == 1:
            return runs[0]
        return _pick(runs)
    entry = registry.find(pid)
    if entry is not None and registry.is_alive(entry):
        return entry
    if entry is not None and entry.ended:
        raise UsageError(f"run {entry.name} (PID {pid}) has ended; replay it with: ftwatch replay {entry.run_dir}")
    try:
        process = psutil.Process(pid)
        uids = process.uids()
    except psutil.NoSuchProcess:
        if entry is not None:
            raise UsageError(f"run {entry.name} (PID {pid}) has ended; replay it with: ftwatch replay {entry.run_dir}") \
                from None
        raise UsageError(f"no process with PID {pid}") from None
    except psutil.AccessDenied:
        raise UsageError(f"PID {pid} belongs to another user; ftwatch attaches only to your own runs") from None
    if os.getuid() != 0 and uids.real != os.getuid():
        owner = _username(process)
        raise UsageError(f"PID {pid} belongs to user {owner}; ftwatch attaches only to your own runs")
    return pid


def one_entry_per_run(entries: list[registry.RunEntry]) -> list[registry.RunEntry]:
    """One entry per run: of a multi-process run's launcher and ranks, the launcher (else the
    lowest pid)."""
    chosen: dict[Path, registry.RunEntry] = {}
    for entry in entries:
        key = run_key(entry.run_dir)
        current = chosen.get(key)
        is_launcher = Path(entry.run_dir) == key
        if current is None or (is_launcher and Path(current.run_dir) != key):
            chosen[key] = entry
    return list(chosen.values())


def _username(process: psutil.Process) -> str:
    try:
        return process.username()
    except psutil.Error:
        return "another user"


def _pick(runs: list[registry.RunEntry]) -> registry.RunEntry:
    listing = "\n".join(f"  {i + 1}. PID {r.pid}  {r.name}  ({r.run_dir})" for i, r in enumerate(runs))
    if not sys.stdin.isatty():
        raise UsageError(f"several runs are live; name one:\n{listing}")
    print(f"several runs are live:\n{listing}")
    answer = input(f"attach to which (1-{len(runs)})? ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(runs):
        raise UsageError(f"no run numbered {answer!r}")
    return runs[int(answer) - 1]


def main(args: argparse.Namespace) -> int:
    """Attach to a run (dashboard or headless)."""
    target = choose_run(args.pid)
    metrics = start_metrics(args, "attach")  # before the outside watcher starts: a busy port costs nothing
    watcher = None
    if isinstance(target, int):
        from ftwatch.external import ExternalWatcher, external_run_dir

        watcher = ExternalWatcher(target, external_run_dir(registry.state_dir(), target))
        watcher.start()
        log_path, handle, name = watcher.log_path, None, f"pid {target}"
    else:
        root = multi_rank_root(target.run_dir)
        if root is not None:
            try:
                return _attach_ranks(args, target, root, metrics)
            finally:
                stop_metrics(metrics, args)
        log_path, name = target.log_path, target.name
        handle = WorkerHandle(target.pid, Path(target.run_dir))
    try:
        dashboard = not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty()
        if dashboard:
            from ftwatch.tui.app import run_dashboard

            if metrics is not None:  # the dashboard folds its own state: the exporter follows the log
                metrics.follow(log_path)
            ending = run_dashboard(log_path, handle, title=name)
            if ending == "detached" and handle is not None:
                print(handle.reattach_hint())
            return 0
        follow_pid = handle or WorkerHandle(target if isinstance(target, int) else 0, log_path.parent)
        out = sys.stderr if args.json else sys.stdout
        state, stats = follow_headless(log_path.parent, follow_pid, out,
                                       publish=metrics.publish if metrics is not None else None)
        if args.json:
            sys.stdout.write(json.dumps(state.summary(), indent=2) + "\n")
        else:
            out.write(summary_text(state, stats))
        return 0
    finally:
        if watcher is not None:
            watcher.stop()
        stop_metrics(metrics, args)


def _attach_ranks(args: argparse.Namespace, target: registry.RunEntry, root: Path,
                  metrics: MetricsServer | None) -> int:
    """Attach to a multi-process run: every rank's log, through its launcher when there is one."""
    if Path(target.run_dir) == root:  # the launcher `ftwatch run` started, in a session of its own
        handle = WorkerHandle(target.pid, root, group=True)
    else:  # a rank: stop and detach go through its torchrun launcher
        handle = WorkerHandle(launcher_of(target.pid) or target.pid, root)
    if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
        from ftwatch.tui.app import run_dashboard

        if metrics is not None:
            metrics.follow(root)
        ending = run_dashboard(root, handle, title=target.name)
        if ending == "detached":
            print(handle.reattach_hint())
        return 0
    out = sys.stderr if args.json else sys.stdout
    run, stats = follow_ranks_headless(root, handle, out,
                                       publish=metrics.publish_ranks if metrics is not None else None)
    if args.json:
        sys.stdout.write(json.dumps(run.summary(), indent=2) + "\n")
    else:
        out.write(ranks_summary_text(run, stats))
    return 0
