"""The peak of a whole training step on the meta device: forward, loss and backward, checkpointing's
recomputation included, with every storage an op creates followed until it is freed.

The forward trace (:mod:`.activation_trace`) says what autograd holds when the forward ends; the
step's peak comes later, in the backward, and is made of more than that: the loss's float32
gradients of the logits (the loss upcasts the logits), a checkpointed layer recomputed and its
gradients, the gradients of the trainable parameters made so far, less the saved tensors the
backward has already freed. This module runs that backward on the meta model (shapes, no storage)
under a dispatch mode that keeps the running total of live bytes, as the probe's CPU peak meter
(:mod:`ftwatch.training.probe.peak_meter`) does for a real step: storages an op creates, once,
until their Python object dies (a view, in-place or ``out=`` op creates none). Parameters and
the batch exist before the step and are not counted.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.estimate.autocast_emulation import _autocast_mode
from ftwatch.analysis.estimate.fused_attention import _TRACE_STATE
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.meta_kernels import meta_kernels
from ftwatch.analysis.estimate.meta_masks import meta_mask_arguments
from ftwatch.analysis.estimate.meta_model import _CACHE_LOCK, _CACHE_SIZE, _model_key
from ftwatch.analysis.estimate.quiet import _quiet


@dataclass(frozen=True)
class StepPeak:
    """The peak of live bytes in one meta training step (parameters and the batch not counted).

    ``peak``: the most bytes live at once; ``grads``: the part of them that is gradients of the
    trainable parameters (made by then); ``forward_end``: bytes live when the forward ended.
    """

    peak: int
    grads: int
    forward_end: int


class _LiveBytes:
    """Live bytes of the storages ops create, their peak, and (after the step) the gradients live at it.

    Each storage is noted once with the allocation after which it was born; its weak reference's
    callback notes the free, so the set live at the peak is known from sequence numbers afterwards.
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._seq = 0
        self._peak_seq = 0
        self._records: dict[int, list[Any]] = {}  # id(storage) -> [weak reference, bytes, born, freed]

    def seen(self, out: Any, aliases: bool) -> None:
        """Note the new storages among an op's outputs."""
        import torch
        from torch.utils._pytree import tree_flatten

        if aliases:
            return
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._records and self._records[key][3] is None:
                continue
            nbytes = storage.nbytes()
            if not nbytes:
                continue
            self._seq += 1
            self._records[key] = [weakref.ref(storage, self._freed_callback(key)), nbytes, self._seq, None]
            self.current += nbytes
            if self.current > self.peak:
                self.peak, self._peak_seq = self.current, self._seq

    def _freed_callback(self, key: int) -> Any:
        def freed(ref: Any) -> None:
            record = self._records.get(key)
            if record is not None and record[0] is ref and record[3] is None:
                record[3] = self._seq
                self.current -= record[1]

        return freed

    def live_at_peak(self, storages: list[Any]) -> int:
        """Bytes of those of ``storages`` (storage objects) that were live at the peak."""
        total, counted = 0, set()
        for storage in storages:
            record = self._records.get(id(storage))
            if record is None or id(storage) in counted or record[0]() is not storage:
                continue
            counted.add(id(storage))
            born, freed = record[2], record[3]
            if born <= self._peak_seq and (freed is None or freed >= self._peak_seq):
                total += record[1]
        return total


