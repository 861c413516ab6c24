"""The config changes advice knows, each as the estimate's inputs with that one change applied
(:class:`Candidate`): lower-precision or quantized base weights, checkpointing, an 8-bit
optimizer, a smaller batch with accumulation, shorter sequences, a smaller rank, fewer targets.
:mod:`ftwatch.analysis.advice` prices and ranks them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.estimate import DTYPE_BYTES, EstimateInputs, meta_peft_model, with_changes

Setting = tuple[str, str, Any]  # (section, key, value); section "env" or "process" for the non-config fixes

#: Optimizers whose state is already 8-bit (or smaller): no optimizer suggestion for them.
LOW_BIT_OPTIMIZERS = ("8bit", "4bit", "adafactor", "lomo", "sgd")


@dataclass(frozen=True)
class Candidate:
    """One config change: its kind, its words, the settings to write, the inputs with it applied."""

    kind: str
    change: str
    settings: tuple[Setting, ...]
    inputs: EstimateInputs


# --- candidates: one config change each ---------------------------------------------------------

def _precision(inputs: EstimateInputs) -> list[Candidate]:
    if DTYPE_BYTES[inputs.resolved_dtype] <= 2:
        return []
    return [Candidate("dtype", "load the base model in bfloat16 instead of float32 "
                                "(float16 on GPUs older than Ampere)",
                       (("model", "dtype", "bfloat16"),), with_changes(inputs, dtype="bfloat16"))]


def _quantize(inputs: EstimateInputs) -> list[Candidate]:
    if not inputs.on_gpu or inputs.load_in_4bit:
        return []
    out = [Candidate("load_in_4bit", "load the base model in 4-bit NF4 (QLoRA; needs bitsandbytes)",
                      (("model", "load_in_4bit", True),) + ((("model", "load_in_8bit", False),)
                                                            if inputs.load_in_8bit else ()),
                      with_changes(inputs, load_in_4bit=True, load_in_8bit=False))]
    if not inputs.load_in_8bit:
        out.append(Candidate("load_in_8bit", "load the base model in 8-bit (LLM.int8; needs bitsandbytes)",
                              (("model", "load_in_8bit", True),), with_changes(inputs, load_in_8bit=True)))
    return out


def _checkpointing(inputs: EstimateInputs) -> list[Candidate]:
    if inputs.gradient_checkpointing:
        return []
    return [Candidate("checkpointing", "turn on gradient checkpointing (layers are recomputed in the "
                                        "backward pass: about 30% slower, same results)",
                       (("training", "gradient_checkpointing", True),),
                       with_changes(inputs, training={"gradient_checkpointing": True}))]


def _optimizer(inputs: EstimateInputs) -> list[Candidate]:
    if any(tag in inputs.optim for tag in LOW_BIT_OPTIMIZERS) or not inputs.on_gpu:
        return []
    return [Candidate("optimizer", f"keep the optimizer state in 8 bits, paged (instead of {inputs.optim}; "
                                    "needs bitsandbytes)",
                       (("training", "optim", "paged_adamw_8bit"),),
                       with_changes(inputs, training={"optim": "paged_adamw_8bit"}))]


def _batch_options(inputs: EstimateInputs) -> list[Candidate]:
    """Smaller micro-batches with more accumulation, same effective batch (halving each time)."""
    batch, accumulation = inputs.batch_size, inputs.grad_accumulation
    out, smaller = [], batch // 2
    while smaller >= 1:
        if batch % smaller == 0:
            steps = accumulation * batch // smaller
            out.append(Candidate(
                "batch", f"use micro-batches of {smaller} with {steps} accumulation steps "
                         f"(same effective batch of {batch * accumulation}; slower)",
                (("training", "per_device_train_batch_size", smaller),
                 ("training", "gradient_accumulation_steps", steps)),
                with_changes(inputs, training={"per_device_train_batch_size": smaller,
                                               "gradient_accumulation_steps": steps})))
        smaller //= 2
    return out


def _max_length_options(inputs: EstimateInputs, shortest: int = 64) -> list[Candidate]:
    out, length = [], inputs.max_length // 2
    while length >= shortest:
        out.append(Candidate("max_length", f"train on sequences of {length} tokens instead of "
                                            f"{inputs.max_length} (longer texts are cut)",
                              (("data", "max_length", length),), with_changes(inputs, max_length=length)))
        length //= 2
    return out


def _rank(inputs: EstimateInputs, smaller: int = 8) -> list[Candidate]:
    rank = int(inputs.lora.get("r", 8))
    if rank <= smaller:
        return []
    return [Candidate("rank", f"use LoRA rank {smaller} instead of {rank}", (("lora", "r", smaller),),
                       with_changes(inputs, lora={"r": smaller}))]


def _targets(inputs: EstimateInputs, fewer: tuple[str, ...] = ("q_proj", "v_proj")) -> list[Candidate]:
    """Adapters on the query and value projections only (the original LoRA recipe).

    Not offered when the targets are peft's default for the architecture (unset), already a subset,
    or when the model has no modules of those names.
    """
    targets = inputs.lora.get("target_modules")
    current = [targets] if isinstance(targets, str) else list(targets or [])
    if not current or set(current) <= set(fewer):
        return []
    names = {name.rpartition(".")[2] for name, _ in meta_peft_model(inputs).get_base_model().named_modules()}
    if not set(fewer) <= names:
        return []
    return [Candidate("targets", "put adapters on q_proj and v_proj only",
                       (("lora", "target_modules", list(fewer)),),
                       with_changes(inputs, lora={"target_modules": list(fewer)}))]


#: Changes with one setting to try; the option lists after them are tried mildest first.
SINGLE_CHANGES: tuple[Callable[[EstimateInputs], list[Candidate]], ...] = (
    _precision, _quantize, _checkpointing, _optimizer, _rank, _targets)
GRADED_CHANGES: tuple[Callable[[EstimateInputs], list[Candidate]], ...] = (_batch_options, _max_length_options)
