"""``ftwatch run CONFIG``: start the fine-tune in a subprocess and watch it.

``ftwatch run [OPTIONS] -- COMMAND [ARGS...]`` runs any Python training command under ftwatch
instead, unchanged (:mod:`ftwatch.commands.run_command`); this module only dispatches to it.

The worker runs in its own session and writes its own run log, so closing this viewer (or losing
the SSH link) never stops training. With a terminal the dashboard shows; with ``--headless`` (or
when stdout is not a terminal) progress lines are printed, and ``--json`` prints the run summary
alone on stdout at the end.

With ``[launch] nproc_per_node`` (or ``nnodes``) above one the worker is started through
``torchrun`` (``python -m torch.distributed.run``); every rank writes its own log in
``<run dir>/rank<N>/`` and the viewer follows them all (see :mod:`ftwatch.runlog.ranks`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftwatch.commands.metrics_options import (
    add_metrics_arguments,
    check_metrics_arguments,
    start_metrics,
    stop_metrics,
)
from ftwatch.commands.run_follow import (
    _end_ranks,
    _is_config_error,
    _load_dashboard,
    _watch_in_dashboard,
    _watch_ranks_in_dashboard,
    write_summary,
)
from ftwatch.commands.usage import STARTED, UsageError, show_value
from ftwatch.common.config import load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.runlog import registry
from ftwatch.runlog.endings import (
    EXIT_CODES,
)
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.paths import new_run_dir
from ftwatch.runlog.ranks import (
    write_launch,
)
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.training.config_checks import check_without_libraries
from ftwatch.training.prestart import Prestarted
from ftwatch.views.headless.follow import follow_headless
from ftwatch.views.headless.follow_multi import follow_ranks_headless

if TYPE_CHECKING:
    from ftwatch.common.config import Config
    from ftwatch.views.exporters.prometheus import MetricsServer


#: The one usage line of ``ftwatch run`` given neither a config nor a command.
USAGE = "give a config or a command: ftwatch run CONFIG, or ftwatch run [OPTIONS] -- python train.py ..."

WORKER_LOG = "worker.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch run``."""
    parser.usage = ("%(prog)s [--headless|--json|--detach] [--strict] [--fit] [--metrics-port PORT ...] CONFIG\n"
                    "       %(prog)s [--headless|--json|--detach] [--metrics-port PORT ...] -- COMMAND [ARGS...]")
    parser.add_argument("config", nargs="?", default=None,
                        help="the run's TOML config (`ftwatch example` writes one to start from); or, instead, "
                             "`-- COMMAND [ARGS...]`: any Python training command, run unchanged under ftwatch")
    parser.add_argument("--headless", action="store_true", help="print progress lines instead of the dashboard")
    parser.add_argument("--json", action="store_true",
                        help="print the run summary as one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--detach", action="store_true", help="start training without a viewer and print its PID")
    parser.add_argument("--strict", action="store_true",
                        help="refuse to start when the pre-flight estimate says the run will not fit")
    parser.add_argument("--fit", action="store_true",
                        help="apply `ftwatch fit` first: train with the micro-batch (and changes) that fit")
    add_metrics_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Validate the config, start the worker, and follow it until it ends (or the user detaches);
    with a command after ``--``, run that instead (:mod:`ftwatch.commands.run_command`)."""
    command = getattr(args, "wrapped_command", None)
    if command is not None:
        if args.config is not None:
            raise UsageError(f"give a config or a command after --, not both (got {show_value(args.config)} "
                             "and a command)")
        if getattr(args, "fit", False):
            raise UsageError("--fit needs a config (ftwatch run --fit CONFIG), not a command after --")
        from ftwatch.commands import run_command

        return run_command.main(args)
    if args.config is None:
        raise UsageError(USAGE)
    cfg = load_config(args.config)
    check_metrics_arguments(args)  # a misused option is refused before the library checks start
    registry.runs_dir()  # a state directory another user could steer is refused before anything starts
    if getattr(args, "fit", False):
        from ftwatch.commands.fit_run import discard, fitted_for_run

        cfg = fitted_for_run(cfg, sys.stderr)
        try:
            return _validated_run(args, cfg)
        finally:
            if not args.detach:  # a detached worker may still be reading it
                discard(cfg)
    return _validated_run(args, cfg)


def _validated_run(args: argparse.Namespace, cfg: Config) -> int:
    """Validate ``cfg`` (the library checks start ahead), then run it."""
    early = validate(cfg)
    try:
        metrics = start_metrics(args, "run")  # bound before training starts: a busy port costs nothing
        try:
            return _run(args, cfg, metrics, early)
        finally:
            stop_metrics(metrics, args)
    finally:
        early.cancel()  # nothing left to end once it became the worker


def validate(cfg: Config) -> Prestarted:
    """Every config error before the worker starts, as ``ftwatch estimate`` finds them
    (:mod:`ftwatch.training.config_checks`): the torch-free checks here, then the library checks in a process
    started ahead (:mod:`ftwatch.training.prestart`), which becomes the worker with its imports done."""
    needs, _files = check_without_libraries(cfg)
    if needs:
        raise ConfigError(cfg.path, needs[0])
    early = Prestarted(cfg.path)
    shown = _say_checking(sys.stderr)
    try:
        refused = early.verdict()
    except BaseException:
        early.cancel()
        raise
    finally:
        if shown:  # the line goes: the dashboard, the progress or the one error line take its place
            _write_quietly(sys.stderr, "\r\x1b[K")
    if refused is not None:
        raise ConfigError(None, refused)
    return early


#: Said on a terminal while the checks' process imports the libraries (seconds; nothing else shows yet).
CHECKING = "ftwatch run: checking the config with transformers and peft…"


def _say_checking(stream: Any) -> bool:
    """On a terminal, say what the first seconds are for; whether it was said (to take it back)."""
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError, OSError):
        return False
    return _write_quietly(stream, CHECKING)


def _write_quietly(stream: Any, text: str) -> bool:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _run(args: argparse.Namespace, cfg: Config, metrics: MetricsServer | None, early: Prestarted) -> int:
    try:
        run_dir = new_run_dir(cfg.monitor.log_dir, cfg.name)
    except (OSError, RuntimeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(cfg.path, f"[monitor].log_dir: cannot create a run directory in "
                                    f"{cfg.monitor.log_dir} ({why})") from None
    try:
        prepare_run_dir(cfg, run_dir)
    except OSError as exc:  # a full disk costs the config's copy, never the run (the worker copes with it)
        print(f"ftwatch run: warning: cannot write into {run_dir} ({exc.strerror or exc}); "
              "training starts anyway", file=sys.stderr)
    if cfg.launch.distributed:
        early.cancel()  # torchrun starts the ranks itself
        return _run_ranks(args, cfg, metrics, run_dir)
    handle = start_worker(cfg.path, run_dir, strict=args.strict, early=early)
    if args.detach:
        print(f"started {cfg.name}: pid {handle.pid}, run directory {run_dir}")
        print(f"watch it with: ftwatch attach {handle.pid}   (or ftwatch replay {run_dir})")
        return 0
    if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
        dashboard = _load_dashboard()
        if dashboard is not None:
            if metrics is not None:  # the dashboard folds its own state: the exporter follows the log
                metrics.follow(run_dir / EVENTS_FILE)
            return _watch_in_dashboard(dashboard, run_dir, handle, cfg.name)
    out = sys.stderr if args.json else sys.stdout
    state, stats = follow_headless(run_dir, handle, out, every=cfg.monitor.print_every,
                                   publish=metrics.publish if metrics is not None else None)
    if _is_config_error(state):
        print(f"ftwatch run: {state.exit['message']}", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    write_summary(args, state, stats, run_dir, out)
    return EXIT_CODES.get(state.status, 1)


def prepare_run_dir(cfg: Config, run_dir: Path) -> None:
    """Before the worker starts: the config's copy (``config.toml``, 0600) and, unless ``[training]``
    names its own, the Trainer's ``output/`` (0700), private to their owner whatever the umask."""
    data = cfg.path.read_bytes()
    fd = os.open(run_dir / "config.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
    if "output_dir" not in cfg.training:
        output = run_dir / "output"
        output.mkdir(mode=0o700)
        os.chmod(output, 0o700, follow_symlinks=False)


def start_worker(config_path: Path, run_dir: Path, strict: bool = False,
                 torchrun: list[str] | None = None, early: Prestarted | None = None) -> WorkerHandle:
    """Start the training worker in its own session, its output going to ``worker.log``.

    ``torchrun``: the launcher's options; the worker then runs once per rank under
    ``python -m torch.distributed.run`` (through :mod:`ftwatch.training.torchrun`, which ends a stop
    without a traceback) and the handle is the launcher's (its process group).
    ``early``: a process started ahead that passed the checks; it becomes the worker.
    """
    arguments = ["--config", str(config_path.resolve()), "--run-dir", str(run_dir.resolve()),
                 *(["--strict"] if strict else [])]
    if early is not None and early.usable and torchrun is None:
        process: subprocess.Popen[bytes] = early.hand_over(arguments, run_dir / WORKER_LOG)
    else:
        log_fd = os.open(run_dir / WORKER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        launcher = ["-m", "ftwatch.training.torchrun", *torchrun] if torchrun is not None else []
        try:
            process = subprocess.Popen(
                [sys.executable, *launcher, "-m", "ftwatch.training.worker", *arguments],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        finally:
            os.close(log_fd)
    with contextlib.suppress(OSError):  # visible to `ftwatch ls` before its probe starts
        registry.register(process.pid, run_dir, config_path.stem)
    handle = WorkerHandle(process.pid, run_dir, process, group=torchrun is not None)
    STARTED.append(handle)
    return handle


def _run_ranks(args: argparse.Namespace, cfg: Config, metrics: MetricsServer | None, run_dir: Path) -> int:
    """``ftwatch run`` of a ``[launch]`` config: torchrun starts the ranks, we follow every log."""
    launch = cfg.launch
    first = launch.node_rank * launch.nproc_per_node
    handle = start_worker(cfg.path, run_dir, strict=args.strict, torchrun=launch.torchrun_arguments())
    write_launch(run_dir, launcher="torchrun", launcher_pid=handle.pid, world_size=launch.world_size,
                 nproc_per_node=launch.nproc_per_node, nnodes=launch.nnodes, node_rank=launch.node_rank,
                 ranks=list(range(first, first + launch.nproc_per_node)))
    if args.detach:
        print(f"started {cfg.name} ({launch.nproc_per_node} processes through torchrun): launcher pid "
              f"{handle.pid}, run directory {run_dir}")
        print(f"watch it with: ftwatch attach {handle.pid}   (or ftwatch replay {run_dir})")
        return 0
    if not (args.headless or args.json) and sys.stdout.isatty() and sys.stdin.isatty():
        dashboard = _load_dashboard()
        if dashboard is not None:
            if metrics is not None:
                metrics.follow(run_dir)
            return _watch_ranks_in_dashboard(dashboard, run_dir, handle, cfg.name)
    out = sys.stderr if args.json else sys.stdout
    out.write(f"ftwatch: torchrun (pid {handle.pid}) starts {launch.nproc_per_node} processes on this node "
              f"(world size {launch.world_size}); their logs: {run_dir}/rank*/{EVENTS_FILE}\n")
    out.flush()
    run, stats = follow_ranks_headless(run_dir, handle, out, every=cfg.monitor.print_every,
                                       publish=metrics.publish_ranks if metrics is not None else None)
    return _end_ranks(args, run, stats, run_dir, out)
