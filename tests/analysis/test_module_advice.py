"""Advice from the module tree, checked against what checkpointing really changes on the tiny model.

The payload is built from this file's own counter (a ``saved_tensors_hooks`` pack hook that records
each saved storage once, with the running module from forward hooks), not from the probe; the
savings the advice prices are compared with the saved bytes measured with checkpointing really on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftwatch.analysis.module_advice import ModuleAdvice, chunk_bytes, module_advice
from ftwatch.runlog.module_tree import build_modules

TINY = Path(__file__).resolve().parents[2] / "src" / "ftwatch" / "bundled_example" / "tiny-llama"
BATCH, SEQ = 4, 64


# --------------------------------------------------------------------------------------------------
# The independent measurement: a saved-tensor counter with the module stack.


@dataclass
class Counted:
    """What one forward saved for backward: bytes per module path, layer inputs, storages in several layers."""

    by_path: dict[str, dict[str, int]] = field(default_factory=dict)
    inputs: dict[int, int] = field(default_factory=dict)
    shared: dict[int, int] = field(default_factory=dict)
    total: int = 0


def _tiny(torch: Any) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model.train()
    return model


def _decoder_layers(model: Any) -> list[Any]:
    return list(model.base_model.model.model.layers)


def _count_forward(torch: Any, model: Any) -> tuple[Counted, Any]:
    """One forward under the counter: each saved storage once (parameters and buffers left out)."""
    names = {module: name for name, module in model.named_modules()}
    layers = {module: i for i, module in enumerate(_decoder_layers(model))}
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    stack: list[Any] = []
    counted = Counted()
    first: dict[int, tuple[str, int, Any]] = {}
    layers_of: dict[int, set[int]] = {}

    def pre(module: Any, args: tuple[Any, ...]) -> None:
        stack.append(module)
        if module in layers and args:
            counted.inputs[layers[module]] = args[0].numel() * args[0].element_size()

    def post(module: Any, args: Any, output: Any) -> None:
        stack.pop()

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in own:
            first.setdefault(key, (names[stack[-1]] if stack else "", storage.nbytes(), tensor))
            inside = [layers[m] for m in stack if m in layers]
            if inside:
                layers_of.setdefault(key, set()).add(inside[-1])
        return tensor

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    ids = torch.randint(3, 512, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = model(input_ids=ids, labels=ids)
    finally:
        for handle in handles:
            handle.remove()
    for key, (path, nbytes, _) in first.items():
        slot = counted.by_path.setdefault(path, {})
        slot["activations"] = slot.get("activations", 0) + nbytes
        counted.total += nbytes
        if len(layers_of.get(key, ())) > 1:
            owner = min(layers_of[key])
            counted.shared[owner] = counted.shared.get(owner, 0) + nbytes
    return counted, out


def _payload(counted: Counted, n_layers: int) -> dict[str, Any]:
    paths = [f"model.layers.{i}" for i in range(n_layers)]
    payload = build_modules(counted.by_path, paths)
    for row in payload["layers"]:
        row["input"] = counted.inputs[row["index"]]
        if counted.shared.get(row["index"]):
            row["shared"] = counted.shared[row["index"]]
    payload["context"] = {"batch": BATCH, "seq_len": SEQ, "checkpointing": False, "vocab_size": 512,
                          "dtype": "float32"}
    return payload


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    """Saved bytes of one forward of the tiny model: plain, every layer checkpointed, layer 0 only."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    kwargs = {"use_reentrant": False}

    plain, _ = _count_forward(torch, _tiny(torch))

    model = _tiny(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    every, _ = _count_forward(torch, model)

    model = _tiny(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for layer in _decoder_layers(model)[1:]:
        layer.gradient_checkpointing = False  # only layer 0 checkpointed
    first_only, out = _count_forward(torch, model)
    out.loss.backward()  # the plan trains

    model = _tiny(torch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=2)
    by_every_n, _ = _count_forward(torch, model)  # the snippet's call: the same as layer 0 only
    return {"torch": torch, "plain": plain, "every": every, "first": first_only, "every_n": by_every_n,
            "n_layers": len(_decoder_layers(model))}


def _by_kind(advice: list[ModuleAdvice], kind: str) -> list[ModuleAdvice]:
    return [a for a in advice if a.kind == kind]


# --------------------------------------------------------------------------------------------------
# Checkpointing, priced against reality.


def test_layer_plans_match_the_measured_saving(measured: dict[str, Any]) -> None:
    plain: Counted = measured["plain"]
    payload = _payload(plain, measured["n_layers"])
    plans = {a.layers: a for a in _by_kind(module_advice(payload), "checkpoint_layers")}
    assert set(plans) == {(0, 1), (0,)}  # all layers, every 2nd (= layer 0 on two layers); every 4th is the same

    # Exact for the saved bytes when the forward ends.
    assert plans[(0, 1)].saving_bytes == plain.total - measured["every"].total
    assert plans[(0,)].saving_bytes == plain.total - measured["first"].total
    assert measured["every_n"].total == measured["first"].total  # every_n_layers=2 is layer 0 only
    assert plans[(0,)].saving_bytes > 0

    # The recompute term, a backward-time peak and not a saved byte: the largest checkpointed layer's
    # activations as this counter saw them.
    layer_acts = {i: sum(v["activations"] for p, v in plain.by_path.items()
                         if (p + ".").startswith(f"base_model.model.model.layers.{i}."))
                  for i in range(measured["n_layers"])}
    assert plans[(0, 1)].recompute_bytes == max(layer_acts.values())
    assert plans[(0,)].recompute_bytes == layer_acts[0]
    assert "every_n_layers=2" in (plans[(0,)].code or "")


def test_the_measurement_is_what_the_shapes_say(measured: dict[str, Any]) -> None:
    """The counter itself, by hand: checkpointing every layer leaves, in each layer, only its input
    (batch x seq x hidden fp32), and shared storages are the rotary cos and sin (seq x head_dim each)."""
    hidden, head_dim = 64, 16
    every: Counted = measured["every"]
    for i in range(measured["n_layers"]):
        assert every.by_path[f"base_model.model.model.layers.{i}"]["activations"] == BATCH * SEQ * hidden * 4
        assert measured["plain"].inputs[i] == BATCH * SEQ * hidden * 4
    assert measured["plain"].shared == {0: 2 * SEQ * head_dim * 4}


def test_only_mlp_matches_the_measured_saving(measured: dict[str, Any]) -> None:
    """The snippet of "only the MLP", run as printed, saves what the advice says."""
    torch = measured["torch"]
    plain: Counted = measured["plain"]
    advice = _by_kind(module_advice(_payload(plain, measured["n_layers"])), "checkpoint_mlp")
    assert len(advice) == 1 and advice[0].code
    model = _tiny(torch)
    exec(advice[0].code, {"model": model})  # noqa: S102 - the advice's own snippet, as a user would paste it
    counted, out = _count_forward(torch, model)
    out.loss.backward()
    assert advice[0].saving_bytes == plain.total - counted.total


def test_only_attention_matches_the_measured_saving(measured: dict[str, Any]) -> None:
    """The snippet of "only the attention", run as printed. The layer calls its attention with keyword
    arguments, so the checkpoint keeps the normed input in its closure where this counter cannot see
    it: the counter's saving is the attention's and its adapters' bytes; the advice's is that minus
    the kept input (one hidden-state tensor a layer) and minus the adapters it does not count."""
    torch = measured["torch"]
    plain: Counted = measured["plain"]
    advice = _by_kind(module_advice(_payload(plain, measured["n_layers"])), "checkpoint_attention")[0]
    model = _tiny(torch)
    exec(advice.code or "", {"model": model})  # noqa: S102 - the advice's own snippet
    counted, out = _count_forward(torch, model)
    out.loss.backward()
    adapters = sum(v["activations"] for p, v in plain.by_path.items() if ".self_attn." in p and ".lora_" in p)
    inputs = sum(plain.inputs.values())
    assert advice.saving_bytes == plain.total - counted.total - adapters - inputs


def test_needed_bytes_picks_the_mildest_plan() -> None:
    rows = [{"index": i, "path": f"model.layers.{i}", "bytes": {"activations": 1000}, "input": 100,
             "parts": {"attention": {"activations": 400}, "mlp": {"activations": 500}}} for i in range(8)]
    payload = {"layers": rows, "blocks": [{"name": "model.layers", "bytes": {"activations": 8000}}],
               "context": {"checkpointing": False, "batch": 1, "seq_len": 16}}
    # every k-th of 8 layers: k=1 -> 8 layers, k=2 -> 4, k=3 -> 3 (0, 3, 6), k=4..7 -> 2, k=8 -> 1; each
    # saves 900 per layer at the forward's end and recomputes 1000 in the backward: m layers reach
    # 900 * m - 1000.
    cases = ((800, (0, 4)), (1700, (0, 3, 6)), (1800, (0, 2, 4, 6)), (2700, tuple(range(8))), (6200, tuple(range(8))))
    for needed, layers in cases:
        plans = _by_kind(module_advice(payload, needed_bytes=needed), "checkpoint_layers")
        assert [p.layers for p in plans] == [layers], needed
        assert plans[0].saving_bytes == 900 * len(layers)
        assert plans[0].reaches is True
        assert "mildest" in plans[0].detail
    too_much = _by_kind(module_advice(payload, needed_bytes=7000), "checkpoint_layers")
    assert [p.layers for p in too_much] == [tuple(range(8))] and too_much[0].reaches is False
    listed = _by_kind(module_advice(payload), "checkpoint_layers")
    assert [p.layers for p in listed] == [tuple(range(8)), (0, 2, 4, 6), (0, 4)]
    # 8 x 900 = 7200 B saved when the forward ends; 7200 - 1000 recomputed = 6200 B, a lower bound at the peak
    assert listed[0].title.startswith("checkpoint every layer: saves 7.0 KiB of activations, at least 6.1 KiB off "
                                      "the peak")
    assert "at least 800 B off the peak" in listed[2].title  # 2 x 900 - 1000
    parts = {a.kind: a.saving_bytes for a in module_advice(payload)}
    assert parts["checkpoint_attention"] == 8 * (400 - 100) and parts["checkpoint_mlp"] == 8 * (500 - 100)


def test_checkpointing_on_prices_nothing() -> None:
    rows = [{"index": i, "bytes": {"activations": 100}, "input": 100, "parts": {}} for i in range(4)]
    advice = module_advice({"layers": rows, "context": {"checkpointing": True}}, needed_bytes=10)
    assert [(a.kind, a.saving_bytes) for a in advice] == [("checkpointing_on", 0)]
    assert "already" in advice[0].title


# --------------------------------------------------------------------------------------------------
# The logits / loss.


def _vocab_payload(batch: int = 2, seq: int = 1024, vocab: int = 128_000) -> tuple[dict[str, Any], int, int]:
    loss = batch * seq * vocab * 4 + batch * seq * 8  # log_softmax's fp32 output and the int64 labels
    layers = 4 * 300_000
    payload = {
        "totals": {"activations": loss + layers},
        "blocks": [{"name": "model.embed_tokens", "bytes": {"weights": 10}},
                   {"name": "model.layers", "bytes": {"activations": layers}},
                   {"name": "model.norm", "bytes": {}},
                   {"name": "lm_head", "bytes": {"weights": 10}},
                   {"name": "loss", "bytes": {"activations": loss}}],
        "layers": [{"index": i, "bytes": {"activations": 300_000}, "input": 200_000, "parts": {}} for i in range(4)],
        "context": {"batch": batch, "seq_len": seq, "checkpointing": True, "vocab_size": vocab, "dtype": "float32"},
    }
    return payload, loss, loss + layers


def test_logits_dominate_chunked_cross_entropy_by_hand() -> None:
    payload, loss, total = _vocab_payload()
    advice = module_advice(payload)
    chunked = _by_kind(advice, "chunked_loss")
    assert len(chunked) == 1
    # 8 chunks of the 1024-token sequence: one chunk is 128 tokens, an eighth of the loss block.
    assert loss % 8 == 0 and chunked[0].saving_bytes == loss * 7 // 8
    assert "8 chunks" in chunked[0].title and "vocab 128000" in chunked[0].detail
    halved = _by_kind(advice, "halve_batch")
    assert len(halved) == 1 and halved[0].saving_bytes == total // 2
    assert "gradient accumulation x2" in halved[0].title


def test_chunk_count_follows_the_wanted_saving() -> None:
    payload, loss, _ = _vocab_payload(seq=1000)
    # wanted: just over 3/4 of the loss block -> 2 and 4 chunks fall short, 8 chunks (125 tokens) reach it.
    chunked = _by_kind(module_advice(payload, needed_bytes=loss * 3 // 4 + 1), "chunked_loss")[0]
    assert chunked.reaches is True
    assert "(8 chunks)" in chunked.title
    assert chunked.saving_bytes == loss - -(-loss * 125 // 1000)
    assert chunk_bytes(loss, 3, 1000) == -(-loss * 334 // 1000)  # ceil(1000 / 3) = 334 tokens


def test_small_vocab_gives_no_logits_advice() -> None:
    payload, _, _ = _vocab_payload(vocab=8)
    assert not _by_kind(module_advice(payload), "chunked_loss")
    assert not _by_kind(module_advice(payload), "halve_batch")


def test_malformed_payload_is_no_advice() -> None:
    assert module_advice({"layers": "x", "blocks": [1, {"name": 3}], "context": []}) == []
    assert module_advice({"layers": [{"bytes": {"activations": "lots"}, "input": None}]}) == []
    assert module_advice([]) == []  # type: ignore[arg-type]
