"""The forward trace carried from short copies to the full depth (``trace_extension``) is the full
model's own trace to the byte, or is not used.

The truth each test compares against is the untruncated model traced layer by layer
(``trace_activations`` on the full meta model), and, for a whole estimate, the estimate made with
the short copies turned off (the path every estimate took before them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from conftest import load_benchmark
from ftwatch.analysis.estimate import (
    ActivationTrace,
    EstimateInputs,
    activation_trace,
    estimate_inputs,
    meta_peft_model,
    step_trace,
    trace_activations,
    trace_extension,
)
from ftwatch.analysis.estimate.layer_repeat import repeat_start
from ftwatch.analysis.estimate.model_config import _to_pretrained_config
from ftwatch.analysis.estimate.module_estimate import modules_for_inputs

truth = load_benchmark("estimate_truth")

#: Deeper than the copies (at most 5 layers here), so that layers are carried over.
LAYERS = 8
#: Layer patterns that never settle into one repeating kind within 8 layers: the full trace.
ALTERNATING = {"gemma2", "gemma3"}


def _config(arch: str, dtype: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {**truth.ARCHITECTURES[arch][0], **(extra or {}), "dtype": dtype}
    config["n_layer" if "n_layer" in config else "num_hidden_layers"] = LAYERS
    return config


def _inputs(arch: str, attn: str, dtype: str = "float32", *, autocast: bool = False,
            checkpointing: bool = False, extra: dict[str, Any] | None = None) -> EstimateInputs:
    training: dict[str, Any] = {"per_device_train_batch_size": truth.BATCH, "optim": "adamw_torch",
                                "gradient_checkpointing": checkpointing}
    if autocast:
        training["bf16"] = True
    return EstimateInputs(model_config=_config(arch, dtype, extra), dtype=dtype, on_gpu=False,
                          lora={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                                "target_modules": truth.ARCHITECTURES[arch][1]},
                          training=training, max_length=truth.SEQ, attn_implementation=attn)


def _full_trace(inputs: EstimateInputs) -> ActivationTrace:
    """The truth: the full model's own trace, every layer run."""
    return trace_activations(meta_peft_model(inputs), inputs.batch_size, inputs.max_length,
                             inputs.autocast_dtype, inputs.on_gpu)


@pytest.fixture
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
    monkeypatch.setattr(step_trace, "_STEP_CACHE", {})


#: (architecture, attention, dtype, bfloat16 autocast): every architecture in each attention, in
#: float32; in bfloat16 weights and in float32 weights under bfloat16 autocast with SDPA.
TRACE_CASES = [(arch, attn, "float32", False) for arch in truth.ARCHITECTURES for attn in truth.attentions(arch)]
TRACE_CASES += [(arch, truth.attentions(arch)[-1], dtype, autocast) for arch in truth.ARCHITECTURES
                for dtype, autocast in (("bfloat16", False), ("float32", True))]


@pytest.mark.parametrize(("arch", "attn", "dtype", "autocast"), TRACE_CASES,
                         ids=[f"{a}-{b}-{c}{'-autocast' if d else ''}" for a, b, c, d in TRACE_CASES])
def test_the_carried_trace_is_the_full_trace(arch: str, attn: str, dtype: str, autocast: bool,
                                             fresh_caches: None) -> None:
    inputs = _inputs(arch, attn, dtype, autocast=autocast)
    model = meta_peft_model(inputs)
    full = _full_trace(inputs)
    assert len(full.layers) == LAYERS
    carried = trace_extension.extended_trace(inputs, model)
    if arch in ALTERNATING:
        assert carried is None
    else:
        assert carried is not None
        # field by field first, for a readable failure; then the whole trace
        assert carried.outside == full.outside
        assert carried.layers == full.layers
        assert carried.layer_inputs == full.layer_inputs
        assert carried.inputs_saved == full.inputs_saved
        assert carried.layer_paths == full.layer_paths
        assert carried.saved_by_path == full.saved_by_path
        assert carried.inputs_by_path == full.inputs_by_path
        assert carried == full
    assert trace_extension.cached_trace(inputs, model) == full


#: Layer patterns: every layer in a window (one kind), the last layers in a window (two kinds, the
#: repetition from layer 2), five windowed layers to one global (never one kind within 8 layers).
WINDOWS = [("mistral", {"sliding_window": 16}, 0),
           ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2}, 2),
           ("gemma3", {"sliding_window": 16}, None)]


