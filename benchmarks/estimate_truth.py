"""Estimate vs the truth, per architecture: the meta estimate and the calibrated one against the
measured CPU peak of a real training step of the full model.

Run: ``python benchmarks/estimate_truth.py [--quick] [--arch NAME ...]``

For every architecture a small config (4 decoder layers, hidden 128, vocabulary 2048) is written
and, for every setting (activation checkpointing off/on; float32, and bfloat16 for a few), three
figures are made:

- **measured**: the full model, random weights from its config (``from_config``), peft's LoRA on
  it, then two real training steps on random tokens (forward with labels, backward,
  ``torch.optim.AdamW``, ``zero_grad``) written out here, without ftwatch's training code; the
  second step is measured with the probe's CPU peak meter (``PeakMeter``: every storage an op
  creates, until it is freed), started as the probe starts it (weights and adapters live,
  optimizer state known). This is the figure ``ftwatch run`` reports as the true peak on a CPU.
- **meta**: ``ftwatch estimate``'s peak (every category of the meta-device estimate summed).
- **calibrated**: ``ftwatch estimate --calibrate``'s peak (1- and 2-layer copies trained in a real
  ``Trainer`` by :mod:`ftwatch.training.calibrate`, extrapolated to 4 layers).

Errors are ``estimate / measured - 1``. ``tests/training/test_calibrate.py`` imports
:func:`measure_training_peak` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The shared size of the small configs (the architecture's own names are added below).
_LLAMA_LIKE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 512,
               "tie_word_embeddings": False}
_QV = ["q_proj", "v_proj"]
#: architecture -> (config.json without dtype, LoRA target modules)
ARCHITECTURES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "llama": ({"model_type": "llama", **_LLAMA_LIKE}, _QV),
    "mistral": ({"model_type": "mistral", **_LLAMA_LIKE, "sliding_window": 4096}, _QV),
    "qwen2": ({"model_type": "qwen2", **_LLAMA_LIKE}, _QV),
    "qwen3": ({"model_type": "qwen3", **_LLAMA_LIKE, "head_dim": 32}, _QV),
    "gemma": ({"model_type": "gemma", **_LLAMA_LIKE, "head_dim": 32}, _QV),
    "gemma2": ({"model_type": "gemma2", **_LLAMA_LIKE, "head_dim": 32}, _QV),
    "gemma3": ({"model_type": "gemma3_text", **_LLAMA_LIKE, "head_dim": 32}, _QV),
    "phi3": ({"model_type": "phi3", **_LLAMA_LIKE, "pad_token_id": 0}, ["qkv_proj"]),
    "gpt2": ({"model_type": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2048,
              "n_positions": 512}, ["c_attn"]),
    "gpt_neox": ({"model_type": "gpt_neox", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "vocab_size": 2048, "max_position_embeddings": 512},
                 ["query_key_value"]),
    "gpt_bigcode": ({"model_type": "gpt_bigcode", "n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2048,
                     "n_positions": 512}, ["c_attn"]),
    "opt": ({"model_type": "opt", "hidden_size": 128, "ffn_dim": 256, "num_hidden_layers": 4,
             "num_attention_heads": 4, "vocab_size": 2048, "max_position_embeddings": 512,
             "word_embed_proj_dim": 128}, _QV),
    "falcon": ({"model_type": "falcon", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "vocab_size": 2048}, ["query_key_value"]),
    "bloom": ({"model_type": "bloom", "hidden_size": 128, "n_layer": 4, "n_head": 4, "vocab_size": 2048},
              ["query_key_value"]),
    "stablelm": ({"model_type": "stablelm", **_LLAMA_LIKE}, _QV),
    "granite": ({"model_type": "granite", **_LLAMA_LIKE}, _QV),
    "olmo2": ({"model_type": "olmo2", **_LLAMA_LIKE}, _QV),
    "qwen3_moe": ({"model_type": "qwen3_moe", **_LLAMA_LIKE, "head_dim": 32, "moe_intermediate_size": 64,
                   "num_experts": 4, "num_experts_per_tok": 2}, _QV),
}
QUICK = ("llama", "gpt2", "gemma3", "qwen3_moe")
#: Where the benchmark also runs in bfloat16 (the rest: float32 only, to keep the run short).
BF16 = ("llama", "qwen2", "gemma3", "gpt2", "falcon")
BATCH, SEQ = 2, 64


def model_config(name: str, dtype: str) -> dict[str, Any]:
    """The architecture's small config.json, in ``dtype``."""
    return {**ARCHITECTURES[name][0], "dtype": dtype}


