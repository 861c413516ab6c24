"""``ftwatch run [OPTIONS] -- COMMAND [ARGS...]``: any Python training command, watched unchanged.

The command runs in its own session (closing the viewer never stops it) with ftwatch's bootstrap
first on its ``PYTHONPATH`` (:mod:`ftwatch.training.wrapped`): its first training call makes the
probe that writes ``<run dir>/events.jsonl``; its stdout and stderr go to ``<run dir>/worker.log``
(and, with ``--headless``/``--json``, on to this terminal too: read back from the file, so the
command never writes into a pipe that dies with the viewer).

Until the command's first training call there is no log to show: the viewer waits for it (or
for the command to end). A command that ends before then with an error is the user's mistake
(``python missing.py``): one line, exit 2. A command that fails later passes its exit code on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ftwatch.commands.metrics_options import start_metrics, stop_metrics
from ftwatch.commands.run_command_checks import Launch, check_command, launch_of, run_name
from ftwatch.commands.run_follow import (
    _end_ranks,
    _load_dashboard,
    _watch_in_dashboard,
    _watch_ranks_in_dashboard,
    write_summary,
)
from ftwatch.commands.usage import STARTED, UsageError
from ftwatch.runlog import registry
from ftwatch.runlog.endings import EXIT_CODES
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.paths import new_run_dir
from ftwatch.runlog.ranks import LAUNCH_FILE, write_launch
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.training.wrapped import NAME_ENV, PACKAGE_ROOT_ENV, SITE_DIR, WRAPPED_ENV
from ftwatch.views.headless.follow import follow_headless
from ftwatch.views.headless.follow_multi import follow_ranks_headless

WORKER_LOG = "worker.log"
POLL_SECONDS = 0.1


def main(args: argparse.Namespace) -> int:
    """Check the command, start it under ftwatch, follow it until it ends (or the user detaches)."""
    command = list(args.wrapped_command)
    if getattr(args, "strict", False):
        raise UsageError("--strict applies to a config run (ftwatch run CONFIG), not to a command after --")
    check_command(command)
    registry.runs_dir()  # a state directory another user could steer is refused before anything starts
    name = run_name(command)
    log_dir = os.environ.get("FTWATCH_LOG_DIR", "ftwatch-runs")
    metrics = start_metrics(args, "run")
    try:
        try:
            run_dir = new_run_dir(log_dir, name)
        except (OSError, RuntimeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise UsageError(f"cannot create a run directory in {log_dir} ({why})") from None
        launch = launch_of(command)
        handle = start_command(command, run_dir, name, group=launch is not None)
        if launch is not None:
            first = launch.node_rank * launch.nproc_per_node
            write_launch(run_dir, launcher=launch.launcher, launcher_pid=handle.pid, world_size=launch.world_size,
                         nproc_per_node=launch.nproc_per_node, nnodes=launch.nnodes, node_rank=launch.node_rank,
                         ranks=list(range(first, first + launch.nproc_per_node)))
        return _follow(args, run_dir, handle, name, metrics, launch)
    finally:
        stop_metrics(metrics, args)


def child_environment(run_dir: Path, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: the bootstrap first on ``PYTHONPATH``, the run directory, the marker."""
    env = dict(os.environ if base is None else base)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(SITE_DIR) + (os.pathsep + path if path else "")
    env["FTWATCH_RUN_DIR"] = str(run_dir.resolve())
    env[WRAPPED_ENV] = "1"
    env[NAME_ENV] = name
    env[PACKAGE_ROOT_ENV] = str(Path(__file__).resolve().parents[2])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_command(command: list[str], run_dir: Path, name: str, group: bool = False) -> WorkerHandle:
    """Start the command in its own session, its output going to ``worker.log``; register it.
    ``group``: a launcher, whose ranks share its process group (a stop now signals them all)."""
    log_fd = os.open(run_dir / WORKER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=child_environment(run_dir, name))
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UsageError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(log_fd)
    with contextlib.suppress(OSError):  # visible to `ftwatch ls` before its probe starts
        registry.register(process.pid, run_dir, name)
    handle = WorkerHandle(process.pid, run_dir, process, group=group)
    STARTED.append(handle)
    return handle


