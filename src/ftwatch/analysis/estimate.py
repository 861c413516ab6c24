"""Predict the memory of a LoRA fine-tune before a single weight is loaded.

The model is built from its ``config.json`` on the ``meta`` device (shapes and dtypes, no storage),
peft's real ``get_peft_model`` is applied to it, and every category is sized from that model:

- ``weights``: frozen parameters and buffers, with bitsandbytes' 8-bit/4-bit storage for the Linear
  layers it quantizes (the rest in float32, as ``prepare_model_for_kbit_training`` leaves them);
  ``lora``: the trainable parameters (peft keeps adapters in float32); ``grads``: one gradient per
  trainable parameter; ``optimizer``: the state the chosen optimizer keeps.
- ``activations``: a forward pass of the meta model with ``saved_tensors_hooks`` (the probe's own
  method: what autograd saves, parameters excluded, storages once; only what is still saved when
  the forward ends). Fused attention kernels (SDPA, flash) are stood in for by a function that
  saves what they save; mixed precision (``bf16``/``fp16`` in ``[training]``) is emulated op by op.
  Gradient checkpointing keeps each layer's input plus one layer recomputed. If the trace cannot
  run, a per-layer formula for Llama-style decoders is used.
- ``other``: the logits the model returns plus one float32 logits-sized buffer of the loss backward.
- ``non_torch``: the CUDA context and library workspaces (GPU targets only), a fixed allowance.

:func:`estimate` works on a loaded :class:`~ftwatch.config.Config`; :func:`estimate_from_model_config`
is the lower-level entry point for callers that already hold the model config.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftwatch.config import Config, ConfigError

MiB = 1024**2

#: Bytes per element of the dtypes a config can name.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
#: CUDA context, cuBLAS/cuDNN handles and workspaces: what a CUDA process holds outside PyTorch's tensors.
NON_TORCH_BYTES = 512 * MiB
#: Below this share of free capacity left at the peak, the verdict is ``tight``.
TIGHT_HEADROOM = 0.10
#: bitsandbytes 4-bit: values per absmax block, and the 16-entry float32 code book per quantized weight.
NF4_BLOCK = 64
NF4_CODE_BYTES = 16 * 4
#: bitsandbytes 8-bit optimizers: block size, quantization map, and the size below which state stays 32-bit.
BNB_OPTIM_BLOCK = 256
BNB_QMAP_BYTES = 256 * 4
BNB_MIN_8BIT_SIZE = 4096
#: The attention implementation the meta trace registers (a stand-in for fused SDPA/flash kernels).
FUSED_ATTENTION = "ftwatch_fused_sdpa"

VERDICTS = ("fits", "tight", "does_not_fit")

_log = logging.getLogger(__name__)


# --- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EstimateInputs:
    """Everything the estimate depends on; :func:`dataclasses.replace` gives a variant ("what if")."""

    model_config: Any  # a transformers PretrainedConfig
    dtype: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    lora: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    max_length: int = 128
    on_gpu: bool = True
    attn_implementation: str | None = None
    trust_remote_code: bool = False

    @property
    def resolved_dtype(self) -> str:
        """``dtype`` with ``auto`` replaced by the dtype in config.json (float32 when it names none)."""
        return resolve_dtype(self.dtype, self.model_config)

    @property
    def model_dtype(self) -> str:
        """The dtype of the unquantized parameters during training.

        With 8-bit/4-bit loading, peft's ``prepare_model_for_kbit_training`` (which ftwatch's worker
        runs, as QLoRA recipes do) casts every parameter bitsandbytes did not quantize to float32;
        the quantized layers return their output in their input's dtype, so the activations are
        those of a float32 model too.
        """
        return "float32" if self.load_in_4bit or self.load_in_8bit else self.resolved_dtype

    @property
    def batch_size(self) -> int:
        """Micro-batch size (``per_device_train_batch_size``)."""
        return int(self.training.get("per_device_train_batch_size", _training_default("per_device_train_batch_size")))

    @property
    def grad_accumulation(self) -> int:
        """``gradient_accumulation_steps``."""
        return int(self.training.get("gradient_accumulation_steps",
                                     _training_default("gradient_accumulation_steps")))

    @property
    def optim(self) -> str:
        """The optimizer name, as ``TrainingArguments.optim`` spells it."""
        value = self.training.get("optim", _training_default("optim"))
        return str(getattr(value, "value", value))

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether activation (gradient) checkpointing is on."""
        return bool(self.training.get("gradient_checkpointing") or self.training.get("activation_checkpointing"))

    @property
    def checkpointing_options(self) -> dict[str, Any]:
        """``gradient_checkpointing_kwargs`` / ``activation_checkpointing_kwargs`` (``every_n_layers``, ``offload``)."""
        return dict(self.training.get("activation_checkpointing_kwargs")
                    or self.training.get("gradient_checkpointing_kwargs") or {})

    @property
    def autocast_dtype(self) -> str | None:
        """The mixed-precision dtype the Trainer autocasts to (``bf16``/``fp16`` in ``[training]``), if any."""
        if self.training.get("bf16"):
            return "bfloat16"
        if self.training.get("fp16"):
            return "float16"
        return None


