"""``ftwatch estimate``: parameter counts, category bytes, activation accuracy, the CLI.

Every expected figure is computed independently of the estimate code: from real models on the CPU
(instantiated, loaded, trained one step, measured with ``saved_tensors_hooks``) or by hand.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES_ROOT, REPO, TINY_DATA, TINY_MODEL, load_benchmark, run_cli, write_config
from ftwatch.analysis import estimate as E
from ftwatch.cli import main as cli_main
from ftwatch.common.config import load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.common.units import parse_size

FIXTURES = FIXTURES_ROOT / "configs"
DEEPSEEK = FIXTURES / "deepseek-llm-7b-base-dims"
LORA_QV = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TOLERANCE = 0.15


bench = load_benchmark("estimate_accuracy")


def inputs_for(model_dir: Path, *, dtype: str = "float32", lora: dict | None = None, batch: int = 2,
               seq: int = 64, on_gpu: bool = False, **training: Any) -> E.EstimateInputs:
    return E.EstimateInputs(model_config=E.load_model_config(str(model_dir)), dtype=dtype,
                            lora=LORA_QV if lora is None else lora,
                            training={"per_device_train_batch_size": batch, **training}, max_length=seq,
                            on_gpu=on_gpu)


@pytest.fixture(scope="module")
def larger_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated Llama (hidden 512, 8 layers, GQA, ~170 MB in float32): config only, random weights."""
    return bench.write_model_config(tmp_path_factory.mktemp("models") / "llama-512x8", bench.LARGER_CONFIG)


# --- parameter counts -------------------------------------------------------------------------------

