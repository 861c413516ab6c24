"""``ftwatch attach [PID]``: watch a run that is already going (after an SSH drop, or from another
terminal). A run ftwatch monitors is shown with its whole history; any other process of yours is
watched from the outside (NVML and psutil), without a category breakdown.

Attaching and detaching never touch the training process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import psutil

from ftwatch.commands.metrics_options import add_metrics_arguments, start_metrics, stop_metrics
from ftwatch.commands.usage import UsageError
from ftwatch.common.safe_text import safe
from ftwatch.runlog import registry
from ftwatch.runlog.endings import exit_code
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.ranks import launcher_of, multi_rank_root, run_key
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.views.headless.follow import follow_run
from ftwatch.views.headless.follow_multi import follow_ranks
from ftwatch.views.headless.report import ranks_summary_text, summary_text

if TYPE_CHECKING:
    from ftwatch.views.exporters.prometheus import MetricsServer



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch attach``."""
    parser.add_argument("pid", nargs="?", metavar="PID|DIR",
                        help="the training process, or a live run's directory (a multi-process run's too; "
                             "default: the only live run)")
    parser.add_argument("--headless", action="store_true", help="print progress lines instead of the dashboard")
    parser.add_argument("--json", action="store_true", help="with --headless: print the summary as JSON at the end")
    add_metrics_arguments(parser)


_NUMBER = re.compile(r"[+-]?[0-9]+")
_NUMBERISH = re.compile(r"[+-]?\d")
#: A name longer than this is cut in messages.
SHOWN_CHARS = 60
#: ... and a path longer than this (a path that exists is shown whole: it is to be copied).
PATH_CHARS = 4096


def parse_target(text: str | None) -> int | Path | None:
    """The PID or run directory the user named (``None``: none given); raises UsageError for
    what can be neither: an empty name, a number that is not a PID (zero, negative, above the
    system's largest PID), or something that looks like a number and is no existing path."""
    if text is None:
        return None
    stripped = text.strip()
    if not stripped:
        return _refuse("an empty PID or run directory was given; name a PID (ftwatch ls lists the runs) "
                       "or a run directory")
    if _NUMBER.fullmatch(stripped):
        limit = _pid_max()
        digits = stripped.lstrip("+-").lstrip("0")
        if stripped.startswith("-") or not digits:
            return _refuse(f"{_shown(stripped)} is not a PID (PIDs are positive numbers)")
        if len(digits) > len(str(limit)) or int(digits) > limit:
            return _refuse(f"no process with PID {_shown(digits)} (PIDs on this machine go up to {limit})")
        return int(digits)
    if "\x00" in text:
        return _refuse(f"{_shown(text)} is neither a PID nor a run directory (it holds a NUL byte)")
    path = Path(text)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _refuse(f"{_shown(text)} is neither a PID nor a usable run directory ({why})")
    if _NUMBERISH.match(stripped) and not exists:
        return _refuse(f"{_shown(text)} is neither a PID (a positive whole number) nor a run directory")
    return path