@pytest.mark.parametrize(("arch", "extra", "start"), WINDOWS, ids=[w[0] for w in WINDOWS])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sliding_window_patterns_are_carried_only_from_where_they_repeat(
        arch: str, extra: dict[str, Any], start: int | None, attn: str, fresh_caches: None) -> None:
    inputs = _inputs(arch, attn, extra=extra)
    model = meta_peft_model(inputs)
    full = _full_trace(inputs)
    found = repeat_start(_to_pretrained_config(inputs.model_config), model)
    carried = trace_extension.extended_trace(inputs, model)
    if start is None:
        assert found is not None and found + 3 > LAYERS  # repeats too late to gain: the full trace
        assert carried is None
    else:
        assert found == start
        assert carried == full
    assert trace_extension.cached_trace(inputs, model) == full


def _without_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_extension, "extended_trace", lambda inputs, model: None)


def _traced_depths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The layer counts of the models traced from now on (so a test knows which way it went)."""
    depths: list[int] = []
    original = activation_trace.trace_activations

    def spy(model: Any, *args: Any, **kwargs: Any) -> ActivationTrace:
        trace = original(model, *args, **kwargs)
        depths.append(len(trace.layers))
        return trace

    monkeypatch.setattr(activation_trace, "trace_activations", spy)
    return depths


def _estimate_both_ways(inputs: EstimateInputs, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(the estimate and its module tree) with the short copies, then without them, caches emptied."""
    monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
    monkeypatch.setattr(step_trace, "_STEP_CACHE", {})
    with monkeypatch.context() as patch:
        depths = _traced_depths(patch)
        fast = estimate_inputs(inputs, capacity_bytes=2**30)
        fast_modules = modules_for_inputs(inputs, full=True)
    with monkeypatch.context() as patch:
        patch.setattr(activation_trace, "_TRACE_CACHE", {})
        patch.setattr(step_trace, "_STEP_CACHE", {})
        _without_copies(patch)
        old = estimate_inputs(inputs, capacity_bytes=2**30)
        old_modules = modules_for_inputs(inputs, full=True)
    return (fast, fast_modules, depths), (old, old_modules)


#: Each architecture in two opposite settings (attention, dtype, checkpointing), gemma3 (traced
#: whole: its layers alternate) in one: the trace test above covers every architecture x attention.
_SETTINGS = [("eager", "float32", False), ("sdpa", "bfloat16", True)]
ESTIMATE_CASES = [(arch, extra, *setting) for arch, extra in
                  [("llama", None), ("gpt2", None), ("qwen3_moe", None), ("qwen2", WINDOWS[1][1])]
                  for setting in _SETTINGS] + [("gemma3", None, "sdpa", "bfloat16", True)]


