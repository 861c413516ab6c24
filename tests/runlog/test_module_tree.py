"""The ``modules`` payload's shape: path normalization, the part of a decoder layer a path belongs to
(Llama, GPT-2, OPT and Falcon module names), and the sums (blocks -> totals, layers -> their block,
parts -> their layer), checked against figures written out by hand."""

from __future__ import annotations

import pytest

from ftwatch.runlog.module_tree import LOSS_BLOCK, build_modules, bytes_of, layer_part, normalize_path


@pytest.mark.parametrize(("raw", "expected"), [
    ("base_model.model.model.layers.0.self_attn", "model.layers.0.self_attn"),  # peft
    ("_orig_mod.model.layers.0.mlp", "model.layers.0.mlp"),                    # torch.compile
    ("module.model.embed_tokens", "model.embed_tokens"),                       # DDP
    ("module._orig_mod.base_model.model.lm_head", "lm_head"),                  # all of them, nested
    ("base_model.model", ""),                                                  # the wrapped model's own code
    ("base_model", ""),
    ("", ""),
    ("model.layers.0", "model.layers.0"),                                      # nothing to strip
])
def test_normalize_path_strips_every_wrapper(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(("rest", "part"), [
    # Llama (and Mistral, Qwen): below model.layers.N
    ("self_attn.q_proj.base_layer", "attention"),
    ("self_attn", "attention"),
    ("self_attn.q_proj.lora_A.default", "lora"),
    ("self_attn.v_proj.lora_B.default", "lora"),
    ("mlp.gate_proj", "mlp"),
    ("mlp.act_fn", "mlp"),
    ("input_layernorm", "norms"),
    ("", "other"),
    # GPT-2: below transformer.h.N
    ("attn.c_attn", "attention"),
    ("attn.c_proj", "attention"),
    ("mlp.c_fc", "mlp"),
    ("ln_1", "norms"),
    ("ln_2", "norms"),
    # OPT: below model.decoder.layers.N
    ("self_attn.k_proj", "attention"),
    ("fc1", "mlp"),
    ("fc2", "mlp"),
    ("final_layer_norm", "norms"),
    # Falcon: below transformer.h.N
    ("self_attention.query_key_value", "attention"),
    ("mlp.dense_h_to_4h", "mlp"),
    ("mlp.dense_4h_to_h.lora_A.default", "lora"),
    ("input_layernorm", "norms"),
])
def test_layer_part_by_architecture(rest, part):
    assert layer_part(rest) == part


@pytest.mark.parametrize("rest", ["post_attention_layernorm",  # Llama's second norm
                                  "self_attn_layer_norm",      # OPT's first norm
                                  "ln_attn"])                  # Falcon (new decoder architecture)
def test_layer_part_norms_named_after_attention(rest):
    """A norm named after the attention it follows is a norm, not attention."""
    assert layer_part(rest) == "norms"


def _by_path() -> dict[str, dict[str, int]]:
    return {
        "base_model.model.model.embed_tokens": {"weights": 1000},
        "base_model.model.model.layers.0.input_layernorm": {"weights": 10, "activations": 7},
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer": {"weights": 100},
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default": {"lora": 8, "grads": 8, "activations": 50},
        "base_model.model.model.layers.0.self_attn": {"activations": 300},
        "base_model.model.model.layers.0.mlp": {"activations": 400, "weights": 0},
        "base_model.model.model.layers.1": {"activations": 64},
        "base_model.model.model.layers.1.mlp.act_fn": {"activations": 200},
        "base_model.model.model.norm": {"weights": 4, "activations": 9},
        "base_model.model.lm_head": {"weights": 2000},
        "base_model.model": {"activations": 5000},
    }


def test_build_modules_sums_blocks_layers_and_parts():
    payload = build_modules(_by_path(), ["base_model.model.model.layers.0", "base_model.model.model.layers.1"])
    # totals written out by hand from _by_path
    assert payload["totals"] == {"weights": 1000 + 10 + 100 + 4 + 2000, "lora": 8, "grads": 8,
                                 "activations": 7 + 50 + 300 + 400 + 64 + 200 + 9 + 5000}
    blocks = {b["name"]: b["bytes"] for b in payload["blocks"]}
    assert [b["name"] for b in payload["blocks"]] == ["model.embed_tokens", "model.layers", "model.norm", "lm_head",
                                                      LOSS_BLOCK]
    assert blocks["model.layers"] == {"weights": 110, "lora": 8, "grads": 8, "activations": 7 + 50 + 300 + 400 + 64 + 200}
    assert blocks[LOSS_BLOCK] == {"activations": 5000}
    layer0, layer1 = payload["layers"]
    assert (layer0["index"], layer0["path"], layer1["path"]) == (0, "model.layers.0", "model.layers.1")
    assert layer0["bytes"] == {"weights": 110, "lora": 8, "grads": 8, "activations": 757}
    assert layer0["parts"] == {"norms": {"weights": 10, "activations": 7}, "attention": {"weights": 100, "activations": 300},
                               "lora": {"lora": 8, "grads": 8, "activations": 50}, "mlp": {"activations": 400}}
    assert layer1["parts"] == {"other": {"activations": 64}, "mlp": {"activations": 200}}
    assert "tree" not in payload
    # the sums the payload promises
    for category in ("weights", "lora", "grads", "optimizer", "activations"):
        assert sum(b["bytes"].get(category, 0) for b in payload["blocks"]) == payload["totals"].get(category, 0)
        assert sum(r["bytes"].get(category, 0) for r in payload["layers"]) == blocks["model.layers"].get(category, 0)
        for row in payload["layers"]:
            assert sum(p.get(category, 0) for p in row["parts"].values()) == row["bytes"].get(category, 0)


def test_build_modules_full_tree_keeps_every_path_with_bytes():
    payload = build_modules(_by_path(), ["model.layers.0", "model.layers.1"], full=True)
    tree = {row["path"]: row["bytes"] for row in payload["tree"]}
    assert tree["model.layers.0.mlp"] == {"activations": 400}  # the zero weight is dropped
    assert tree[""] == {"activations": 5000}
    assert len(tree) == len(_by_path())


def test_build_modules_without_layers_has_top_level_blocks_only():
    payload = build_modules({"encoder.block": {"weights": 3}, "": {"activations": 2}}, [])
    assert payload["layers"] == []
    assert [(b["name"], b["bytes"]) for b in payload["blocks"]] == [("encoder", {"weights": 3}),
                                                                   (LOSS_BLOCK, {"activations": 2})]


def test_bytes_of_counts_absent_categories_as_zero():
    assert bytes_of({"weights": 3, "activations": 4}) == 7
    assert bytes_of({"weights": 3, "activations": 4}, ("activations", "grads")) == 4
    assert bytes_of(None) == 0
