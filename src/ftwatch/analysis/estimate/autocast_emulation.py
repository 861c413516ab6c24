"""Mixed precision (``bf16``/``fp16``) for meta tensors, which CUDA autocast ignores: cast op by op."""

from __future__ import annotations

from typing import Any


def _autocast_mode(dtype_name: str) -> Any:
    """A TorchFunctionMode that casts like CUDA autocast, for meta tensors (which autocast ignores).

    Matrix products run in ``dtype_name`` (their inputs cast: frozen weights too, as autocast
    caches casts only of leaves that require grad); softmax-like ops and losses run in float32.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    low = getattr(torch, dtype_name)
    lower = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
             torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm,
             F.conv1d, F.conv2d, F.scaled_dot_product_attention}
    fp32 = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
            torch.Tensor.log_softmax, F.cross_entropy, F.nll_loss, F.layer_norm, F.group_norm}

    def cast(value: Any, target: Any, source: tuple[Any, ...]) -> Any:
        if isinstance(value, torch.Tensor) and value.dtype in source:
            return value.to(target)
        return value

    class AutocastEmulation(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func in lower:
                src = (torch.float32, torch.float16, torch.bfloat16)
                args = tuple(cast(a, low, tuple(d for d in src if d != low)) for a in args)
                kwargs = {k: cast(v, low, tuple(d for d in src if d != low)) for k, v in kwargs.items()}
            elif func in fp32:
                args = tuple(cast(a, torch.float32, (torch.float16, torch.bfloat16)) for a in args)
            return func(*args, **kwargs)

    return AutocastEmulation()