def _shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` fit for one line of a message: controls and escapes out, cut when longer than
    ``limit``, quoted when it has spaces."""
    shown = safe(text, one_line=True)
    if len(shown) > limit:
        shown = shown[:limit] + "…"
    return repr(shown) if not shown or shown != shown.strip() or " " in shown else shown


def _refuse(message: str) -> NoReturn:
    raise UsageError(message)


def _pid_max() -> int:
    """The largest PID this machine hands out (Linux's ``pid_max``; 2**22, its ceiling, elsewhere)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text().strip())
    except (OSError, ValueError):
        return 1 << 22


def run_in_directory(path: Path) -> registry.RunEntry:
    """The live registered run whose directory ``path`` is (or holds: a rank's directory or log)."""
    if not path.exists():
        raise UsageError(f"no such run directory: {_shown(str(path), PATH_CHARS)}")
    logs = (EVENTS_FILE, EVENTS_FILE + ".gz")
    if path.is_file() and path.name in logs:
        folder = path.parent
    elif path.is_dir():
        folder = path
    else:
        raise UsageError(f"{_shown(str(path), PATH_CHARS)} is not a run directory (nor a run's {EVENTS_FILE})")
    key = run_key(folder)
    live = [e for e in one_entry_per_run(registry.live_runs()) if run_key(e.run_dir).resolve() == key.resolve()]
    if live:
        return live[0]
    if not any((key / name).exists() for name in logs) and multi_rank_root(key) is None:
        raise UsageError(f"{_shown(str(path), PATH_CHARS)} holds no run log ({EVENTS_FILE}): not a run directory")
    raise UsageError(f"no live run in {_shown(str(path), PATH_CHARS)} (ftwatch ls lists them); a finished one replays with: "
                     f"ftwatch replay {_shown(str(path), PATH_CHARS)}")


def choose_run(pid: int | Path | None) -> registry.RunEntry | int:
    """The registered run to attach to, or the PID of an uninstrumented process; raises UsageError.

    The launcher and the ranks of one multi-process run count as one run.
    """
    if isinstance(pid, str):
        pid = parse_target(pid)
    if isinstance(pid, Path):
        return run_in_directory(pid)
    if pid is None:
        runs = one_entry_per_run(registry.live_runs())
        if not runs:
            raise UsageError("no monitored runs on this machine (ftwatch ls); give a PID to watch any process")
        if len(runs) == 1:
            return runs[0]
        return _pick(runs)
    if pid <= 0:
        raise UsageError(f"{pid} is not a PID (PIDs are positive numbers)")
    entry = registry.find(pid)
    zombie = _zombie_parent(pid)
    if entry is not None and registry.is_alive(entry) and zombie is None:
        return entry
    ended = f"run {safe(entry.name, one_line=True)} (PID {pid}) has ended; replay it with: ftwatch replay " \
            f"{entry.display_dir}" if entry is not None else None
    if entry is not None and entry.ended:
        raise UsageError(ended)
    if zombie is not None:
        what = f"run {safe(entry.name, one_line=True)} (PID {pid})" if entry is not None else f"PID {pid}"
        raise UsageError(f"{what} has exited: a zombie not yet reaped by its parent (PID {zombie}); "
                         "there is nothing left to watch")
    try:
        process = psutil.Process(pid)
        uids = process.uids()
    except psutil.NoSuchProcess:
        if ended is not None:
            raise UsageError(ended) from None
        raise UsageError(f"no process with PID {pid}") from None
    except psutil.AccessDenied:
        raise UsageError(f"PID {pid} belongs to another user; ftwatch attaches only to your own runs") from None
    except (OverflowError, ValueError):
        raise UsageError(f"no process with PID {pid}") from None
    if is_kernel_thread(process):
        raise UsageError(f"PID {pid} ({_name(process)}) is a kernel thread, not a user process: "
                         "ftwatch attaches only to your own programs")
    if os.getuid() != 0 and uids.real != os.getuid():
        owner = _username(process)
        raise UsageError(f"PID {pid} belongs to user {owner}; ftwatch attaches only to your own runs")
    return pid


def _zombie_parent(pid: int) -> int | None:
    """The parent of ``pid`` when it is a zombie (exited, not yet reaped); else ``None``."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return None
        return process.ppid()
    except psutil.ZombieProcess:
        return 0
    except (psutil.Error, OverflowError, ValueError):
        return None


#: ``PF_KTHREAD`` in the flags of ``/proc/PID/stat``: the process is a kernel thread.
PF_KTHREAD = 0x00200000


def is_kernel_thread(process: psutil.Process) -> bool:
    """True for a kernel thread (``kthreadd`` and its children): its ``PF_KTHREAD`` flag on Linux,
    else no command line and no executable under ``kthreadd`` (PID 2) or the kernel (PID 0)."""
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return bool(int(fields[6]) & PF_KTHREAD)  # field 9 of stat(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        pass
    try:
        return process.ppid() in (0, 2) and not process.cmdline() and not process.exe()
    except psutil.Error:
        return False


def _name(process: psutil.Process) -> str:
    try:
        return safe(process.name(), one_line=True)
    except psutil.Error:
        return "unknown"


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
        return safe(process.username(), one_line=True)
    except psutil.Error:
        return "another user"


def _pick(runs: list[registry.RunEntry]) -> registry.RunEntry:
    listing = "\n".join(f"  {i + 1}. PID {r.pid}  {r.name}  ({r.display_dir})" for i, r in enumerate(runs))
    if not sys.stdin.isatty():
        raise UsageError(f"several runs are live; name one:\n{listing}")
    print(f"several runs are live:\n{listing}")
    answer = input(f"attach to which (1-{len(runs)})? ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(runs):
        raise UsageError(f"no run numbered {answer!r}")
    return runs[int(answer) - 1]


def main(args: argparse.Namespace) -> int:
    """Attach to a run (dashboard or headless); headless, the exit code tells how the run ended
    (0 finished, 1 failed or out of memory, 130 stopped; 0 after a Ctrl-C, which only detaches)."""
    target = choose_run(parse_target(args.pid))
    metrics = start_metrics(args, "attach")  # before the outside watcher starts: a busy port costs nothing
    watcher = None
    if isinstance(target, int):
        from ftwatch.training.outside import ExternalWatcher, external_run_dir

        watcher = ExternalWatcher(target, external_run_dir(registry.checked_state_dir(), target))
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
            from ftwatch.views.dashboard.app import run_dashboard

            if metrics is not None:  # the dashboard folds its own state: the exporter follows the log
                metrics.follow(log_path)
            ending = run_dashboard(log_path, handle, title=name)
            if ending == "detached" and handle is not None:
                print(handle.reattach_hint())
            return 0
        follow_pid = handle or WorkerHandle(target if isinstance(target, int) else 0, log_path.parent)
        out = sys.stderr if args.json else sys.stdout
        followed = follow_run(log_path.parent, follow_pid, out, ctrl_c="detach",
                              publish=metrics.publish if metrics is not None else None)
        state = followed.state
        if followed.detached:
            return _detached(args, state.summary(), follow_pid, out, outside=handle is None)
        if args.json:
            sys.stdout.write(json.dumps(state.summary(), indent=2) + "\n")
        else:
            out.write(summary_text(state, followed.stats))
        return exit_code(state.status)
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
        from ftwatch.views.dashboard.app import run_dashboard

        if metrics is not None:
            metrics.follow(root)
        ending = run_dashboard(root, handle, title=target.name)
        if ending == "detached":
            print(handle.reattach_hint())
        return 0
    out = sys.stderr if args.json else sys.stdout
    followed = follow_ranks(root, handle, out, ctrl_c="detach",
                            publish=metrics.publish_ranks if metrics is not None else None)
    run = followed.state
    if followed.detached:
        return _detached(args, run.summary(), handle, out)
    if args.json:
        sys.stdout.write(json.dumps(run.summary(), indent=2) + "\n")
    else:
        out.write(ranks_summary_text(run, followed.stats))
    return 0 if run.status == "finished" and not run.missing_ranks else exit_code(run.status)


def _detached(args: argparse.Namespace, summary: dict[str, Any], handle: WorkerHandle, out: TextIO,
              outside: bool = False) -> int:
    """Ctrl-C left a headless attach: say how to come back (``--json``: the summary so far, ``running``)."""
    if args.json:
        sys.stdout.write(json.dumps({**summary, "status": "running"}, indent=2) + "\n")
    if outside:
        out.write(f"process {handle.pid} goes on; watch it again with: ftwatch attach {handle.pid}\n")
    else:
        out.write(handle.reattach_hint() + "\n")
    out.flush()
    return 0
