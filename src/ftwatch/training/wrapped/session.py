"""The wrapped process's one probe, made at its first training call, and how the process ends.

A launcher (``torchrun``, ``accelerate launch``) makes no training call, so it never makes a
probe; its ranks each make their own, into ``rank<N>/`` of the run directory
(``Probe.for_script`` honours ``FTWATCH_RUN_DIR``). A helper process that inherits the
environment (a second interpreter started by the script) finds the run directory claimed and
stays unmonitored instead of writing into another process's log.

The exit event is written when the process exits (an ``atexit`` hook registered after the
probe's own): ``stopped`` when ``k`` (SIGINT) asked for a stop, ``failed`` with the exit code when
the script called ``sys.exit`` with one, else ``finished``; an uncaught exception is recorded by
the probe's own exception hook.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ftwatch.training.wrapped import NAME_ENV, say

#: The claim on a run directory (or a rank's): the pid of the process that writes its log.
CLAIM_FILE = ".wrapped-pid"


class Session:
    """What this process has seen: its probe, the models loaded, the Trainers running, the steps."""

    def __init__(self) -> None:
        self.probe: Any = None
        self.failed = False
        self.models: list[Any] = []
        self.trainers_running = 0
        self.trainer_seen = False
        self.last_step: int | None = None
        self.exit_code: int | None = None
        #: Set by the command's bootstrap (:func:`ftwatch.training.wrapped.bootstrap.install`).
        self.installed = False
        #: The script drives the probe itself (its own ``Probe.for_script``): the hand-loop hooks
        #: stand aside, as they do while a Trainer trains.
        self.script_drives = False
        self._making = False
        from ftwatch.training.wrapped.rank_stop import RankStop

        #: A rank's stop request (under a launcher; see :mod:`.rank_stop`).
        self.rank_stop = RankStop()
        self._lock = threading.RLock()

    def ensure_probe(self, model_name: str | None = None) -> Any:
        """The process's probe, made now if this is its first training call; ``None`` when it cannot be."""
        if self.probe is not None or self.failed:
            return self.probe
        with self._lock:
            if self.probe is not None or self.failed:
                return self.probe
            try:
                self.probe = self._make_probe(model_name)
            except Exception as exc:
                say(f"cannot start measuring ({type(exc).__name__}: {exc}); training goes on unmonitored")
                self.probe = None
            if self.probe is None:
                self.failed = True
            return self.probe

    def adopt_for_script(self, model_name: str | None) -> Any:
        """The process's probe for a script's own ``Probe.for_script`` (``None``: not a wrapped
        process, or the session making its probe): from now on the script drives its steps."""
        if not self.installed or self._making:
            return None
        probe = self.ensure_probe(model_name)
        if probe is not None:
            self.script_drives = True
        return probe

    def _make_probe(self, model_name: str | None) -> Any:
        from ftwatch.runlog.paths import distributed_rank, rank_dir
        from ftwatch.training.probe.probe import Probe

        root = os.environ.get("FTWATCH_RUN_DIR")
        if root:
            rank, _, world_size = distributed_rank()
            if not _claim(rank_dir(Path(root), rank) if world_size > 1 else Path(root)):
                return None
        name = os.environ.get(NAME_ENV) or None
        kwargs: dict[str, Any] = {"name": name, "model_name": model_name}
        kwargs.update(_header_extras(Probe.for_script))
        self._making = True
        try:
            probe = Probe.for_script(**kwargs)
        finally:
            self._making = False
        atexit.register(self.finish)  # after the probe's own hook: runs before it
        return probe

    def phase(self, name: str, **fields: Any) -> None:
        """Enter a phase (the probe made if needed)."""
        probe = self.ensure_probe()
        if probe is not None and probe.current_phase != name:
            probe.phase(name, **fields)

    def before_training(self) -> bool:
        """Whether the run is still before its Trainer (a load then is the run's own model loading)."""
        probe = self.probe
        return probe is None or probe.current_phase in (None, "loading_model", "applying_lora")

    def install_rank_stop(self) -> None:
        """Under a launcher (world size above one): take SIGINT/SIGTERM as a stop request."""
        from ftwatch.runlog.paths import distributed_rank

        if distributed_rank()[2] > 1:
            self.rank_stop.install()

    def stop_asked(self) -> bool:
        """Whether a stop was asked (this process's SIGINT, or a rank's signal)."""
        probe = self.probe
        return bool(self.rank_stop.requested or (probe is not None and probe.stop_requested))

    def finish(self) -> None:
        """The exit event, when the process exits (see the module's docstring)."""
        probe = self.probe
        if probe is None:
            return
        with contextlib.suppress(Exception):
            step = self.last_step
            if self.stop_asked():
                probe.finish("stopped", step=step, message=f"stopped at a step boundary on SIGINT (step {step})")
            elif self.exit_code:
                probe.finish("failed", step=step, exit_code=self.exit_code,
                             message=f"the command failed (exit code {self.exit_code})")
            else:
                probe.finish("finished", step=step)


def _header_extras(for_script: Any) -> dict[str, Any]:
    """``origin`` and ``command`` for the header, where ``Probe.for_script`` takes them."""
    try:
        params = inspect.signature(for_script).parameters
    except (TypeError, ValueError):
        return {}
    extras: dict[str, Any] = {}
    if "origin" in params:
        extras["origin"] = "command"
    if "command" in params:
        extras["command"] = [sys.executable, *sys.argv] if sys.argv else [sys.executable]
    return extras


def _claim(run_dir: Path) -> bool:
    """Claim ``run_dir`` for this process (True), unless another live process has."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / CLAIM_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    except OSError:
        return True  # no claim can be made: the probe says what it cannot write
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def watch_exit_code() -> None:
    """Note the code given to ``sys.exit`` (the exit event says the command failed with it)."""
    original = sys.exit

    def exit(status: object = None) -> None:  # noqa: A001 - stands for sys.exit
        with contextlib.suppress(Exception):
            SESSION.exit_code = status if isinstance(status, int) else (0 if status is None else 1)
        original(status)

    exit.__doc__ = original.__doc__
    sys.exit = exit


#: This process's session.
SESSION = Session()
