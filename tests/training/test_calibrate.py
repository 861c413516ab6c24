"""``--calibrate``'s measurement against the truth: the calibrated peak of a full model (1- and
2-layer copies trained in a real Trainer, extrapolated) against the measured CPU peak of a real
training step of the full model, made by ``benchmarks/estimate_truth.py`` with the libraries' own
calls (``from_config``, peft, ``torch.optim.AdamW``) and the peak meter, none of the calibration's
code.

The tolerance is 1%: on the CPU the peak meter counts bytes exactly and a decoder's step holds
exactly the same per layer, so the two agree to within a few bytes (8 for llama: a scalar of the Trainer's
loss path); a copy built wrong (a layer list not cut, the wrong dtype,
checkpointing or adapters missing) is off by far more (checkpointing alone moves the peak by a quarter
in the benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, load_benchmark, write_config
from ftwatch.analysis.estimate import estimate
from ftwatch.analysis.estimate.calibration import CopyPeak, at_micro_batch, extrapolate
from ftwatch.analysis.estimate.truncate import truncate_config, unrepresented_kinds
from ftwatch.common.config import load_config
from ftwatch.training.calibrate.copies import measure_copies

truth = load_benchmark("estimate_truth")
TOLERANCE = 0.01
#: Six layers, hidden 64: the full model is three times the 2-layer copy, and trains in a second.
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256, "tie_word_embeddings": False}
MODELS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "llama": ({"model_type": "llama", **SMALL}, ["q_proj", "v_proj"]),
    "qwen2": ({"model_type": "qwen2", **SMALL}, ["q_proj", "v_proj"]),
    "gpt2": ({"model_type": "gpt2", "n_embd": 64, "n_layer": 6, "n_head": 4, "vocab_size": 512, "n_positions": 256},
             ["c_attn"]),
}


def _config(tmp_path: Path, model: dict[str, Any], targets: list[str], checkpointing: bool, batch: int,
            seq: int, dtype: str = "float32") -> Any:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({**model, "dtype": dtype}))
    path = write_config(tmp_path / "run.toml", {
        "model": {"name": str(model_dir), "dtype": dtype},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": targets},
        "training": {"per_device_train_batch_size": batch, "optim": "adamw_torch",
                     "gradient_checkpointing": checkpointing, "use_cpu": True},
        "data": {"path": str(REPO / "examples" / "data" / "field-notes.jsonl"), "max_length": seq},
    })
    return load_config(path)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_calibrated_peak_meets_the_full_models_measured_peak(name: str, checkpointing: bool, tmp_path: Path) -> None:
    model, targets = MODELS[name]
    cfg = _config(tmp_path, model, targets, checkpointing, batch=2, seq=64)
    measured = truth.measure_training_peak({**model, "dtype": "float32"}, "float32", targets, checkpointing, 2, 64)
    meta = estimate(cfg, on_gpu=False)
    copies = measure_copies(cfg, meta.inputs.model_config, "cpu", 2, 64)
    assert [c.layers for c in copies] == [1, 2]
    calibrated = extrapolate(copies, 6, meta.categories, meta.total)
    assert abs(calibrated.total / measured - 1) <= TOLERANCE, (name, checkpointing, calibrated.total, measured)
    # the copies really are shallower: the full model holds more than the 2-layer copy
    assert copies[1].peak < measured
    # the measured weights, carried to six layers, are the counted ones (the layers are alike)
    assert calibrated.extrapolated["weights"] == meta.categories["weights"]


def test_bfloat16_copies_meet_the_bfloat16_model(tmp_path: Path) -> None:
    model, targets = MODELS["llama"]
    cfg = _config(tmp_path, model, targets, False, batch=2, seq=64, dtype="bfloat16")
    measured = truth.measure_training_peak({**model, "dtype": "bfloat16"}, "bfloat16", targets, False, 2, 64)
    meta = estimate(cfg, on_gpu=False)
    calibrated = extrapolate(measure_copies(cfg, meta.inputs.model_config, "cpu", 2, 64), 6, meta.categories)
    assert abs(calibrated.total / measured - 1) <= TOLERANCE


def test_extrapolation_follows_a_line_through_the_copies() -> None:
    fixed = {"weights": 1000, "activations": 300, "other": 50, "non_torch": 7000}
    per_layer = {"weights": 200, "activations": 90, "other": 0, "non_torch": 0}

    def at(layers: int) -> CopyPeak:
        cats = {k: fixed[k] + per_layer[k] * layers for k in fixed}
        return CopyPeak(layers, sum(cats.values()), cats)

    result = extrapolate([at(2), at(1)], 9, {"weights": 2800})
    assert result.extrapolated == {k: fixed[k] + per_layer[k] * 9 for k in fixed}
    assert result.categories["weights"] == 2800  # the count, over the measurement
    assert result.total == 2800 + 300 + 90 * 9 + 50 + 7000
    # a category that does not grow with depth keeps the larger copy's figure, whatever the smaller says
    noisy = CopyPeak(1, 0, {**at(1).categories, "non_torch": 6000})
    assert extrapolate([noisy, at(2)], 9, {}).categories["non_torch"] == 7000


def test_two_micro_batches_price_a_third_on_their_line() -> None:
    def calibration(batch: int) -> Any:
        cats = {"weights": 500, "activations": 100 * batch, "other": 20 * batch}
        return extrapolate([CopyPeak(1, sum(cats.values()), cats)], 1, {})

    priced = at_micro_batch((4, calibration(4)), (2, calibration(2)), 16)
    assert priced == {"weights": 500, "activations": 1600, "other": 320}


def test_per_layer_lists_are_cut_and_unlike_layers_are_told(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    gemma3 = AutoConfig.for_model("gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)
    assert len(gemma3.layer_types) == 8 and "full_attention" in gemma3.layer_types
    cut = truncate_config(gemma3, 2)
    assert cut.num_hidden_layers == 2 and cut.layer_types == gemma3.layer_types[:2]
    assert gemma3.num_hidden_layers == 8  # the original is untouched
    model = AutoModelForCausalLM.from_config(cut)
    assert len(model.model.layers) == 2
    assert unrepresented_kinds(gemma3, 2) == {"full_attention": gemma3.layer_types.count("full_attention")}

    moe = AutoConfig.for_model("qwen3_moe", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
                               moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1, 3])
    cut = truncate_config(moe, 2)
    assert cut.mlp_only_layers == [1]
    assert unrepresented_kinds(moe, 2) == {}  # a sparse and a dense layer: both kinds are in the copies
    assert unrepresented_kinds(moe, 1) == {"dense mlp": 2}