@pytest.mark.parametrize(("arch", "extra", "attn", "dtype", "checkpointing"), ESTIMATE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}-{'ckpt' if c[4] else 'plain'}" for c in ESTIMATE_CASES])
def test_the_whole_estimate_is_the_same_to_the_byte(arch: str, extra: dict[str, Any] | None, attn: str,
                                                    dtype: str, checkpointing: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(arch, attn, dtype, checkpointing=checkpointing, extra=extra)
    (fast, fast_modules, depths), (old, old_modules) = _estimate_both_ways(inputs, monkeypatch)
    assert (LAYERS in depths) == (arch in ALTERNATING)  # the full model traced only where it must be
    assert fast.categories == old.categories
    assert fast.activations == old.activations
    assert fast.to_json() == old.to_json()
    assert fast_modules == old_modules


def test_a_7b_estimate_with_its_priced_fixes_is_the_same_to_the_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed benchmark's run: a 30-layer model, its fixes priced by re-estimating (advice)."""
    from ftwatch.analysis.advice import estimate_and_advise
    from ftwatch.common.config import load_config

    speed = load_benchmark("estimate_speed")
    cfg = load_config(speed.write_config(tmp_path))

    def run() -> dict[str, Any]:
        monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
        monkeypatch.setattr(step_trace, "_STEP_CACHE", {})
        result = estimate_and_advise(cfg, 24 * 2**30, on_gpu=True)
        return {**result.to_json(), "suggestions": [s.to_json() for s in result.suggestions],
                "notes": list(result.notes)}

    with monkeypatch.context() as patch:
        depths = _traced_depths(patch)
        fast = run()
    with monkeypatch.context() as patch:
        _without_copies(patch)
        old = run()
    assert fast["suggestions"], "the benchmark's config does not fit 24 GiB: its fixes are priced"
    assert depths and max(depths) < 30, "every trace ran on a short copy"
    assert fast == old


# --- when the copies are not used ------------------------------------------------------------------

def test_copies_that_do_not_repeat_give_the_full_trace(monkeypatch: pytest.MonkeyPatch,
                                                       fresh_caches: None) -> None:
    """The longer copy's last layer saving a byte more than the shorter copy's: not carried."""
    inputs = _inputs("llama", "eager")
    model = meta_peft_model(inputs)
    original = trace_extension._copy_trace

    def uneven(inputs: EstimateInputs, config: Any, depth: int) -> ActivationTrace:
        trace = original(inputs, config, depth)
        if depth == 3:
            trace = dataclasses.replace(trace, layers=trace.layers[:-1] + (trace.layers[-1] + 1,))
        return trace

    monkeypatch.setattr(trace_extension, "_copy_trace", uneven)
    assert trace_extension.extended_trace(inputs, model) is None
    assert trace_extension.cached_trace(inputs, model) == _full_trace(inputs)


def test_a_later_layer_built_differently_moves_the_repetition(fresh_caches: None) -> None:
    """A layer the config does not set apart but whose modules differ (here a LoRA rank of its own,
    through peft's ``rank_pattern``) ends the layers before it, and shallow repetitions give the full
    trace."""
    inputs = _inputs("llama", "eager")
    odd = dataclasses.replace(inputs, lora={**inputs.lora, "rank_pattern": {"layers.6.self_attn.q_proj": 4}})
    config = _to_pretrained_config(odd.model_config)
    assert repeat_start(config, meta_peft_model(inputs)) == 0
    assert repeat_start(config, meta_peft_model(odd)) == 7
    assert trace_extension.extended_trace(odd, meta_peft_model(odd)) is None
    assert trace_extension.cached_trace(odd, meta_peft_model(odd)) == _full_trace(odd)


def test_a_model_too_shallow_to_gain_is_traced_whole(fresh_caches: None) -> None:
    inputs = dataclasses.replace(_inputs("llama", "eager"),
                                 model_config={**_config("llama", "float32"), "num_hidden_layers": 3})
    assert trace_extension.extended_trace(inputs, meta_peft_model(inputs)) is None


def test_a_trace_that_fails_on_the_copies_fails_on_the_full_model(monkeypatch: pytest.MonkeyPatch,
                                                                  fresh_caches: None) -> None:
    """The copies' failure is not the estimate's: the full model is traced, and its error stands."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no meta kernel for this op")

    monkeypatch.setattr(activation_trace, "trace_activations", refuse)
    inputs = _inputs("llama", "eager")
    with pytest.raises(RuntimeError, match="no meta kernel"):
        trace_extension.cached_trace(inputs, meta_peft_model(inputs))
    assert estimate_inputs(inputs).activations.method == "formula"


def test_extend_trace_puts_each_further_layer_after_the_last_one() -> None:
    trace = ActivationTrace(
        outside=5, layers=(7, 3), layer_inputs=(2, 2), inputs_saved=(0, 2),
        saved_by_path=(("m.embed", 1), ("m.layers.0.a", 7), ("m.layers.1.a", 2), ("m.layers.1", 3),
                       ("m.norm", 4)),
        inputs_by_path=(("m.layers.1", 2),), layer_paths=("m.layers.0", "m.layers.1"))
    carried = trace_extension.extend_trace(trace, ["m.layers.0", "m.layers.1", "m.layers.2", "m.layers.3"])
    assert carried.layers == (7, 3, 3, 3)
    assert carried.layer_inputs == (2, 2, 2, 2)
    assert carried.inputs_saved == (0, 2, 2, 2)
    assert carried.outside == 5
    assert carried.saved_by_path == (("m.embed", 1), ("m.layers.0.a", 7), ("m.layers.1.a", 2), ("m.layers.1", 3),
                                     ("m.layers.2.a", 2), ("m.layers.2", 3), ("m.layers.3.a", 2),
                                     ("m.layers.3", 3), ("m.norm", 4))
    assert carried.inputs_by_path == (("m.layers.1", 2), ("m.layers.2", 2), ("m.layers.3", 2))
    assert carried.total == 5 + 7 + 3 * 3 + 2 * 3
    with pytest.raises(ValueError, match="paths"):
        trace_extension.extend_trace(trace, ["m.layers.0", "m.layer.1", "m.layers.2"])
    broken = dataclasses.replace(trace, saved_by_path=(("m.layers.1.a", 2), ("m.norm", 4), ("m.layers.1", 3)))
    with pytest.raises(ValueError, match="one run"):
        trace_extension.extend_trace(broken, ["m.layers.0", "m.layers.1", "m.layers.2"])

