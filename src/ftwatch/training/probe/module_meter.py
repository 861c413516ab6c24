"""Where inside the model: the probe's bytes of every tensor category by module path.

On a measured step the probe attributes each category to the module that owns the tensors:

- ``weights`` / ``lora``: each parameter (with its bitsandbytes quantization state) and buffer to
  the module holding it, with the rules of
  :func:`ftwatch.training.probe.accounting.model_bytes` (trainable -> ``lora``; frozen parameters and
  buffers, less the trainable storages -> ``weights``; each storage once, in the same order, so a
  tied weight counts once, in its first owner);
- ``grads``: each trainable parameter's ``.grad`` to the parameter's module, when ``grad_bytes`` is read;
- ``optimizer``: the tensors of ``optimizer.state[p]`` to ``p``'s module, each storage once;
- ``activations``: on a measured forward, global module forward hooks keep a stack of the running
  modules; the activation meter's pack hook notes the innermost one with each saved tensor, and the
  meter's own deduplication splits its figure by module (:attr:`ActivationMeter.counted`). A layer's
  hidden-state input saved outside every decoder layer (a checkpoint wrapper that runs before the
  layer's hooks) is the layer's own.

The hooks exist only for the duration of a measured forward: unmeasured forwards cost nothing. The
payload is :func:`ftwatch.runlog.module_tree.build_modules`'s, with each layer's ``input`` bytes and
the ``context`` of the forward whose split it is (the step's largest).
"""

from __future__ import annotations

import warnings
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.modules import module as torch_module

from ftwatch.runlog.module_tree import build_modules, normalize_path
from ftwatch.training.probe import accounting


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder blocks: transformers' ``GradientCheckpointingLayer`` instances, else the
    longest ``nn.ModuleList`` of modules of one class (none: ``[]``)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except Exception:  # an older transformers, or none
        GradientCheckpointingLayer = None  # noqa: N806
    if GradientCheckpointingLayer is not None:
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        if layers:
            return layers
    best: list[torch.nn.Module] = []
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > len(best) and len({type(c) for c in m}) == 1:
            best = list(m)
    return best


