"""The estimate's module tree (analysis/estimate/module_estimate.py): every category attributed to
the modules of the meta model, checked against the estimate's own categories (made by a separate
path: count_parameters, optimizer_state_bytes over all shapes, combine_activations), against hand
counts from the config's shapes, and against the probe's measured tree of a real run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_MODEL, run_cli
from ftwatch.analysis import estimate as E
from ftwatch.analysis.estimate.module_estimate import estimate_modules
from ftwatch.common.config import load_config
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.module_tree import MODULE_CATEGORIES

FP32 = 4
STATIC = ("weights", "lora", "grads", "optimizer")


def tiny_json() -> dict[str, Any]:
    return json.loads((TINY_MODEL / "config.json").read_text())


def gpt2_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=128, vocab_size=320)


def opt_config() -> Any:
    from transformers import OPTConfig

    return OPTConfig(hidden_size=64, num_hidden_layers=3, ffn_dim=128, num_attention_heads=4, vocab_size=320,
                     max_position_embeddings=128, word_embed_proj_dim=64)


ARCHITECTURES = {
    "gpt2": (gpt2_config, ["c_attn", "c_proj"]),
    "opt": (opt_config, ["q_proj", "v_proj", "fc1"]),
}


def _sum(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for c, v in d.items():
            out[c] = out.get(c, 0) + v
    return out


def assert_tree_sums(result: Any, modules: dict[str, Any]) -> None:
    """The tree's totals are the estimate's categories; blocks sum to the totals, layers to their block."""
    expected = {c: result.categories[c] for c in MODULE_CATEGORIES if result.categories.get(c)}
    assert modules["totals"] == expected
    assert _sum([b["bytes"] for b in modules["blocks"]]) == expected
    layers = modules["layers"]
    assert layers, "no decoder layers found"
    container = layers[0]["path"].rsplit(".", 1)[0]
    block = next(b for b in modules["blocks"] if b["name"] == container)
    assert _sum([r["bytes"] for r in layers]) == block["bytes"]
    for row in layers:
        assert _sum(list(row["parts"].values())) == row["bytes"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiny_tree_sums_to_the_estimate(tiny_config: Any, checkpointing: bool) -> None:
    cfg = load_config(tiny_config(training={"gradient_checkpointing": checkpointing}))
    result = E.estimate(cfg, on_gpu=False)
    modules = estimate_modules(result)
    assert modules is not None and result.activations.method == "trace"
    assert_tree_sums(result, modules)
    assert modules["context"]["checkpointing"] is checkpointing
    assert modules["context"]["batch"] == 4 and modules["context"]["seq_len"] == 64


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_other_architectures_tree_sums_to_the_estimate(name: str, checkpointing: bool) -> None:
    make, targets = ARCHITECTURES[name]
    result = E.estimate_from_model_config(make(), dtype="float32", lora={"r": 4, "target_modules": targets},
                                          training={"per_device_train_batch_size": 2,
                                                    "gradient_checkpointing": checkpointing},
                                          max_length=32, on_gpu=False)
    modules = estimate_modules(result)
    assert modules is not None and result.activations.method == "trace"
    assert_tree_sums(result, modules)
    assert len(modules["layers"]) == 3
    assert all(row["parts"].get("lora", {}).get("lora") for row in modules["layers"])


def test_quantized_weights_and_8bit_optimizer_sum_to_the_estimate() -> None:
    result = E.estimate_from_model_config(E.load_model_config(str(TINY_MODEL)), load_in_4bit=True,
                                          lora={"r": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                                          training={"optim": "paged_adamw_8bit", "gradient_checkpointing": True},
                                          max_length=32, on_gpu=True)
    modules = estimate_modules(result)
    assert modules is not None
    assert_tree_sums(result, modules)


def test_bfloat16_with_every_second_layer_checkpointed_sums_to_the_estimate() -> None:
    result = E.estimate_from_model_config(
        gpt2_config(), dtype="bfloat16", lora={"r": 4, "target_modules": ["c_attn"]},
        training={"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2},
                  "optim": "adafactor"},
        max_length=32, on_gpu=True)
    modules = estimate_modules(result)
    assert modules is not None
    assert_tree_sums(result, modules)


def _tree(modules: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {row["path"]: row["bytes"] for row in modules["tree"]}


def test_tiny_weights_by_module_equal_a_hand_count(tiny_config: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    c = tiny_json()
    h, inter, vocab, r = c["hidden_size"], c["intermediate_size"], c["vocab_size"], 8
    kv = c["num_key_value_heads"] * c["head_dim"]
    assert c["tie_word_embeddings"] is False
    modules = estimate_modules(E.estimate(load_config(tiny_config()), on_gpu=False), full=True)
    tree = _tree(modules)
    weights = {path: values["weights"] for path, values in tree.items() if "weights" in values}
    expected = {"model.embed_tokens": vocab * h * FP32, "model.norm": h * FP32, "lm_head": vocab * h * FP32}
    shapes = {"self_attn.q_proj.base_layer": h * h, "self_attn.k_proj": h * kv, "self_attn.v_proj.base_layer": h * kv,
              "self_attn.o_proj": h * h, "mlp.gate_proj": h * inter, "mlp.up_proj": h * inter,
              "mlp.down_proj": inter * h, "input_layernorm": h, "post_attention_layernorm": h}
    for i in range(c["num_hidden_layers"]):
        expected.update({f"model.layers.{i}.{name}": n * FP32 for name, n in shapes.items()})
    # the rotary embedding's buffers, as torch counts them on a real (random) model
    real = AutoModelForCausalLM.from_config(E.load_model_config(str(TINY_MODEL)), dtype=torch.float32)
    expected["model.rotary_emb"] = sum(b.untyped_storage().nbytes() for b in real.model.rotary_emb.buffers())
    assert weights == expected
    adapters = {f"model.layers.{i}.self_attn.{proj}.{ab}.default": n
                for i in range(c["num_hidden_layers"])
                for proj, out in (("q_proj", h), ("v_proj", kv))
                for ab, n in (("lora_A", r * h), ("lora_B", out * r))}
    assert {p: v["lora"] for p, v in tree.items() if "lora" in v} == {p: n * FP32 for p, n in adapters.items()}
    assert {p: v["grads"] for p, v in tree.items() if "grads" in v} == {p: n * FP32 for p, n in adapters.items()}
    # AdamW: two states like the tensor, and a float32 step
    assert {p: v["optimizer"] for p, v in tree.items() if "optimizer" in v} == \
        {p: 2 * n * FP32 + FP32 for p, n in adapters.items()}
    for row in modules["layers"]:
        assert row["parts"]["lora"]["lora"] == sum(n for p, n in adapters.items()
                                                   if p.startswith(row["path"] + ".")) * FP32
        assert "weights" not in row["parts"]["lora"]


def test_tied_head_holds_no_weights_of_its_own() -> None:
    config = E.load_model_config(str(TINY_MODEL))
    config.tie_word_embeddings = True
    result = E.estimate_from_model_config(config, dtype="float32", lora={"r": 8, "target_modules": ["q_proj"]},
                                          on_gpu=False)
    blocks = {b["name"]: b["bytes"] for b in estimate_modules(result)["blocks"]}
    c = tiny_json()
    assert blocks["model.embed_tokens"]["weights"] == c["vocab_size"] * c["hidden_size"] * FP32
    assert "weights" not in blocks.get("lm_head", {})


def test_tiny_layer_activations_equal_a_hand_count(tiny_config: Any) -> None:
    """fp32, CPU kernels, LoRA on q and v, no checkpointing: what each module of a layer saves."""
    c = tiny_json()
    b, s, h, inter, r = 4, 64, c["hidden_size"], c["intermediate_size"], 8
    heads, hd = c["num_attention_heads"], c["head_dim"]
    modules = estimate_modules(E.estimate(load_config(tiny_config()), on_gpu=False), full=True)
    saved = {path: values["activations"] for path, values in _tree(modules).items() if "activations" in values}
    norm = b * s * h * FP32 + b * s * FP32  # RMSNorm: its float32 input and rsqrt
    rotary = 2 * s * hd * FP32  # cos and sin, saved by the first layer's rotary product
    expected = {"model.norm": norm}
    for i in range(c["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        if i:  # the first layer's input needs no grad: its input norm saves nothing
            expected[f"{layer}.input_layernorm"] = norm
        expected.update({
            f"{layer}.post_attention_layernorm": norm,
            # SDPA (CPU): q, k, v, its output and the float32 logsumexp
            f"{layer}.self_attn": 4 * b * s * h * FP32 + b * heads * s * FP32 + (0 if i else rotary),
            f"{layer}.self_attn.q_proj.lora_A.default": b * s * h * FP32,  # its input (v's lora_A shares it)
            f"{layer}.self_attn.q_proj.lora_B.default": b * s * r * FP32,
            f"{layer}.self_attn.v_proj.lora_B.default": b * s * r * FP32,
            f"{layer}.mlp.act_fn": b * s * inter * FP32,  # silu's input (gate)
            f"{layer}.mlp": 2 * b * s * inter * FP32,  # the product's inputs: silu(gate) and up
        })
    loss = saved.pop("")  # the model's top: the float32 log-softmax of the logits, labels, scalars
    assert saved == expected
    assert b * s * c["vocab_size"] * FP32 < loss < b * s * c["vocab_size"] * FP32 + b * s * 8 + 64
    assert [row["input"] for row in modules["layers"]] == [b * s * h * FP32] * c["num_hidden_layers"]


def test_layer_parts_put_each_norm_with_the_norms(tiny_config: Any) -> None:
    h = tiny_json()["hidden_size"]
    modules = estimate_modules(E.estimate(load_config(tiny_config()), on_gpu=False))
    for row in modules["layers"]:
        assert row["parts"]["norms"]["weights"] == 2 * h * FP32


def test_checkpointed_layers_hold_their_input_and_one_is_recomputed(tiny_config: Any) -> None:
    c = tiny_json()
    residual = 4 * 64 * c["hidden_size"] * FP32
    plain = estimate_modules(E.estimate(load_config(tiny_config()), on_gpu=False))
    ckpt = estimate_modules(E.estimate(load_config(tiny_config(training={"gradient_checkpointing": True})),
                                       on_gpu=False))
    plain_layers = [row["bytes"]["activations"] for row in plain["layers"]]
    layers = [row["bytes"]["activations"] for row in ckpt["layers"]]
    # the first layer saves the most of its own (the rotary cos/sin): it is the one recomputed in the
    # backward, live only then (the estimate's `other`); when the forward ends each layer holds its input
    assert ckpt["context"]["recomputed_layer"] == 0
    assert layers == [residual, residual]
    # the layer not recomputed: its parameters' bytes as before, and its input on the layer itself
    static = {part: {cat: n for cat, n in values.items() if cat != "activations"}
              for part, values in plain["layers"][1]["parts"].items()}
    assert ckpt["layers"][1]["parts"] == {**{p: v for p, v in static.items() if v}, "other": {"activations": residual}}
    # outside the layers nothing changes
    assert [x for x in ckpt["blocks"] if x["name"] != "model.layers"] == \
        [x for x in plain["blocks"] if x["name"] != "model.layers"]
    inputs = E.with_changes(E.inputs_from_config(load_config(tiny_config()), on_gpu=False), training={
        "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2}})
    every2 = estimate_modules(E.estimate_inputs(inputs))
    assert [row["bytes"]["activations"] for row in every2["layers"]] == [residual, plain_layers[1]]


def test_no_tree_when_the_formula_stands_in(monkeypatch: pytest.MonkeyPatch, tiny_config: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("op not supported on meta")

    from ftwatch.analysis.estimate import activation_trace

    monkeypatch.setattr(activation_trace, "trace_activations", broken)
    monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
    result = E.estimate(load_config(tiny_config(training={"per_device_train_batch_size": 3})), on_gpu=False)
    assert result.activations.method == "formula"
    assert estimate_modules(result) is None


def test_formula_trace_has_no_paths(tiny_config: Any) -> None:
    inputs = E.inputs_from_config(load_config(tiny_config()), on_gpu=False)
    trace = E.formula_activations(inputs, E.meta_peft_model(inputs))
    assert trace.saved_by_path == () and trace.layer_paths == ()


# --- against the probe's measured tree (needs the probe's `modules` event) ------------------------------

@pytest.mark.slow
def test_tiny_per_layer_activations_equal_the_probes(tiny_config: Any, tmp_path: Path) -> None:
    """Checkpointing off: each layer's estimated activations are what the probe measured in that layer
    on a real step (CPU, fp32, packed 64-token blocks so the shape is the estimate's)."""
    config = tiny_config(training={"max_steps": 2}, data={"packing": True})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    logs = list((tmp_path / "runs").glob("*/events.jsonl"))
    assert len(logs) == 1
    measured = [e for e in read_events(logs[0]) if e.get("kind") == "modules"]
    assert measured, "the probe wrote no `modules` event"
    event = measured[-1]
    context = event["context"]
    cfg = load_config(config)
    inputs = E.with_changes(E.inputs_from_config(cfg), training={"per_device_train_batch_size": context["batch"]},
                            max_length=context["seq_len"])
    estimated = estimate_modules(E.estimate_inputs(inputs))
    assert context["checkpointing"] is False
    assert [row["path"] for row in event["layers"]] == [row["path"] for row in estimated["layers"]]
    assert [row["bytes"].get("activations", 0) for row in event["layers"]] == \
        [row["bytes"].get("activations", 0) for row in estimated["layers"]]
    assert [row["input"] for row in event["layers"]] == [row["input"] for row in estimated["layers"]]
    # inside each layer too (fp32 on the CPU: the trace saves what the real step saves), and the blocks
    assert [row["parts"] for row in event["layers"]] == [row["parts"] for row in estimated["layers"]]
    assert event["blocks"] == estimated["blocks"]
    for category in STATIC:  # exact on both sides
        assert event["totals"].get(category, 0) == estimated["totals"].get(category, 0), category