ARCHITECTURES = {"tiny-llama-gqa": ["q_proj", "v_proj"], "tiny-mistral": ["q_proj", "v_proj"],
                 "tiny-qwen2": ["q_proj", "v_proj"], "tiny-gpt2": ["c_attn"], "tiny-phi": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_param_counts_equal_the_instantiated_model(name: str) -> None:
    model_dir = FIXTURES / name
    lora = {"r": 4, "target_modules": ARCHITECTURES[name]}
    real = bench.load_real_model(model_dir, "float32", lora)  # real from_config on the CPU + real peft
    unique = {p.untyped_storage().data_ptr(): p for p in real.parameters()}.values()
    result = E.estimate_from_model_config(E.load_model_config(str(model_dir)), dtype="float32", lora=lora,
                                          on_gpu=False)
    assert result.params_base == sum(p.numel() for p in unique if not p.requires_grad)
    assert result.params_trainable == sum(p.numel() for p in unique if p.requires_grad)
    assert result.params_total == sum(p.numel() for p in unique)


def test_7b_param_count_by_hand_fast_and_on_meta() -> None:
    h, inter, layers, vocab = 4096, 11008, 30, 102400
    expected = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h
    inputs = E.EstimateInputs(model_config=E.load_model_config(str(DEEPSEEK)), dtype="float32", lora={"r": 16, "target_modules": ["q_proj", "v_proj"]})
    E._build_meta_peft_model(inputs)  # warm up imports and lazy modules
    started = time.perf_counter()
    model = E._build_meta_peft_model(inputs)
    counts = E.count_parameters(model)
    elapsed = time.perf_counter() - started
    assert counts.base == expected == 6_910_365_696
    assert counts.trainable == layers * 2 * 16 * (h + h)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert elapsed < 1.5, f"building and counting a 7B model took {elapsed:.2f}s"


# --- weights, lora, grads, optimizer: exact ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_static_categories_equal_measured_tiny_example(dtype: str) -> None:
    real = bench.load_real_model(TINY_MODEL, dtype)  # from_pretrained + peft
    measured = bench.measure_static(real)  # after a real backward and torch.optim.AdamW step
    result = E.estimate_from_model_config(E.load_model_config(str(TINY_MODEL)), dtype=dtype, lora=LORA_QV,
                                          training={"optim": "adamw_torch"}, on_gpu=False)
    for category in ("weights", "lora", "grads", "optimizer"):
        assert result.categories[category] == measured[category], category


def test_peft_keeps_adapters_in_float32_on_a_bfloat16_base() -> None:
    import torch

    real = bench.load_real_model(TINY_MODEL, "bfloat16")
    trainable = [p for p in real.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}
    result = E.estimate_from_model_config(E.load_model_config(str(TINY_MODEL)), dtype="bfloat16", lora=LORA_QV)
    assert result.categories["lora"] == 4 * sum(p.numel() for p in trainable)


def test_dtype_auto_reads_config_json(tmp_path: Path) -> None:
    assert E.resolve_dtype("auto", E.load_model_config(str(DEEPSEEK))) == "bfloat16"  # "torch_dtype"
    assert E.resolve_dtype("auto", E.load_model_config(str(TINY_MODEL))) == "float32"  # "dtype"
    bare = json.loads((FIXTURES / "tiny-qwen2" / "config.json").read_text())
    bare.pop("dtype", None)
    bare.pop("torch_dtype", None)
    assert E.resolve_dtype("auto", bare) == "float32"
    assert E.resolve_dtype("float16", bare) == "float16"


def test_quantized_weights_by_hand() -> None:
    h, inter, layers, vocab = 4096, 11008, 30, 102400
    linear_shapes = [(h, h)] * 4 + [(inter, h)] * 2 + [(h, inter)]
    per_layer_linear = [o * i for o, i in linear_shapes]
    # prepare_model_for_kbit_training keeps everything bitsandbytes did not quantize in float32
    rest = 4 * (2 * vocab * h + layers * 2 * h + h) + 4 * (128 // 2) * 2  # embeddings, lm_head, norms, rope buffers
    nf4 = layers * sum(n // 2 + math.ceil(n / 64) * 4 + 64 for n in per_layer_linear)
    int8 = layers * sum(n + o * 4 for n, (o, _) in zip(per_layer_linear, linear_shapes, strict=True))
    config = E.load_model_config(str(DEEPSEEK))
    four = E.estimate_from_model_config(config, dtype="bfloat16", load_in_4bit=True, lora={"r": 8})
    eight = E.estimate_from_model_config(config, dtype="bfloat16", load_in_8bit=True, lora={"r": 8})
    assert four.categories["weights"] == nf4 + rest
    assert eight.categories["weights"] == int8 + rest


SHAPES = [((8, 4096), 4), ((4096, 8), 4), ((8, 64), 4), ((64,), 4)]


@pytest.mark.parametrize(("optim", "expected"), [
    # bitsandbytes blockwise 8-bit: uint8 state, a float32 absmax per 256 values and a 256-entry
    # float32 map per state; tensors under 4096 values keep 32-bit state
    ("paged_adamw_8bit", lambda: 2 * 2 * (32768 + 128 * 4 + 1024) + 2 * 4 * (512 + 64)),
    ("adamw_bnb_8bit", lambda: 2 * 2 * (32768 + 128 * 4 + 1024) + 2 * 4 * (512 + 64)),
    ("paged_adamw_32bit", lambda: 2 * 4 * (32768 * 2 + 512 + 64)),
    ("lomo", lambda: 0),
])
def test_bitsandbytes_optimizer_state_by_hand(optim: str, expected: Any) -> None:
    assert E.optimizer_state_bytes(SHAPES, optim) == expected()


@pytest.mark.parametrize(("optim", "args", "make"), [
    ("adamw_torch", None, lambda ps: __import__("torch").optim.AdamW(ps)),
    ("adamw_torch_fused", None, lambda ps: __import__("torch").optim.AdamW(ps, fused=True)),
    ("sgd", None, lambda ps: __import__("torch").optim.SGD(ps, lr=0.1)),
    ("sgd", "momentum=0.9", lambda ps: __import__("torch").optim.SGD(ps, lr=0.1, momentum=0.9)),
    ("adagrad", None, lambda ps: __import__("torch").optim.Adagrad(ps)),
    ("rmsprop", "momentum=0.9,centered=True",
     lambda ps: __import__("torch").optim.RMSprop(ps, momentum=0.9, centered=True)),
    ("adafactor", None, lambda ps: __import__("transformers").optimization.Adafactor(
        ps, lr=1e-3, scale_parameter=False, relative_step=False)),
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_optimizer_state_equals_measured(optim: str, args: str | None, make: Any, dtype: str) -> None:
    import torch

    if optim == "adamw_torch_fused" and dtype == "bfloat16":
        pytest.skip("fused AdamW on CPU takes float32 parameters")
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=getattr(torch, dtype))) for shape in ((8, 48), (48, 8), (5,))]
    optimizer = make(params)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    measured = sum(v.untyped_storage().nbytes() for s in optimizer.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))
    shapes = [(tuple(p.shape), p.element_size()) for p in params]
    assert E.optimizer_state_bytes(shapes, optim, args) == measured


# --- activations -----------------------------------------------------------------------------------------

def _within(estimate: int, measured: int, tolerance: float = TOLERANCE) -> bool:
    return abs(estimate / measured - 1) <= tolerance


def test_activations_within_15_percent_tiny_example() -> None:
    real = bench.load_real_model(TINY_MODEL)
    rows = []
    for batch in (1, 2, 4, 8):
        for seq in (32, 64, 128):
            measured = bench.measure_activations(real, batch, seq)
            trace, formula = bench.estimated(TINY_MODEL, batch, seq)
            rows.append((batch, seq, measured, trace, formula))
    for batch, seq, measured, trace, formula in rows:
        assert _within(trace, measured), (batch, seq, measured, trace)
        assert _within(formula, measured), (batch, seq, measured, formula)


def test_activations_within_15_percent_larger_model(larger_model_dir: Path) -> None:
    real = bench.load_real_model(larger_model_dir)
    for batch, seq in ((1, 64), (2, 64), (4, 64), (8, 32), (2, 32), (2, 128)):
        measured = bench.measure_activations(real, batch, seq)
        trace, formula = bench.estimated(larger_model_dir, batch, seq)
        assert _within(trace, measured), (batch, seq, measured, trace)
        assert _within(formula, measured), (batch, seq, measured, formula)


@pytest.mark.parametrize(("dtype", "lora", "training", "autocast"), [
    ("bfloat16", LORA_QV, {}, None),
    ("float32", {"r": 16, "target_modules": "all-linear"}, {}, None),
    ("bfloat16", {"r": 16, "target_modules": "all-linear"}, {}, None),
    ("float32", {**LORA_QV, "lora_dropout": 0.1}, {}, None),
    ("float32", LORA_QV, {"bf16": True}, "bfloat16"),  # fp32 weights under mixed precision
    ("bfloat16", LORA_QV, {"bf16": True}, "bfloat16"),
])
def test_activation_variants(dtype: str, lora: dict, training: dict, autocast: str | None) -> None:
    real = bench.load_real_model(TINY_MODEL, dtype, lora)
    measured = bench.measure_activations(real, 2, 64, autocast=autocast)
    inputs = inputs_for(TINY_MODEL, dtype=dtype, lora=lora, **training)
    assert _within(E.estimate_activations(inputs).total, measured)


def test_dora_counts_only_what_stays_saved() -> None:
    lora = {**LORA_QV, "use_dora": True}
    real = bench.load_real_model(TINY_MODEL, "float32", lora)
    live = bench.measure_activations(real, 2, 32, live=True)
    estimate = E.estimate_activations(inputs_for(TINY_MODEL, lora=lora, seq=32)).total
    assert _within(estimate, live, 0.01)
    # counting at save time also counts the saved tensors of the detached weight-norm branch
    assert bench.measure_activations(real, 2, 32) > live


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_activations_other_architectures(name: str) -> None:
    lora = {"r": 4, "target_modules": ARCHITECTURES[name]}
    real = bench.load_real_model(FIXTURES / name, "float32", lora)
    measured = bench.measure_activations(real, 2, 64)
    assert _within(E.estimate_activations(inputs_for(FIXTURES / name, lora=lora)).total, measured)


def test_gradient_checkpointing_saved_inputs_and_one_recomputed_layer() -> None:
    import torch

    real = bench.load_real_model(TINY_MODEL)
    plain = bench.measure_activations(real, 2, 64)
    (getattr(real, "activation_checkpointing_enable", None) or real.gradient_checkpointing_enable)()  # current name
    measured_forward = bench.measure_activations(real, 2, 64)
    # one layer recomputed in the backward pass: what a layer saves when its input requires grad
    layer = real.get_base_model().model.layers[1]
    hidden = torch.randn(2, 64, 64, requires_grad=True)
    rotary = real.get_base_model().model.rotary_emb
    cos_sin = rotary(hidden, torch.arange(64).unsqueeze(0))
    saved: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in real.parameters()}
    excluded = params | {hidden.untyped_storage().data_ptr()}

    def pack(t: Any) -> Any:
        if t.untyped_storage().data_ptr() not in excluded:
            saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    layer.gradient_checkpointing = False
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(hidden, position_embeddings=cos_sin, attention_mask=None)
    estimate = E.estimate_activations(inputs_for(TINY_MODEL, gradient_checkpointing=True))
    assert _within(estimate.saved_forward, measured_forward)
    assert _within(estimate.recompute, sum(saved.values()))
    assert estimate.total < plain


