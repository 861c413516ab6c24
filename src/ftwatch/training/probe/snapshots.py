"""The probe's per-step measurement: the step's peaks, the gradients and optimizer state around
``optimizer.step()``, and the snapshot of every category (the tensor ones and the derived CUDA ones).

:class:`StepSnapshots` is a part of :class:`ftwatch.training.probe.probe.Probe`; its methods use the
state ``Probe.__init__`` sets.
"""

from __future__ import annotations

from typing import Any

import torch

from ftwatch.runlog.categories import derive_device_categories
from ftwatch.training.probe import accounting
from ftwatch.training.probe.guard import guarded


class StepSnapshots:
    """The per-step measurement and snapshots (a part of :class:`~ftwatch.training.probe.probe.Probe`)."""

    #: The step of the last step snapshot written (the exit event's step when its caller has none).
    last_step: int | None = None

    @guarded("step accounting")
    def step_begin(self) -> None:
        """Start an optimizer step: reset the per-step peaks."""
        if self.meter.active or self._in_forward:  # a forward that raised left its measurement open
            self._abort_forward()
        self._peak_abort()  # a step that raised left the peak meter open: no figure for it
        self._peak_armed = True  # the peak meter may start at this step's first measured forward
        self.meter.reset_step()
        self._modules_call("reset_step")
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
        self._peak_label((p.grad for p in self._trainable if p.grad is not None), "grads")
        self._modules_call("measure_grads", self._trainable)

    @guarded("optimizer accounting", disable=True)
    def after_optimizer_step(self) -> None:
        """Measure the optimizer state (call after ``optimizer.step()``)."""
        if self.optimizer is not None:
            self._optimizer_bytes = self._optimizer_meter.measure(self.optimizer)
            self._modules_call("measure_optimizer", self.optimizer)
            if self._peak_running():  # only then list the state's tensors again
                self._peak_label(accounting.optimizer_state_tensors(self.optimizer), "optimizer")

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
        carried.update(self._peak_stop())  # a measured CPU step: its true peak and the split at it
        self._peak_armed = False
        self.snapshot(step=step, loss=loss, lr=lr, tokens=self._tokens or None, seq_len=self._seq_len or None,
                      **carried)
        self.emit_modules(step)

    def emit_modules(self, step: int) -> None:
        """Write the step's ``modules`` event (a step with an attributed forward whose split sums to
        the snapshot's categories exactly; otherwise nothing). Never raises."""
        payload = self._modules_call("payload", self.categories())
        if payload is not None:
            self.writer.emit("modules", step=step, phase=self.current_phase, **payload)

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
        if step is not None:
            self.last_step = step
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
