"""Activations from a per-layer formula for Llama-style decoders: the fallback when the meta trace fails."""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.estimate.activation_trace import ActivationTrace, decoder_layers
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.model_config import DTYPE_BYTES, _config_get, _to_pretrained_config


def formula_activations(inputs: EstimateInputs, model: Any) -> ActivationTrace:
    """Per-layer activation formula for Llama-style decoders (used when the meta trace fails).

    Per layer: two RMSNorms saving their float32 input and ``rsqrt`` (``4bsh + 4bs`` each), fused
    attention saving q, k, v, out (``bs(2h + 2*kv*hd)d``) and a float32 logsumexp; a gated MLP
    saving gate, act and up (``3bsi*d``); each LoRA target its ``r``-wide float32 hidden and, when
    the base is not float32, a float32 copy of its input. Outside: the final norm, the float32
    log-softmax of the logits (``4bsV``) and the labels. Layer 0 saves no input norm (nothing
    before it requires grad).
    """
    cfg = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    b, s = inputs.batch_size, inputs.max_length
    d = DTYPE_BYTES[inputs.autocast_dtype or inputs.model_dtype]
    h = int(_config_get(cfg, "hidden_size") or _config_get(cfg, "n_embd"))
    n_layers = int(_config_get(cfg, "num_hidden_layers") or _config_get(cfg, "n_layer"))
    heads = int(_config_get(cfg, "num_attention_heads") or _config_get(cfg, "n_head"))
    kv = int(_config_get(cfg, "num_key_value_heads") or heads)
    hd = int(_config_get(cfg, "head_dim") or h // heads)
    inter = int(_config_get(cfg, "intermediate_size") or _config_get(cfg, "n_inner") or 4 * h)
    vocab = int(_config_get(cfg, "vocab_size"))
    norm = b * s * h * 4 + b * s * 4
    attn = b * s * (2 * heads * hd + 2 * kv * hd) * d + b * heads * s * 4
    lora = _formula_lora_bytes(model, b * s, d)
    layer = 2 * norm + attn + 3 * b * s * inter * d + lora
    layers = tuple(layer - (norm if i == 0 else 0) for i in range(n_layers))
    outside = norm + b * s * vocab * 4 + b * s * 8 + 4 + 2 * s * hd * d
    residual = b * s * h * DTYPE_BYTES[inputs.model_dtype]
    return ActivationTrace(outside=outside, layers=layers, layer_inputs=(residual,) * n_layers,
                           inputs_saved=(0,) * n_layers, method="formula")


#: LoRA targets that read the attention output / the MLP's inner activation (the rest read a normed input).
_ATTN_OUT_TARGETS = {"o_proj", "out_proj", "dense", "c_proj", "wo"}
_MLP_OUT_TARGETS = {"down_proj", "fc2", "w2", "dense_4h_to_h"}


def _formula_lora_bytes(model: Any, tokens: int, d: int) -> int:
    """Per layer: each target's ``r``-wide float32 hidden plus the input its ``lora_A`` keeps.

    A float32 base shares that input between targets reading the same tensor (q/k/v, gate/up);
    below float32 each target keeps its own float32 copy.
    """
    total, inputs, layers = 0, set(), max(len(decoder_layers(model)), 1)
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or not len(lora_a):
            continue
        parent, _, leaf = name.rpartition(".")
        for adapter in lora_a.values():
            total += tokens * adapter.out_features * 4
            if d != 4:
                total += tokens * adapter.in_features * 4
            elif leaf not in _ATTN_OUT_TARGETS and (parent, leaf in _MLP_OUT_TARGETS) not in inputs:
                inputs.add((parent, leaf in _MLP_OUT_TARGETS))  # the attention output is saved already
                total += tokens * adapter.in_features * 4
    return total // layers
