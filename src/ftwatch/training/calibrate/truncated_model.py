"""The truncated copy a calibration trains: the real config cut to a few layers, random weights.

Built as the worker builds the real model, except for the weights: ``from_config`` instead of
``from_pretrained`` (random initialization, nothing read but config.json), in the run's dtype
(``auto``: config.json's) and attention implementation, on the target device, then the config's
adapters through :func:`ftwatch.training.adapters.add_adapters` (the worker's own code).
"""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.estimate.truncate import truncate_config
from ftwatch.common.config import Config
from ftwatch.training.adapters import add_adapters


class CannotBuild(Exception):
    """The truncated model cannot be built or trained (the message is one line, for the user)."""


def build_truncated_model(cfg: Config, model_config: Any, layers: int, device: str) -> Any:
    """The peft model of ``cfg`` cut to ``layers`` decoder layers, random weights, on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftwatch.analysis.estimate.model_config import resolve_dtype
    from ftwatch.analysis.estimate.quiet import _quiet

    config = truncate_config(model_config, layers)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, resolve_dtype(cfg.model.dtype, model_config)),
                              "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    torch.manual_seed(0)
    try:
        with _quiet(), torch.device(device):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    except Exception as exc:
        raise CannotBuild(f"cannot build {type(config).__name__} ({config.model_type}) from its config: "
                          f"{first_line(exc)}") from None
    try:
        with _quiet():
            return add_adapters(model, cfg)
    except Exception as exc:
        raise CannotBuild(f"[lora] is rejected by peft for this model: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
