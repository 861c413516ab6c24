"""Can the figures of an out-of-memory message be true of one GPU? :func:`check_plausible` says.

A figure larger than the whole card, or parts that together exceed it, mean the message was
edited or garbled: each problem is added to ``OomDiagnosis.problems`` and nothing is concluded.
"""

from __future__ import annotations

from ftwatch.analysis.oom import OomDiagnosis, _fmt

#: A figure may exceed the capacity by this share (and MiB) before it is implausible: sizes are
#: rounded to two decimals, and NVML and the allocator count at slightly different moments.
PLAUSIBLE_SLACK = 0.01
#: The messages round each figure (to 0.01 GiB at most): sums may be off by this much.
ROUNDING_SLACK = 32 << 20


def check_plausible(diag: OomDiagnosis) -> None:
    """Add to ``diag.problems`` each figure that cannot be true of one GPU: a zero capacity, or a
    part (free memory, this process, PyTorch's allocations, another process, the allowed cap)
    larger than the whole."""
    cap = diag.capacity_bytes
    if cap is None:
        return
    if cap == 0:
        diag.problems.append("the capacity is 0 bytes")
        return
    limit = cap * (1 + PLAUSIBLE_SLACK) + (1 << 20)
    parts = [("the free memory", diag.free_bytes), ("this process's memory", diag.process_bytes),
             ("the memory allocated by PyTorch", diag.allocated_bytes),
             ("the memory reserved by PyTorch", diag.reserved_bytes), ("the private pools", diag.private_pools_bytes),
             ("the allowed memory", diag.allowed_bytes)]
    parts += [(f"process {p.pid}'s memory", p.bytes) for p in diag.other_processes]
    if diag.other_processes:
        parts.append(("the other processes' memory together", diag.other_processes_bytes))
    for what, value in parts:
        if value is not None and value > limit:
            diag.problems.append(f"{what} ({_fmt(value)}) is more than the GPU's whole capacity ({_fmt(cap)})")
    if diag.problems:
        return
    # Free memory and this process's cannot overlap: together they fit in the card (the listed
    # processes are left out of the sum: the list may name this process too).
    free, mine = diag.free_bytes, diag.process_bytes
    if free is not None and mine is not None and free + mine > limit:
        diag.problems.append(f"the free memory ({_fmt(free)}) and this process's ({_fmt(mine)}) together are "
                             f"more than the GPU's whole capacity ({_fmt(cap)})")
    # What PyTorch reserved is part of what this process holds (the figures are rounded to 0.01 GiB).
    reserved = diag.reserved_bytes if diag.reserved_bytes is not None else diag.allocated_bytes
    if reserved is not None and mine is not None and reserved > mine * (1 + PLAUSIBLE_SLACK) + ROUNDING_SLACK:
        diag.problems.append(f"the memory PyTorch holds ({_fmt(reserved)}) is more than this process has in use "
                             f"({_fmt(mine)})")
