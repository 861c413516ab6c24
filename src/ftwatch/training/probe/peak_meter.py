"""The true peak on CPU: a live tensor-memory meter for one optimizer step.

CUDA has ``max_memory_allocated``; the CPU allocator keeps no such figure, so on the measured steps
(the ``activations_every`` cadence) the probe runs this meter: a ``TorchDispatchMode`` that sees
every op the step runs (forward, backward, the checkpointed recomputation, the optimizer) and
notes each storage an op creates, once, by its bytes; a weak reference on the storage tells when it
is freed (torch keeps a storage's Python object alive exactly as long as the storage). The running
total of those bytes, plus what was already live and known when the meter began (weights, adapters,
gradients, optimizer state), gives the step's peak of live tensor bytes.

The split at the peak is decided after the step, from sequence numbers: every storage the meter
knows has the allocation after which it was born and the one after which it was freed, so the set
live at the peak is known without copying anything while the step runs. Storages are labelled with
the probe's own categories by identity (the tensors saved for backward when the forward ends, the
gradients before the optimizer step, the optimizer state after it); what is live at the peak and
in no category is ``other`` (the recomputed checkpoint layer, logits, loss buffers, workspaces).

``torch.distributed._tools.mem_tracker.MemTracker`` is the anchor; it is not reused because it
tracks per module (module hooks and a snapshot of every active module's stats after each op) and
labels storages by where they were created (everything made in the forward is "activation"), which
is not the probe's definition (what autograd holds when the forward ends). This meter does the
least per op: a flatten of the outputs and a dictionary look-up per output storage.

Pre-existing storages the probe does not know (the batch's tensors that are not saved for
backward, a tensor the script keeps from an earlier step) are not seen. ``resize_`` on a storage
outside an op is not seen either (ops that resize their ``out=`` are).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: The categories of the split, in drawing order; ``other`` is what is in none of them.
SPLIT_CATEGORIES = ("weights", "lora", "grads", "optimizer", "activations", "other")
#: A step that creates more storages than this gets no figure (the meter stops following it):
#: a bound on the meter's own memory (about 100 bytes a storage) should a step never end.
MAX_RECORDS = 2_000_000


class _Record(weakref.ref):  # type: ignore[type-arg]
    """One storage the meter knows: a weak reference to it (its callback notes the free), its bytes,
    the allocation after which it was born and the one after which it was freed."""

    __slots__ = ("born", "category", "freed", "key", "nbytes")

    def __new__(cls, storage: Any, callback: Any, key: int, nbytes: int, born: int) -> _Record:  # noqa: D102
        return super().__new__(cls, storage, callback)

    def __init__(self, storage: Any, callback: Any, key: int, nbytes: int, born: int) -> None:
        super().__init__(storage, callback)
        self.key = key
        self.nbytes = nbytes
        self.born = born
        self.freed: int | None = None
        self.category = "other"


class _Mode(TorchDispatchMode):
    """The dispatch mode: hands each op's outputs to the meter."""

    def __init__(self, meter: PeakMeter) -> None:
        super().__init__()
        self.meter = meter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        try:  # noqa: SIM105 - on every op: cheaper than suppress(); never raise into the op
            self.meter._seen_outputs(out, _aliases(func))
        except Exception:
            pass
        return out


_ALIASES: dict[Any, bool] = {}


def _aliases(func: Any) -> bool:
    """Whether an op's outputs may be its inputs' storages (views, in-place and ``out=`` ops): an
    output storage the meter has not seen is then an input's (live before), not a new one."""
    known = _ALIASES.get(func)
    if known is None:
        try:
            known = any(r.alias_info is not None for r in func._schema.returns)
        except Exception:
            known = False
        _ALIASES[func] = known
    return known


