"""The probe: the training side of ftwatch. It measures, and writes events; it never analyses.

Use it through :class:`ftwatch.FtwatchCallback` with a ``Trainer``, or directly in a hand-written
loop::

    probe = Probe.for_script("my-run")          # writes ftwatch-runs/my-run-<time>/events.jsonl
    probe.attach_model(model)
    probe.attach_optimizer(optimizer)           # grads before, state after each optimizer.step()
    for step, batch in enumerate(loader, 1):
        probe.step_begin()
        loss = model(**batch).loss              # activations are counted in the forward
        loss.backward()
        optimizer.step(); optimizer.zero_grad()
        probe.step_end(step, loss=loss.item())
        if probe.should_stop:                   # SIGINT (Ctrl-C, `k` in the dashboard): stop here
            break
    probe.finish("stopped" if probe.should_stop else "finished", step=step)

Stopping: reading ``probe.should_stop`` (in the main thread) makes the probe handle SIGINT, which
the dashboard's ``k`` and Ctrl-C send: the first one only sets ``should_stop``, for the loop to
stop at its next step boundary; the next one goes to the handler the script had before (Python's
default raises ``KeyboardInterrupt``). The handler is restored by ``finish``. A loop that never
reads ``should_stop`` keeps Python's own Ctrl-C. Under ``torchrun`` no handler is installed (the
ranks would not agree on the step to stop at): ``should_stop`` stays false.

Nothing the probe does can stop training: a failed write to the log (a full disk) is counted and
retried, an internal failure is recorded once (a ``probe_failed`` note and one line on stderr)
and that measurement is switched off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ftwatch.common.config import MODULE_MODES
from ftwatch.runlog import registry
from ftwatch.runlog.event_writer import EventWriter
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.paths import distributed_rank, new_run_dir, rank_dir, shared_run_dir
from ftwatch.training.probe import accounting
from ftwatch.training.probe.attach import ModelAttachment
from ftwatch.training.probe.devices import DeviceSampler, NvmlReader
from ftwatch.training.probe.guard import Guard, guarded, say
from ftwatch.training.probe.run_setup import RunSetup, UnrecordedWriter
from ftwatch.training.probe.snapshots import StepSnapshots
from ftwatch.training.probe.stop import SigintStop


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/accelerator OOMs (every form torch has raised) and CPU ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _wrapped_process_probe(model_name: str | None) -> Probe | None:
    """The probe of ``ftwatch run -- COMMAND``'s process, for a script's own ``Probe.for_script``
    (``None`` outside such a process, and for the session's own call). Looked up, not imported:
    the session's module is loaded only where the command's bootstrap installed it."""
    session = sys.modules.get("ftwatch.training.wrapped.session")
    if session is None:
        return None
    return session.SESSION.adopt_for_script(model_name)


class Probe(RunSetup, ModelAttachment, StepSnapshots):
    """Measures one training process and writes its run log.

    No method of it raises into the training loop (see :mod:`ftwatch.training.probe.guard`); a hand-written
    loop checks :attr:`should_stop` at each step boundary to stop on SIGINT (see the module's
    docstring).

    The start (header, sampler, registry) is in :mod:`~ftwatch.training.probe.run_setup`, the model
    and optimizer hooks in :mod:`~ftwatch.training.probe.attach`, the per-step measurement and
    snapshots in :mod:`~ftwatch.training.probe.snapshots`; this class holds the state and the rest
    of the public surface (phases, notes, stopping, the end).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, name: str, model_name: str | None = None,
                 config_path: str | None = None, sample_hz: float = 10.0, budget: int | None = None,
                 device: str | None = None, max_steps: int | None = None, track_activations: bool = True,
                 activations_every: int = 10,
                 reset_peak_each_step: bool = True, handle_signals: bool = True, record: bool = True,
                 origin: str = "worker", command: list[str] | None = None, modules: str = "summary") -> None:
        if modules not in MODULE_MODES:
            raise ValueError(f"modules must be one of {', '.join(MODULE_MODES)}, got {modules!r}")
        self.guard = Guard(self._failure_note)
        #: Module attribution on measured steps (``modules`` events): ``off``, ``summary`` (blocks and
        #: layers) or ``full`` (the whole module tree too).
        self.modules_mode = modules
        self._module_meter: Any = None
        #: Who started this probe (the header's ``origin``): ``worker`` (``ftwatch run CONFIG``),
        #: ``callback`` (``FtwatchCallback`` in a user's script), ``command`` (``ftwatch run -- COMMAND``).
        self.origin = origin
        #: The wrapped command line (``origin="command"``), written in the header.
        self.command = list(command) if command is not None else None
        #: Whether this run's log has a pre-flight ``estimate`` (the worker writes one before loading;
        #: a caller that writes its own sets this so the callback does not estimate twice).
        self.estimate_made = False
        self.run_dir = Path(run_dir)
        run_dir_error: OSError | None = None
        if record:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the log cannot be written: training goes on, unrecorded
                run_dir_error = exc
        self.name = name
        self.model_name = model_name
        self.config_path = config_path
        self.sample_hz = sample_hz
        self.budget = budget
        self.max_steps = max_steps
        self.track_activations = track_activations
        #: Activations are measured on every forward of an input shape larger than every measured
        #: one, and on every ``activations_every``-th forward (1: every forward); in between a
        #: forward carries the figure of its shape, or of a larger measured one (``_carried_figure``).
        self.activations_every = max(1, int(activations_every))
        self._activations_by_shape: dict[Any, int] = {}
        #: Bounds found for unmeasured shapes (``_carried_figure``), until the next measurement.
        self._carried_bounds: dict[Any, int | None] = {}
        self._forwards_since_measured = 0
        self._forward_key: Any = None
        self._in_forward = False
        self._activations_carried = False
        self.reset_peak_each_step = reset_peak_each_step
        self.device = torch.device(device) if device else _default_device()
        self.writer: Any
        if not record or run_dir_error is not None:
            if run_dir_error is not None:
                say(f"cannot create the run directory {self.run_dir} "
                    f"({run_dir_error.strerror or run_dir_error}): this run is not recorded; training goes on")
            self.writer = UnrecordedWriter(self.run_dir / EVENTS_FILE)
        else:
            self.writer = EventWriter(self.run_dir / EVENTS_FILE, retry_open=True)
        self.current_phase: str | None = None
        self.meter = accounting.ActivationMeter()
        self.model: torch.nn.Module | None = None
        self.optimizer: Any = None
        self._model_bytes = {"weights": 0, "lora": 0}
        self._base_only = False
        self._trainable: list[torch.nn.Parameter] = []
        self._grads = 0
        self._optimizer_bytes = 0
        self._optimizer_meter = accounting.OptimizerStateMeter()
        self._losses: list[torch.Tensor] = []
        #: The forward's loss times this is the step's loss (a Trainer that averages tokens over
        #: ranks divides each rank's loss by the world size inside the model, then multiplies).
        self.loss_scale = 1.0
        self._tokens = 0
        self._seq_len = 0
        self._hooks: list[Any] = []
        self._sampler: DeviceSampler | None = None
        self._nvml: NvmlReader | None = None
        self._cuda_index: int | None = self.device.index if self.device.type == "cuda" else None
        self.device_info: dict[str, Any] = {}
        self._finished = False
        #: Called (in order) just before the exit event is written, e.g. to flush live analysis.
        self.before_finish: list[Any] = []
        self._registered = False
        self._lock = threading.Lock()
        self._notes: set[str] = set()
        #: Whether reading :attr:`should_stop` may install the SIGINT handler (the ``ftwatch run``
        #: worker has its own and passes ``False``).
        self.handle_signals = handle_signals
        self._sigint = SigintStop()

    # -- construction helpers --------------------------------------------------------------------
    @classmethod
    def for_script(cls, name: str | None = None, log_dir: str | os.PathLike[str] | None = None, *,
                   origin: str = "callback", command: list[str] | None = None, **kwargs: Any) -> Probe:
        """A started probe for a user's own script, writing under ``log_dir`` (``FTWATCH_LOG_DIR``,
        default ``./ftwatch-runs``); it records a failure if the script dies before ``finish``.

        ``origin`` (the header's) says who started it: ``"callback"`` (``FtwatchCallback`` added by
        hand, or a probe a script makes itself) or ``"command"`` (``ftwatch run -- COMMAND``, whose
        argv is ``command``).

        Under ``torchrun`` every rank writes ``<run dir>/rank<N>/events.jsonl`` in one run
        directory, named after the launcher process (``FTWATCH_RUN_DIR`` names it instead: give
        every node the same one on shared storage).

        Inside ``ftwatch run -- COMMAND`` the process has one probe already (or makes it now),
        writing to that run's log: a script's own call gets it, so the run has one log and one
        account of its steps (``name`` and ``log_dir`` are then the command's)."""
        adopted = _wrapped_process_probe(kwargs.get("model_name"))
        if adopted is not None:
            return adopted
        name = name or Path(sys.argv[0] or "python").stem or "run"
        log_dir = log_dir or os.environ.get("FTWATCH_LOG_DIR", "ftwatch-runs")
        kwargs.setdefault("reset_peak_each_step", False)
        rank, _, world_size = distributed_rank()
        if os.environ.get("FTWATCH_RUN_DIR"):
            root = Path(os.environ["FTWATCH_RUN_DIR"])
            run_dir = rank_dir(root, rank) if world_size > 1 else root
        elif world_size > 1:
            launcher = os.getppid()
            started = registry.process_create_time(launcher) or time.time()  # gone or hidden: now
            run_dir = rank_dir(shared_run_dir(log_dir, name, launcher, started), rank)
        else:
            try:
                run_dir = new_run_dir(log_dir, name)
            except Exception as exc:  # no run directory: the script trains unrecorded, it does not die
                run_dir = Path(log_dir) / f"{name}-unrecorded"
                kwargs["record"] = False
                say(f"cannot create a run directory in {log_dir} ({getattr(exc, 'strerror', None) or exc}): "
                    "this run is not recorded; training goes on")
        probe = cls(run_dir, name=name, origin=origin, command=command, **kwargs)
        probe.start()
        probe.install_exit_hooks()
        return probe

    def _failure_note(self, part: str, message: str) -> None:
        """The run log's record of an internal failure (the guard calls it once per part)."""
        self.writer.emit("note", code="probe_failed", part=part, message=message)

    def _sampler_failed(self, exc: BaseException) -> None:
        self.guard.record("device sampler", exc, disable=True, effect="training goes on without samples")

    @guarded("phase")
    def phase(self, name: str, **fields: Any) -> None:
        """Enter a phase (``loading_model``, ``applying_lora``, ``preparing_trainer``, ``training``)."""
        self.current_phase = name
        self.writer.emit("phase", name=name, **fields)

    @guarded("notes")
    def note(self, code: str, message: str) -> None:
        """Report a fact about the environment, once per code."""
        if code in self._notes:
            return
        self._notes.add(code)
        self.writer.emit("note", code=code, message=message)

    @guarded("warnings")
    def warn(self, code: str, level: str, message: str, **fields: Any) -> None:
        """Write a warning event (the worker's forecaster calls this)."""
        self.writer.emit("warning", code=code, level=level, message=message, **fields)

    # -- stopping on SIGINT --------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True once SIGINT (Ctrl-C, ``k`` in the dashboard) asked this script to stop: a hand-written
        loop checks it at each step boundary and ends there (then ``finish("stopped", ...)``).

        The first read (in the main thread, outside ``torchrun``) installs the probe's SIGINT
        handler: the first SIGINT sets this flag, the next go to the handler the script had before
        (Python's default raises ``KeyboardInterrupt``); ``finish`` restores that handler.
        """
        if not self._sigint.tried and self.handle_signals and not self._finished:
            with contextlib.suppress(Exception):
                self._sigint.install()
        return self._sigint.requested

    @property
    def stop_requested(self) -> bool:
        """Whether a stop was asked for (by SIGINT or :meth:`request_stop`), without installing anything."""
        return self._sigint.requested

    def request_stop(self) -> None:
        """Ask the loop to stop at its next step boundary, as a SIGINT would."""
        self._sigint.requested = True

    def install_stop_handler(self) -> bool:
        """Install the SIGINT handler now (what the first read of :attr:`should_stop` does); True when
        it is ours. Nothing is installed for a probe made with ``handle_signals=False``."""
        if not self.handle_signals or self._finished:
            return False
        try:
            return self._sigint.install()
        except Exception:
            return False

    def release_stop_handler(self) -> None:
        """Give SIGINT back to the handler the process had before :meth:`install_stop_handler`
        (``ftwatch run --``: Ctrl-C after ``train()`` is the script's again). Never raises."""
        try:
            self._sigint.restore()
        except Exception:
            return

    # -- the end ---------------------------------------------------------------------------------------
    def finish(self, status: str, **fields: Any) -> None:
        """Stop sampling and write the exit event (once). Never raises: every part of the ending
        that fails is recorded and skipped, and the exit event is written whatever happened."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        steps: list[tuple[str, Callable[[], Any]]] = [("SIGINT handler", self._sigint.restore),
                                                      ("hooks", self.remove_hooks)]
        if self._sampler is not None:
            steps.append(("device sampler", self._sampler.stop))
        steps += [("ending", callback) for callback in self.before_finish]
        if self._registered:
            steps.append(("registry", lambda: registry.unregister(os.getpid())))
        for part, step in steps:
            try:
                step()
            except Exception as exc:
                if part != "registry":  # an unregistered run is only stale in `ftwatch ls`
                    self.guard.record(part, exc)
        with contextlib.suppress(Exception):
            fields.setdefault("lost_events", self.writer.lost_events)
        step = fields.pop("step", None)
        self.writer.emit("exit", status=status, step=step if step is not None else self.last_step, by="worker",
                         **fields)
        self.writer.close()

    def finish_with_exception(self, exc: BaseException, step: int | None = None,
                              oom_details: dict[str, Any] | None = None,
                              suggestions: list[dict[str, Any]] | None = None) -> str:
        """Record an exception as ``oom`` or ``failed``; returns the status written.

        ``oom_details`` (figures parsed from the message by the caller's analysis) are merged into
        the ``oom`` record, which always holds the phase, the message and the last breakdown.
        """
        status = "oom" if is_out_of_memory(exc) else "failed"
        message = f"{type(exc).__name__}: {exc}".strip()
        oom = None
        if status == "oom":
            try:
                last = self.categories(include_device=True)
            except Exception:
                last = None
            oom = {"phase": self.current_phase, "message": message, "requested_bytes": None,
                   **(oom_details or {}), "last_categories": last}
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        except Exception:
            tb = None
        self.finish(status, step=step, error_type=type(exc).__name__, message=message,
                    traceback=tb, oom=oom, suggestions=suggestions or [])
        return status

    def install_exit_hooks(self) -> None:
        """For user scripts: record an uncaught exception, or an exit before ``finish``."""
        previous = sys.excepthook

        def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
            try:
                if isinstance(exc, KeyboardInterrupt):
                    self.finish("stopped", message="interrupted")
                else:
                    self.finish_with_exception(exc)
            except Exception:
                pass
            previous(exc_type, exc, tb)

        sys.excepthook = hook
        atexit.register(lambda: self.finish("failed", message="the script exited before training finished"))


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")

