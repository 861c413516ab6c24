"""Exact tensor accounting: bytes of weights, adapters, gradients, optimizer state and activations.

Every figure is the real storage of live tensors (``untyped_storage().nbytes()``), each storage
counted once, so tied embeddings count once and quantized weights count by what they occupy
(with the quantization state bitsandbytes keeps beside them).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """``(key, nbytes)`` of a tensor's storage; ``None`` for meta/storage-less tensors."""
    if t.is_meta:
        return None
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return None
    return storage.data_ptr(), storage.nbytes()


def unique_storages(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> Iterator[tuple[int, int, int]]:
    """``(position in tensors, storage key, nbytes)`` of each storage behind ``tensors`` counted once:
    the first tensor of a storage counts it, storages whose key is in ``exclude`` never count. The one
    deduplication every figure here uses (totals and their split by module alike)."""
    seen: set[int] = set()
    for position, t in enumerate(tensors):
        info = _storage(t)
        if info is None:
            continue
        key, nbytes = info
        if key in seen or (exclude is not None and key in exclude):
            continue
        seen.add(key)
        yield position, key, nbytes


def unique_storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> int:
    """Sum the storages behind ``tensors``, each once, skipping storages whose key is in ``exclude``."""
    return sum(nbytes for _, _, nbytes in unique_storages(tensors, exclude))


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The storage keys of ``tensors`` (to exclude parameters from activations)."""
    keys = set()
    for t in tensors:
        info = _storage(t)
        if info is not None:
            keys.add(info[0])
    return keys


#: What bitsandbytes keeps beside a 4-bit weight in its ``quant_state`` (a nested state, with
#: double quantization, holds its own absmax and code).
_QUANT_STATE_TENSORS = ("absmax", "code", "offset")


def quantization_state(param: torch.Tensor) -> list[torch.Tensor]:
    """The tensors a bitsandbytes weight needs beside its own storage, which are no parameter or
    buffer of the model: a 4-bit ``Params4bit``'s ``quant_state`` (float32 absmax per block of 64,
    the 16-entry code book; with double quantization the offset and the nested state's absmax and
    code), an 8-bit ``Int8Params``' ``SCB`` (a float32 scale per output row). Empty for a plain
    tensor."""
    out: list[torch.Tensor] = []
    state = getattr(param, "quant_state", None)
    for _ in range(2):  # the state and its nested state2 (double quantization): no deeper nesting exists
        if state is None:
            break
        for name in _QUANT_STATE_TENSORS:
            tensor = getattr(state, name, None)
            if isinstance(tensor, torch.Tensor):
                out.append(tensor)
        state = getattr(state, "state2", None)
    scales = getattr(param, "SCB", None)
    if isinstance(scales, torch.Tensor):
        out.append(scales)
    return out


def with_quantization_state(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """``params``, each followed by its :func:`quantization_state` tensors (the order every split of
    the weights uses, so a shared storage always counts for the same owner)."""
    return [t for p in params for t in (p, *quantization_state(p))]


def model_bytes(model: torch.nn.Module, base_only: bool = False) -> dict[str, int]:
    """``weights`` (frozen parameters with their :func:`quantization_state`, and buffers) and ``lora``
    (trainable parameters) of a model.

    A storage shared by a trainable and a frozen tensor is counted as trainable, once. With
    ``base_only`` (a freshly loaded model, before adapters exist) every parameter is a weight.
    """
    params = list(model.parameters())
    trainable = [] if base_only else [p for p in params if p.requires_grad]
    trainable_keys = storage_keys(trainable)
    frozen = with_quantization_state(p for p in params if base_only or not p.requires_grad) + list(model.buffers())
    return {
        "weights": unique_storage_bytes(frozen, exclude=trainable_keys),
        "lora": unique_storage_bytes(trainable),
    }


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts, each parameter object once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        # bitsandbytes 4-bit packs two values per byte: count the logical parameters
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            n = int(torch.Size(quant_state.shape).numel())
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def grad_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes of the gradients currently held by ``params``."""
    return unique_storage_bytes(p.grad for p in params if p.grad is not None)


def optimizer_state_tensors(optimizer: Any) -> list[torch.Tensor]:
    """Every tensor in an optimizer's state (moments, step counters, ...)."""
    tensors: list[torch.Tensor] = []
    for state in unwrap_optimizer(optimizer).state.values():
        if isinstance(state, dict):
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in an optimizer's state, each storage once."""
    return unique_storage_bytes(optimizer_state_tensors(optimizer))


