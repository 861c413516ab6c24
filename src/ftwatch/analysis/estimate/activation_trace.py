"""Activations from a meta forward pass: what autograd saves, by decoder layer and by module
(``saved_tensors_hooks``)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
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
class ActivationTrace:
    """Bytes autograd saves in one forward pass, split by where they are saved.

    ``layers[i]`` is what decoder layer *i* saves apart from its own input; ``layer_inputs[i]`` the
    bytes of that input (the residual stream entering the layer) and ``inputs_saved[i]`` the part of
    it the layer saved itself. ``outside`` is everything saved outside the decoder layers.

    By module (the trace only; empty for the formula): ``saved_by_path`` holds ``(module path,
    bytes)`` for every counted tensor, attributed to the innermost module running when autograd
    packed it (``""``: the model's top, outside every submodule); ``inputs_by_path`` the part of
    those bytes that is a layer's own input (``inputs_saved``); ``layer_paths`` the decoder layers'
    module paths (as the traced, peft-wrapped model names them). ``saved_by_path`` sums to
    :attr:`total`, ``inputs_by_path`` to ``sum(inputs_saved)``.
    """

    outside: int
    layers: tuple[int, ...]
    layer_inputs: tuple[int, ...]
    inputs_saved: tuple[int, ...]
    method: str = "trace"
    saved_by_path: tuple[tuple[str, int], ...] = ()
    inputs_by_path: tuple[tuple[str, int], ...] = ()
    layer_paths: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Saved bytes without checkpointing."""
        return self.outside + sum(self.layers) + sum(self.inputs_saved)


def decoder_layers(model: Any) -> list[Any]:
    """The repeated decoder blocks (what gradient checkpointing wraps)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def decoder_layer_paths(model: Any) -> tuple[str, ...]:
    """The module paths of :func:`decoder_layers`, as ``model.named_modules()`` names them."""
    names = {id(m): name for name, m in model.named_modules()}
    return tuple(names.get(id(m), "") for m in decoder_layers(model))


class _SavedTensorTally:
    """Counts what autograd saves, by decoder layer and module (forward hooks) and storage (pack hook).

    Only tensors still saved when the forward ends are counted (weak references): a branch whose
    output is dropped (a ``.detach()``-ed norm, say) frees its saved tensors at once, and a freed
    storage's identity may be reused by a later one, which must not be mistaken for it.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.layer_paths = decoder_layer_paths(model)
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.current: int | None = None
        self.inputs = [0] * len(self.layers)
        self.input_refs: list[Any] = [None] * len(self.layers)
        self.stack: list[str] = []  # the paths of the modules running now, innermost last
        self.saved: list[tuple[Any, int | None, str]] = []  # (weak reference, layer index, module path)

    def enter(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of a decoder layer: note the layer and its hidden-state input."""
        import torch

        self.current = self.index[id(module)]
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            self.inputs[self.current] = hidden.untyped_storage().nbytes()
            self.input_refs[self.current] = weakref.ref(hidden)

    def leave(self, module: Any, args: Any, output: Any) -> None:
        """Forward hook of a decoder layer."""
        self.current = None

    def pack(self, t: Any) -> Any:
        """The ``saved_tensors_hooks`` pack hook: remember the tensor and where it was saved."""
        self.saved.append((weakref.ref(t), self.current, self.stack[-1] if self.stack else ""))
        return t

    def _module_hooks(self, name: str) -> tuple[Any, Any]:
        def push(module: Any, args: Any) -> None:
            self.stack.append(name)

        def pop(module: Any, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()

        return push, pop

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Layer and module hooks installed for the duration of the block."""
        handles = [m.register_forward_pre_hook(self.enter, with_kwargs=True) for m in self.layers]
        handles += [m.register_forward_hook(self.leave) for m in self.layers]
        for name, module in self.model.named_modules():
            if not name:  # the top: outside every submodule is ""
                continue
            push, pop = self._module_hooks(name)
            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def result(self) -> ActivationTrace:
        """Sum the live saved storages once each, parameters excluded (call while the graph is alive)."""
        n = len(self.layers)
        own, inputs_saved, outside = [0] * n, [0] * n, 0
        input_keys = {_storage_key(ref()): i for i, ref in enumerate(self.input_refs) if ref and ref() is not None}
        seen = set(self.params)
        by_path: dict[str, int] = {}
        inputs_by_path: dict[str, int] = {}
        for ref, layer, path in self.saved:
            t = ref()
            if t is None or _storage_key(t) in seen:
                continue
            key = _storage_key(t)
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            if layer is not None and not _within(path, self.layer_paths[layer]):
                path = self.layer_paths[layer]  # a module outside the layer, called by it (a shared one)
            by_path[path] = by_path.get(path, 0) + nbytes
            if layer is None:
                outside += nbytes
            elif input_keys.get(key) == layer:
                inputs_saved[layer] += nbytes
                inputs_by_path[path] = inputs_by_path.get(path, 0) + nbytes
            else:
                own[layer] += nbytes
        return ActivationTrace(outside=outside, layers=tuple(own), layer_inputs=tuple(self.inputs),
                               inputs_saved=tuple(inputs_saved), saved_by_path=tuple(by_path.items()),
                               inputs_by_path=tuple(inputs_by_path.items()), layer_paths=self.layer_paths)


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + ".")


def _storage_key(t: Any) -> int:
    return t.untyped_storage()._cdata


def trace_activations(model: Any, batch: int, seq: int, autocast: str | None = None,
                      on_gpu: bool = True) -> ActivationTrace:
    """Run a meta forward (with labels) and sum what autograd saves, by decoder layer and module.

    ``model`` must live on the meta device and be in training mode. Storages are counted once,
    parameter storages not at all, like the probe's measurement. ``autocast`` emulates mixed
    precision; ``on_gpu=False`` follows PyTorch's CPU attention kernels instead of CUDA's.
    """
    import torch

    tally = _SavedTensorTally(model)
    ids = torch.zeros((batch, seq), dtype=torch.long, device="meta")
    mode = _autocast_mode(autocast) if autocast else contextlib.nullcontext()
    _TRACE_STATE.autocast = getattr(torch, autocast) if autocast else None
    _TRACE_STATE.cpu = not on_gpu
    try:
        with _quiet(), meta_mask_arguments(), tally.hooked(), mode, meta_kernels(), \
                torch.autograd.graph.saved_tensors_hooks(tally.pack, lambda t: t):
            _graph = model(input_ids=ids, labels=ids, use_cache=False, **_loss_kwargs(model))
        return tally.result()  # while the output (`_graph`) keeps the graph and its saved tensors alive
    finally:
        _TRACE_STATE.autocast, _TRACE_STATE.cpu = None, False


def _loss_kwargs(model: Any) -> dict[str, Any]:
    """``num_items_in_batch`` (a float32 scalar on the device), as the Trainer passes it to models that take it."""
    import inspect

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepts = getattr(base, "accepts_loss_kwargs", None)
    if accepts is None:
        params = inspect.signature(base.forward).parameters.values()
        accepts = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if not accepts:
        return {}
    return {"num_items_in_batch": torch.empty((), dtype=torch.float32, device="meta")}


_TRACE_LOCK = threading.Lock()
_TRACE_CACHE: dict[tuple[str, int, int, str | None, bool], ActivationTrace] = {}


def _cached_trace(inputs: EstimateInputs, model: Any,
                  shortcut: Callable[[], ActivationTrace | None] | None = None) -> ActivationTrace:
    """The trace of these inputs, cached by what it depends on (the model, the batch's shape, the
    autocast dtype, the device's kernels). A miss tries ``shortcut`` first when given (another way
    to the same trace, called without the trace lock; ``None`` when it cannot stand in), else runs
    :func:`trace_activations` on ``model``."""
    key = (_model_key(inputs), inputs.batch_size, inputs.max_length, inputs.autocast_dtype, inputs.on_gpu)
    with _CACHE_LOCK:
        if key in _TRACE_CACHE:
            return _TRACE_CACHE[key]
    trace = shortcut() if shortcut is not None else None
    if trace is None:
        with _TRACE_LOCK:  # the trace hooks the (shared, cached) model
            trace = trace_activations(model, inputs.batch_size, inputs.max_length, inputs.autocast_dtype,
                                      inputs.on_gpu)
    with _CACHE_LOCK:
        if len(_TRACE_CACHE) >= 4 * _CACHE_SIZE:
            _TRACE_CACHE.pop(next(iter(_TRACE_CACHE)))
        _TRACE_CACHE[key] = trace
    return trace