def _training_default(name: str) -> Any:
    """The ``TrainingArguments`` default of a field (so the estimate follows the installed version)."""
    from transformers import TrainingArguments

    default = TrainingArguments.__dataclass_fields__[name].default
    return getattr(default, "value", default)


def resolve_dtype(dtype: str, model_config: Any) -> str:
    """The dtype the weights load in: ``auto`` means config.json's ``dtype``/``torch_dtype``, else float32."""
    if dtype != "auto":
        return dtype
    for key in ("dtype", "torch_dtype"):
        value = _config_get(model_config, key)
        if value is not None:
            name = str(value).removeprefix("torch.")
            if name in DTYPE_BYTES:
                return name
    return "float32"


def _config_get(model_config: Any, key: str) -> Any:
    if isinstance(model_config, Mapping):
        return model_config.get(key)
    with contextlib.suppress(Exception):
        return getattr(model_config, key, None)
    return None


def load_model_config(name: str, trust_remote_code: bool = False) -> Any:
    """The model's config (a ``PretrainedConfig``) from a local directory, the hub cache, or the hub.

    Raises :class:`ConfigError` (no path attached) when no ``config.json`` can be read.
    """
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(None, f"[model].name: no config.json in {path}")
    if path.is_dir():
        return _read_config(lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), name)
    try:
        with _quiet():
            return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception:  # not in the local hub cache: ask the hub, if it can be reached
        pass
    unreachable = _hub_unreachable()
    if unreachable:
        raise ConfigError(None, f"[model].name: {name!r} is not a local directory and not in the hub cache, "
                                f"and the hub cannot be reached ({unreachable}); point it at a directory "
                                "holding the model's config.json")
    return _read_config(lambda: AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code), name)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no route), or ``None`` if it may be.

    Checked up front because the hub client retries for half a minute before giving up.
    """
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: let the client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}: {exc.strerror or exc}"
    return None


def _read_config(load: Callable[[], Any], name: str) -> Any:
    try:
        with _quiet():
            return load()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(None, f"[model].name: cannot read the config.json of {name!r}: {first}") from None


def inputs_from_config(cfg: Config, on_gpu: bool | None = None) -> EstimateInputs:
    """Gather the estimate's inputs from a config file (reads the model's config.json)."""
    try:
        model_config = load_model_config(cfg.model.name, cfg.model.trust_remote_code)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    if on_gpu is None:
        on_gpu = not cfg.training.get("use_cpu", False)
    return EstimateInputs(
        model_config=model_config,
        dtype=cfg.model.dtype,
        load_in_4bit=cfg.model.load_in_4bit,
        load_in_8bit=cfg.model.load_in_8bit,
        lora=dict(cfg.lora),
        training=dict(cfg.training),
        max_length=cfg.data.max_length if cfg.data else 128,
        on_gpu=on_gpu,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
    )


# --- the meta model ----------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers/peft warnings and progress output while building meta models."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _to_pretrained_config(model_config: Any, trust_remote_code: bool = False) -> Any:
    """Accept a ``PretrainedConfig`` or a config.json dict."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model_config, PretrainedConfig):
        return model_config
    if isinstance(model_config, Mapping):
        data = dict(model_config)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ConfigError(None, "[model].name: config.json has no model_type")
        try:
            return AutoConfig.for_model(model_type, **data)
        except ValueError as exc:
            raise ConfigError(None, f"[model].name: unknown model_type {model_type!r}: {exc}") from None
    raise TypeError(f"expected a PretrainedConfig or a dict, got {type(model_config).__name__}")


