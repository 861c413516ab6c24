"""Parameter counts and the bytes of the weights, with bitsandbytes' 8-bit/4-bit storage where it quantizes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: bitsandbytes 4-bit: values per absmax block, and the 16-entry float32 code book per quantized weight.
NF4_BLOCK = 64
NF4_CODE_BYTES = 16 * 4


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts and bytes of a (peft) model."""

    base: int
    trainable: int
    weights_bytes: int
    trainable_shapes: tuple[tuple[tuple[int, ...], int], ...]  # (shape, bytes per element)

    @property
    def total(self) -> int:
        """All parameters: the base model plus the adapters."""
        return self.base + self.trainable

    @property
    def trainable_bytes(self) -> int:
        """Bytes of the trainable parameters."""
        return sum(math.prod(shape) * size for shape, size in self.trainable_shapes)


def count_parameters(model: Any, quantization: str | None = None) -> ParamCounts:
    """Count parameters and size the frozen weights, deduplicating shared (tied) storages.

    ``quantization`` is ``"4bit"``, ``"8bit"`` or ``None``: the Linear layers bitsandbytes would
    quantize are sized at their quantized storage; everything else keeps its dtype.
    """
    quantized = _quantized_weight_bytes(model, quantization) if quantization else {}
    seen: set[int] = set()
    base = trainable = weights = 0
    shapes: list[tuple[tuple[int, ...], int]] = []
    for param in model.parameters():
        key = param.untyped_storage()._cdata
        if key in seen:
            continue
        seen.add(key)
        if param.requires_grad:
            trainable += param.numel()
            shapes.append((tuple(param.shape), param.element_size()))
        else:
            base += param.numel()
            weights += quantized.get(key, param.untyped_storage().nbytes())
    for buffer in model.buffers():
        key = buffer.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            weights += buffer.untyped_storage().nbytes()
    return ParamCounts(base=base, trainable=trainable, weights_bytes=weights, trainable_shapes=tuple(shapes))


def _quantized_weight_bytes(model: Any, quantization: str) -> dict[int, int]:
    """Storage key -> bytes for the weights bitsandbytes quantizes (Linear/Conv1D, not the LM head)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    skip = _keys_not_to_quantize(base)
    out: dict[int, int] = {}
    for name, module in base.named_modules():
        if not _is_quantizable(module) or _matches_any(_strip_peft_name(name), skip):
            continue
        weight = module.weight
        n = weight.numel()
        if quantization == "4bit":
            out[weight.untyped_storage()._cdata] = math.ceil(n / 2) + math.ceil(n / NF4_BLOCK) * 4 + NF4_CODE_BYTES
        else:  # LLM.int8: int8 weight plus one float32 scale per output row
            out[weight.untyped_storage()._cdata] = n + _out_features(module) * 4
    return out


def _is_quantizable(module: Any) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return type(module) is torch.nn.Linear or isinstance(module, Conv1D)


def _out_features(module: Any) -> int:
    return int(getattr(module, "out_features", None) or getattr(module, "nf", None) or module.weight.shape[0])


def _strip_peft_name(name: str) -> str:
    """``model.layers.0.self_attn.q_proj.base_layer`` -> ``model.layers.0.self_attn.q_proj``."""
    return name.removesuffix(".base_layer")


def _keys_not_to_quantize(base_model: Any) -> list[str]:
    try:
        from transformers.quantizers.base import get_keys_to_not_convert

        return list(get_keys_to_not_convert(base_model))
    except Exception:  # older/newer transformers: keep the LM head in full precision, as they all do
        return ["lm_head"]


def _matches_any(name: str, patterns: list[str]) -> bool:
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module

        return not should_convert_module(name, patterns)
    except ImportError:
        return any(name == p or name.endswith("." + p) or name.startswith(p + ".") for p in patterns)
