"""The config checks that need transformers, peft and torch (imported here, late).

- :func:`check_model`: config.json's ``model_type`` is one transformers knows, the model builds (on
  the ``meta`` device: no memory), every ``[lora]`` ``target_modules`` entry names modules it has,
  and peft accepts the adapter.
- :func:`check_tokens`: with packing, the data holds at least one block of ``max_length`` tokens
  (tokenized until that is known, never the whole file).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError
from ftwatch.training.library_config import _first_line
from ftwatch.training.model_files import ModelFiles

#: Texts tokenized at a time while counting (the count stops once one block is there).
TOKENIZE_BATCH = 64


# --- the model ---------------------------------------------------------------------------------------

def check_model(cfg: Config, files: ModelFiles) -> Any:
    """Check the model type, the model's construction, ``target_modules`` and peft's own checks.

    Returns the estimate's inputs (the estimate then reuses the meta model built here).
    """
    from ftwatch.analysis.estimate import inputs_from_config, meta_peft_model

    if files.directory is not None:
        _check_model_type(cfg, files)
    inputs = inputs_from_config(cfg)  # reads config.json as transformers does (ConfigError naming the file)
    base = _meta_base_model(cfg, inputs)
    check_target_modules(cfg, base)
    try:
        meta_peft_model(inputs)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    return inputs


def attention_need(cfg: Config, inputs: Any) -> str | None:
    """Why ``[model] attn_implementation`` cannot be used here (a kernel package not installed, a name
    transformers does not know, SDPA asked of a class without it), or ``None``; built on the ``meta``
    device as the worker will load it."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from ftwatch.analysis.estimate.fused_attention import causal_lm_class
    from ftwatch.analysis.estimate.model_config import _to_pretrained_config
    from ftwatch.analysis.estimate.quiet import _quiet

    wanted = cfg.model.attn_implementation
    if not wanted or wanted == "eager":
        return None
    config = copy.deepcopy(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code))
    model_class = causal_lm_class(config)
    if wanted == "sdpa" and model_class is not None:  # the class says whether it takes SDPA: no build
        if getattr(model_class, "_supports_sdpa", False):
            return None
        return (f'[model].attn_implementation "sdpa" cannot be used: {model_class.__name__} has no SDPA '
                f'attention in transformers; use "eager" or leave the key out (its default)')
    try:
        with _quiet(), torch.device("meta"):
            AutoModelForCausalLM.from_config(config, dtype=getattr(torch, inputs.model_dtype),
                                             attn_implementation=wanted, trust_remote_code=inputs.trust_remote_code)
    except Exception as exc:
        return f'[model].attn_implementation "{wanted}" cannot be used: {_first_line(exc)}'
    return None


def _check_model_type(cfg: Config, files: ModelFiles) -> None:
    import json

    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert files.directory is not None
    record = json.loads((files.directory / "config.json").read_text(encoding="utf-8").removeprefix("\ufeff"))
    model_type = record.get("model_type")
    if model_type is None or model_type in CONFIG_MAPPING_NAMES:
        return
    if cfg.model.trust_remote_code and record.get("auto_map"):
        return  # the model's own code defines it
    hint = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=1, cutoff=0.8)
    close = f' (did you mean "{hint[0]}"?)' if hint else ""
    remote = ("; its config names code of its own (auto_map): set trust_remote_code = true in [model] "
              "if you trust it" if record.get("auto_map") else "")
    raise ConfigError(cfg.path, f'[model].name: config.json of {files.directory} has model_type "{model_type}", '
                                f"which transformers {__version__} does not know{close}{remote}")


_BASE_CACHE: dict[str, Any] = {}