class PeakMeter:
    """The peak of live tensor bytes over one step, and its split by category at the peak."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.max_records = max_records
        self.overflowed = False
        self._live: dict[int, _Record] = {}
        self._records: list[_Record] = []
        self._mode: _Mode | None = None
        self._fixed: dict[str, int] = {}
        self.current = 0
        self.peak = 0
        self._seq = 0
        self._peak_seq = 0

    @property
    def active(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._mode is not None

    def start(self, fixed: dict[str, int] | None = None, **known: Iterable[torch.Tensor]) -> None:
        """Begin a step. ``fixed``: bytes live for the whole step and never freed in it (weights,
        adapters); ``known``: category -> tensors already live (gradients, optimizer state), each
        storage counted once and followed until freed. Under another dispatch mode (a user's own,
        entered before this step's forward) the meter does not start: its mode would sit above
        that one and could not leave the stack in order."""
        self.abort()
        if torch._C._len_torch_dispatch_stack() > 0:
            return
        self._live = {}
        self._records = []
        self._fixed = dict(fixed or {})
        self._seq = self._peak_seq = 0
        self.overflowed = False
        self.current = self.peak = sum(self._fixed.values())
        for category, tensors in known.items():
            self.label(tensors, category)
        mode = _Mode(self)
        mode.__enter__()
        self._mode = mode  # only once entered: stop/abort pop exactly what was pushed

    def _exit(self) -> None:
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)

    def abort(self) -> None:
        """End without a figure (a step that failed); nothing stays referenced."""
        try:
            self._exit()
        finally:
            self._drop()

    def _drop(self) -> None:
        for record in self._records:  # a free after the step must not reach this meter
            record.freed = -1
        self._live = {}
        self._records = []

    def stop(self) -> tuple[int, dict[str, int]] | None:
        """End the step: ``(peak bytes, {category: bytes live at the peak})``; the split sums to the
        peak. ``None`` when the meter was not running, or the step made more than ``max_records``
        storages."""
        if self._mode is None:
            self._drop()
            return None
        self._exit()
        if self.overflowed:
            self._drop()
            return None
        split = dict.fromkeys(SPLIT_CATEGORIES, 0)
        split.update(self._fixed)
        at = self._peak_seq
        for record in self._records:
            if record.born <= at and (record.freed is None or record.freed >= at):
                split[record.category] = split.get(record.category, 0) + record.nbytes
        peak = self.peak
        self._drop()
        return peak, split

    # -- storages ---------------------------------------------------------------------------------
    # Storages are keyed by the identity of their Python object: torch keeps it exactly as long as
    # the storage lives (so its weak reference's callback is the free), and ``untyped_storage()``
    # hands the same object for every tensor on that storage.
    def _add(self, storage: torch.UntypedStorage, nbytes: int) -> _Record | None:
        if self.overflowed:
            return None
        if len(self._records) >= self.max_records:
            self.overflowed = True
            self._drop()
            return None
        self._seq += 1
        record = _Record(storage, self._freed, id(storage), nbytes, self._seq)
        self._live[record.key] = record
        self._records.append(record)
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
            self._peak_seq = self._seq
        return record

    def _freed(self, record: _Record) -> None:
        if record.freed is not None:  # freed already (resized), or after the step
            return
        record.freed = self._seq
        self.current -= record.nbytes
        if self._live.get(record.key) is record:
            del self._live[record.key]

    def _seen_outputs(self, out: Any, aliases: bool) -> None:
        """Note the storages of an op's outputs the meter has not seen (new ones). The outputs of a
        view, in-place or ``out=`` op are its inputs' storages: only a resize is noted there."""
        if self.overflowed:
            return
        if isinstance(out, torch.Tensor):
            leaves: Any = (out,)
        elif type(out) is tuple or type(out) is list:
            leaves = out
        else:
            leaves = tree_flatten(out)[0]
        live = self._live
        for t in leaves:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            record = live.get(id(storage))
            if aliases:
                if record is not None and record.nbytes != storage.nbytes():  # an out= resized its output
                    self._freed(record)
                    resized = self._add(storage, storage.nbytes())
                    if resized is not None:
                        resized.category = record.category
                continue
            if record is None and not t.is_meta:
                nbytes = storage.nbytes()
                if nbytes:
                    self._add(storage, nbytes)

    def label(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Put the storages of ``tensors`` in ``category``. A storage the meter has not seen (made
        outside any op, as ``torch.tensor(0.0)``, or before the meter began: an input saved for
        backward, state from an earlier step) is counted from now on: a peak before this moment
        does not include it."""
        seen: set[int] = set()
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key = id(storage)
            nbytes = storage.nbytes()
            if key in seen or nbytes == 0:
                continue
            seen.add(key)
            record = self._live.get(key)
            if record is None:  # counted from now: when it was made is not known
                record = self._add(storage, nbytes)
            if record is not None:
                record.category = category