def test_formula_is_used_when_the_trace_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("op not supported on meta")

    from ftwatch.analysis.estimate import activation_trace

    monkeypatch.setattr(activation_trace, "trace_activations", broken)  # where the estimate calls it
    monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
    result = E.estimate_inputs(inputs_for(TINY_MODEL, batch=3, seq=48))
    assert result.activations.method == "formula"
    assert any("formula" in note for note in result.notes)
    measured = bench.measure_activations(bench.load_real_model(TINY_MODEL), 3, 48)
    assert _within(result.categories["activations"], measured)


# --- verdicts ------------------------------------------------------------------------------------------

def test_judge() -> None:
    assert E.judge(50, 10, None) == (None, None)
    assert E.judge(50, 10, 100) == ("fits", None)
    assert E.judge(91, 10, 100) == ("tight", None)
    assert E.judge(90, 10, 100) == ("fits", None)
    assert E.judge(101, 10, 100) == ("does_not_fit", "training")
    assert E.judge(150, 120, 100) == ("does_not_fit", "loading_model")


def test_non_torch_only_on_gpu() -> None:
    config = E.load_model_config(str(TINY_MODEL))
    gpu = E.estimate_from_model_config(config, dtype="float32", lora=LORA_QV, on_gpu=True)
    cpu = E.estimate_from_model_config(config, dtype="float32", lora=LORA_QV, on_gpu=False)
    assert gpu.categories["non_torch"] == E.NON_TORCH_BYTES
    assert "non_torch" not in cpu.categories
    assert gpu.total - cpu.total == E.NON_TORCH_BYTES


