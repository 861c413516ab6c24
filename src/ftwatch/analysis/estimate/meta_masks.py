"""transformers' mask creation on the meta device: the one value it reads, answered without data.

Building the attention mask for eager attention, for the SDPA stand-in past a sliding window (and
for models that call SDPA themselves: falcon, stablelm) first asks whether ``position_ids`` describe packed sequences
(``masking_utils.find_packed_sequence_indices``), which reads a tensor's value: a meta tensor has
none (``Tensor.item() cannot be called on meta tensors``), and the trace fell back to the formula.
The trace's inputs are never packed (``position_ids`` are the model's own ``arange``), so for a meta
tensor the answer is "not packed" (``None``), which is what transformers answers for real unpacked
positions. Real tensors (a training forward in another thread) still get the original function.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()


@contextlib.contextmanager
def meta_mask_arguments() -> Iterator[None]:
    """For the duration of a meta trace: ``find_packed_sequence_indices`` answers meta tensors
    with ``None`` (not packed); anything else goes to transformers' own function."""
    try:
        from transformers import masking_utils
    except Exception:  # a transformers without it: nothing to answer
        yield
        return
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:
        yield
        return

    def find_packed_sequence_indices(position_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(position_ids, "is_meta", False):
            return None
        return original(position_ids, *args, **kwargs)

    with _LOCK:
        masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    try:
        yield
    finally:
        with _LOCK:
            if masking_utils.find_packed_sequence_indices is find_packed_sequence_indices:
                masking_utils.find_packed_sequence_indices = original
