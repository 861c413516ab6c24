"""End to end: the ``modules`` events of ``ftwatch run`` on the bundled tiny model. Every event's
figures sum to the same step's snapshot categories exactly, at every level, and each decoder
layer's activations equal a hand count from the model's config.json (what each op saves for backward)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_MODEL, run_cli, tiny_sections, write_config
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.module_tree import MODULE_CATEGORIES

pytestmark = pytest.mark.slow

FP32, INT64 = 4, 8
BATCH, SEQ, R = 4, 64, 8  # tiny_sections: per_device_train_batch_size, max_length, LoRA r (q_proj, v_proj)


def run_events(tmp_path: Path, **overrides: dict) -> list[dict]:
    config = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, **overrides))
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    return list(read_events(run_dir))


def shape() -> dict[str, int]:
    cfg = json.loads((TINY_MODEL / "config.json").read_text())
    return {"H": cfg["hidden_size"], "I": cfg["intermediate_size"], "nh": cfg["num_attention_heads"],
            "hd": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"], "V": cfg["vocab_size"],
            "layers": cfg["num_hidden_layers"]}


def hand_count_layer(index: int) -> dict[str, int]:
    """What decoder layer ``index`` saves for backward, by module, in bytes (no checkpointing, SDPA
    on CPU, frozen fp32 base, LoRA r on q_proj and v_proj, dropout 0). N = batch x seq tokens.
    Frozen linears save nothing (their input only serves their weight's gradient); layer 0's input
    (the frozen embedding's output) needs no gradient, so its first norm saves nothing either."""
    s = shape()
    n, h, i_, nh, hd = BATCH * SEQ, s["H"], s["I"], s["nh"], s["hd"]
    rms = n * h * FP32 + n * FP32  # RMSNorm: its input (for pow) and rsqrt(mean + eps) (N x 1)
    counts = {
        # input_layernorm: needs a gradient from layer 1 on (layer 0's input is the frozen embedding's)
        "input_layernorm": rms if index > 0 else 0,
        # lora_A of q_proj saves its input, the normed hidden state (N x H); v_proj's lora_A the same storage
        "self_attn.q_proj.lora_A.default": n * h * FP32,
        # each lora_B saves its input, lora_A's output (N x r)
        "self_attn.q_proj.lora_B.default": n * R * FP32,
        "self_attn.v_proj.lora_B.default": n * R * FP32,
        # attention's own code: SDPA (CPU flash) saves q, k, v and its output (B x nh x S x hd each) and
        # the logsumexp (B x nh x S); the rotary mul saves cos and sin (1 x 1 x S x hd), one storage for
        # every layer, so they count once, in layer 0
        "self_attn": 4 * n * nh * hd * FP32 + BATCH * nh * SEQ * FP32 + (2 * SEQ * hd * FP32 if index == 0 else 0),
        # post_attention_layernorm: as input_layernorm (its input needs a gradient in every layer)
        "post_attention_layernorm": rms,
        # SiLU saves its input, gate_proj's output (N x I)
        "mlp.act_fn": n * i_ * FP32,
        # the mlp's own mul: act(gate) and up_proj's output (N x I each)
        "mlp": 2 * n * i_ * FP32,
    }
    return {f"model.layers.{index}.{k}" if k else f"model.layers.{index}": v for k, v in counts.items() if v}


def check_sums(event: dict, snapshot: dict) -> None:
    """Totals == the snapshot, blocks == totals, layers == their block, parts == their layer (exact)."""
    cats = snapshot["categories"]
    assert event["totals"] == {c: cats[c] for c in MODULE_CATEGORIES if cats.get(c)}
    blocks = {b["name"]: b["bytes"] for b in event["blocks"]}
    assert list(blocks)[-1] == "loss" and list(blocks)[0] == "model.embed_tokens"
    for c in MODULE_CATEGORIES:
        assert sum(b.get(c, 0) for b in blocks.values()) == cats[c], c
        assert sum(r["bytes"].get(c, 0) for r in event["layers"]) == blocks["model.layers"].get(c, 0), c
        for row in event["layers"]:
            assert sum(p.get(c, 0) for p in row["parts"].values()) == row["bytes"].get(c, 0), (c, row["path"])
    if "tree" in event:
        for c in MODULE_CATEGORIES:
            assert sum(t["bytes"].get(c, 0) for t in event["tree"]) == cats[c], c


def measured_pairs(events: list[dict]) -> list[tuple[dict, dict]]:
    """(snapshot, modules) per training step whose forward was measured; every such step has its event."""
    snapshots = {e["step"]: e for e in events if e["kind"] == "snapshot" and e.get("step")}
    modules = {e["step"]: e for e in events if e["kind"] == "modules"}
    measured = [step for step, e in snapshots.items() if e.get("activations_measured") is not False]
    assert sorted(modules) == sorted(measured) and measured
    return [(snapshots[step], modules[step]) for step in sorted(measured)]


def test_modules_full_run_sums_and_hand_count_per_layer(tmp_path):
    events = run_events(tmp_path, training={"max_steps": 3}, monitor={"modules": "full", "activations_every": 2})
    s = shape()
    pairs = measured_pairs(events)
    assert [snap["step"] for snap, _ in pairs] == [1, 3]  # activations_every=2: step 2 repeats step 1's shape
    n = BATCH * SEQ
    for snapshot, event in pairs:
        check_sums(event, snapshot)
        assert event["phase"] == "training"
        assert event["context"] == {"batch": BATCH, "seq_len": SEQ, "checkpointing": False, "vocab_size": s["V"],
                                    "dtype": "float32"}
        tree = {t["path"]: t["bytes"].get("activations", 0) for t in event["tree"]}
        for row in event["layers"]:
            expected = hand_count_layer(row["index"])
            got = {path: nbytes for path, nbytes in tree.items()
                   if (path == row["path"] or path.startswith(row["path"] + ".")) and nbytes}
            assert got == expected, row["path"]
            assert row["bytes"]["activations"] == sum(expected.values())
            assert row["input"] == n * s["H"] * FP32  # the residual stream entering the layer
        # outside the layers: the final norm (input and rsqrt), the frozen lm_head nothing, and the loss:
        # log_softmax's output (N x V) and the shifted labels (N, int64), plus its few scalars
        assert tree["model.norm"] == n * s["H"] * FP32 + n * FP32
        assert tree.get("lm_head", 0) == 0
        assert n * s["V"] * FP32 + n * INT64 <= tree[""] <= n * s["V"] * FP32 + n * INT64 + 16
    layer_totals = [r["bytes"]["activations"] for r in pairs[0][1]["layers"]]
    assert layer_totals == [963584, 1021952]  # the figures above for this config (reported)


def test_modules_sums_with_gradient_accumulation(tmp_path):
    events = run_events(tmp_path, training={"max_steps": 2, "gradient_accumulation_steps": 2},
                        monitor={"activations_every": 1})
    pairs = measured_pairs(events)
    assert len(pairs) == 2
    for snapshot, event in pairs:
        check_sums(event, snapshot)
        assert "tree" not in event  # summary: blocks and layers only
        assert event["context"]["batch"] == BATCH and event["context"]["seq_len"] == SEQ
        for row in event["layers"]:
            assert row["bytes"]["activations"] == sum(hand_count_layer(row["index"]).values())


def test_modules_sums_with_gradient_checkpointing(tmp_path):
    events = run_events(tmp_path, training={"max_steps": 2, "gradient_checkpointing": True},
                        monitor={"activations_every": 1})
    pairs = measured_pairs(events)
    s = shape()
    for snapshot, event in pairs:
        check_sums(event, snapshot)
        assert event["context"]["checkpointing"] is True
        for row in event["layers"]:
            # a checkpointed layer keeps only its hidden-state input (N x H), in its own code ("other")
            assert row["bytes"]["activations"] == BATCH * SEQ * s["H"] * FP32 == row["input"]
            assert row["parts"]["other"]["activations"] == row["bytes"]["activations"]


def test_modules_off_writes_no_modules_event(tmp_path):
    events = run_events(tmp_path, training={"max_steps": 2}, monitor={"modules": "off", "activations_every": 1})
    assert [e for e in events if e["kind"] == "modules"] == []
    assert [e["categories"]["activations"] > 0 for e in events if e["kind"] == "snapshot" and e.get("step")] == \
        [True, True]