def _follow(args: argparse.Namespace, run_dir: Path, handle: WorkerHandle, name: str, metrics: Any,
            launch: Launch | None = None) -> int:
    if args.detach:
        print(f"started {name}: pid {handle.pid}, run directory {run_dir}")
        print(f"watch it with: ftwatch attach {handle.pid}   (or ftwatch replay {run_dir}); "
              f"its output: {run_dir / WORKER_LOG}")
        return 0
    dashboard = None
    if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
        dashboard = _load_dashboard()
    out = sys.stderr if args.json else sys.stdout
    tee = OutputTee(run_dir / WORKER_LOG, out) if dashboard is None else None
    try:
        if tee is not None:
            tee.start()
        early = wait_for_training(run_dir, handle, tee, ranks=launch is not None)
        if early is not None:
            return early
        if launch is not None and (run_dir / EVENTS_FILE).exists():  # the launcher ran one process after all
            launch = None
            with contextlib.suppress(OSError):
                (run_dir / LAUNCH_FILE).unlink()
        elif launch is None and not (run_dir / EVENTS_FILE).exists():
            launch = _launch_from_ranks(run_dir, handle)  # ranks a config file asked for (accelerate's)
        if launch is not None:
            return _follow_ranks(args, run_dir, handle, name, metrics, dashboard, launch, out)
        if dashboard is not None:
            if metrics is not None:
                metrics.follow(run_dir / EVENTS_FILE)
            code = _watch_in_dashboard(dashboard, run_dir, handle, name)
            return _passed_on(handle, code) if _log_ended(run_dir) or not handle.is_alive() else code
        state, stats = follow_headless(run_dir, handle, out, publish=metrics.publish if metrics is not None else None)
        _reap(handle)  # its last words (after the exit event) still reach the terminal
    finally:
        if tee is not None:
            tee.stop()
    write_summary(args, state, stats, run_dir, out)
    code = _passed_on(handle, EXIT_CODES.get(state.status, 1))
    returncode = handle.returncode()
    if returncode:
        print(f"ftwatch run: the command failed (exit code {returncode}); its output: {run_dir / WORKER_LOG}",
              file=sys.stderr)
    return code


#: How long the command is given to exit once its log has ended (its exit event is written at exit).
EXIT_WAIT_SECONDS = 30.0


def _reap(handle: WorkerHandle) -> None:
    """Wait (a while) for the command to exit: its log ends at its exit hooks, just before it does."""
    if handle.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.process.wait(timeout=EXIT_WAIT_SECONDS)


def _passed_on(handle: WorkerHandle, code: int) -> int:
    """The command's own exit code when it failed, else the run's (0 finished, 130 stopped)."""
    _reap(handle)
    returncode = handle.returncode()
    if returncode is not None and returncode > 0:
        return returncode
    return code


def _follow_ranks(args: argparse.Namespace, run_dir: Path, handle: WorkerHandle, name: str, metrics: Any,
                  dashboard: Any, launch: Launch, out: TextIO) -> int:
    """A launcher's job: every rank's log, as a ``[launch]`` config run is followed."""
    if dashboard is not None:
        if metrics is not None:
            metrics.follow(run_dir)
        code = _watch_ranks_in_dashboard(dashboard, run_dir, handle, name)
        return _passed_on(handle, code) if not handle.is_alive() else code
    out.write(f"ftwatch: {launch.launcher} (pid {handle.pid}) starts {launch.nproc_per_node} processes on this node "
              f"(world size {launch.world_size}); their logs: {run_dir}/rank*/{EVENTS_FILE}\n")
    out.flush()
    run, stats = follow_ranks_headless(run_dir, handle, out,
                                       publish=metrics.publish_ranks if metrics is not None else None)
    code = _end_ranks(args, run, stats, run_dir, out)
    if run.status == "stopped" and not run.missing_ranks:
        return code  # the launcher's own exit on the signal it passed on (torchrun: 1 and a traceback) is no failure
    return _passed_on(handle, code)


def _launch_from_ranks(run_dir: Path, handle: WorkerHandle) -> Launch | None:
    """The job the ranks' own headers describe, recorded as ``launch.json`` (a launcher whose process
    count is not on its command line); ``None`` before a rank wrote its header."""
    deadline = time.monotonic() + EXIT_WAIT_SECONDS  # a rank's log is there: its header follows at once
    while True:
        launch = _launch_in_headers(run_dir, handle)
        if launch is not None or not handle.is_alive() or time.monotonic() > deadline:
            return launch
        time.sleep(POLL_SECONDS)


