"""How close is ``ftwatch estimate`` to what a real run holds? Prints estimate vs measured.

Run: ``python benchmarks/estimate_accuracy.py [--quick]``

Measured figures come from real models on the CPU, independently of the estimate code:

- ``weights``/``lora``/``grads``/``optimizer``: the loaded model's storages after peft's
  ``get_peft_model``, one forward/backward and a real ``torch.optim.AdamW`` step;
- ``activations``: ``saved_tensors_hooks`` over the forward with labels (the probe's method:
  storages counted once by ``data_ptr``, parameter storages excluded).

Two models: the bundled ``examples/tiny-llama`` and a generated Llama (hidden 512, 8 layers,
grouped-query attention, about 170 MB in float32) built from its config with random weights.
The estimate columns are the meta-device trace (what ``ftwatch estimate`` uses) and the per-layer
formula it falls back to. ``tests/analysis/test_estimate.py`` imports the measuring functions from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftwatch.analysis.estimate.quiet import _quiet  # the estimate's own silencer of transformers

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny-llama"
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
#: The generated "larger" model: big enough that per-layer terms dominate, fast enough for a CPU test.
LARGER_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
    "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
    "vocab_size": 16000, "max_position_embeddings": 1024, "tie_word_embeddings": False, "dtype": "float32",
}


def write_model_config(directory: Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` into ``directory`` (created) and return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def load_real_model(model_dir: Path, dtype: str = "float32", lora: dict[str, Any] | None = None) -> Any:
    """The real peft model on the CPU: pretrained weights if the directory has them, else random init."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    with _quiet():
        if any(model_dir.glob("*.safetensors")):
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        else:
            config = AutoConfig.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **(lora or LORA)))
    peft_model.train()
    return peft_model


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


def measure_static(model: Any, batch: int = 2, seq: int = 16) -> dict[str, int]:
    """``weights``, ``lora``, ``grads``, ``optimizer`` bytes of a real model after one AdamW step."""
    import torch

    frozen = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
    trainable = [p for p in model.parameters() if p.requires_grad]
    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq))
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = storage_bytes(p.grad for p in trainable if p.grad is not None)
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    out = {"weights": storage_bytes(frozen), "lora": storage_bytes(trainable), "grads": grads,
           "optimizer": storage_bytes(state)}
    optimizer.zero_grad(set_to_none=True)
    return out


def measure_activations(model: Any, batch: int, seq: int, autocast: str | None = None, live: bool = False) -> int:
    """Bytes autograd saves during one forward with labels: storages once, parameters excluded.

    By default this is the probe's method: storages deduplicated by ``data_ptr`` as they are saved.
    ``live=True`` counts only what is still saved when the forward ends (weak references): it
    differs where a branch's saved tensors die during the forward (DoRA's detached weight norm).
    """
    import weakref

    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    refs: list[Any] = []

    def pack(t: Any) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved.setdefault(ptr, t.untyped_storage().nbytes())
            refs.append(weakref.ref(t))
        return t

    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq))
    amp = torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext()
    with amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    if live:
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (r() for r in refs)
                 if t is not None}
        return sum(alive.values())
    del out
    return sum(saved.values())


def estimated(model_dir: Path, batch: int, seq: int, dtype: str = "float32",
              training: dict[str, Any] | None = None, lora: dict[str, Any] | None = None) -> tuple[int, int]:
    """(trace, formula) activation estimates from ftwatch for a model directory."""
    from ftwatch.analysis import estimate as E

    inputs = E.EstimateInputs(model_config=E.load_model_config(str(model_dir)), dtype=dtype,
                              lora=lora or LORA, training={"per_device_train_batch_size": batch, **(training or {})},
                              max_length=seq, on_gpu=False)
    model = E.meta_peft_model(inputs)
    trace = E.estimate_activations(inputs, model).total
    formula = E.combine_activations(E.formula_activations(inputs, model), inputs.gradient_checkpointing).total
    return trace, formula


def rows(name: str, model_dir: Path, grid: list[tuple[int, int]], dtype: str = "float32") -> list[list[Any]]:
    """Table rows ``[model, batch, seq, measured, trace, trace error, formula, formula error]``."""
    model = load_real_model(model_dir, dtype)
    out = []
    for batch, seq in grid:
        measured = measure_activations(model, batch, seq)
        trace, formula = estimated(model_dir, batch, seq, dtype)
        out.append([name, batch, seq, measured, trace, trace / measured - 1, formula, formula / measured - 1])
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:9.2f}"


#: (label, dtype, lora, training, autocast): configurations beyond the plain grid, at batch 2 x 64.
VARIANTS: list[tuple[str, str, dict[str, Any], dict[str, Any], str | None]] = [
    ("bfloat16 weights", "bfloat16", LORA, {}, None),
    ("all-linear r=16", "float32", {"r": 16, "target_modules": "all-linear"}, {}, None),
    ("all-linear r=16 bf16", "bfloat16", {"r": 16, "target_modules": "all-linear"}, {}, None),
    ("lora_dropout 0.1", "float32", {**LORA, "lora_dropout": 0.1}, {}, None),
    ("fp32 + bf16 autocast", "float32", LORA, {"bf16": True}, "bfloat16"),
    ("bf16 + bf16 autocast", "bfloat16", LORA, {"bf16": True}, "bfloat16"),
]