def _attention_for_trace(attn_implementation: str | None) -> str:
    """Eager attention is traced as it is; everything else runs a fused kernel (SDPA/flash) on a GPU."""
    return "eager" if attn_implementation == "eager" else FUSED_ATTENTION


_CACHE_LOCK = threading.Lock()
_TRACE_LOCK = threading.Lock()
_MODEL_CACHE: dict[str, Any] = {}
_TRACE_CACHE: dict[tuple[str, int, int, str | None, bool], ActivationTrace] = {}
_CACHE_SIZE = 8


def _model_key(inputs: EstimateInputs) -> str:
    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    return json.dumps({"config": config.to_json_string(use_diff=False), "dtype": inputs.model_dtype,
                       "lora": dict(inputs.lora), "attn": _attention_for_trace(inputs.attn_implementation),
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
    try:
        with _quiet(), torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=_attention_for_trace(inputs.attn_implementation),
                trust_remote_code=inputs.trust_remote_code)
    except Exception as exc:
        raise ConfigError(None, f"[model].name: cannot build {type(config).__name__} "
                                f"({config.model_type}) from its config: {_first_line(exc)}") from None
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


# --- parameters and weights --------------------------------------------------------------------

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


# --- optimizer state -----------------------------------------------------------------------------

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


# --- activations: the meta trace ------------------------------------------------------------------

@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd saves in one forward pass, split by where they are saved.

    ``layers[i]`` is what decoder layer *i* saves apart from its own input; ``layer_inputs[i]`` the
    bytes of that input (the residual stream entering the layer) and ``inputs_saved[i]`` the part of
    it the layer saved itself. ``outside`` is everything saved outside the decoder layers.
    """

    outside: int
    layers: tuple[int, ...]
    layer_inputs: tuple[int, ...]
    inputs_saved: tuple[int, ...]
    method: str = "trace"

    @property
    def total(self) -> int:
        """Saved bytes without checkpointing."""
        return self.outside + sum(self.layers) + sum(self.inputs_saved)


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation bytes: what the forward pass leaves saved, plus a checkpointed layer's recompute."""

    saved_forward: int
    recompute: int
    method: str

    @property
    def total(self) -> int:
        """The peak: saved bytes plus the recompute of one checkpointed layer."""
        return self.saved_forward + self.recompute


_TRACE_STATE = threading.local()


def _register_fused_attention() -> None:
    """Register the fused-kernel stand-in with transformers' attention interface (once).

    No mask function is registered, so the model builds no mask: the same as SDPA on unpadded
    (packed) batches, and no mask creation that would need tensor values (meta tensors have none).
    """
    from transformers.modeling_utils import AttentionInterface

    if FUSED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(FUSED_ATTENTION, _fused_attention)


def _fused_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Attention that saves what SDPA's flash / memory-efficient kernels save: q, k, v, out, logsumexp.

    Key/value heads are repeated for grouped-query attention exactly when transformers' SDPA path
    repeats them; under (emulated) autocast the inputs are cast like autocast casts SDPA's. For a
    CPU target with attention dropout, SDPA's math path runs instead (PyTorch's CPU flash kernel
    has no dropout), as it does on a real CPU.
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
        """Saves q, k, v, the output, the float32 logsumexp (and the mask, if any), computes nothing."""

        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, value: Any, mask: Any, cpu: bool) -> Any:
            b, h, s, _ = query.shape
            if cpu and value.shape[-1] == query.shape[-1]:  # the CPU kernel's output follows the query's layout
                out = torch.empty_like(query)
            else:  # CUDA kernels write (batch, seq, heads, dim): the caller's transpose(1, 2) is then free
                out = query.new_empty((b, s, h, value.shape[-1])).transpose(1, 2)
            logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(query, key, value, out, logsumexp, *(() if mask is None else (mask,)))
            return out

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - the trace never runs backward
            raise RuntimeError("ftwatch's fused-attention stand-in is for meta traces only")

    return FusedAttention


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


