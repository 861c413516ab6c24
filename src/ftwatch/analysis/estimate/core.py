"""The entry points: estimate every category of a run, judge it, note the caveats, attach the fixes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftwatch.analysis.estimate.activations import (
    backward_peak,
    estimate_activations,
)
from ftwatch.analysis.estimate.inputs import EstimateInputs, inputs_from_config
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import _to_pretrained_config
from ftwatch.analysis.estimate.optimizer import OPTIMIZERS, optimizer_state_bytes
from ftwatch.analysis.estimate.parameters import count_parameters
from ftwatch.analysis.estimate.result import Estimate, judge
from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError
from ftwatch.common.units import format_bytes

MiB = 1024**2

#: CUDA context, cuBLAS/cuDNN handles and workspaces: what a CUDA process holds outside PyTorch's tensors.
NON_TORCH_BYTES = 512 * MiB


def quantization_of(inputs: EstimateInputs) -> str | None:
    """``"4bit"``, ``"8bit"`` or ``None``."""
    return "4bit" if inputs.load_in_4bit else "8bit" if inputs.load_in_8bit else None


def ddp_bucket_bytes(inputs: EstimateInputs, grads_bytes: int) -> int:
    """What DistributedDataParallel adds on each rank: its gradient buckets, one more copy of the
    gradients (``gradient_as_bucket_view`` is off in the Trainer), allocated by torch (``other``)."""
    return grads_bytes if inputs.world_size > 1 else 0


def estimate_inputs(inputs: EstimateInputs, capacity_bytes: int | None = None,
                    capacity_source: str | None = None) -> Estimate:
    """Estimate every category for ``inputs`` and judge it against ``capacity_bytes`` (no suggestions)."""
    if inputs.max_length <= 0 or inputs.batch_size <= 0:
        raise ConfigError(None, "batch size and max_length must be positive")
    model = meta_peft_model(inputs)
    counts = count_parameters(model, quantization_of(inputs))
    activations = estimate_activations(inputs, model)
    other, fallback = backward_peak(inputs, activations, model)
    categories = {
        "weights": counts.weights_bytes,
        "lora": counts.trainable_bytes,
        "grads": counts.trainable_bytes,
        "optimizer": optimizer_state_bytes(counts.trainable_shapes, inputs.optim, inputs.training.get("optim_args")),
        "activations": activations.saved_forward,
        "other": other + ddp_bucket_bytes(inputs, counts.trainable_bytes),
    }
    if inputs.on_gpu:
        categories["non_torch"] = NON_TORCH_BYTES
    result = Estimate(params_total=counts.total, params_trainable=counts.trainable, params_base=counts.base,
                      categories=categories, capacity_bytes=capacity_bytes, capacity_source=capacity_source,
                      activations=activations, inputs=inputs, fallbacks=[fallback] if fallback else [])
    result.verdict, result.fails_at = judge(result.total, result.loading_bytes, capacity_bytes)
    result.notes.extend(_notes(inputs))
    if context_fills(result, capacity_bytes):
        result.notes.append(context_note(capacity_bytes))
    result.notes.extend(f.note() for f in result.fallbacks)
    return result


def context_fills(result: Estimate, limit_bytes: int | None) -> bool:
    """True when the fixed allowance for the CUDA context alone reaches ``limit_bytes``: no change
    to the config can make the run fit."""
    return limit_bytes is not None and result.categories.get("non_torch", 0) >= limit_bytes


def context_note(limit_bytes: int | None) -> str:
    """Why nothing fits a GPU smaller than the context allowance."""
    return (f"the CUDA context and its libraries' workspaces (an allowance of {format_bytes(NON_TORCH_BYTES)}, "
            f"whatever the model) alone are more than the {format_bytes(limit_bytes)} it has to fit in: no "
            "change to the config can make it fit")


def _notes(inputs: EstimateInputs) -> list[str]:
    notes = []
    if inputs.world_size > 1:
        notes.append(f"per process: each of the {inputs.world_size} DDP processes holds all of this on its own "
                     "device; `other` includes DDP's gradient buckets (a second copy of the grads)")
    if inputs.optim not in OPTIMIZERS:
        notes.append(f"optimizer {inputs.optim!r} is not known to ftwatch; its state is sized like AdamW's")
    if inputs.optim.startswith("paged_"):
        notes.append("paged optimizer state can move to host memory under pressure; it is counted in full")
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
             capacity_source: str | None = None) -> Estimate:
    """Estimate the run a config describes and judge it against ``capacity_bytes``; the fixes are
    advice's to price (:func:`ftwatch.analysis.advice.estimate_and_advise` does both).

    ``on_gpu`` defaults to the config's intent (``use_cpu`` in ``[training]``). Raises
    :class:`ConfigError` (with the config's path) when the model config cannot be read or built.
    """
    inputs = inputs_from_config(cfg, on_gpu)
    try:
        result = estimate_inputs(inputs, capacity_bytes, capacity_source)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    return result