def variant_rows(model_dir: Path) -> list[list[Any]]:
    """``[label, measured, estimate, error]`` for :data:`VARIANTS` and gradient checkpointing."""
    out = []
    for label, dtype, lora, training, autocast in VARIANTS:
        measured = measure_activations(load_real_model(model_dir, dtype, lora), 2, 64, autocast=autocast)
        trace, _ = estimated(model_dir, 2, 64, dtype, training=training, lora=lora)
        out.append([label, measured, trace, trace / measured - 1])
    model = load_real_model(model_dir)
    with _quiet():
        model.gradient_checkpointing_enable()
    measured = measure_activations(model, 2, 64)
    from ftwatch.analysis import estimate as E

    inputs = E.EstimateInputs(model_config=E.load_model_config(str(model_dir)), dtype="float32", lora=LORA,
                              training={"per_device_train_batch_size": 2, "gradient_checkpointing": True},
                              max_length=64, on_gpu=False)
    saved = E.estimate_activations(inputs).saved_forward
    out.append(["checkpointing (fwd)", measured, saved, saved / measured - 1])
    return out


def versus_run(tmp: Path) -> list[list[Any]]:
    """Estimate vs ``ftwatch run --headless --json`` (the project's probe) on real training runs."""
    import shutil
    import subprocess

    larger = write_model_config(tmp / "llama-512x8-weights", LARGER_CONFIG)
    with _quiet():
        load_real_model(larger).get_base_model().save_pretrained(larger)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, larger / name)
    runs = [("tiny-llama", TINY, 4, 64), ("tiny-llama", TINY, 8, 128), ("llama-512x8", larger, 2, 128)]
    out = []
    for name, model_dir, batch, seq in runs:
        config = tmp / f"{name}-{batch}x{seq}.toml"
        config.write_text(_run_config(model_dir, batch, seq, tmp))
        cmd = [sys.executable, "-m", "ftwatch"]
        run = subprocess.run([*cmd, "run", str(config), "--headless", "--json"], capture_output=True, text=True,
                             cwd=tmp, check=True)
        est = subprocess.run([*cmd, "estimate", str(config), "--json"], capture_output=True, text=True, cwd=tmp,
                             check=True)
        measured, estimate = json.loads(run.stdout)["peak_bytes"], json.loads(est.stdout)["estimate_bytes"]
        for category in ("weights", "lora", "grads", "optimizer", "activations"):
            out.append([f"{name} {batch}x{seq}", category, measured[category], estimate[category]])
    return out


def _run_config(model_dir: Path, batch: int, seq: int, tmp: Path) -> str:
    return f"""[model]
name = "{model_dir}"
dtype = "float32"
[lora]
r = 8
lora_alpha = 16
target_modules = ["q_proj", "v_proj"]
[training]
per_device_train_batch_size = {batch}
max_steps = 2
use_cpu = true
[data]
path = "{ROOT / 'examples' / 'data' / 'field-notes.jsonl'}"
max_length = {seq}
[monitor]
log_dir = "{tmp / 'runs'}"
"""


def main(argv: list[str] | None = None) -> int:
    """Print the activation tables, the static categories, and (``--with-run``) ``ftwatch run``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--with-run", action="store_true", help="also compare with `ftwatch run` (slower)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    batches, seqs = ([1, 4], [32, 128]) if args.quick else ([1, 2, 4, 8], [32, 64, 128])
    grid = [(b, s) for b in batches for s in seqs]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        larger = write_model_config(Path(tmp) / "llama-512x8", LARGER_CONFIG)
        table = rows("tiny-llama", TINY, grid) + rows("llama-512x8", larger, grid)
        variants = variant_rows(TINY) + [[f"{label} (512x8)", *rest] for label, *rest in variant_rows(larger)]
        runs = versus_run(Path(tmp)) if args.with_run else []
    print("activations (MiB), float32, LoRA r=8 on q_proj+v_proj")
    print(f"{'model':<12} {'batch':>5} {'seq':>4} {'measured':>9} {'estimate':>9} {'error':>7} "
          f"{'formula':>9} {'error':>7}")
    for name, b, s, measured, trace, t_err, formula, f_err in table:
        print(f"{name:<12} {b:>5} {s:>4} {_mib(measured)} {_mib(trace)} {t_err:>+7.1%} {_mib(formula)} {f_err:>+7.1%}")
    worst = max(abs(r[5]) for r in table)
    worst_formula = max(abs(r[7]) for r in table)
    print(f"worst error: estimate {worst:.1%}, formula {worst_formula:.1%}")
    print("\nactivations (MiB), batch 2 x 64: variants (tiny-llama unless marked)")
    print(f"{'variant':<32} {'measured':>9} {'estimate':>9} {'error':>7}")
    for label, measured, trace, err in variants:
        print(f"{label:<32} {_mib(measured)} {_mib(trace)} {err:>+7.1%}")
    static = measure_static(load_real_model(TINY))
    from ftwatch.analysis import estimate as E

    est = E.estimate_from_model_config(E.load_model_config(str(TINY)), dtype="float32", lora=LORA,
                                       training={"optim": "adamw_torch"}, on_gpu=False)
    print("\nstatic categories, tiny-llama float32 (bytes)")
    for key in ("weights", "lora", "grads", "optimizer"):
        print(f"{key:<10} measured {static[key]:>9}  estimate {est.categories[key]:>9}")
    if runs:
        print("\nversus `ftwatch run --headless --json` peak_bytes (bytes)")
        print(f"{'run':<22} {'category':<12} {'ftwatch run':>12} {'estimate':>12} {'error':>7}")
        for run, category, measured, estimate in runs:
            print(f"{run:<22} {category:<12} {measured:>12} {estimate:>12} {estimate / measured - 1:>+7.2%}")
    print(f"\n({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
