"""bitsandbytes weights on the CPU (bitsandbytes 0.50 has a CPU backend): the probe counts a 4-bit
weight with its quantization state and an 8-bit weight with its row scales, checked against a hand
count from config.json and bitsandbytes' storage layout, and the estimate meets the probe."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY_MODEL, run_cli
from ftwatch.runlog.event_reader import read_events

pytest.importorskip("bitsandbytes")
torch = pytest.importorskip("torch")

FP32 = 4
#: bitsandbytes' 4-bit: two values a byte, a float32 absmax per block of 64 values (transformers'
#: default blocksize), a 16-entry float32 code book per weight. 8-bit: a byte a value and a float32
#: scale per output row.
NF4_BLOCK, NF4_CODE = 64, 16 * FP32


def _tiny() -> dict[str, int]:
    cfg = json.loads((TINY_MODEL / "config.json").read_text())
    head_dim = cfg["head_dim"]
    return {"h": cfg["hidden_size"], "inter": cfg["intermediate_size"], "layers": cfg["num_hidden_layers"],
            "vocab": cfg["vocab_size"], "kv": cfg["num_key_value_heads"] * head_dim, "head_dim": head_dim,
            "tied": cfg["tie_word_embeddings"]}


def _linears() -> list[tuple[str, int, int]]:
    """``(name, out_features, in_features)`` of one decoder layer's projections."""
    c = _tiny()
    h, inter, kv = c["h"], c["inter"], c["kv"]
    return [("self_attn.q_proj", h, h), ("self_attn.k_proj", kv, h), ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, h), ("mlp.gate_proj", inter, h), ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter)]


def nf4_bytes(out_features: int, in_features: int) -> int:
    n = out_features * in_features
    return math.ceil(n / 2) + math.ceil(n / NF4_BLOCK) * FP32 + NF4_CODE


def int8_bytes(out_features: int, in_features: int) -> int:
    return out_features * in_features + out_features * FP32


def unquantized_bytes() -> int:
    """Embeddings, LM head and norms in float32, and the rotary buffers (inv_freq and
    original_inv_freq: head_dim/2 float32 values each)."""
    c = _tiny()
    h, vocab = c["h"], c["vocab"]
    params = vocab * h * (1 if c["tied"] else 2) + (2 * c["layers"] + 1) * h
    return params * FP32 + 2 * (c["head_dim"] // 2) * FP32


def load(bits: int):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.float32) if bits == 4
                    else BitsAndBytesConfig(load_in_8bit=True))
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32, quantization_config=quantization,
                                                device_map="cpu")


@pytest.mark.parametrize(("bits", "layer_bytes"), [(4, nf4_bytes), (8, int8_bytes)])
def test_quantized_weights_are_counted_with_their_state_by_hand(bits, layer_bytes) -> None:
    from ftwatch.training.probe import accounting

    model = load(bits)
    expected = _tiny()["layers"] * sum(layer_bytes(o, i) for _, o, i in _linears()) + unquantized_bytes()
    assert accounting.model_bytes(model, base_only=True)["weights"] == expected
    # without the state (absmax and code, or the row scales) the parameters alone hold less
    plain = sum(p.untyped_storage().nbytes() for p in model.parameters()) + \
        sum(b.untyped_storage().nbytes() for b in model.buffers())
    state = _tiny()["layers"] * sum(
        (math.ceil(o * i / NF4_BLOCK) * FP32 + NF4_CODE) if bits == 4 else o * FP32 for _, o, i in _linears())
    assert plain + state == expected


@pytest.mark.parametrize("bits", [4, 8])
def test_the_split_by_module_gives_each_layer_its_state(bits) -> None:
    from ftwatch.training.probe import accounting
    from ftwatch.training.probe.module_meter import model_bytes_by_module

    model = load(bits)
    rows = model_bytes_by_module(model, base_only=True)
    layer_bytes = nf4_bytes if bits == 4 else int8_bytes
    for name, out_features, in_features in _linears():
        assert rows[f"model.layers.0.{name}"]["weights"] == layer_bytes(out_features, in_features), name
    assert sum(r.get("weights", 0) for r in rows.values()) == accounting.model_bytes(model, base_only=True)["weights"]


MEASURED = ("weights", "lora", "grads", "optimizer", "activations")


def _run(tiny_config, tmp_path, **model) -> tuple[dict[str, int], dict[str, int]]:
    """``ftwatch run`` of the bundled example on a bfloat16 base: the last step's snapshot and the
    pre-flight estimate, from the run log."""
    config = tiny_config(model={"dtype": "bfloat16", **model}, training={"max_steps": 2})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    log = next(p for p in (tmp_path / "runs").glob("*/events.jsonl") if str(config.stem) in p.parent.name)
    events = list(read_events(log))
    snapshot = [e for e in events if e["kind"] == "snapshot" and e.get("step")][-1]["categories"]
    estimate = next(e for e in events if e["kind"] == "estimate")["estimate_bytes"]
    return snapshot, estimate


@pytest.mark.slow
def test_a_4bit_run_on_the_cpu_meets_its_estimate_and_really_holds_more(tiny_config, tmp_path) -> None:
    four, four_estimate = _run(tiny_config, tmp_path, load_in_4bit=True)
    plain, plain_estimate = _run(tiny_config, tmp_path)
    layers = _tiny()["layers"]
    # the worker's QLoRA recipe casts what bitsandbytes leaves unquantized to float32
    assert four["weights"] == layers * sum(nf4_bytes(o, i) for _, o, i in _linears()) + unquantized_bytes()
    for category in MEASURED:
        assert four_estimate[category] == four[category], category
        assert plain_estimate[category] == plain[category], category
    # on this model 4-bit adds to the peak: the embeddings and LM head are most of the weights, and
    # in float32 (as the activations) they outgrow what the projections lose
    assert sum(four[c] for c in MEASURED) > sum(plain[c] for c in MEASURED)
    assert four["activations"] > plain["activations"]
