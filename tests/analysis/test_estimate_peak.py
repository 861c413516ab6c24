"""The meta estimate's peak (its categories summed) against the true CPU peak of a real training step.

The truth is ``benchmarks/estimate_truth.py``'s :func:`measure_training_peak`: the full model from
its config, peft's LoRA, two steps of a hand-written AdamW loop, the second measured with the
probe's peak meter. None of the estimate's code makes that figure. The shapes here are not the
benchmark's (hidden 128, vocabulary 2048, batch 2 x 64), on which the estimate was checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import load_benchmark, tiny_sections, write_config
from ftwatch.analysis import estimate as E
from ftwatch.analysis.estimate import step_trace
from ftwatch.common.config import load_config

truth = load_benchmark("estimate_truth")
TOLERANCE = 0.05
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def llama(vocab: int) -> dict[str, Any]:
    """A 3-layer llama config.json of hidden 64 and the given vocabulary."""
    return {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab,
            "max_position_embeddings": 512, "tie_word_embeddings": False}


@pytest.mark.parametrize(("dtype", "checkpointing", "vocab", "batch", "seq"), [
    # bfloat16, checkpointing on: the loss's float32 gradients of the logits make the peak
    ("bfloat16", True, 1024, 3, 96),
    # a small vocabulary and a long sequence: the peak is in a recomputed layer's backward
    ("float32", True, 128, 2, 384),
    # bfloat16, checkpointing off: both float32 loss buffers on top of every saved activation
    ("bfloat16", False, 1024, 3, 96),
])
def test_estimate_peak_meets_the_true_peak(dtype: str, checkpointing: bool, vocab: int, batch: int,
                                           seq: int) -> None:
    config = llama(vocab)
    measured = truth.measure_training_peak({**config, "dtype": dtype}, dtype, LORA["target_modules"],
                                           checkpointing, batch, seq)
    result = E.estimate_from_model_config(
        {**config, "dtype": dtype}, dtype=dtype, lora=LORA, on_gpu=False, max_length=seq,
        training={"per_device_train_batch_size": batch, "optim": "adamw_torch",
                  "gradient_checkpointing": checkpointing})
    assert result.activations is not None and result.activations.method == "trace"
    assert abs(result.total / measured - 1) < TOLERANCE, (result.total, measured, result.categories)


def test_a_checkpointed_step_leaves_the_shared_meta_model_as_it_found_it(tmp_path: Path) -> None:
    """The estimate's meta model is cached and shared: a step with checkpointing switches it on and
    off again. Enabling it on a peft model adds a second input hook that transformers' own disable
    leaves behind, and a later step without checkpointing then took the embeddings' output for
    trainable (one gradient buffer more: +66,560 B on the tiny model)."""
    inputs = E.inputs_from_config(load_config(write_config(tmp_path / "t.toml", tiny_sections(tmp_path))),
                                  on_gpu=False)
    step_trace._STEP_CACHE.clear()
    fresh = E.estimate_inputs(inputs).categories["other"]
    E.estimate_inputs(E.with_changes(inputs, training={"gradient_checkpointing": True}))
    step_trace._STEP_CACHE.clear()  # the same step again, on the model the checkpointed step used
    assert E.estimate_inputs(inputs).categories["other"] == fresh


def _peak_error(config: dict[str, Any], targets: list[str], dtype: str, checkpointing: bool, batch: int, seq: int,
                attn: str | None = None) -> tuple[float, Any]:
    """The estimate's peak over the measured one, less 1, and the estimate (for the message)."""
    measured = truth.measure_training_peak({**config, "dtype": dtype}, dtype, targets, checkpointing, batch, seq,
                                           attn=attn)
    result = E.estimate_from_model_config(
        {**config, "dtype": dtype}, dtype=dtype, lora={**LORA, "target_modules": targets}, on_gpu=False,
        max_length=seq, attn_implementation=attn,
        training={"per_device_train_batch_size": batch, "optim": "adamw_torch",
                  "gradient_checkpointing": checkpointing})
    return result.total / measured - 1, result


#: A mixture-of-experts model: transformers' experts call ``torch._grouped_mm``, whose meta kernel
#: takes bfloat16 only (the CPU kernel takes float32 too).
QWEN3_MOE = {"model_type": "qwen3_moe", "hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "moe_intermediate_size": 48,
             "num_experts": 6, "num_experts_per_tok": 2, "vocab_size": 768, "max_position_embeddings": 512,
             "tie_word_embeddings": False}


@pytest.mark.parametrize(("dtype", "checkpointing"), [("float32", True), ("float32", False), ("bfloat16", True)])
def test_mixture_of_experts_is_traced_and_meets_the_true_peak(dtype: str, checkpointing: bool) -> None:
    """float32 used to fall back to the formula and, with checkpointing, the bound (+10% and more)."""
    error, result = _peak_error(QWEN3_MOE, ["q_proj", "v_proj"], dtype, checkpointing, 3, 40)
    assert result.activations is not None and result.activations.method == "trace"
    assert abs(error) < TOLERANCE, (error, result.categories)


def _windowed(model_type: str) -> dict[str, Any]:
    """A 2-layer model of ``model_type`` whose attention window (24) is shorter than the sequence."""
    return {"model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
            "max_position_embeddings": 1024, "tie_word_embeddings": False, "sliding_window": 24}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["mistral", "gemma3_text"])
def test_a_window_shorter_than_the_sequence_meets_the_true_peak(model_type: str, attn: str) -> None:
    """SDPA gets a real mask past the window: the kernel keeps it (as an additive float mask) and
    transformers repeats the key/value heads for it; the trace used to build no mask at all."""
    error, result = _peak_error(_windowed(model_type), ["q_proj", "v_proj"], "float32", False, 2, 160, attn)
    assert abs(error) < TOLERANCE, (error, result.categories)


def test_bloom_at_batch_one_meets_the_true_peak() -> None:
    """bloom builds its alibi from the attention mask; at batch 1 with an all-ones mask the estimate
    (which passes none) still meets the true peak."""
    config = {"model_type": "bloom", "n_layer": 3, "hidden_size": 96, "n_head": 4, "vocab_size": 640}
    error, result = _peak_error(config, ["query_key_value"], "float32", False, 1, 160)
    assert abs(error) < TOLERANCE, (error, result.categories)
