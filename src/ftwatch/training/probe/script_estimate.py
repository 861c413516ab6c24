"""The pre-flight estimate of a run ftwatch did not start: made from what a ``Trainer`` shows.

A script that adds :class:`~ftwatch.training.probe.callback.FtwatchCallback` by hand has loaded its
model before ftwatch sees anything, so the worker's estimate from a config file (before loading) is
not possible. At ``on_train_begin`` the Trainer holds everything the estimate needs except, often,
the sequence length:

- the model's config (the base model's), the dtype its frozen weights are in, its quantization
  (``is_loaded_in_4bit``/``8bit``) and attention implementation;
- the LoRA config (``model.peft_config``);
- the ``TrainingArguments``: ``per_device_train_batch_size``, ``gradient_accumulation_steps``,
  ``optim``, ``gradient_checkpointing`` (or the model's own switch), ``bf16``/``fp16``, the world size;
- the sequence length: the arguments' ``max_length``/``max_seq_length`` where they have one (TRL's
  ``SFTConfig``: known at train begin, an upper bound), else the longest batch of the first step
  (known at that step's end).

:func:`estimate_from_trainer` writes the same events the worker's pre-flight writes (an ``estimate``,
and a warning with fixes when it is tight or will not fit), with ``made: "after loading, from the
Trainer"`` and ``seq_len``/``seq_len_source`` added. It never raises: a failure is a
``preflight_failed`` note.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

MADE = "after loading, from the Trainer"
#: ``TrainingArguments`` fields the estimate reads.
TRAINING_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "optim", "optim_args",
                   "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
                   "activation_checkpointing_kwargs", "bf16", "fp16")
#: Where an arguments object may say the sequence length (TRL's ``SFTConfig`` and older TRL).
LENGTH_FIELDS = ("max_length", "max_seq_length")
_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def seq_len_from_args(args: Any) -> tuple[int | None, str | None]:
    """The sequence length the training arguments fix, and where it came from (``None`` if none)."""
    for name in LENGTH_FIELDS:
        value = getattr(args, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"TrainingArguments.{name}"
    return None, None


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself without one)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def frozen_dtype(model: Any) -> str:
    """The dtype most of the frozen floating-point weights are in (``auto`` when there are none)."""
    counts: Counter[str] = Counter()
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            counts[str(param.dtype)] += param.numel()
    if not counts:
        return "auto"
    return _DTYPES.get(counts.most_common(1)[0][0], "auto")


def lora_fields(model: Any) -> dict[str, Any] | None:
    """The active adapter's ``LoraConfig`` fields that differ from peft's defaults (``None`` when
    the model has no LoRA adapter)."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    name = getattr(model, "active_adapter", None)
    config = configs.get(name) if isinstance(name, str) and name in configs else next(iter(configs.values()))
    from peft import LoraConfig

    if not isinstance(config, LoraConfig):
        return None
    defaults = LoraConfig()
    skip = {"base_model_name_or_path", "revision", "inference_mode", "peft_type", "runtime_config"}
    out: dict[str, Any] = {}
    for field in dataclasses.fields(LoraConfig):
        if not field.init or field.name in skip:
            continue
        value = getattr(config, field.name, None)
        if value != getattr(defaults, field.name, None):
            out[field.name] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


def training_fields(args: Any, model: Any) -> dict[str, Any]:
    """The ``TrainingArguments`` fields the estimate reads (checkpointing also from the model)."""
    out = {name: getattr(args, name) for name in TRAINING_FIELDS if getattr(args, name, None) is not None}
    optim = out.get("optim")
    if optim is not None:
        out["optim"] = str(getattr(optim, "value", optim))
    if model_checkpointing(base_model(model)):
        out["gradient_checkpointing"] = True
    return out


def model_checkpointing(model: Any) -> bool:
    """Whether the model's own activation checkpointing is switched on (transformers' newer name
    first: reading the deprecated one warns)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name, False))
    return False


def trainer_inputs(model: Any, args: Any, seq_len: int, on_gpu: bool) -> Any:
    """The :class:`~ftwatch.analysis.estimate.EstimateInputs` of a Trainer's run."""
    from ftwatch.analysis.estimate import EstimateInputs

    base = base_model(model)
    lora = lora_fields(model)
    if lora is None:
        raise ValueError("the model has no LoRA adapter (ftwatch estimates LoRA fine-tunes)")
    config = base.config
    return EstimateInputs(
        model_config=config, dtype=frozen_dtype(base),
        load_in_4bit=bool(getattr(base, "is_loaded_in_4bit", False)),
        load_in_8bit=bool(getattr(base, "is_loaded_in_8bit", False)),
        lora=lora, training=training_fields(args, model), max_length=int(seq_len), on_gpu=on_gpu,
        attn_implementation=getattr(config, "_attn_implementation", None),
        world_size=max(int(getattr(args, "world_size", 1) or 1), 1),
    )


def capacity_after_loading(device: dict[str, Any], budget: int | None) -> tuple[int | None, str]:
    """What the estimate is judged against once the model is loaded: the budget, else on CUDA the
    free memory plus what this process holds already (its allocator's reservation and the CUDA
    context, sized as the estimate sizes it), else the header's capacity (the RAM on a CPU run)."""
    if budget:
        return budget, "budget"
    if device.get("type") == "cuda":
        import torch

        from ftwatch.analysis.estimate import NON_TORCH_BYTES

        index = device.get("index") or 0
        free, _total = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) + NON_TORCH_BYTES), "free GPU memory + this process's"
    return device.get("capacity"), str(device.get("capacity_source") or "ram")


def estimate_from_trainer(probe: Any, model: Any, args: Any, seq_len: int | None,
                          seq_len_source: str | None) -> Any:
    """Estimate the run, write the ``estimate`` event (and the warning when it is tight or will not
    fit) into ``probe``'s log; returns the estimate, or ``None`` (written as a note). Never raises."""
    probe.estimate_made = True
    try:
        from ftwatch.analysis.estimate import estimate_inputs
        from ftwatch.training.preflight import preflight_warning

        if not seq_len:
            raise ValueError("the sequence length is not known (no max_length in the arguments, "
                             "and no forward of the first step was measured)")
        device = probe.device_info or {}
        on_gpu = device.get("type") == "cuda"
        capacity, source = capacity_after_loading(device, probe.budget)
        result = estimate_inputs(trainer_inputs(model, args, seq_len, on_gpu), capacity, source)
        if result.fails_at == "loading_model":  # it loaded: what does not fit is the training
            result.fails_at = "training"
        if result.verdict in ("tight", "does_not_fit"):
            from ftwatch.analysis.advice import suggest

            result.suggestions = suggest(result)
        data = result.to_json()
    except Exception as exc:  # an estimate must never stop training
        probe.note("preflight_failed", f"no pre-flight estimate: {type(exc).__name__}: {exc}")
        return None
    try:
        probe.writer.emit("estimate", **{k: data[k] for k in (
            "params_total", "params_trainable", "estimate_bytes", "loading_bytes", "capacity_bytes",
            "capacity_source", "verdict", "fails_at", "suggestions")},
            made=MADE, seq_len=int(seq_len), seq_len_source=seq_len_source)
        if result.verdict in ("tight", "does_not_fit"):
            probe.writer.emit("warning", **preflight_warning(result, data["suggestions"]))
    except Exception as exc:
        probe.guard.record("pre-flight estimate", exc)
    return result