def decoder_layers(model: Any) -> list[Any]:
    """The repeated decoder blocks (what gradient checkpointing wraps)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class _SavedTensorTally:
    """Counts what autograd saves, by decoder layer (forward hooks) and storage (pack hook).

    Only tensors still saved when the forward ends are counted (weak references): a branch whose
    output is dropped (a ``.detach()``-ed norm, say) frees its saved tensors at once, and a freed
    storage's identity may be reused by a later one, which must not be mistaken for it.
    """

    def __init__(self, model: Any) -> None:
        self.layers = decoder_layers(model)
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.current: int | None = None
        self.inputs = [0] * len(self.layers)
        self.input_refs: list[Any] = [None] * len(self.layers)
        self.saved: list[tuple[Any, int | None]] = []  # (weak reference, layer index)

    def enter(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of a decoder layer: note the layer and its hidden-state input."""
        import torch

        self.current = self.index[id(module)]
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            self.inputs[self.current] = hidden.untyped_storage().nbytes()
            self.input_refs[self.current] = weakref.ref(hidden)

    def leave(self, module: Any, args: Any, output: Any) -> None:
        """Forward hook of a decoder layer."""
        self.current = None

    def pack(self, t: Any) -> Any:
        """The ``saved_tensors_hooks`` pack hook: remember the tensor and where it was saved."""
        self.saved.append((weakref.ref(t), self.current))
        return t

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Layer hooks installed for the duration of the block."""
        handles = [m.register_forward_pre_hook(self.enter, with_kwargs=True) for m in self.layers]
        handles += [m.register_forward_hook(self.leave) for m in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def result(self) -> ActivationTrace:
        """Sum the live saved storages once each, parameters excluded (call while the graph is alive)."""
        n = len(self.layers)
        own, inputs_saved, outside = [0] * n, [0] * n, 0
        input_keys = {_storage_key(ref()): i for i, ref in enumerate(self.input_refs) if ref and ref() is not None}
        seen = set(self.params)
        for ref, layer in self.saved:
            t = ref()
            if t is None or _storage_key(t) in seen:
                continue
            key = _storage_key(t)
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            if layer is None:
                outside += nbytes
            elif input_keys.get(key) == layer:
                inputs_saved[layer] += nbytes
            else:
                own[layer] += nbytes
        return ActivationTrace(outside=outside, layers=tuple(own), layer_inputs=tuple(self.inputs),
                               inputs_saved=tuple(inputs_saved))


def _storage_key(t: Any) -> int:
    return t.untyped_storage()._cdata


def trace_activations(model: Any, batch: int, seq: int, autocast: str | None = None,
                      on_gpu: bool = True) -> ActivationTrace:
    """Run a meta forward (with labels) and sum what autograd saves, by decoder layer.

    ``model`` must live on the meta device and be in training mode. Storages are counted once,
    parameter storages not at all, like the probe's measurement. ``autocast`` emulates mixed
    precision; ``on_gpu=False`` follows PyTorch's CPU attention kernels instead of CUDA's.
    """
    import torch

    tally = _SavedTensorTally(model)
    ids = torch.zeros((batch, seq), dtype=torch.long, device="meta")
    mode = _autocast_mode(autocast) if autocast else contextlib.nullcontext()
    _TRACE_STATE.autocast = getattr(torch, autocast) if autocast else None
    _TRACE_STATE.cpu = not on_gpu
    try:
        with _quiet(), tally.hooked(), mode, torch.autograd.graph.saved_tensors_hooks(tally.pack, lambda t: t):
            _graph = model(input_ids=ids, labels=ids, use_cache=False, **_loss_kwargs(model))
        return tally.result()  # while the output (`_graph`) keeps the graph and its saved tensors alive
    finally:
        _TRACE_STATE.autocast, _TRACE_STATE.cpu = None, False


def _loss_kwargs(model: Any) -> dict[str, Any]:
    """``num_items_in_batch`` (a float32 scalar on the device), as the Trainer passes it to models that take it."""
    import inspect

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepts = getattr(base, "accepts_loss_kwargs", None)
    if accepts is None:
        params = inspect.signature(base.forward).parameters.values()
        accepts = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if not accepts:
        return {}
    return {"num_items_in_batch": torch.empty((), dtype=torch.float32, device="meta")}


def _cached_trace(inputs: EstimateInputs, model: Any) -> ActivationTrace:
    key = (_model_key(inputs), inputs.batch_size, inputs.max_length, inputs.autocast_dtype, inputs.on_gpu)
    with _CACHE_LOCK:
        if key in _TRACE_CACHE:
            return _TRACE_CACHE[key]
    with _TRACE_LOCK:  # the trace hooks the (shared, cached) model
        trace = trace_activations(model, inputs.batch_size, inputs.max_length, inputs.autocast_dtype,
                                  inputs.on_gpu)
    with _CACHE_LOCK:
        if len(_TRACE_CACHE) >= 4 * _CACHE_SIZE:
            _TRACE_CACHE.pop(next(iter(_TRACE_CACHE)))
        _TRACE_CACHE[key] = trace
    return trace


# --- activations: the formula (fallback) -----------------------------------------------------------

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


def combine_activations(trace: ActivationTrace, checkpointing: bool, every_n_layers: int = 1,
                        offload: bool = False) -> ActivationEstimate:
    """Activation bytes with or without gradient checkpointing.

    Checkpointed layers keep only their input (on the host with ``offload``); in the backward pass
    one of them is recomputed at a time, so the largest layer is added once as ``recompute``.
    """
    if not checkpointing or not trace.layers:
        return ActivationEstimate(saved_forward=trace.total, recompute=0, method=trace.method)
    every = max(int(every_n_layers), 1)
    saved, recompute = trace.outside, 0
    for i, own in enumerate(trace.layers):
        if i % every == 0:
            saved += 0 if offload else trace.layer_inputs[i]
            recompute = max(recompute, own)
        else:
            saved += own + trace.inputs_saved[i]
    return ActivationEstimate(saved_forward=saved, recompute=recompute, method=trace.method)


def estimate_activations(inputs: EstimateInputs, model: Any | None = None) -> ActivationEstimate:
    """Activation bytes for these inputs: meta trace, or the formula if the trace fails."""
    model = model if model is not None else meta_peft_model(inputs)
    try:
        trace = _cached_trace(inputs, model)
    except Exception as exc:  # an architecture the meta trace cannot run
        _log.debug("meta trace failed, using the formula: %s", exc)
        trace = formula_activations(inputs, model)
    options = inputs.checkpointing_options
    return combine_activations(trace, inputs.gradient_checkpointing,
                               every_n_layers=int(options.get("every_n_layers", 1)),
                               offload=bool(options.get("offload", False)))


def other_bytes(inputs: EstimateInputs) -> int:
    """The logits the model returns (alive until backward ends) plus one float32 buffer of that size."""
    vocab = int(_config_get(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code), "vocab_size") or 0)
    d = DTYPE_BYTES[inputs.autocast_dtype or inputs.model_dtype]
    return inputs.batch_size * inputs.max_length * vocab * (d + 4)


# --- the estimate --------------------------------------------------------------------------------

@dataclass
class Estimate:
    """The predicted memory of a run, and the verdict against a capacity."""

    params_total: int
    params_trainable: int
    params_base: int
    categories: dict[str, int]
    capacity_bytes: int | None = None
    capacity_source: str | None = None
    verdict: str | None = None
    fails_at: str | None = None
    activations: ActivationEstimate | None = None
    inputs: EstimateInputs | None = field(default=None, repr=False)
    suggestions: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The predicted peak: every category together."""
        return sum(self.categories.values())

    @property
    def loading_bytes(self) -> int:
        """What loading the model needs: the weights (and the CUDA context on a GPU)."""
        return self.categories.get("weights", 0) + self.categories.get("non_torch", 0)

    def to_json(self) -> dict[str, Any]:
        """The ``ftwatch estimate --json`` object."""
        return {
            "params_total": self.params_total,
            "params_trainable": self.params_trainable,
            "params_base": self.params_base,
            "estimate_bytes": {**self.categories, "total": self.total},
            "loading_bytes": self.loading_bytes,
            "capacity_bytes": self.capacity_bytes,
            "capacity_source": self.capacity_source,
            "verdict": self.verdict,
            "fails_at": self.fails_at,
            "suggestions": [s.to_json() if hasattr(s, "to_json") else s for s in self.suggestions],
            "assumptions": self.assumptions(),
            "notes": list(self.notes),
        }

    def assumptions(self) -> dict[str, Any]:
        """The settings the figures are for (what the estimate read from the config)."""
        if self.inputs is None:
            return {}
        i = self.inputs
        return {
            "dtype": i.resolved_dtype,
            "quantization": "4bit" if i.load_in_4bit else "8bit" if i.load_in_8bit else None,
            "batch_size": i.batch_size,
            "gradient_accumulation_steps": i.grad_accumulation,
            "seq_len": i.max_length,
            "optim": i.optim,
            "gradient_checkpointing": i.gradient_checkpointing,
            "mixed_precision": i.autocast_dtype,
            "device": "cuda" if i.on_gpu else "cpu",
            "activations_method": self.activations.method if self.activations else None,
            "activations_recompute": self.activations.recompute if self.activations else None,
        }


