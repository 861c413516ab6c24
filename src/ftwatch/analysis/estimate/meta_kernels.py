"""Shapes-only stand-ins for ops whose meta kernel refuses what the device kernels run.

``torch._grouped_mm`` (the grouped matrix product transformers' mixture-of-experts layers call,
``integrations.moe``) has a meta kernel that checks what the CUDA kernel takes: bfloat16 inputs
only. The CPU kernel takes float32 too, so a float32 MoE model trains on a CPU, but its meta trace
stopped there and the estimate fell back to the formula. Under :func:`meta_kernels` the op is
answered for meta tensors with an empty output of the shape and dtype the kernels give it.
Autograd sits above the dispatch mode, so what it saves for the op's backward is unchanged, and
the backward's own grouped products are answered the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ftwatch.analysis.estimate.fused_attention import _TRACE_STATE

#: CUDA's grouped product pads its output's rows to 16 bytes (the CPU kernel writes them dense).
CUDA_ROW_ALIGNMENT = 16


def grouped_mm_shape(mat_a: Any, mat_b: Any, offs: Any) -> list[int]:
    """The output shape of ``torch._grouped_mm(mat_a, mat_b, offs)``.

    2D x 3D: the rows of ``mat_a`` cut into groups by ``offs``, group *g* times ``mat_b[g]``:
    ``(rows, n)``. 3D x 2D: the columns of ``mat_b`` cut into groups: ``(m, n)``. 2D x 2D: one
    product per group of the shared dimension: ``(groups, m, n)``. 3D x 3D: a batched product.
    """
    if mat_a.dim() == 2:
        if mat_b.dim() == 2:
            return [offs.size(0), mat_a.size(0), mat_b.size(1)]
        return [mat_a.size(0), mat_b.size(-1)]
    if mat_b.dim() == 2:
        return [mat_a.size(1), mat_b.size(1)]
    return [mat_a.size(0), mat_a.size(1), mat_b.size(-1)]


def _grouped_mm_output(mat_a: Any, mat_b: Any, offs: Any = None, bias: Any = None, out_dtype: Any = None) -> Any:
    import torch

    shape = grouped_mm_shape(mat_a, mat_b, offs)
    dtype = out_dtype or mat_a.dtype
    if getattr(_TRACE_STATE, "cpu", False):
        return torch.empty(shape, dtype=dtype, device="meta")
    align = max(CUDA_ROW_ALIGNMENT // torch.empty((), dtype=dtype, device="meta").element_size(), 1)
    row = -(-shape[-1] // align) * align
    strides = [shape[1] * row, row, 1] if len(shape) == 3 else [row, 1]
    return torch.empty_strided(shape, strides, dtype=dtype, device="meta")


@contextlib.contextmanager
def meta_kernels() -> Iterator[None]:
    """For the block: ``torch._grouped_mm`` on meta tensors answered with its output's shape and
    dtype (the rest of the ops run as they are)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    grouped_mm = getattr(torch.ops.aten, "_grouped_mm", None)
    target = getattr(grouped_mm, "default", None)
    if target is None:  # a torch without the op: nothing to stand in for
        yield
        return

    class MetaKernels(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func is target and args and getattr(args[0], "is_meta", False):
                return _grouped_mm_output(*args, **kwargs)
            return func(*args, **kwargs)

    with MetaKernels():
        yield