class OptimizerStateMeter:
    """Optimizer state bytes, re-measured only when the state's tensors change.

    Torch optimizers update their state tensors in place: the same tensor objects, the same sizes,
    step after step. The meter remembers which tensor objects it measured (by identity) and sums
    their storages again only when that set changes (a state created late, a resized or replaced
    tensor), or every ``remeasure_every`` calls regardless.
    """

    def __init__(self, remeasure_every: int = 100) -> None:
        self.remeasure_every = remeasure_every
        self._signature: tuple[tuple[int, int], ...] | None = None
        self._bytes = 0
        self._calls = 0

    def measure(self, optimizer: Any) -> int:
        """The state's bytes now."""
        tensors = optimizer_state_tensors(optimizer)
        signature = tuple((id(t), t.numel()) for t in tensors)
        self._calls += 1
        if signature != self._signature or self._calls % self.remeasure_every == 0:
            self._signature = signature
            self._bytes = unique_storage_bytes(tensors)
        return self._bytes


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside wrappers such as accelerate's ``AcceleratedOptimizer``."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class ActivationMeter:
    """Counts the bytes autograd holds for backward at the end of a forward pass.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward passes
    through the pack hook, which keeps only a weak reference to it and returns it unchanged, so
    nothing is copied and nothing is kept alive. When the forward ends, the storages of the saved
    tensors that are still alive are summed, each once, parameters excluded: a tensor saved by a
    branch whose graph was already discarded does not count, and an address reused by the
    allocator cannot hide a storage.
    """

    def __init__(self) -> None:
        self.excluded: set[int] = set()
        self.current = 0
        self.step_peak = 0
        self._saved: list[weakref.ref[torch.Tensor]] = []
        #: An attributed forward's saved tensors with the module running when each was saved.
        self._owned: list[tuple[weakref.ref[torch.Tensor], str]] | None = None
        #: The running modules' paths (innermost last) during an attributed forward: the module
        #: meter's hooks push and pop them; the pack hook reads the last one.
        self.stack: list[str] = []
        #: After an attributed forward: ``(module path, storage key, nbytes)`` of every storage
        #: :attr:`current` counts, from the same pass (so they sum to it exactly); else ``None``.
        self.counted: list[tuple[str, int, int]] | None = None
        self._context: Any = None
        #: Called with the saved tensors still alive (parameters excluded) when a forward ends (the
        #: CPU peak meter labels them ``activations``); a failure there never spoils the figure.
        self.on_saved: Any = None

    def exclude(self, tensors: Iterable[torch.Tensor]) -> None:
        """Storages to ignore (the model's parameters)."""
        self.excluded = storage_keys(tensors)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:  # noqa: SIM105 - inside autograd, per saved tensor: cheaper than suppress(); never raise
            self._saved.append(weakref.ref(t))
        except Exception:
            pass
        return t

    def _pack_owned(self, t: torch.Tensor) -> torch.Tensor:
        try:  # noqa: SIM105 - as _pack, with the running module (the stack's last path; "" is the top)
            stack = self.stack
            self._owned.append((weakref.ref(t), stack[-1] if stack else ""))  # type: ignore[union-attr]
        except Exception:
            pass
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def active(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._context is not None

    def start(self, attribute: bool = False) -> None:
        """Begin counting one forward pass; ``attribute``: also note which module saved each tensor
        (the module meter keeps :attr:`stack` while the forward runs)."""
        if self._context is not None:
            self.stop()
        self.current = 0
        self._saved = []
        self.stack = []
        self._owned = [] if attribute else None
        context = torch.autograd.graph.saved_tensors_hooks(self._pack_owned if attribute else self._pack,
                                                           self._unpack)
        context.__enter__()
        self._context = context  # only once entered: stop/abort pop exactly what was pushed

    def stop(self) -> int:
        """End the forward pass; returns the bytes still saved for backward and updates the step's peak."""
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
        saved, self._saved = self._saved, []
        owned, self._owned = self._owned, None
        self.stack = []
        self.counted = None
        if owned is None:
            alive = [t for t in (ref() for ref in saved) if t is not None]
            self.current = unique_storage_bytes(alive, exclude=self.excluded)
        else:
            alive, self.current = self._count_owned(owned)
        self.step_peak = max(self.step_peak, self.current)
        if self.on_saved is not None:
            try:  # noqa: SIM105 - never let the peak meter spoil the activations figure
                self.on_saved([t for t in alive if (_storage(t) or (None,))[0] not in self.excluded])
            except Exception:
                pass
        return self.current

    def _count_owned(self, owned: list[tuple[weakref.ref[torch.Tensor], str]]) -> tuple[list[torch.Tensor], int]:
        """The alive saved tensors and their bytes, with :attr:`counted` from the same deduplication
        (so the split sums to the figure exactly)."""
        alive: list[torch.Tensor] = []
        owners: list[str] = []
        for ref, owner in owned:
            t = ref()
            if t is not None:
                alive.append(t)
                owners.append(owner)
        counted = [(owners[i], key, nbytes) for i, key, nbytes in unique_storages(alive, self.excluded)]
        self.counted = counted
        return alive, sum(nbytes for _, _, nbytes in counted)

    def abort(self) -> None:
        """End the forward pass without measuring it (after a failure): the hooks are popped and
        nothing saved stays referenced; the step's peak keeps what was measured before."""
        self._saved = []
        self._owned = None
        self.stack = []
        self.counted = None
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def reset_step(self) -> None:
        """Start a new optimizer step (the peak is over its micro-batches)."""
        self.step_peak = 0