def _dispatch_mode(meter: _LiveBytes) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    aliases: dict[Any, bool] = {}

    class LiveBytesMode(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            known = aliases.get(func)
            if known is None:
                known = aliases[func] = any(r.alias_info is not None for r in func._schema.returns)
            meter.seen(out, known)
            return out

    return LiveBytesMode()


@contextlib.contextmanager
def _checkpointing(model: Any, on: bool, every_n_layers: int, kwargs: dict[str, Any]) -> Iterator[None]:
    """Activation checkpointing on the (shared, cached) meta model for the block, as the Trainer
    enables it (inputs requiring grad included); off again afterwards."""
    if not on:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    # Enabling checkpointing may add its own input hook besides ours (transformers does for a peft
    # model), and disable_input_require_grads removes only the last: every hook the block adds to the
    # embeddings goes with it, or a later step without checkpointing would take the embeddings'
    # output for trainable (one more gradient buffer).
    embeddings = base.get_input_embeddings()
    hooks_before = set(embeddings._forward_hooks)
    with _quiet():
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
        else:  # an older transformers: every layer
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        base.enable_input_require_grads()
    try:
        yield
    finally:
        with _quiet():
            disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
            disable()
            base.disable_input_require_grads()
        for key in set(embeddings._forward_hooks) - hooks_before:
            del embeddings._forward_hooks[key]


def trace_step(model: Any, batch: int, seq: int, autocast: str | None = None, on_gpu: bool = True,
               checkpointing: bool = False, every_n_layers: int = 1,
               checkpoint_kwargs: dict[str, Any] | None = None) -> StepPeak:
    """Run a meta training step (forward with labels, backward) and return its peak of live bytes.

    ``model`` must live on the meta device and be in training mode; its parameters' gradients are
    set back to ``None`` afterwards. ``autocast`` and ``on_gpu`` as for
    :func:`~ftwatch.analysis.estimate.activation_trace.trace_activations`; ``checkpointing`` with
    ``every_n_layers`` and ``checkpoint_kwargs`` (``use_reentrant``) as the Trainer enables it.
    """
    import torch

    from ftwatch.analysis.estimate.activation_trace import _loss_kwargs

    meter = _LiveBytes()
    ids = torch.zeros((batch, seq), dtype=torch.long, device="meta")
    mode = _autocast_mode(autocast) if autocast else contextlib.nullcontext()
    kwargs = {"use_reentrant": False, **(checkpoint_kwargs or {})}
    _TRACE_STATE.autocast = getattr(torch, autocast) if autocast else None
    _TRACE_STATE.cpu = not on_gpu
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        with _quiet(), _checkpointing(model, checkpointing, every_n_layers, kwargs), meta_mask_arguments(), \
                mode, meta_kernels(), _dispatch_mode(meter):
            loss = model(input_ids=ids, labels=ids, use_cache=False, **_loss_kwargs(model)).loss
            forward_end = meter.current
            loss.backward()
            del loss
        grads = meter.live_at_peak([p.grad.untyped_storage() for p in trainable if p.grad is not None])
        return StepPeak(peak=meter.peak, grads=grads, forward_end=forward_end)
    finally:
        for p in trainable:
            p.grad = None
        _TRACE_STATE.autocast, _TRACE_STATE.cpu = None, False


_STEP_LOCK = threading.Lock()
_STEP_CACHE: dict[tuple[Any, ...], StepPeak] = {}


def cached_step_peak(inputs: EstimateInputs, model: Any) -> StepPeak:
    """:func:`trace_step` for these inputs, cached (the meta model is the estimate's shared one)."""
    options = inputs.checkpointing_options
    every = max(int(options.get("every_n_layers", 1)), 1)
    kwargs = {k: v for k, v in options.items() if k not in ("every_n_layers", "offload")}
    key = (_model_key(inputs), inputs.batch_size, inputs.max_length, inputs.autocast_dtype, inputs.on_gpu,
           inputs.gradient_checkpointing, every, tuple(sorted(kwargs.items())))
    with _CACHE_LOCK:
        if key in _STEP_CACHE:
            return _STEP_CACHE[key]
    from ftwatch.analysis.estimate.activation_trace import _TRACE_LOCK

    with _TRACE_LOCK, _STEP_LOCK:  # the step hooks and switches the (shared, cached) model
        step = trace_step(model, inputs.batch_size, inputs.max_length, inputs.autocast_dtype, inputs.on_gpu,
                          inputs.gradient_checkpointing, every, kwargs)
    with _CACHE_LOCK:
        if len(_STEP_CACHE) >= 4 * _CACHE_SIZE:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        _STEP_CACHE[key] = step
    return step