def judge(total: int, loading: int, capacity: int | None) -> tuple[str | None, str | None]:
    """``(verdict, fails_at)`` for a peak and a loading figure against a capacity (``None``: unknown)."""
    if capacity is None:
        return None, None
    if loading > capacity:
        return "does_not_fit", "loading_model"
    if total > capacity:
        return "does_not_fit", "training"
    if capacity - total < TIGHT_HEADROOM * capacity:
        return "tight", None
    return "fits", None


def quantization_of(inputs: EstimateInputs) -> str | None:
    """``"4bit"``, ``"8bit"`` or ``None``."""
    return "4bit" if inputs.load_in_4bit else "8bit" if inputs.load_in_8bit else None


def estimate_inputs(inputs: EstimateInputs, capacity_bytes: int | None = None,
                    capacity_source: str | None = None) -> Estimate:
    """Estimate every category for ``inputs`` and judge it against ``capacity_bytes`` (no suggestions)."""
    if inputs.max_length <= 0 or inputs.batch_size <= 0:
        raise ConfigError(None, "batch size and max_length must be positive")
    model = meta_peft_model(inputs)
    counts = count_parameters(model, quantization_of(inputs))
    activations = estimate_activations(inputs, model)
    categories = {
        "weights": counts.weights_bytes,
        "lora": counts.trainable_bytes,
        "grads": counts.trainable_bytes,
        "optimizer": optimizer_state_bytes(counts.trainable_shapes, inputs.optim, inputs.training.get("optim_args")),
        "activations": activations.total,
        "other": other_bytes(inputs),
    }
    if inputs.on_gpu:
        categories["non_torch"] = NON_TORCH_BYTES
    result = Estimate(params_total=counts.total, params_trainable=counts.trainable, params_base=counts.base,
                      categories=categories, capacity_bytes=capacity_bytes, capacity_source=capacity_source,
                      activations=activations, inputs=inputs)
    result.verdict, result.fails_at = judge(result.total, result.loading_bytes, capacity_bytes)
    result.notes.extend(_notes(inputs, activations))
    return result