# --- the motivating case and the CLI ---------------------------------------------------------------------

def motivating_config(tmp_path: Path, **overrides: dict[str, Any]) -> Path:
    """deepseek-llm-7b-base's dimensions in float32, as the user who died in from_pretrained had it."""
    (tmp_path / "notes.jsonl").write_text('{"text": "a small data file"}\n')
    sections: dict[str, dict[str, Any]] = {
        "model": {"name": str(DEEPSEEK), "dtype": "float32"},
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
        "training": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "max_steps": 100},
        "data": {"path": "notes.jsonl", "max_length": 512},
    }
    for section, table in overrides.items():
        sections.setdefault(section, {}).update(table)
    return write_config(tmp_path / "deepseek-7b.toml", sections)


def run_estimate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(["estimate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_motivating_case_does_not_fit_at_loading_and_bfloat16_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = motivating_config(tmp_path)
    code, out, _ = run_estimate(capsys, str(config), "--gpu-memory", "22.3GB", "--json")
    assert code == 0
    result = json.loads(out)
    capacity = parse_size("22.3GB")
    assert result["capacity_bytes"] == capacity
    assert result["verdict"] == "does_not_fit"
    assert result["fails_at"] == "loading_model"
    assert result["estimate_bytes"]["weights"] == 4 * 6_910_365_696 + 4 * 64 * 2  # + the rope buffers
    assert result["estimate_bytes"]["total"] == sum(v for k, v in result["estimate_bytes"].items() if k != "total")
    first = result["suggestions"][0]
    assert first["config"] == '[model] dtype = "bfloat16"'
    assert first["fits_after"] is True and first["fails_at_after"] is None
    bf16_weights = 2 * 6_910_365_696 + 4 * 64 * 2
    assert bf16_weights + E.NON_TORCH_BYTES < capacity  # independently: bfloat16 loads
    assert first["saves_bytes"] >= result["estimate_bytes"]["weights"] - bf16_weights


def test_motivating_case_text_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_estimate(capsys, str(motivating_config(tmp_path)), "--gpu-memory", "22.3GB")
    assert code == 0
    assert "DOES NOT FIT" in out and "while loading the model" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("1."))
    assert "bfloat16" in lines[first] and '[model] dtype = "bfloat16"' in lines[first + 1]
    assert "-> fits" in lines[first + 1]
    for category in ("weights", "lora", "grads", "optimizer", "activations", "non_torch", "peak"):
        assert any(line.split()[:1] == [category] for line in lines), category


def test_strict_exits_1_when_it_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(motivating_config(tmp_path))
    assert run_estimate(capsys, config, "--gpu-memory", "22.3GB", "--strict")[0] == 1
    assert run_estimate(capsys, config, "--gpu-memory", "80GB", "--strict")[0] == 0


def test_fits_and_tight_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(motivating_config(tmp_path, model={"dtype": "bfloat16"}))
    _, out, _ = run_estimate(capsys, config, "--gpu-memory", "80GB", "--json")
    total = json.loads(out)["estimate_bytes"]["total"]
    assert json.loads(out)["verdict"] == "fits"
    _, out, _ = run_estimate(capsys, config, "--gpu-memory", f"{int(total / 0.95)}B", "--json")
    assert json.loads(out)["verdict"] == "tight"
    _, out, _ = run_estimate(capsys, config, "--gpu-memory", f"{total - 1}B", "--json")
    assert (json.loads(out)["verdict"], json.loads(out)["fails_at"]) == ("does_not_fit", "training")


def test_budget_is_the_capacity_of_a_cpu_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.commands import estimate as command

    monkeypatch.setattr(command, "nvml_free_bytes", lambda: None)
    config = write_config(tmp_path / "tiny.toml", {
        "model": {"name": str(TINY_MODEL), "dtype": "float32"}, "lora": LORA_QV,
        "training": {"per_device_train_batch_size": 4}, "data": {"path": str(TINY_DATA), "max_length": 64},
        "monitor": {"budget": "1GiB"}})
    _, out, _ = run_estimate(capsys, str(config), "--json")
    result = json.loads(out)
    assert (result["capacity_bytes"], result["capacity_source"]) == (2**30, "budget")
    assert "non_torch" not in result["estimate_bytes"]
    assert result["verdict"] == "fits"


def test_nvml_errors_are_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    from ftwatch.commands.estimate import nvml_free_bytes

    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    assert nvml_free_bytes() is None


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["example", "batch 8 x 128"])
def test_matches_ftwatch_run_on_the_tiny_example(variant: str, tmp_path: Path, tiny_config: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if variant == "example":
        config = REPO / "examples" / "tiny-lora.toml"
    else:
        config = tiny_config(training={"per_device_train_batch_size": 8, "max_steps": 2},
                             data={"max_length": 128})
    proc = run_cli("run", str(config), "--headless", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout)["peak_bytes"]
    _, out, _ = run_estimate(capsys, str(config), "--json")
    estimated = json.loads(out)["estimate_bytes"]
    # the run trains with the Trainer's default optimizer (adamw_torch_fused): same state as adamw_torch
    for category in ("weights", "lora", "grads", "optimizer"):
        assert estimated[category] == measured[category], category
    assert _within(estimated["activations"], measured["activations"])


@pytest.mark.parametrize(("args", "fragment"), [
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--gpu-memory", "0"], "--gpu-memory"),
])
def test_bad_gpu_memory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                         fragment: str) -> None:
    code, out, err = run_estimate(capsys, str(motivating_config(tmp_path)), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_missing_model_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    config = motivating_config(tmp_path, model={"name": str(empty)})
    code, out, err = run_estimate(capsys, str(config))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert "config.json" in err and str(config) in err


def test_missing_config_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_estimate(capsys, str(tmp_path / "nope.toml"))
    assert code == 2 and "no such config file" in err


def test_usage_errors_print_no_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    proc = run_cli("estimate", str(motivating_config(tmp_path, model={"name": str(empty)})), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        E.load_model_config("some-org/not-cached-anywhere")
    assert "hub cannot be reached" in info.value.message and "HF_HUB_OFFLINE" in info.value.message
    assert time.perf_counter() - started < 5


def test_estimate_function_names_the_config_on_errors(tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    cfg = load_config(motivating_config(tmp_path, model={"name": str(empty)}))
    with pytest.raises(ConfigError) as info:
        E.estimate(cfg, None)
    assert info.value.path == str(cfg.path)


# --- the validation `ftwatch run` makes ------------------------------------------------------------------

@pytest.mark.parametrize(("training", "words"), [
    ({"optim": "adamw_bogus"}, ["[training].optim", '"adamw_bogus"']),
    ({"learnin_rate": 1e-3}, ["unknown key [training].learnin_rate", '"learning_rate"']),
])
def test_estimate_validates_the_library_sections_as_run_does(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            training: dict[str, Any], words: list[str]) -> None:
    from conftest import tiny_sections
    from ftwatch.training.config_checks import check_config

    config = write_config(tmp_path / "tiny.toml", tiny_sections(tmp_path, training=training))
    code, out, err = run_estimate(capsys, str(config), "--gpu-memory", "80GB")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(config) in err
    for word in words:
        assert word in err
    with pytest.raises(ConfigError) as info:  # `ftwatch run`'s check says the same
        check_config(load_config(config), "run")
    assert err.strip() == f"ftwatch estimate: {info.value}"


def test_estimate_of_a_config_only_model_notes_what_a_run_needs(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_estimate(capsys, str(motivating_config(tmp_path)), "--gpu-memory", "22.3GB", "--json")
    assert code == 0
    notes = [n for n in json.loads(out)["notes"] if "`ftwatch run` would refuse" in n]
    assert len(notes) == 1 and "no weights" in notes[0] and "no tokenizer" in notes[0]
    code, out, _ = run_estimate(capsys, str(REPO / "examples" / "tiny-lora.toml"), "--gpu-memory", "1GiB", "--json")
    assert code == 0 and not any("would refuse" in n for n in json.loads(out)["notes"])
