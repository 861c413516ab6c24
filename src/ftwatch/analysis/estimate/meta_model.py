"""The peft model of an estimate's inputs, built on the ``meta`` device (shapes and dtypes, no storage)."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Iterator
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
#: Models kept: pricing an estimate's fixes uses up to three per model a fix changes (the model and
#: its two short copies, :mod:`.trace_extension`); a meta 7B peft model holds about 2.6 MiB.
_CACHE_SIZE = 16
#: Set by :func:`skip_bitsandbytes_dispatch` in a process that trains nothing (``ftwatch estimate``).
_SKIP_BNB_DISPATCH = False


def skip_bitsandbytes_dispatch() -> None:
    """In this process, wrap meta models without peft's bitsandbytes dispatchers.

    Where bitsandbytes is installed, peft imports it on every LoRA wrap to ask whether a layer is
    one of its quantized linears, and bitsandbytes then imports torch's compiler stack: 1.8 s of
    ``ftwatch estimate``'s 4.8 s after the imports on the project's machine. A meta model is built
    from its config with plain linears, so the answer is always no. The switch tells peft's LoRA
    module that bitsandbytes is absent for the time of the wrap: a module-wide change, so only a
    command process that wraps no model of its own calls this (never the worker, the callback or
    a calibration, which wrap real, maybe quantized, models)."""
    global _SKIP_BNB_DISPATCH
    _SKIP_BNB_DISPATCH = True


@contextlib.contextmanager
def _plain_lora_dispatch() -> Iterator[None]:
    if not _SKIP_BNB_DISPATCH:
        yield
        return
    try:
        from peft.tuners.lora import model as lora_model
    except Exception:
        yield
        return
    saved = {name: getattr(lora_model, name) for name in ("is_bnb_available", "is_bnb_4bit_available")
             if hasattr(lora_model, name)}
    for name in saved:
        setattr(lora_model, name, lambda: False)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(lora_model, name, function)


def _model_key(inputs: EstimateInputs) -> str:
    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    return json.dumps({"config": config.to_json_string(use_diff=False), "dtype": inputs.model_dtype,
                       "lora": dict(inputs.lora), "attn": inputs.attn_implementation,
                       "trust": inputs.trust_remote_code}, sort_keys=True, default=str)


def meta_peft_model(inputs: EstimateInputs) -> Any:
    """The peft model of these inputs on the ``meta`` device (cached: building a 7B one takes ~0.2 s).

    The cache drops the model used least recently: pricing fixes returns to the estimate's own
    model (and its short copies, :mod:`.trace_extension`) after each model a fix changes."""
    key = _model_key(inputs)
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            _MODEL_CACHE[key] = _MODEL_CACHE.pop(key)  # the most recently used last
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
        with _quiet(), torch.device("meta"), _plain_lora_dispatch():
            peft_model = get_peft_model(model, LoraConfig(**kwargs))
    except Exception as exc:
        raise ConfigError(None, f"[lora] is rejected by peft for this model: {_first_line(exc)}") from None
    peft_model.train()
    return peft_model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
