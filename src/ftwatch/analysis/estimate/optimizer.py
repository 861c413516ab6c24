"""The memory of optimizer state, by ``TrainingArguments.optim`` name."""

from __future__ import annotations

import math
from typing import Any

#: bitsandbytes 8-bit optimizers: block size, quantization map, and the size below which state stays 32-bit.
BNB_OPTIM_BLOCK = 256
BNB_QMAP_BYTES = 256 * 4
BNB_MIN_8BIT_SIZE = 4096


#: Optimizer name -> (number of full-size states, kind). Kinds: ``torch`` (states in the parameter
#: dtype plus a float32 ``step`` tensor per parameter), ``sgd`` (momentum buffers only), ``fp32``
#: (float32 states, bitsandbytes), ``8bit`` (bitsandbytes blockwise 8-bit), ``4bit`` (torchao),
#: ``factored`` (Adafactor), ``none``.
OPTIMIZERS: dict[str, tuple[int, str]] = {
    "adamw_torch": (2, "torch"), "adamw_torch_fused": (2, "torch"), "adamw_torch_xla": (2, "torch"),
    "adamw_torch_npu_fused": (2, "torch"), "adamw_apex_fused": (2, "torch"), "adamw_anyprecision": (2, "torch"),
    "stable_adamw": (2, "torch"), "grokadamw": (3, "torch"), "schedule_free_adamw": (2, "torch"),
    "schedule_free_radam": (2, "torch"), "schedule_free_sgd": (1, "torch"), "adagrad": (1, "torch"),
    "rmsprop": (1, "torch"), "galore_adamw": (2, "torch"), "galore_adamw_layerwise": (2, "torch"),
    "apollo_adamw": (2, "torch"), "apollo_adamw_layerwise": (2, "torch"),
    "adamw_bnb_8bit": (2, "8bit"), "adamw_8bit": (2, "8bit"), "paged_adamw_8bit": (2, "8bit"),
    "galore_adamw_8bit": (2, "8bit"), "galore_adamw_8bit_layerwise": (2, "8bit"),
    "adamw_torch_8bit": (2, "8bit"), "adamw_torch_4bit": (2, "4bit"),
    "paged_adamw_32bit": (2, "fp32"), "lion_32bit": (1, "fp32"), "paged_lion_32bit": (1, "fp32"),
    "lion_8bit": (1, "8bit"), "paged_lion_8bit": (1, "8bit"), "ademamix": (3, "fp32"),
    "paged_ademamix_32bit": (3, "fp32"), "ademamix_8bit": (3, "8bit"), "paged_ademamix_8bit": (3, "8bit"),
    "rmsprop_bnb": (1, "fp32"), "rmsprop_bnb_32bit": (1, "fp32"), "rmsprop_bnb_8bit": (1, "8bit"),
    "adafactor": (0, "factored"), "galore_adafactor": (0, "factored"), "galore_adafactor_layerwise": (0, "factored"),
    "adalomo": (0, "factored"), "lomo": (0, "none"), "sgd": (0, "sgd"),
}


def optimizer_state_bytes(shapes: Any, optim: str, optim_args: str | None = None) -> int:
    """Bytes of optimizer state for trainable tensors given as ``(shape, bytes per element)`` pairs.

    ``optim`` is a ``TrainingArguments.optim`` name; unknown names are sized like AdamW.
    ``optim_args`` (``"momentum=0.9,centered=True"``) adds the momentum buffers of SGD and RMSprop.
    """
    states, kind = OPTIMIZERS.get(optim, (2, "torch"))
    states += _extra_states(optim, _parse_optim_args(optim_args))
    return sum(_state_bytes(tuple(shape), size, states, kind) for shape, size in shapes)


def _parse_optim_args(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        key, _, value = part.partition("=")
        if key.strip():
            out[key.strip()] = value.strip()
    return out


def _extra_states(optim: str, args: dict[str, str]) -> int:
    """Momentum buffers that only exist with some ``optim_args``."""
    momentum = _as_float(args.get("momentum", "0")) != 0
    if optim == "sgd":
        return int(momentum)
    if optim == "rmsprop":
        return int(momentum) + int(args.get("centered", "").lower() == "true")
    return 0


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _state_bytes(shape: tuple[int, ...], elem: int, states: int, kind: str) -> int:
    n = math.prod(shape)
    if kind == "none":
        return 0
    if kind == "sgd":
        return states * n * elem
    if kind == "torch":  # torch.optim keeps states like the parameter, and a float32 `step` tensor
        return states * n * elem + 4
    if kind == "fp32":
        return states * n * 4
    if kind == "8bit":
        if n < BNB_MIN_8BIT_SIZE:  # bitsandbytes keeps small tensors' state in 32-bit
            return states * n * 4
        return states * (n + math.ceil(n / BNB_OPTIM_BLOCK) * 4 + BNB_QMAP_BYTES)
    if kind == "4bit":
        return states * (math.ceil(n / 2) + math.ceil(n / 128) * 4)
    if kind == "factored":  # Adafactor (float32 state): row and column second moments, full for vectors; RMS
        if len(shape) < 2:
            return n * 4 + 4
        return (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) * 4 + 4
    raise AssertionError(kind)