def measure_training_peak(config: dict[str, Any], dtype: str, targets: list[str], checkpointing: bool,
                          batch: int, seq: int, lora_r: int = 8) -> int:
    """The true CPU peak (bytes of live tensors) of the second of two real training steps of the
    full model ``config`` (random weights, LoRA on ``targets``, AdamW), measured with the peak meter.

    Written out here with the libraries' own calls only (``from_config``, ``get_peft_model``,
    ``gradient_checkpointing_enable``, ``torch.optim.AdamW``), not with ftwatch's training code."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftwatch.analysis.estimate.quiet import _quiet
    from ftwatch.training.probe.peak_meter import PeakMeter

    data = dict(config)
    model_type = data.pop("model_type")
    torch.manual_seed(0)
    with _quiet():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **data), dtype=getattr(torch, dtype))
        # as the Trainer sets it (TrainingArguments.use_cache, False by default): with the cache on,
        # gpt_neox and phi3 hold 128 KiB less per layer here than in a real run
        model.config.use_cache = False
        if checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=2 * lora_r,
                                                 lora_dropout=0.0, target_modules=targets))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, int(config["vocab_size"]), (batch, seq), generator=torch.Generator().manual_seed(0))
    meter = PeakMeter()
    peak = 0
    for step in range(2):
        if step == 1:
            frozen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                      for t in [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())}
            adapters = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in trainable}
            state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
            meter.start(fixed={"weights": sum(frozen.values()), "lora": sum(adapters.values())}, optimizer=state)
        with _quiet():
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
        if step == 1:
            result = meter.stop()
            if result is None:
                raise RuntimeError("the peak meter gave no figure")
            peak = result[0]
    return peak


def write_run(tmp: Path, name: str, dtype: str, checkpointing: bool) -> Path:
    """A model directory with the architecture's config.json and a run config for it; the config's path."""
    model_dir = tmp / f"{name}-{dtype}"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(model_config(name, dtype)))
    targets = ", ".join(f'"{t}"' for t in ARCHITECTURES[name][1])
    path = tmp / f"{name}-{dtype}-{int(checkpointing)}.toml"
    path.write_text(f"""[model]
name = "{model_dir}"
dtype = "{dtype}"
[lora]
r = 8
lora_alpha = 16
lora_dropout = 0.0
target_modules = [{targets}]
[training]
per_device_train_batch_size = {BATCH}
optim = "adamw_torch"
gradient_checkpointing = {str(checkpointing).lower()}
use_cpu = true
[data]
path = "{ROOT / 'examples' / 'data' / 'field-notes.jsonl'}"
max_length = {SEQ}
""")
    return path


def row(tmp: Path, name: str, dtype: str, checkpointing: bool) -> dict[str, Any]:
    """One table row: measured, meta and calibrated peaks (bytes), or the error that stopped it."""
    from ftwatch.analysis.estimate import estimate
    from ftwatch.commands import estimate_calibrate
    from ftwatch.commands.usage import UsageError
    from ftwatch.common.config import load_config

    out: dict[str, Any] = {"arch": name, "dtype": dtype, "checkpointing": checkpointing}
    started = time.perf_counter()
    try:
        measured = measure_training_peak(model_config(name, dtype), dtype, ARCHITECTURES[name][1], checkpointing,
                                         BATCH, SEQ)
    except Exception as exc:  # a model that does not build here: said in the table
        return {**out, "error": f"measuring: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
    cfg = load_config(write_run(tmp, name, dtype, checkpointing))
    try:
        meta = estimate(cfg, on_gpu=False)
        with contextlib.redirect_stderr(io.StringIO()):
            calibration = estimate_calibrate.calibrate(cfg, meta, "cpu")
    except (UsageError, Exception) as exc:
        return {**out, "measured": measured, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
    return {**out, "measured": measured, "meta": meta.total, "calibrated": calibration.total,
            "seconds": time.perf_counter() - started, "notes": calibration.notes}


def _mib(n: int) -> str:
    return f"{n / 2**20:8.2f}"


def main(argv: list[str] | None = None) -> int:
    """Print the table: per architecture x setting, measured, meta and calibrated peaks and errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, float32")
    parser.add_argument("--arch", nargs="*", choices=sorted(ARCHITECTURES), help="only these architectures")
    args = parser.parse_args(argv)
    names = args.arch or (list(QUICK) if args.quick else list(ARCHITECTURES))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            dtypes = ["float32"] + (["bfloat16"] if name in BF16 and not args.quick else [])
            for dtype in dtypes:
                for checkpointing in (False, True):
                    rows.append(row(Path(tmp), name, dtype, checkpointing))
                    r = rows[-1]
                    print(f"  {name} {dtype} ckpt={int(checkpointing)}: {r.get('error') or 'done'}",
                          file=sys.stderr, flush=True)
    print(f"CPU peak of a training step (MiB), 4 layers, hidden 128, batch {BATCH} x {SEQ}, LoRA r=8, AdamW")
    print(f"{'arch':<12} {'dtype':<9} {'ckpt':>4} {'measured':>8} {'meta':>8} {'error':>7} {'calibr.':>8} "
          f"{'error':>7}")
    meta_errors, calibrated_errors = [], []
    for r in rows:
        head = f"{r['arch']:<12} {r['dtype']:<9} {'on' if r['checkpointing'] else 'off':>4}"
        if "error" in r:
            print(f"{head} {r['error']}")
            continue
        meta_err, cal_err = r["meta"] / r["measured"] - 1, r["calibrated"] / r["measured"] - 1
        meta_errors.append(abs(meta_err))
        calibrated_errors.append(abs(cal_err))
        print(f"{head} {_mib(r['measured'])} {_mib(r['meta'])} {meta_err:>+7.1%} {_mib(r['calibrated'])} "
              f"{cal_err:>+7.1%}")
    if meta_errors:
        print(f"worst |error|: meta {max(meta_errors):.1%}, calibrated {max(calibrated_errors):.1%}; "
              f"mean |error|: meta {sum(meta_errors) / len(meta_errors):.1%}, "
              f"calibrated {sum(calibrated_errors) / len(calibrated_errors):.1%}")
    notes = sorted({note for r in rows for note in r.get("notes", [])})
    for note in notes:
        print(f"note: {note}")
    print(f"({len(rows)} rows, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
