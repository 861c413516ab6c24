"""The probe's attachment to the model and the optimizer: parameter accounting, the forward hooks
that count activations (once per input shape, then every ``activations_every``-th forward), the
optimizer's step hooks, and the module attribution of measured forwards
(:mod:`~ftwatch.training.probe.module_meter`).

:class:`ModelAttachment` is a part of :class:`ftwatch.training.probe.probe.Probe`; its methods use
the state ``Probe.__init__`` sets.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ftwatch.training.probe import accounting
from ftwatch.training.probe.guard import guarded
from ftwatch.training.probe.module_meter import ModuleMeter
from ftwatch.training.probe.peak_meter import PeakMeter

#: The guard's part for the CPU peak meter (switched off after a failure; training goes on).
PEAK_PART = "tensor peak"
#: The guard's part for the module attribution (switched off after a failure; the rest goes on).
MODULES_PART = "module attribution"


class ModelAttachment:
    """The model and optimizer hooks (a part of :class:`~ftwatch.training.probe.probe.Probe`)."""

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
        self._carried_bounds.clear()
        # The true peak on CPU (CUDA has max_memory_allocated): measured on the measured steps.
        self._peak_meter = PeakMeter() if self.device.type == "cpu" and self.track_activations else None
        self.meter.on_saved = self._peak_saved if self._peak_meter is not None else None
        self._modules_create(model)
        self.refresh_model()
        if self.track_activations:
            self._hooks.append(model.register_forward_pre_hook(self._forward_pre, with_kwargs=True))
            self._hooks.append(model.register_forward_hook(self._forward_post))
            if self._module_meter is not None:  # after _forward_post: ends a forward that raised
                self._hooks.append(model.register_forward_hook(self._modules_forward_done, always_call=True))
        if emit_model_event:
            total, trainable = accounting.parameter_counts(model)
            dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
            targets = getattr(getattr(model, "peft_config", {}).get("default", None), "target_modules", None)
            self.writer.emit("model", params_total=total, params_trainable=trainable, dtype=dtypes,
                             lora_targets=sorted(targets) if targets else None, name=model_name(model))

    @guarded("model accounting")
    def refresh_model(self) -> None:
        """Re-measure parameters (after the model moved to another device, for example)."""
        if self.model is None:
            return
        self._model_bytes = accounting.model_bytes(self.model, base_only=self._base_only)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.meter.exclude(accounting.with_quantization_state(self.model.parameters()))
        self._modules_refresh()

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
        self._peak_abort()
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
        self._modules_abort()

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
        cached = self._carried_figure(key)
        if cached is None or self._forwards_since_measured + 1 >= self.activations_every:
            self._peak_start()
            attribute = self._module_meter is not None
            self.meter.start(attribute=attribute)
            if attribute:
                self._modules_begin(ids)
        else:  # the same input shape as a measured forward: that measurement stands for this one
            self._forwards_since_measured += 1
            self.meter.step_peak = max(self.meter.step_peak, cached)
            self._activations_carried = True

    def _carried_figure(self, key: Any) -> int | None:
        """What a forward of input shape ``key`` carries instead of a measurement: the figure of the
        same shape, else the smallest figure of a measured shape at least as large in every
        dimension (batch, length): an upper bound, since a forward saves no less for more tokens.
        ``None``: nothing stands for it (a new largest shape, or no shape known), so it is measured.

        Batches padded to their longest sample change shape at almost every step; without the
        bound every one of them was measured, meters and all (on the CPU the peak meter doubles a
        small model's step)."""
        figures = self._activations_by_shape
        if key in figures or key is None:
            return figures.get(key)
        bounds = self._carried_bounds  # the search runs over every measured shape: once per shape (kept
        # up to date by _record_figure)
        if key not in bounds:
            larger = [figure for shape, figure in figures.items() if shape is not None and len(shape) == len(key)
                      and all(a >= b for a, b in zip(shape, key, strict=True))]
            bounds[key] = min(larger) if larger else None
        return bounds[key]

    def _record_figure(self, key: Any, figure: int) -> None:
        """A forward of input shape ``key`` was measured: keep its figure, and bring the bounds found
        for smaller shapes up to date (a figure that is new or lower can only lower them; a shape
        measured again at a higher figure may raise them, and they are found again)."""
        figures, bounds = self._activations_by_shape, self._carried_bounds
        before = figures.get(key)
        figures[key] = figure
        if key is None or (before is not None and figure > before):
            bounds.clear()
            return
        for shape, bound in bounds.items():
            if len(shape) == len(key) and all(a >= b for a, b in zip(key, shape, strict=True)):
                bounds[shape] = figure if bound is None else min(bound, figure)

    # -- the CPU peak meter (peak_meter.PeakMeter): a measured step, from its first measured forward
    def _peak_start(self) -> None:
        """Start the peak meter for this step (once: later micro-batches stay inside it). Only
        between ``step_begin`` and ``step_end``: a forward outside a step is never metered."""
        peak = getattr(self, "_peak_meter", None)
        if peak is None or peak.active or PEAK_PART in self.guard.off or not getattr(self, "_peak_armed", False):
            return
        self._peak_armed = False
        try:
            grads = [p.grad for p in self._trainable if p.grad is not None]
            state = accounting.optimizer_state_tensors(self.optimizer) if self.optimizer is not None else []
            peak.start(fixed=dict(self._model_bytes), grads=grads, optimizer=state)
        except Exception as exc:
            self._peak_abort()
            self.guard.record(PEAK_PART, exc, disable=True)

    def _peak_running(self) -> bool:
        peak = getattr(self, "_peak_meter", None)
        return peak is not None and peak.active

    def _peak_label(self, tensors: Any, category: str) -> None:
        peak = getattr(self, "_peak_meter", None)
        if peak is None or not peak.active:
            return
        try:
            peak.label(tensors, category)
        except Exception as exc:
            self._peak_abort()
            self.guard.record(PEAK_PART, exc, disable=True)

    def _peak_saved(self, alive: list[torch.Tensor]) -> None:
        self._peak_label(alive, "activations")

    def _peak_abort(self) -> None:
        peak = getattr(self, "_peak_meter", None)
        if peak is not None:
            with contextlib.suppress(Exception):
                peak.abort()

    def _peak_stop(self) -> dict[str, Any]:
        """End the step's peak meter: the snapshot's ``tensor_peak`` and ``tensor_peak_split``."""
        peak = getattr(self, "_peak_meter", None)
        if peak is None or not peak.active:
            return {}
        try:
            result = peak.stop()
        except Exception as exc:
            self._peak_abort()
            self.guard.record(PEAK_PART, exc, disable=True)
            return {}
        if result is None:  # the step made more storages than the meter follows: no figure
            return {}
        total, split = result
        return {"tensor_peak": int(total), "tensor_peak_split": {k: int(v) for k, v in split.items()}}

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
            self._record_figure(self._forward_key, self.meter.stop())
            self._forwards_since_measured = 0
            self._modules_end()
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach())


    # -- module attribution (module_meter.ModuleMeter): each step's failure-proof glue ------------------
    def _modules_create(self, model: torch.nn.Module) -> None:
        self._modules_abort()
        self._module_meter = None
        if self.modules_mode == "off" or not self.track_activations or MODULES_PART in self.guard.off:
            return
        try:
            self._module_meter = ModuleMeter(model, full=self.modules_mode == "full")
        except Exception as exc:
            self._modules_fail(exc)

    def _modules_fail(self, exc: BaseException) -> None:
        """Attribution failed: switch it off (hooks removed); every other measurement goes on."""
        self._modules_abort()
        self._module_meter = None
        self.guard.record(MODULES_PART, exc, disable=True)

    def _modules_abort(self) -> None:
        meter = getattr(self, "_module_meter", None)
        if meter is not None:
            meter.abort_forward()  # never raises

    def _modules_call(self, method: str, *args: Any) -> Any:
        """``ModuleMeter.<method>(*args)`` when attribution is on; a failure switches it off."""
        meter = getattr(self, "_module_meter", None)
        if meter is None:
            return None
        try:
            return getattr(meter, method)(*args)
        except Exception as exc:
            self._modules_fail(exc)
            return None

    def _modules_refresh(self) -> None:
        self._modules_call("refresh", self._base_only)

    def _modules_begin(self, ids: Any) -> None:
        self._modules_call("begin_forward", self.meter, ids)

    def _modules_end(self) -> None:
        self._modules_call("end_forward", self.meter)

    def _modules_forward_done(self, module: Any, args: Any, output: Any) -> None:
        """The model's forward ended (``always_call``: also when it raised): no hook outlives it."""
        self._modules_abort()


def model_name(model: Any) -> str | None:
    """The name or path the model was loaded from (under a peft wrapper too), if it says."""
    for candidate in (model, getattr(model, "get_base_model", lambda: None)()):
        config = getattr(candidate, "config", None)
        name = getattr(config, "_name_or_path", None) or getattr(candidate, "name_or_path", None)
        if isinstance(name, str) and name:
            return name
    return None
