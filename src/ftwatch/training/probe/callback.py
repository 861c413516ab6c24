"""``FtwatchCallback``: one line added to a ``Trainer`` gives a script the ftwatch view.

    trainer = Trainer(..., callbacks=[FtwatchCallback()])

Run the script as usual; watch it with ``ftwatch attach`` or replay ``ftwatch-runs/<name>-<time>``.
``FtwatchCallback(metrics_port=9400)`` also serves Prometheus metrics from the training process.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from transformers import TrainerCallback

from ftwatch.common.config import MODULE_MODES
from ftwatch.training.probe.guard import Guard
from ftwatch.training.probe.probe import Probe


class FtwatchCallback(TrainerCallback):
    """Measures a ``Trainer`` run with a :class:`Probe` and writes its run log.

    Pass ``probe`` to share one the caller already started (the ``ftwatch run`` worker does, to
    cover loading); otherwise a probe is created when the Trainer is built, under ``log_dir``.
    ``stop_requested`` is polled at each step end: when it returns true the Trainer stops at that
    step boundary. With a probe of its own (a user's script), the callback also takes SIGINT (the
    dashboard's ``k``, Ctrl-C) as a stop request at the next step boundary, so ``trainer.train()``
    returns and the script goes on (the exit event says ``stopped``); a second SIGINT goes to the
    handler the script had before. The handler is installed when training begins (main thread
    only, not under ``torchrun``) and restored when it ends.

    Nothing of ftwatch raises into the Trainer: a failure of the probe is recorded once (a note and
    one line on stderr) and that measurement stops; a log that cannot be written (a full disk) is
    counted and retried, training goes on.

    A run the callback starts itself is made as complete as what the Trainer shows allows: the
    model event (name and parameter counts), the step total (``state.max_steps``, computed by the
    Trainer for epochs too) and, for any run without one (not the worker's), the pre-flight
    estimate (:mod:`~ftwatch.training.probe.script_estimate`), at train begin when the arguments
    fix the sequence length, else at the end of the first step (``estimate=False``: none).

    ``modules`` (``"summary"``, ``"full"`` or ``"off"``): the probe's module attribution on measured
    steps (the ``modules`` event; see ``docs/events.md``).

    ``notebook`` (default: when running inside a Jupyter kernel) shows a compact live summary
    under the cell (:mod:`ftwatch.views.notebook`) and prints the ``ftwatch attach PID`` line.

    ``metrics_port`` serves Prometheus metrics of the run from this process (on ``metrics_addr``,
    default ``127.0.0.1``) until it exits, read from the probe's own run log; under ``torchrun``
    each rank serves ``metrics_port + LOCAL_RANK`` (0: a free port). A port that cannot be opened
    is reported (a warning and a ``no_metrics`` note in the log), never fatal to training.
    """

    def __init__(self, probe: Probe | None = None, *, name: str | None = None,
                 log_dir: str | os.PathLike[str] | None = None, sample_hz: float = 10.0,
                 budget: int | None = None, track_activations: bool = True, modules: str = "summary",
                 stop_requested: Any = None, metrics_port: int | None = None,
                 metrics_addr: str = "127.0.0.1", notebook: bool | None = None, estimate: bool = True) -> None:
        if modules not in MODULE_MODES:  # said here, where the script builds it: not at train begin
            raise ValueError(f"FtwatchCallback(modules=...) must be one of {', '.join(MODULE_MODES)}, got {modules!r}")
        self.probe = probe
        self._own_probe = probe is None
        self._probe_kwargs = {"name": name, "log_dir": log_dir, "sample_hz": sample_hz, "budget": budget,
                              "track_activations": track_activations, "modules": modules}
        self.stop_requested = stop_requested
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        #: The Prometheus endpoint once serving (``ftwatch.views.exporters.prometheus.MetricsServer``).
        self.metrics_server: Any = None
        self._metrics_tried = False
        self._guard = Guard()  # failures before a probe exists: one line on stderr
        self._probe_failed = False
        #: ``None``: show the notebook summary when inside a Jupyter kernel.
        self.notebook = notebook
        #: The notebook summary once shown (``ftwatch.views.notebook.NotebookSummary``).
        self.notebook_view: Any = None
        self._notebook_tried = False
        #: Whether to make the pre-flight estimate of a run that has none (it runs in the training
        #: thread, once: a fraction of a second for small models, seconds for a 7B one).
        self.estimate = estimate
        self._estimate_pending = False

    def adopt(self, probe: Probe, stop_requested: Any = None) -> None:
        """Measure into ``probe``, started by someone else (``ftwatch run --`` gives a callback the
        script added itself its own process's probe, before the Trainer's ``on_init_end``): the
        phases, the stop handler and the end are then the owner's. ``stop_requested`` is used only
        when the callback has none."""
        self.probe = probe
        self._own_probe = False
        if self.stop_requested is None:
            self.stop_requested = stop_requested

    def _ensure_probe(self) -> Probe | None:
        """The probe (created the first time for a user's script); ``None`` if it could not be."""
        if self.probe is None:
            if self._probe_failed:
                return None
            try:
                self.probe = Probe.for_script(**self._probe_kwargs)
            except Exception as exc:  # the script trains unmonitored rather than not at all
                self._probe_failed = True
                self._guard.record("start", exc, effect="this run is not monitored; training goes on")
                return None
        self._ensure_metrics(self.probe)
        self._ensure_notebook(self.probe)
        return self.probe

    def _ensure_notebook(self, probe: Probe) -> None:
        """Show the live summary under the notebook cell, once (the view loads only here)."""
        if self._notebook_tried or self.notebook is False:
            return
        self._notebook_tried = True
        try:
            from ftwatch.views import notebook

            if self.notebook is None and not notebook.in_jupyter():
                return
            self.notebook_view = notebook.NotebookSummary(probe.run_dir, pid=os.getpid()).start()
        except Exception as exc:  # a view of ours must not stop training
            self._failed("notebook view", exc)

    def _ensure_metrics(self, probe: Probe) -> None:
        """Start the metrics endpoint on the probe's run log, once (the exporter loads only here)."""
        if self.metrics_port is None or self._metrics_tried:
            return
        self._metrics_tried = True
        from ftwatch.runlog.events import EVENTS_FILE
        from ftwatch.views.exporters.prometheus import MetricsServer, MetricsServerError

        try:
            port = int(self.metrics_port)
            if port:
                port += int(os.environ.get("LOCAL_RANK", 0) or 0)
            self.metrics_server = MetricsServer(probe.run_dir / EVENTS_FILE, self.metrics_addr, port).start()
        except (MetricsServerError, ValueError, OSError) as exc:
            probe.note("no_metrics", str(exc))
            warnings.warn(f"ftwatch: {exc}; training goes on without the metrics endpoint", stacklevel=2)
            return
        message = f"serving Prometheus metrics on {self.metrics_server.url}"
        probe.note("metrics", message)
        print(f"ftwatch: {message}", file=sys.stderr, flush=True)

    def _failed(self, part: str, exc: BaseException) -> None:
        """Record a failure of ours (once per part): in the probe's log when there is one."""
        guard = self.probe.guard if self.probe is not None else self._guard
        guard.record(part, exc)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A user's script: start measuring as soon as the Trainer exists."""
        try:
            if self._own_probe:
                probe = self._ensure_probe()
                if probe is not None:
                    probe.phase("preparing_trainer")
            elif self.probe is not None:
                self._ensure_metrics(self.probe)
        except Exception as exc:
            self._failed("callback (init)", exc)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        """Attach to the (now placed) model and the optimizer the Trainer built; in a user's script,
        take SIGINT as a stop request at the next step boundary."""
        try:
            probe = self._ensure_probe()
            if probe is None:
                return
            if self._own_probe:
                probe.install_stop_handler()
            world_size = int(getattr(args, "world_size", 1) or 1)
            if getattr(args, "average_tokens_across_devices", False) and world_size > 1:
                probe.loss_scale = float(world_size)  # the Trainer's own rescaling of each rank's loss
            if model is not None:
                probe.attach_model(model, emit_model_event=self._own_probe or probe.model is not model)
            if optimizer is not None:
                probe.attach_optimizer(optimizer, hooks=False)
            if probe.current_phase != "training":
                probe.phase("training", max_steps=state.max_steps or None)
        except Exception as exc:
            self._failed("callback (train begin)", exc)
        self._start_estimate(args, model)

    def _start_estimate(self, args: Any, model: Any) -> None:
        """A run with no estimate yet (not the worker's): estimate it now if the arguments fix the
        sequence length, else at the end of the first step."""
        probe = self.probe
        if (not self.estimate or probe is None or model is None or getattr(probe, "estimate_made", True)
                or getattr(probe, "origin", None) == "worker"):
            return
        try:
            from ftwatch.training.probe.script_estimate import estimate_from_trainer, seq_len_from_args

            seq_len, source = seq_len_from_args(args)
            if seq_len:
                estimate_from_trainer(probe, model, args, seq_len, source)
            else:
                self._estimate_pending = True
        except Exception as exc:
            self._failed("pre-flight estimate", exc)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Reset the per-step peaks."""
        if self.probe is not None:
            try:
                if state.global_step == 0:
                    self.probe.refresh_model()
                self.probe.step_begin()
            except Exception as exc:
                self._failed("callback (step begin)", exc)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Gradients exist now (after backward and clipping, before the step zeroes them)."""
        if self.probe is not None:
            self.probe.before_optimizer_step()  # guarded: never raises

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The optimizer state exists now."""
        if self.probe is not None:
            self.probe.after_optimizer_step()  # guarded: never raises

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the step's snapshot; honour a stop request (``stop_requested``, or SIGINT in a
        user's script) at this step boundary."""
        probe = self.probe
        if probe is not None and self._estimate_pending:
            self._estimate_pending = False
            try:
                from ftwatch.training.probe.script_estimate import estimate_from_trainer

                estimate_from_trainer(probe, probe.model or kwargs.get("model"), args,
                                      probe._seq_len or None, "the first step's longest batch")
            except Exception as exc:
                self._failed("pre-flight estimate", exc)
        if probe is not None:
            try:
                probe.step_end(state.global_step)
            except Exception as exc:
                self._failed("callback (step end)", exc)
            if self._own_probe and probe.stop_requested:
                control.should_training_stop = True
        if self.stop_requested is not None:
            try:
                stop = self.stop_requested()
            except Exception as exc:
                self._failed("stop request", exc)
                stop = False
            if stop:
                control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A user's script: the run finished, or stopped on request (the worker records its own ending)."""
        if self._own_probe and self.probe is not None:
            step = getattr(state, "global_step", None)
            if self.probe.stop_requested:
                self.probe.finish("stopped", step=step, message=f"stopped at a step boundary on SIGINT (step {step})")
            else:
                self.probe.finish("finished", step=step)
        if self.notebook_view is not None:
            try:
                self.notebook_view.stop()  # its last drawing shows the ending
            except Exception as exc:
                self._failed("notebook view", exc)