def _owner(name: str) -> str:
    """The module path of a parameter or buffer name (``a.b.weight`` -> ``a.b``)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def _add(into: dict[str, dict[str, int]], path: str, category: str, nbytes: int) -> None:
    row = into.setdefault(path, {})
    row[category] = row.get(category, 0) + nbytes


def _split(owners: list[str], tensors: list[torch.Tensor], category: str, exclude: set[int] | None = None,
           into: dict[str, dict[str, int]] | None = None) -> dict[str, dict[str, int]]:
    """``{path: {category: bytes}}`` of ``tensors`` (``owners[i]`` owns ``tensors[i]``), each storage
    once, by :func:`accounting.unique_storages` (the totals' own deduplication)."""
    out = {} if into is None else into
    for i, _, nbytes in accounting.unique_storages(tensors, exclude):
        _add(out, owners[i], category, nbytes)
    return out


def model_bytes_by_module(model: torch.nn.Module, base_only: bool = False) -> dict[str, dict[str, int]]:
    """``weights`` and ``lora`` by (normalized) module path: :func:`accounting.model_bytes` split by owner."""
    named = list(model.named_parameters())
    trainable = [] if base_only else [(n, p) for n, p in named if p.requires_grad]
    trainable_keys = accounting.storage_keys(p for _, p in trainable)
    frozen = [(n, t) for n, p in named if base_only or not p.requires_grad
              for t in (p, *accounting.quantization_state(p))] + list(model.named_buffers())
    out: dict[str, dict[str, int]] = {}
    _split([normalize_path(_owner(n)) for n, _ in frozen], [t for _, t in frozen], "weights",
           exclude=trainable_keys, into=out)
    _split([normalize_path(_owner(n)) for n, _ in trainable], [p for _, p in trainable], "lora", into=out)
    return out


def _sums(by_path: dict[str, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for values in by_path.values():
        total.update(values)
    return dict(total)


@dataclass
class ForwardSplit:
    """One attributed forward: its activations by module, its layers' input bytes, its input shape."""

    total: int
    by_path: dict[str, int]
    inputs: list[int]
    shape: tuple[int, ...] | None


@dataclass
class _ForwardState:
    stack: list[str]
    callers: list[int] = field(default_factory=list)
    #: layer index -> (weak reference, storage key, nbytes) of its hidden-state input
    inputs: dict[int, tuple[Any, int, int]] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    handles: list[Any] = field(default_factory=list)
    error: BaseException | None = None


class ModuleMeter:
    """Attribution of the tensor categories to one model's modules (see the module's docstring).

    The probe calls :meth:`refresh` with ``model_bytes``, :meth:`begin_forward` / :meth:`end_forward`
    around a measured forward, :meth:`measure_grads` / :meth:`measure_optimizer` with the step's
    measurements, and :meth:`payload` after the step's snapshot. Methods may raise: the probe guards them.
    """

    def __init__(self, model: torch.nn.Module, full: bool = False) -> None:
        self.full = full
        self.model = model
        self.paths: dict[int, str] = {id(m): normalize_path(n) for n, m in model.named_modules()}
        #: Module order (the payload's blocks and tree follow it, not the order categories were split in).
        self.order: dict[str, int] = {}
        for path in self.paths.values():
            self.order.setdefault(path, len(self.order))
        layers = decoder_layers(model)
        self.layer_paths: list[str] = [self.paths.get(id(m), "") for m in layers]
        self.layer_index: dict[int, int] = {id(m): i for i, m in enumerate(layers)}
        self.in_layer: set[str] = {self.paths[id(sub)] for layer in layers for sub in layer.modules()
                                   if id(sub) in self.paths}
        self.param_owner: dict[int, str] = {id(p): normalize_path(_owner(n)) for n, p in model.named_parameters()}
        self.weights: dict[str, dict[str, int]] = {}
        self.grads: dict[str, dict[str, int]] | None = None
        self.optimizer: dict[str, dict[str, int]] | None = None
        self.best: ForwardSplit | None = None
        self._forward: _ForwardState | None = None

    # -- weights, adapters, gradients, optimizer state ---------------------------------------------
    def refresh(self, base_only: bool = False) -> None:
        """Split ``weights`` and ``lora`` by module (with every ``model_bytes`` reading)."""
        self.weights = model_bytes_by_module(self.model, base_only=base_only)
        self.param_owner = {id(p): normalize_path(_owner(n)) for n, p in self.model.named_parameters()}

    def measure_grads(self, trainable: list[torch.nn.Parameter]) -> None:
        """Split the gradients by module (with ``grad_bytes``, on a step with an attributed forward)."""
        if self.best is None:
            return
        held = [p for p in trainable if p.grad is not None]
        self.grads = _split([self.param_owner.get(id(p), "") for p in held], [p.grad for p in held], "grads")

    def measure_optimizer(self, optimizer: Any) -> None:
        """Split the optimizer state by module (after ``optimizer.step()``, on an attributed step)."""
        if self.best is None:
            return
        owners: list[str] = []
        tensors: list[torch.Tensor] = []
        for param, state in accounting.unwrap_optimizer(optimizer).state.items():
            if isinstance(state, dict):
                owner = self.param_owner.get(id(param), "")
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        owners.append(owner)
                        tensors.append(value)
        self.optimizer = _split(owners, tensors, "optimizer")

    def reset_step(self) -> None:
        """A new optimizer step: forget the last step's split."""
        self.best = None
        self.grads = None
        self.optimizer = None

    # -- activations ------------------------------------------------------------------------------
    def begin_forward(self, meter: accounting.ActivationMeter, input_ids: Any) -> None:
        """Install the global module hooks for one measured forward (after ``meter.start(attribute=True)``)."""
        self.abort_forward()
        shape = tuple(int(n) for n in input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
        state = _ForwardState(stack=meter.stack, shape=shape)
        self._forward = state
        state.handles.append(torch_module.register_module_forward_pre_hook(self._pre))
        try:
            state.handles.append(torch_module.register_module_forward_hook(self._post, always_call=True))
        except TypeError:  # a torch without always_call
            state.handles.append(torch_module.register_module_forward_hook(self._post))

    @property
    def in_forward(self) -> bool:
        """True while the hooks are installed."""
        return self._forward is not None

    def _pre(self, module: Any, args: tuple[Any, ...]) -> None:
        state = self._forward
        if state is None:
            return
        try:
            key = id(module)
            stack = state.stack
            path = self.paths.get(key)
            stack.append(path if path is not None else (stack[-1] if stack else ""))
            state.callers.append(key)
            index = self.layer_index.get(key)
            if index is not None and args and isinstance(args[0], torch.Tensor):
                info = accounting._storage(args[0])
                if info is not None:
                    state.inputs[index] = (weakref.ref(args[0]), info[0], info[1])
        except Exception as exc:  # inside the training forward: never raise
            state.error = exc

    def _post(self, module: Any, args: Any, output: Any) -> None:
        state = self._forward
        if state is None:
            return
        try:
            if state.callers and state.callers[-1] == id(module):
                state.callers.pop()
                state.stack.pop()
        except Exception as exc:
            state.error = exc

    def abort_forward(self) -> None:
        """Remove the hooks without a split (the forward failed, or attribution stops). Never raises."""
        state, self._forward = self._forward, None
        if state is None:
            return
        for handle in state.handles:
            try:  # noqa: SIM105 - every handle, whatever one does
                handle.remove()
            except Exception:
                pass

    def end_forward(self, meter: accounting.ActivationMeter) -> None:
        """Remove the hooks and group the forward's counted storages by module (after ``meter.stop()``);
        the step keeps the split of its largest forward."""
        state = self._forward
        self.abort_forward()
        if state is None:
            return
        if state.error is not None:
            raise state.error
        counted = meter.counted
        if counted is None:
            raise RuntimeError("the activation meter made no split of an attributed forward")
        inputs_alive = {key: self.layer_paths[i] for i, (ref, key, _) in state.inputs.items() if ref() is not None}
        by_path: dict[str, int] = {}
        for owner, key, nbytes in counted:
            if owner not in self.in_layer and key in inputs_alive:
                owner = inputs_alive[key]  # a layer's input, saved around the layer (a checkpoint)
            by_path[owner] = by_path.get(owner, 0) + nbytes
        inputs = [state.inputs[i][2] if i in state.inputs else 0 for i in range(len(self.layer_paths))]
        if self.best is None or meter.current > self.best.total:
            self.best = ForwardSplit(total=meter.current, by_path=by_path, inputs=inputs, shape=state.shape)

    # -- the payload --------------------------------------------------------------------------------
    def payload(self, categories: dict[str, int]) -> dict[str, Any] | None:
        """The ``modules`` payload of this step, or ``None`` when the step cannot be attributed
        exactly (no attributed forward, or a category whose split does not sum to ``categories``,
        the step's snapshot: its peak forward was not the attributed one, say)."""
        best = self.best
        if best is None:
            return None
        by_path: dict[str, dict[str, int]] = {}
        for part in (self.weights, self.grads or {}, self.optimizer or {}):
            for path, values in part.items():
                for category, nbytes in values.items():
                    _add(by_path, path, category, nbytes)
        for path, nbytes in best.by_path.items():
            _add(by_path, path, "activations", nbytes)
        by_path = dict(sorted(by_path.items(), key=lambda item: self.order.get(item[0], len(self.order))))
        sums = _sums(by_path)
        for category in ("weights", "lora", "grads", "optimizer", "activations"):
            if int(sums.get(category, 0)) != int(categories.get(category) or 0):
                return None
        payload = build_modules(by_path, self.layer_paths, full=self.full)
        for row in payload["layers"]:
            row["input"] = best.inputs[row["index"]] if row["index"] < len(best.inputs) else 0
        payload["context"] = self.context(best)
        return payload

    def context(self, best: ForwardSplit) -> dict[str, Any]:
        """``batch``, ``seq_len`` (the forward's ``input_ids``), ``checkpointing``, ``vocab_size``, ``dtype``."""
        model = self.model
        batch = best.shape[0] if best.shape and len(best.shape) >= 2 else None
        seq_len = best.shape[1] if best.shape and len(best.shape) >= 2 else None
        with warnings.catch_warnings():  # transformers 5 renames it (and warns on the old name, even inside)
            warnings.simplefilter("ignore", FutureWarning)
            checkpointing = getattr(model, "is_activation_checkpointing", None)
            if not isinstance(checkpointing, bool):
                checkpointing = getattr(model, "is_gradient_checkpointing", None)
        return {"batch": batch, "seq_len": seq_len,
                "checkpointing": bool(checkpointing) if isinstance(checkpointing, bool) else False,
                "vocab_size": _vocab_size(model), "dtype": _weights_dtype(model.parameters())}


def _vocab_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for candidate in (config, _text_config(config)):
        value = getattr(candidate, "vocab_size", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    try:
        return get() if callable(get) else None
    except Exception:
        return None


def _weights_dtype(params: Iterable[torch.nn.Parameter]) -> str | None:
    """The dtype holding most frozen parameter elements (every parameter when none is frozen)."""
    frozen: Counter[str] = Counter()
    every: Counter[str] = Counter()
    for p in params:
        name = str(p.dtype).replace("torch.", "")
        every[name] += p.numel()
        if not p.requires_grad:
            frozen[name] += p.numel()
    chosen = frozen or every
    return chosen.most_common(1)[0][0] if chosen else None
