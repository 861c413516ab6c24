"""A stand-in for fused attention kernels (SDPA, flash) that the meta trace runs: it saves what they save."""

from __future__ import annotations

import functools
import threading
from typing import Any

#: The attention implementation the meta trace registers for SDPA (a stand-in for its fused kernels).
FUSED_ATTENTION = "ftwatch_fused_sdpa"
#: The same stand-in for flash kernels (and any other fused one): no dense mask is ever built for them.
FUSED_FLASH = "ftwatch_fused_flash"


#: What the running trace emulates (``autocast`` dtype, ``cpu`` target), read by the fused attention.
_TRACE_STATE = threading.local()


def _attention_for_trace(attn_implementation: str | None, model_class: Any = None) -> str:
    """The attention the trace tries first for the one the run asks for (``None``: transformers' default).

    Eager attention is traced as it is, and so is the default of a class without SDPA support
    (bloom, gemma2: transformers picks eager for them). SDPA runs as the stand-in below with SDPA's
    masks, any other fused kernel (flash) as the stand-in without masks; a model that cannot take it
    (one that keeps its own table of attention classes) is built with :func:`fallback_attention` instead.
    """
    if attn_implementation == "eager":
        return "eager"
    if attn_implementation in (None, "sdpa"):
        if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
            return "eager"
        return FUSED_ATTENTION
    return FUSED_FLASH


def fallback_attention(model_class: Any) -> str:
    """The attention for a model that refused the stand-in: torch's own SDPA (on meta tensors it
    saves what the CPU kernel does for a causal call without a mask) where the class has it, else eager."""
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def causal_lm_class(config: Any) -> Any:
    """The ``AutoModelForCausalLM`` class of a config, or ``None`` (remote code, an unmapped type)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except Exception:
        return None


def _register_fused_attention() -> None:
    """Register the fused-kernel stand-ins with transformers' attention interface (once).

    The SDPA stand-in gets SDPA's mask function: the model builds the boolean mask exactly when a
    run with SDPA does (a sliding window shorter than the sequence, say; a plain causal batch
    without padding builds none and SDPA runs ``is_causal``). The flash stand-in gets none: flash
    kernels take a window as an argument and never a dense mask.
    """
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    for name in (FUSED_ATTENTION, FUSED_FLASH):
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _fused_attention)
    if FUSED_ATTENTION not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(FUSED_ATTENTION, sdpa_mask)


def _fused_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Attention that saves what SDPA's flash / memory-efficient kernels save: q, k, v, out, logsumexp,
    and the mask when there is one.

    Key/value heads are repeated for grouped-query attention exactly when transformers' SDPA path
    repeats them (with a mask, it does); under (emulated) autocast the inputs are cast like autocast
    casts SDPA's. For a CPU target with attention dropout, SDPA's math path runs instead (PyTorch's
    CPU flash kernel has no dropout), as it does on a real CPU.
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, use_gqa_in_sdpa

    gqa = False
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and not use_gqa_in_sdpa(attention_mask, key, value):
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    else:
        gqa = groups > 1
    low = getattr(_TRACE_STATE, "autocast", None)
    if low is not None:
        query, key, value = (t.to(low) if t.dtype != low else t for t in (query, key, value))
    cpu = getattr(_TRACE_STATE, "cpu", False)
    if cpu and dropout > 0:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            is_causal=attention_mask is None and query.shape[2] > 1, enable_gqa=gqa)
    else:
        out = _fused_function().apply(query, key, value, attention_mask, cpu)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _fused_function() -> Any:
    """The shapes-only fused attention Function (built on first use, so importing needs no torch)."""
    import torch

    class FusedAttention(torch.autograd.Function):
        """Saves q, k, v, the output, the float32 logsumexp (and the mask, if any), computes nothing;
        its backward makes the gradients of q, k and v (the meta step trace runs it).

        A boolean mask is what SDPA first turns into an additive one in the query's dtype (a new
        tensor of the mask's full shape, each call): that one is what the kernel keeps for the
        backward. A float mask is kept as it is."""

        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, value: Any, mask: Any, cpu: bool) -> Any:
            b, h, s, _ = query.shape
            if mask is not None and mask.dtype == torch.bool:
                mask = query.new_empty(mask.shape)
            if cpu and value.shape[-1] == query.shape[-1]:  # the CPU kernel's output follows the query's layout
                out = torch.empty_like(query)
            else:  # CUDA kernels write (batch, seq, heads, dim): the caller's transpose(1, 2) is then free
                out = query.new_empty((b, s, h, value.shape[-1])).transpose(1, 2)
            logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(query, key, value, out, logsumexp, *(() if mask is None else (mask,)))
            return out

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            """The gradients of q, k and v, as the kernels' backward returns them (shapes only: meta)."""
            query, key, value = ctx.saved_tensors[:3]
            return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), None, None

    return FusedAttention
