"""The config's LoRA adapters on a loaded model: what the worker trains and what ``--calibrate``
measures, built by the same code.

With 8-bit/4-bit weights peft's ``prepare_model_for_kbit_training`` runs first (as QLoRA recipes
do); with activation checkpointing and plain weights the input embeddings are made to require
grad, so the checkpointed layers see an input that needs a gradient (else reentrant checkpointing
would cut the graph).
"""

from __future__ import annotations

from typing import Any

from ftwatch.common.config import Config


def checkpointing_of(cfg: Config) -> bool:
    """Whether the config turns on activation (gradient) checkpointing, under either name."""
    t = cfg.training
    return bool(t.get("gradient_checkpointing") or t.get("activation_checkpointing"))


def add_adapters(model: Any, cfg: Config) -> Any:
    """``model`` wrapped with the config's peft adapters (``[lora]``)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from ftwatch.training.library_config import build_lora_config

    checkpointing = checkpointing_of(cfg)
    if cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()
    return _without_peft_alias_warning(model, lambda: get_peft_model(model, build_lora_config(cfg)))


#: transformers 5 renamed ``is_gradient_checkpointing`` (a FutureWarning on each read); peft reads the
#: old name once in ``PeftModel.__init__`` (peft 0.21, ``peft_model.py``). ftwatch itself uses neither.
_PEFT_ALIAS_WARNING = r"`is_gradient_checkpointing` is deprecated"


def _without_peft_alias_warning(model: Any, wrap: Any) -> Any:
    """``wrap()`` (peft's ``get_peft_model``) without the FutureWarning of peft's own read of the
    deprecated alias, when the model has the new name; every other warning goes through."""
    if not hasattr(type(model), "is_activation_checkpointing"):
        return wrap()
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_ALIAS_WARNING, category=FutureWarning)
        return wrap()