def _meta_base_model(cfg: Config, inputs: Any) -> Any:
    """The model without adapters on the ``meta`` device (cached by its config)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftwatch.analysis.estimate.model_config import _to_pretrained_config
    from ftwatch.analysis.estimate.quiet import _quiet

    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    key = f"{config.to_json_string(use_diff=False)}|{inputs.model_dtype}|{inputs.trust_remote_code}"
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    try:
        with _quiet(), torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, inputs.model_dtype),
                                                     trust_remote_code=inputs.trust_remote_code)
    except Exception as exc:
        raise ConfigError(cfg.path, f"[model].name: cannot build {type(config).__name__} ({config.model_type}) "
                                    f"as a causal language model: {_first_line(exc)}") from None
    if len(_BASE_CACHE) >= 4:
        _BASE_CACHE.pop(next(iter(_BASE_CACHE)))
    _BASE_CACHE[key] = model
    return model


def check_target_modules(cfg: Config, model: Any) -> None:
    """Every ``target_modules`` (and ``modules_to_save``) entry must name modules of the model, by
    peft's rules: a list entry matches a module whose name is it or ends with ``.<entry>``; a
    string is a regular expression matched against whole names; ``"all-linear"`` is peft's own.
    The modules an adapter goes on must be layers LoRA can adapt (linear, embedding, convolution)."""
    modules = [(name, module) for name, module in model.named_modules() if name]
    targets = cfg.lora.get("target_modules")
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ConfigError(cfg.path, f'[lora].target_modules "{targets}" is not a valid regular expression '
                                        f"({exc}); a list of names is matched by their ends instead") from None
        matched = [(n, m) for n, m in modules if pattern.fullmatch(n)]
        if not matched:
            raise ConfigError(cfg.path, f'[lora].target_modules "{targets}" (a regular expression, matched '
                                        f"against whole module names such as {modules[-1][0]}) matches no module "
                                        f"of {type(model).__name__}; its layers: {_layer_names(model)}")
        _check_adaptable(cfg, f'"{targets}"', matched, model)
    elif isinstance(targets, list):
        for entry in _entries(cfg, "target_modules", targets, modules, model):
            _check_adaptable(cfg, f'"{entry}"', _suffix_matches(entry, modules), model)
    saved = cfg.lora.get("modules_to_save")
    if isinstance(saved, list):
        list(_entries(cfg, "modules_to_save", saved, modules, model))


def _suffix_matches(entry: str, modules: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in modules if n == entry or n.endswith("." + entry)]


def _entries(cfg: Config, key: str, entries: list[Any], modules: list[tuple[str, Any]], model: Any) -> Iterator[str]:
    """The string entries, each checked to match some module."""
    for entry in entries:
        if not isinstance(entry, str):
            continue  # the type checks report it
        if not _suffix_matches(entry, modules):
            layers = _layer_names(model)
            hint = difflib.get_close_matches(entry, layers.split(", "), n=1, cutoff=0.6)
            close = f' (did you mean "{hint[0]}"?)' if hint else ""
            raise ConfigError(cfg.path, f'[lora].{key}: "{entry}" matches no module of {type(model).__name__}'
                                        f"{close}; its layers: {layers}")
        yield entry


def _adaptable(module: Any) -> bool:
    """Whether peft's LoRA can wrap this (unquantized) module."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.MultiheadAttention)
    return isinstance(module, kinds) or type(module).__name__ == "Conv1D"  # transformers' GPT-2 layer


def _check_adaptable(cfg: Config, what: str, matched: list[tuple[str, Any]], model: Any) -> None:
    wrong = [(n, m) for n, m in matched if not _adaptable(m)]
    if wrong:
        name, module = wrong[0]
        raise ConfigError(cfg.path, f"[lora].target_modules: {what} matches {name}, a {type(module).__name__}, "
                                    "which LoRA cannot adapt (it adapts linear, embedding and convolution layers); "
                                    f"{type(model).__name__}'s layers: {_layer_names(model)}")


def _layer_names(model: Any, most: int = 12) -> str:
    """The distinct last name parts of the layers LoRA can adapt (q_proj, lm_head, ...)."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if name and _adaptable(module):
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    shown = list(seen)[:most]
    return ", ".join(shown) + (", ..." if len(seen) > most else "")


# --- the data, tokenized -------------------------------------------------------------------------------

def check_tokens(cfg: Config, scan_bytes: int) -> None:
    """With packing, the data must hold one block of ``max_length`` tokens (as the worker builds them:
    each text's tokens and an EOS token). Tokenizes only until the answer is known."""
    from ftwatch.training.data import ReadLimit, iter_texts

    data = cfg.data
    if data is None or not data.packing:
        return
    tokenizer = load_tokenizer(cfg)
    eos = 1 if getattr(tokenizer, "eos_token_id", None) is not None else 0
    limit = ReadLimit(scan_bytes)
    total = 0
    for batch in _batches(iter_texts(data, cfg.path, limit), TOKENIZE_BATCH):
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        total += sum(len(i) + eos for i in ids)
        if total >= data.max_length:
            return
    if limit.cut:
        return  # not all of it read: the worker counts the rest
    raise ConfigError(cfg.path, f"[data].max_length = {data.max_length} is longer than the whole data set "
                                f"({total} tokens in {data.path}); lower it or set packing = false")


def load_tokenizer(cfg: Config) -> Any:
    """The tokenizer the worker will load (``AutoTokenizer``), or a :class:`ConfigError` naming the model."""
    from transformers import AutoTokenizer

    from ftwatch.analysis.estimate.quiet import _quiet

    try:
        with _quiet():
            return AutoTokenizer.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    except Exception as exc:
        raise ConfigError(cfg.path, f"[model].name: cannot load the tokenizer of {cfg.model.name}: "
                                    f"{_first_line(exc)}") from None


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
