"""The peft model of an estimate's inputs, built on the ``meta`` device (shapes and dtypes, no storage)."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

from ftwatch.analysis.estimate.fused_attention import (
    FUSED_ATTENTION,
    FUSED_FLASH,
    _attention_for_trace,
    _register_fused_attention,
    causal_lm_class,
    fallback_attention,
)
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.model_config import _to_pretrained_config
from ftwatch.analysis.estimate.quiet import _quiet
from ftwatch.common.config_errors import ConfigError

_CACHE_LOCK = threading.Lock()
_MODEL_CACHE: dict[str, Any] = {}
_CACHE_SIZE = 8


def _model_key(inputs: EstimateInputs) -> str:
    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    return json.dumps({"config": config.to_json_string(use_diff=False), "dtype": inputs.model_dtype,
                       "lora": dict(inputs.lora), "attn": inputs.attn_implementation,
                       "trust": inputs.trust_remote_code}, sort_keys=True, default=str)


def meta_peft_model(inputs: EstimateInputs) -> Any:
    """The peft model of these inputs on the ``meta`` device (cached: building a 7B one takes ~0.2 s)."""
    key = _model_key(inputs)
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
    model = _build_meta_peft_model(inputs)
    with _CACHE_LOCK:
        if len(_MODEL_CACHE) >= _CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = model
    return model


def _build_meta_peft_model(inputs: EstimateInputs) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _register_fused_attention()
    # from_config records the attention implementation on the config: keep the caller's untouched
    config = copy.deepcopy(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code))
    dtype = getattr(torch, inputs.model_dtype)
    model_class = causal_lm_class(config)
    first = _attention_for_trace(inputs.attn_implementation, model_class)
    stand_in = first in (FUSED_ATTENTION, FUSED_FLASH)
    choices = [first] + ([fallback_attention(model_class)] if stand_in and model_class else [])
    error: BaseException | None = None  # the first choice's: the one worth saying
    for attention in choices:
        try:
            with _quiet(), torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    copy.deepcopy(config), dtype=dtype, attn_implementation=attention,
                    trust_remote_code=inputs.trust_remote_code)
            break
        except Exception as exc:
            error = error or exc
    else:
        raise ConfigError(None, f"[model].name: cannot build {type(config).__name__} "
                                f"({config.model_type}) from its config: {_first_line(error)}") from None
    kwargs = dict(inputs.lora)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    try:
        with _quiet(), torch.device("meta"):
            peft_model = get_peft_model(model, LoraConfig(**kwargs))
    except Exception as exc:
        raise ConfigError(None, f"[lora] is rejected by peft for this model: {_first_line(exc)}") from None
    peft_model.train()
    return peft_model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