def _notes(inputs: EstimateInputs, activations: ActivationEstimate) -> list[str]:
    notes = []
    if inputs.optim not in OPTIMIZERS:
        notes.append(f"optimizer {inputs.optim!r} is not known to ftwatch; its state is sized like AdamW's")
    if inputs.optim.startswith("paged_"):
        notes.append("paged optimizer state can move to host memory under pressure; it is counted in full")
    if activations.method == "formula":
        notes.append("activations come from the Llama-style formula (the meta trace could not run this model)")
    if inputs.load_in_4bit or inputs.load_in_8bit:
        notes.append("quantized: the unquantized weights and the activations are float32, as peft's "
                     "prepare_model_for_kbit_training leaves them (set bf16 = true in [training] to autocast)")
        if not inputs.on_gpu:
            notes.append("bitsandbytes quantization needs a GPU")
    return notes


def estimate_from_model_config(
    model_config: Any,
    *,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    lora: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    max_length: int = 128,
    on_gpu: bool = True,
    attn_implementation: str | None = None,
    capacity_bytes: int | None = None,
) -> Estimate:
    """Estimate a run from a model config (a ``PretrainedConfig`` or a config.json dict).

    ``lora`` holds ``peft.LoraConfig`` fields, ``training`` ``TrainingArguments`` fields (batch size,
    accumulation, ``optim``, ``gradient_checkpointing``, ``bf16``/``fp16``), ``max_length`` the
    sequence length. No suggestions are attached (see :mod:`ftwatch.analysis.advice`).
    """
    inputs = EstimateInputs(model_config=_to_pretrained_config(model_config), dtype=dtype,
                            load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, lora=dict(lora or {}),
                            training=dict(training or {}), max_length=max_length, on_gpu=on_gpu,
                            attn_implementation=attn_implementation)
    return estimate_inputs(inputs, capacity_bytes)


