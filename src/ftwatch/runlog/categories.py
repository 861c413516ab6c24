"""Derive the device categories of the stacked bar from tensor accounting plus device readings.

The tensor categories (weights, lora, grads, optimizer, activations) are measured from tensors. On
CUDA the rest of the card is split so the whole bar adds up to the device capacity:

- ``other``: allocated by PyTorch but in no tensor category (inputs, logits, temporaries)
- ``cache``: reserved by the caching allocator but not allocated
- ``non_torch``: this process's NVML usage beyond what PyTorch reserved (CUDA context, cuBLAS)
- ``other_processes``: what other processes (and the driver) hold on the device
- ``free``: what is left
"""

from __future__ import annotations

from collections.abc import Mapping

from ftwatch.runlog.events import TENSOR_CATEGORIES


def derive_device_categories(
    tensor_bytes: Mapping[str, int],
    *,
    allocated: int,
    reserved: int,
    total: int | None = None,
    used: int | None = None,
    process_used: int | None = None,
) -> dict[str, int]:
    """Split a CUDA device into the non-tensor categories.

    ``allocated`` should be the allocator's peak over the same window the tensor figures cover
    (a step), ``reserved`` the allocator's reservation, ``total``/``used`` the NVML device totals
    and ``process_used`` this process's NVML usage. Figures that are not known (no NVML) leave
    their categories out. The parts never go negative and, with NVML, sum to ``total``.
    """
    tensor_total = sum(int(tensor_bytes.get(c) or 0) for c in TENSOR_CATEGORIES)
    allocated_eff = max(int(allocated), tensor_total)
    reserved_eff = max(int(reserved), allocated_eff)
    out = {"other": allocated_eff - tensor_total, "cache": reserved_eff - allocated_eff}
    process_eff = reserved_eff
    if process_used is not None:
        out["non_torch"] = max(int(process_used) - reserved_eff, 0)
        process_eff = reserved_eff + out["non_torch"]
    if used is not None:
        used_eff = max(int(used), process_eff)
        if process_used is not None:
            out["other_processes"] = used_eff - process_eff
        if total is not None:
            out["free"] = max(int(total) - used_eff, 0)
    return out


#: The categories of a breakdown that this process does not hold.
NOT_HELD = ("other_processes", "free")


def process_total(categories: Mapping[str, int]) -> int:
    """Bytes this process holds according to a breakdown: everything but other processes and free."""
    return sum(int(v or 0) for k, v in categories.items() if k not in NOT_HELD)
