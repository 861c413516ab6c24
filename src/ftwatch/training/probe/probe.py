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
import functools
import getpass
import os
import platform
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ftwatch.runlog import registry
from ftwatch.runlog.categories import derive_device_categories
from ftwatch.runlog.events import EVENTS_FILE, EventWriter, make_event
from ftwatch.runlog.paths import distributed_rank, new_run_dir, rank_dir, shared_run_dir
from ftwatch.training.probe import accounting
from ftwatch.training.probe.devices import (
    CudaAllocatorReader,
    DeviceSampler,
    NvmlReader,
    ReaderUnavailable,
    SystemReader,
)
from ftwatch.training.probe.guard import Guard, say
from ftwatch.training.probe.stop import SigintStop
from ftwatch.version import __version__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/accelerator OOMs (every form torch has raised) and CPU ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


F = TypeVar("F", bound=Callable[..., Any])


def guarded(part: str, *, disable: bool = False, default: Any = None) -> Callable[[F], F]:
    """Run a probe method so that no exception of it reaches the caller (the training loop): a
    failure is recorded once for ``part``; ``disable`` switches ``part`` off for the rest of the
    run (later calls return ``default`` at once)."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Probe, *args: Any, **kwargs: Any) -> Any:
            if disable and part in self.guard.off:
                return default
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                self.guard.record(part, exc, disable=disable)
                return default

        return run  # type: ignore[return-value]

    return wrap


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape memory use."""
    versions: dict[str, str | None] = {"ftwatch": __version__, "python": platform.python_version(),
                                       "torch": torch.__version__}
    for name in ("transformers", "peft"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return versions


class UnrecordedWriter:
    """Stands for the event writer of a run whose log cannot be created: events go to the listeners
    only (the reason was said once on stderr)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.lost_events = 0

    def emit(self, kind: str, **fields: Any) -> None:
        """Hand the event to the listeners; nothing is written."""
        record = make_event(kind, fields)
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                listener(record)

    def close(self) -> None:
        """Nothing to close."""


class Probe:
    """Measures one training process and writes its run log.

    No method of it raises into the training loop (see :mod:`ftwatch.training.probe.guard`); a hand-written
    loop checks :attr:`should_stop` at each step boundary to stop on SIGINT (see the module's
    docstring).
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, name: str, model_name: str | None = None,
                 config_path: str | None = None, sample_hz: float = 10.0, budget: int | None = None,
                 device: str | None = None, max_steps: int | None = None, track_activations: bool = True,
                 activations_every: int = 10,
                 reset_peak_each_step: bool = True, handle_signals: bool = True, record: bool = True) -> None:
        self.guard = Guard(self._failure_note)
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
        #: Activations are measured on every forward of a new input shape, and on every
        #: ``activations_every``-th forward of a shape already measured (1: every forward).
        self.activations_every = max(1, int(activations_every))
        self._activations_by_shape: dict[Any, int] = {}
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
    def for_script(cls, name: str | None = None, log_dir: str | os.PathLike[str] | None = None,
                   **kwargs: Any) -> Probe:
        """A started probe for a user's own script, writing under ``log_dir`` (``FTWATCH_LOG_DIR``,
        default ``./ftwatch-runs``); it records a failure if the script dies before ``finish``.

        Under ``torchrun`` every rank writes ``<run dir>/rank<N>/events.jsonl`` in one run
        directory, named after the launcher process (``FTWATCH_RUN_DIR`` names it instead: give
        every node the same one on shared storage)."""
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
        probe = cls(run_dir, name=name, **kwargs)
        probe.start()
        probe.install_exit_hooks()
        return probe

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Write the header and start the device sampler (call before the model loads). Never raises:
        what cannot be read is left out and reported."""
        try:
            system: SystemReader | None = SystemReader()
        except Exception as exc:
            system = None
            self.guard.record("system reader", exc, disable=True)
        cuda_reader = None
        pending_notes: list[tuple[str, str]] = []
        try:
            device_info, cuda_reader = self._device_info(system, pending_notes)
        except Exception as exc:
            self.guard.record("device description", exc)
            device_info = {"type": self.device.type, "index": self._cuda_index, "name": None,
                           "capacity": self.budget, "capacity_source": "budget" if self.budget else None}
        self.device_info = device_info
        self.writer.emit(
            "header", run_id=uuid.uuid4().hex[:12], name=self.name, config_path=self.config_path,
            pid=os.getpid(), host=socket.gethostname(), user=_user(), versions=library_versions(),
            model=self.model_name, device=device_info, budget=self.budget, sample_hz=self.sample_hz,
            max_steps=self.max_steps, **_distributed_fields(),
        )
        for code, message in pending_notes:
            self.note(code, message)
        if self.device.type != "cuda":
            reason = "no CUDA device visible to torch" if not torch.cuda.is_available() else "training on the CPU"
            self.note("no_gpu", f"{reason}: tensor accounting only, drawn against "
                                f"{'the budget' if self.budget else 'the RAM'}")
        if system is not None:
            try:
                self._sampler = DeviceSampler(self.writer.emit, self.note, self.sample_hz,
                                              lambda: self.current_phase, system, cuda=cuda_reader,
                                              nvml=self._nvml, on_failure=self._sampler_failed)
                self._sampler.sample_once()
                self._sampler.start()
            except Exception as exc:
                self._sampler = None
                self.guard.record("device sampler", exc, disable=True)
        if isinstance(self.writer, UnrecordedWriter):
            return  # nothing to attach to
        try:
            registry.register(os.getpid(), self.run_dir, self.name)
            self._registered = True
        except Exception as exc:  # an unwritable state dir must not stop training
            self.note("no_registry", f"cannot register this run for `ftwatch attach`: {exc}")

    def _device_info(self, system: SystemReader | None,
                     pending_notes: list[tuple[str, str]]) -> tuple[dict[str, Any], CudaAllocatorReader | None]:
        """The header's ``device`` (and the allocator reader on CUDA); applies the budget on CUDA."""
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._cuda_index = index
            props = torch.cuda.get_device_properties(index)
            device_info = {"type": "cuda", "index": index, "name": props.name,
                           "capacity": int(props.total_memory), "capacity_source": "torch"}
            cuda_reader = CudaAllocatorReader(index)
            try:
                uuid_text = str(getattr(props, "uuid", "") or "")
                self._nvml = NvmlReader(index, uuid=("GPU-" + uuid_text) if uuid_text else None)
                device_info.update(name=self._nvml.device_name(), capacity=self._nvml.total(),
                                   capacity_source="nvml")
            except ReaderUnavailable as exc:
                self._nvml = None
                pending_notes.append(("no_nvml", f"{exc}: no per-process or other-process figures"))
            if self.budget:
                # a smaller card on a bigger one: the allocator refuses past the budget, for real
                fraction = min(1.0, self.budget / int(props.total_memory))
                torch.cuda.set_per_process_memory_fraction(fraction, index)
                device_info.update(capacity=min(self.budget, device_info["capacity"]), capacity_source="budget")
            return device_info, cuda_reader
        ram = system.read()["sys_total"] if system is not None else None
        return {"type": "cpu", "index": None, "name": platform.processor() or platform.machine(),
                "capacity": self.budget or ram, "capacity_source": "budget" if self.budget else "ram"}, None

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
        self.writer.emit("exit", status=status, step=fields.pop("step", None), by="worker", **fields)
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

    # -- model and optimizer -----------------------------------------------------------------------
    @guarded("model accounting")
    def attach_model(self, model: torch.nn.Module, emit_model_event: bool = True, base_only: bool = False) -> None:
        """Measure a model's weights/adapters and count activations in each of its forwards.

        ``base_only``: the model was just loaded and has no adapters yet, so every parameter is
        counted as a frozen base weight (a fresh ``from_pretrained`` model requires grad everywhere).
        """
        self.remove_hooks()
        self.model = model
        self._base_only = base_only
        self._activations_by_shape.clear()
        self.refresh_model()
        if self.track_activations:
            self._hooks.append(model.register_forward_pre_hook(self._forward_pre, with_kwargs=True))
            self._hooks.append(model.register_forward_hook(self._forward_post))
        if emit_model_event:
            total, trainable = accounting.parameter_counts(model)
            dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
            targets = getattr(getattr(model, "peft_config", {}).get("default", None), "target_modules", None)
            self.writer.emit("model", params_total=total, params_trainable=trainable, dtype=dtypes,
                             lora_targets=sorted(targets) if targets else None)

    @guarded("model accounting")
    def refresh_model(self) -> None:
        """Re-measure parameters (after the model moved to another device, for example)."""
        if self.model is None:
            return
        self._model_bytes = accounting.model_bytes(self.model, base_only=self._base_only)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.meter.exclude(self.model.parameters())

    @guarded("optimizer accounting")
    def attach_optimizer(self, optimizer: Any, hooks: bool = True) -> None:
        """Measure gradients before and state after each ``optimizer.step()`` (hand-written loops).

        The Trainer callback passes ``hooks=False`` and calls the two measurements itself.
        """
        self.optimizer = accounting.unwrap_optimizer(optimizer)
        if hooks:
            self._hooks.append(self.optimizer.register_step_pre_hook(lambda *_: self.before_optimizer_step()))
            self._hooks.append(self.optimizer.register_step_post_hook(lambda *_: self.after_optimizer_step()))

    def remove_hooks(self) -> None:
        """Detach every hook this probe installed (never raises; an active measurement is ended)."""
        self._abort_forward()
        hooks, self._hooks = self._hooks, []
        for handle in hooks:
            with contextlib.suppress(Exception):
                handle.remove()

    def _abort_forward(self) -> None:
        """End a forward's measurement without a figure: the saved-tensors hooks are popped, nothing
        stays referenced (after a failure inside the forward hooks, or at the end)."""
        self._in_forward = False
        with contextlib.suppress(Exception):
            self.meter.abort()

    def _forward_pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "activations" in self.guard.off:
            return
        try:
            self._measure_forward_pre(args, kwargs)
        except Exception as exc:
            self._abort_forward()
            self.guard.record("activations", exc, disable=True)

    def _measure_forward_pre(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not torch.is_grad_enabled():
            return
        self._in_forward = True
        ids = kwargs.get("input_ids", args[0] if args else None)
        key = None
        if isinstance(ids, torch.Tensor) and ids.dim() >= 2:
            self._tokens += ids.shape[0] * ids.shape[1]
            self._seq_len = max(self._seq_len, int(ids.shape[1]))
            key = tuple(ids.shape)
        self._forward_key = key
        cached = self._activations_by_shape.get(key)
        if cached is None or self._forwards_since_measured + 1 >= self.activations_every:
            self.meter.start()
        else:  # the same input shape as a measured forward: that measurement stands for this one
            self._forwards_since_measured += 1
            self.meter.step_peak = max(self.meter.step_peak, cached)
            self._activations_carried = True

    def _forward_post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        if not self._in_forward:
            return
        try:
            self._measure_forward_post(output)
        except Exception as exc:
            self._abort_forward()
            self.guard.record("activations", exc, disable=True)

    def _measure_forward_post(self, output: Any) -> None:
        self._in_forward = False
        if self.meter.active:
            self._activations_by_shape[self._forward_key] = self.meter.stop()
            self._forwards_since_measured = 0
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach())

    # -- per step ------------------------------------------------------------------------------------
    @guarded("step accounting")
    def step_begin(self) -> None:
        """Start an optimizer step: reset the per-step peaks."""
        if self.meter.active or self._in_forward:  # a forward that raised left its measurement open
            self._abort_forward()
        self.meter.reset_step()
        self._activations_carried = False
        self._losses.clear()
        self._tokens = 0
        self._seq_len = 0
        if self._cuda_index is not None and self.reset_peak_each_step:
            torch.cuda.reset_peak_memory_stats(self._cuda_index)

    @guarded("gradient accounting", disable=True)
    def before_optimizer_step(self) -> None:
        """Measure the gradients (call after backward, before the optimizer zeroes them)."""
        self._grads = accounting.grad_bytes(self._trainable)

    @guarded("optimizer accounting", disable=True)
    def after_optimizer_step(self) -> None:
        """Measure the optimizer state (call after ``optimizer.step()``)."""
        if self.optimizer is not None:
            self._optimizer_bytes = self._optimizer_meter.measure(self.optimizer)

    @guarded("snapshots")
    def step_end(self, step: int, loss: float | None = None, lr: float | None = None) -> None:
        """Write the step's snapshot."""
        if loss is None and self._losses:
            losses = self._losses
            loss = float(losses[0].item()) if len(losses) == 1 else float(torch.stack(losses).float().mean().item())
            loss *= self.loss_scale
        if lr is None and self.optimizer is not None and self.optimizer.param_groups:
            lr = float(self.optimizer.param_groups[0].get("lr", 0.0))
        carried = {"activations_measured": False} if self._activations_carried and self.meter.step_peak else {}
        self.snapshot(step=step, loss=loss, lr=lr, tokens=self._tokens or None, seq_len=self._seq_len or None,
                      **carried)

    def categories(self, include_device: bool = False) -> dict[str, int]:
        """The current breakdown: tensor categories, plus the derived CUDA ones if asked."""
        cats = {
            "weights": self._model_bytes["weights"],
            "lora": self._model_bytes["lora"],
            "grads": self._grads,
            "optimizer": self._optimizer_bytes,
            "activations": self.meter.step_peak,
        }
        if include_device and self._cuda_index is not None:
            cats.update(self._device_categories(cats)[0])
        return cats

    def _device_categories(self, tensor_cats: dict[str, int]) -> tuple[dict[str, int], dict[str, Any]]:
        index = self._cuda_index
        allocated_peak = torch.cuda.max_memory_allocated(index)
        reserved = torch.cuda.memory_reserved(index)
        nvml = None
        if self._nvml is not None:
            try:
                nvml = self._nvml.read()
            except Exception:
                nvml = None
        total = nvml["total"] if nvml else None
        used = nvml["used"] if nvml else None
        process_used = nvml.get("process") if nvml else None
        if self.budget:  # drawn against the budget: other processes are outside it
            total = self.budget
            used = process_used if process_used is not None else reserved
        derived = derive_device_categories(tensor_cats, allocated=allocated_peak, reserved=reserved,
                                           total=total, used=used, process_used=process_used)
        return derived, {"allocated_peak": allocated_peak, "reserved": reserved}

    @guarded("snapshots")
    def snapshot(self, step: int | None = None, **fields: Any) -> None:
        """Write a snapshot of every category now (phase ends pass ``step=None``)."""
        if step is None and self.model is not None:
            self.refresh_model()
        cats = self.categories()
        extra: dict[str, Any] = {}
        if self._cuda_index is not None and "device categories" not in self.guard.off:
            try:
                derived, extra = self._device_categories(cats)
                cats.update(derived)
            except Exception as exc:
                extra = {}
                self.guard.record("device categories", exc, disable=True)
        self.writer.emit("snapshot", phase=self.current_phase, step=step, categories=cats, **extra,
                         **{k: v for k, v in fields.items() if v is not None})


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def _distributed_fields() -> dict[str, Any]:
    """The header's place in a ``torchrun`` job: rank, local rank, world size, node."""
    rank, local_rank, world_size = distributed_rank()
    fields: dict[str, Any] = {"rank": rank, "world_size": world_size}
    if world_size > 1:
        fields.update(local_rank=local_rank, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1),
                      node_rank=int(os.environ.get("GROUP_RANK", 0) or 0))
    return fields


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())