def _launch_in_headers(run_dir: Path, handle: WorkerHandle) -> Launch | None:
    from ftwatch.runlog.event_reader import read_events

    for log in sorted(run_dir.glob(f"rank*/{EVENTS_FILE}")):
        try:
            header = next((e for e in read_events(log) if e.get("kind") == "header"), None)
        except Exception:
            header = None
        if header is None:
            continue
        world = int(header.get("world_size") or 1)
        local = int(header.get("local_world_size") or world)
        launch = Launch("launcher", local, max(1, world // max(1, local)), int(header.get("node_rank") or 0))
        first = launch.node_rank * launch.nproc_per_node
        write_launch(run_dir, launcher=launch.launcher, launcher_pid=handle.pid, world_size=launch.world_size,
                     nproc_per_node=launch.nproc_per_node, nnodes=launch.nnodes, node_rank=launch.node_rank,
                     ranks=list(range(first, first + launch.nproc_per_node)))
        handle.group = True
        return launch
    return None


def _log_ended(run_dir: Path) -> bool:
    """Whether the run log holds its exit event (the viewer did not detach from a live run)."""
    from ftwatch.runlog.event_reader import read_events

    try:
        return any(event.get("kind") == "exit" for event in read_events(run_dir / EVENTS_FILE))
    except Exception:
        return False


def wait_for_training(run_dir: Path, handle: WorkerHandle, tee: OutputTee | None,
                      ranks: bool = False) -> int | None:
    """Wait for the command's first training call (its log appears: a rank's, for a launcher) or
    its end; the exit code when it ended first (said in one line), else ``None``. Ctrl-C meanwhile
    is passed on to it."""
    log = _FirstLog(run_dir, ranks)
    interrupted = {"n": 0}

    def on_interrupt(signum: int, frame: Any) -> None:
        interrupted["n"] += 1
        handle.request_stop() if interrupted["n"] == 1 else handle.terminate()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        while handle.is_alive() and not log.exists():
            time.sleep(POLL_SECONDS)
    finally:
        signal.signal(signal.SIGINT, previous)
    if log.exists():
        return None
    code = handle.returncode()
    code = 1 if code is None else code
    if tee is not None:
        tee.stop()
    with contextlib.suppress(OSError):
        registry.unregister(handle.pid)
    last = last_line(run_dir / WORKER_LOG)
    shutil.rmtree(run_dir, ignore_errors=True)
    if interrupted["n"]:
        print("ftwatch run: stopped (Ctrl-C) before the command's first training call", file=sys.stderr)
        return EXIT_CODES["stopped"]
    if code == 0:
        print("ftwatch run: the command ended (code 0) before any training call (no model loaded, no "
              "Trainer, no optimizer step): nothing was measured", file=sys.stderr)
        return 0
    how = f"killed by signal {-code}" if code < 0 else f"code {code}"
    print(f"ftwatch run: the command exited at once ({how})" + (f": {last}" if last else ""), file=sys.stderr)
    return 2


class _FirstLog:
    """Whether the run's log exists yet (any rank's, for a launcher)."""

    def __init__(self, run_dir: Path, ranks: bool) -> None:
        self.run_dir = run_dir
        self.ranks = ranks

    def exists(self) -> bool:
        """True once a log is there (for a launcher: a rank's, or one of its own if it ran one process)."""
        if (self.run_dir / EVENTS_FILE).exists():
            return True
        return any(self.run_dir.glob(f"rank*/{EVENTS_FILE}"))


def last_line(path: Path, limit: int = 8192) -> str:
    """The last non-blank line of a file (made safe for the terminal), or ``""``."""
    from ftwatch.common.safe_text import safe

    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return safe(lines[-1], one_line=True)[:300] if lines else ""


class OutputTee:
    """Copies what the command writes to ``worker.log`` on to a terminal stream, as it grows."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path = path
        self.out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftwatch-output-tee", daemon=True)
        self._offset = 0

    def start(self) -> None:
        """Start copying (a daemon thread)."""
        self._thread.start()

    def stop(self) -> None:
        """Copy what is left and stop (idempotent)."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._copy()
            self._stop.wait(POLL_SECONDS)
        self._copy()

    def _copy(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        if not data:
            return
        self._offset += len(data)
        with contextlib.suppress(OSError, ValueError):
            self.out.write(data.decode("utf-8", "replace"))
            self.out.flush()