def estimate(cfg: Config, capacity_bytes: int | None = None, *, on_gpu: bool | None = None,
             capacity_source: str | None = None, suggestions: bool = True) -> Estimate:
    """Estimate the run a config describes, judge it against ``capacity_bytes`` and attach the fixes.

    ``on_gpu`` defaults to the config's intent (``use_cpu`` in ``[training]``). Raises
    :class:`ConfigError` (with the config's path) when the model config cannot be read or built.
    """
    inputs = inputs_from_config(cfg, on_gpu)
    try:
        result = estimate_inputs(inputs, capacity_bytes, capacity_source)
        if suggestions:
            from ftwatch.analysis.advice import suggest  # advice re-runs estimates: imported late

            result.suggestions = suggest(result)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    return result


def with_changes(inputs: EstimateInputs, *, training: Mapping[str, Any] | None = None,
                 lora: Mapping[str, Any] | None = None, **model_changes: Any) -> EstimateInputs:
    """A copy of ``inputs`` with ``[training]``/``[lora]`` keys overridden and other fields replaced."""
    changes: dict[str, Any] = dict(model_changes)
    if training:
        changes["training"] = {**inputs.training, **training}
    if lora:
        changes["lora"] = {**inputs.lora, **lora}
    return replace(inputs, **changes)
