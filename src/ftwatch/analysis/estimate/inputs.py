"""What an estimate depends on (:class:`EstimateInputs`), gathered from a config file or varied ("what if")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ftwatch.analysis.estimate.model_config import load_model_config, resolve_dtype
from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError


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
    world_size: int = 1  # training processes (``[launch]``): DDP keeps a replica on each

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
        world_size=cfg.launch.world_size,
    )


def with_changes(inputs: EstimateInputs, *, training: Mapping[str, Any] | None = None,
                 lora: Mapping[str, Any] | None = None, **model_changes: Any) -> EstimateInputs:
    """A copy of ``inputs`` with ``[training]``/``[lora]`` keys overridden and other fields replaced."""
    changes: dict[str, Any] = dict(model_changes)
    if training:
        changes["training"] = {**inputs.training, **training}
    if lora:
        changes["lora"] = {**inputs.lora, **lora}
    return replace(inputs, **changes)
