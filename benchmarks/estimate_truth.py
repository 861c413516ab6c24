"""Estimate vs the truth, per architecture: the meta estimate and the calibrated one against the
measured CPU peak of a real training step of the full model.

Run: ``python benchmarks/estimate_truth.py [--quick] [--arch NAME ...] [--attn eager|sdpa ...]
[--dtype float32|bfloat16 ...] [--no-variants] [--no-calibrate]``

For every architecture a small config (4 decoder layers, hidden 128, vocabulary 2048) is written
and, for every setting (eager and SDPA attention, where the class takes SDPA; float32 and
bfloat16; activation checkpointing off and on; batch 2 x 64), three figures are made. A few
variants follow in float32 (:data:`VARIANTS`: sliding windows shorter than the sequence, batch 1).

- **measured**: the full model, random weights from its config (``from_config``), peft's LoRA on
  it, then two real training steps on random tokens with an all-ones attention mask (forward with
  labels, backward, ``torch.optim.AdamW``, ``zero_grad``) written out here, without ftwatch's
  training code; the second step is measured with the probe's CPU peak meter (``PeakMeter``:
  every storage an op creates, until it is freed), started as the probe starts it (weights and
  adapters live, optimizer state known). This is the figure ``ftwatch run`` reports as the true
  peak on a CPU.
- **meta**: ``ftwatch estimate``'s peak (every category of the meta-device estimate summed); a
  row whose estimate did not come from the trace says which method it used.
- **calibrated**: ``ftwatch estimate --calibrate``'s peak (1- and 2-layer copies trained in a real
  ``Trainer`` by :mod:`ftwatch.training.calibrate`, extrapolated to 4 layers).
- **formula**, **approx.**: the error of the estimate's last resorts
  (:mod:`ftwatch.analysis.estimate.fallbacks`), forced on the row: as if the meta trace could not
  run the model (the formula, and the approximation for the backward), or only the meta training
  step (the approximation). Their ranges over every row are the expected errors the estimate
  states when it falls back.

Errors are ``estimate / measured - 1``. ``--quick``: four architectures, float32, no variants.
``tests/training/test_calibrate.py`` and ``tests/analysis/test_estimate_peak.py`` import
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
from collections.abc import Iterator
from dataclasses import dataclass
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
BATCH, SEQ = 2, 64
DTYPES = ("float32", "bfloat16")
ATTENTIONS = ("eager", "sdpa")


@dataclass(frozen=True)
class Variant:
    """A setting beyond the 2 x 64 default: config changes, another batch shape, and why it is there."""

    arch: str
    label: str
    config: dict[str, Any]
    batch: int
    seq: int
    why: str


#: Rows past the default shape (float32, both attentions, checkpointing off and on).
VARIANTS = (
    Variant("gemma3", "window 16", {"sliding_window": 16}, BATCH, SEQ,
            "a sliding window shorter than the sequence: the mask is made, SDPA cannot skip it"),
    Variant("mistral", "window 16", {"sliding_window": 16}, BATCH, SEQ, "the same, on every layer"),
    Variant("qwen2", "window 16", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2},
            BATCH, SEQ, "the last two of four layers in a window: two kinds of layer, two masks"),
    Variant("bloom", "batch 1", {}, 1, 128, "batch 1 with an all-ones attention mask (alibi from the mask)"),
    Variant("llama", "batch 1", {}, 1, 128, "batch 1, a longer sequence"),
    Variant("llama", "vocab 128", {"vocab_size": 128}, 1, 512,
            "a small vocabulary and a long sequence: the peak is in a layer's backward, not the loss's"),
)


@dataclass(frozen=True)
class Setting:
    """One row: an architecture (and variant), its attention, dtype and checkpointing."""

    arch: str
    attn: str
    dtype: str
    checkpointing: bool
    variant: Variant | None = None

    @property
    def batch(self) -> int:
        """The micro-batch size."""
        return self.variant.batch if self.variant else BATCH

    @property
    def seq(self) -> int:
        """The sequence length."""
        return self.variant.seq if self.variant else SEQ

    @property
    def label(self) -> str:
        """The row's name: the architecture and its variant."""
        return f"{self.arch} {self.variant.label}" if self.variant else self.arch

    def config(self) -> dict[str, Any]:
        """The config.json of this row's model (dtype included)."""
        return {**ARCHITECTURES[self.arch][0], **(self.variant.config if self.variant else {}), "dtype": self.dtype}


def attentions(arch: str) -> tuple[str, ...]:
    """The attentions the architecture's class takes of eager and SDPA (eager only without SDPA support)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from ftwatch.analysis.estimate.quiet import _quiet

    data = dict(ARCHITECTURES[arch][0])
    with _quiet():
        config = AutoConfig.for_model(data.pop("model_type"), **data)
    sdpa = getattr(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], "_supports_sdpa", False)
    return ATTENTIONS if sdpa else ("eager",)


def settings(names: list[str], dtypes: tuple[str, ...], attns: tuple[str, ...], variants: bool) -> list[Setting]:
    """Every row to run: architecture x attention x dtype x checkpointing, then the variants (float32)."""
    rows = [Setting(name, attn, dtype, ckpt) for name in names for attn in attentions(name) if attn in attns
            for dtype in dtypes for ckpt in (False, True)]
    if variants:
        rows += [Setting(v.arch, attn, "float32", ckpt, v) for v in VARIANTS if v.arch in names
                 for attn in attentions(v.arch) if attn in attns for ckpt in (False, True)]
    return rows


def measure_training_peak(config: dict[str, Any], dtype: str, targets: list[str], checkpointing: bool,
                          batch: int, seq: int, lora_r: int = 8, attn: str | None = None) -> int:
    """The true CPU peak (bytes of live tensors) of the second of two real training steps of the
    full model ``config`` (random weights, LoRA on ``targets``, AdamW), measured with the peak meter;
    ``attn``: the attention implementation (``None``: transformers' default for the class). The
    batch comes with an all-ones ``attention_mask``, as a tokenizer's collator passes it.

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
        chosen = {} if attn is None else {"attn_implementation": attn}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **data), dtype=getattr(torch, dtype),
                                                 **chosen)
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


def write_run(tmp: Path, setting: Setting) -> Path:
    """A model directory with the row's config.json and a run config for it; the config's path."""
    stem = "-".join([setting.label.replace(" ", "_"), setting.attn, setting.dtype, str(int(setting.checkpointing))])
    model_dir = tmp / stem
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(setting.config()))
    targets = ", ".join(f'"{t}"' for t in ARCHITECTURES[setting.arch][1])
    path = tmp / f"{stem}.toml"
    path.write_text(f"""[model]
name = "{model_dir}"
dtype = "{setting.dtype}"
attn_implementation = "{setting.attn}"
[lora]
r = 8
lora_alpha = 16
lora_dropout = 0.0
target_modules = [{targets}]
[training]
per_device_train_batch_size = {setting.batch}
optim = "adamw_torch"
gradient_checkpointing = {str(setting.checkpointing).lower()}
use_cpu = true
[data]
path = "{ROOT / 'examples' / 'data' / 'field-notes.jsonl'}"
max_length = {setting.seq}
""")
    return path


#: The estimate's last resorts (:mod:`ftwatch.analysis.estimate.fallbacks`), forced on every row to
#: measure their error: the function each one stands in for, in the module the estimate calls it from.
FALLBACKS = {"formula": ("activation_trace", "trace_activations"),
             "approximation": ("step_trace", "trace_step")}


@contextlib.contextmanager
def forced_fallback(kind: str) -> Iterator[None]:
    """The estimate as if the meta trace (``formula``) or the meta training step (``approximation``) could
    not run this model: that function refuses, and the traces' caches are emptied around the block."""
    import importlib

    from ftwatch.analysis.estimate import activation_trace, step_trace

    module = importlib.import_module(f"ftwatch.analysis.estimate.{FALLBACKS[kind][0]}")
    name = FALLBACKS[kind][1]
    original = getattr(module, name)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} refused by the benchmark")

    def clear() -> None:
        activation_trace._TRACE_CACHE.clear()
        step_trace._STEP_CACHE.clear()

    clear()
    setattr(module, name, refuse)
    try:
        yield
    finally:
        setattr(module, name, original)
        clear()


def row(tmp: Path, setting: Setting, calibrate: bool = True) -> dict[str, Any]:
    """One table row: measured, meta, calibrated and fallback peaks (bytes), or the error that stopped it."""
    from ftwatch.analysis.estimate import estimate
    from ftwatch.commands import estimate_calibrate
    from ftwatch.commands.usage import UsageError
    from ftwatch.common.config import load_config

    out: dict[str, Any] = {"setting": setting}
    try:
        measured = measure_training_peak(setting.config(), setting.dtype, ARCHITECTURES[setting.arch][1],
                                         setting.checkpointing, setting.batch, setting.seq, attn=setting.attn)
    except Exception as exc:  # a model that does not build here: said in the table
        return {**out, "error": f"measuring: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
    cfg = load_config(write_run(tmp, setting))
    try:
        meta = estimate(cfg, on_gpu=False)
        fallbacks = {}
        for kind in FALLBACKS:
            with forced_fallback(kind):
                forced = estimate(cfg, on_gpu=False)
            if [f.kind for f in forced.fallbacks] != [kind]:
                raise RuntimeError(f"forcing the {kind} gave {[f.kind for f in forced.fallbacks]}")
            fallbacks[kind] = forced.total
        calibrated, calibration_notes = None, []
        if calibrate:
            with contextlib.redirect_stderr(io.StringIO()):
                calibration = estimate_calibrate.calibrate(cfg, meta, "cpu")
            calibrated, calibration_notes = calibration.total, calibration.notes
    except (UsageError, Exception) as exc:
        return {**out, "measured": measured, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"}
    return {**out, "measured": measured, "meta": meta.total, "calibrated": calibrated, "fallbacks": fallbacks,
            "used": [f.kind for f in meta.fallbacks], "notes": [*meta.notes, *calibration_notes]}


def _mib(n: int) -> str:
    return f"{n / 2**20:8.2f}"


def _range(errors: list[float]) -> str:
    return f"{min(errors):+.1%} to {max(errors):+.1%}" if errors else "-"


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"CPU peak of a training step (MiB), 4 layers, hidden 128, LoRA r=8, AdamW; batch {BATCH} x {SEQ} "
          "unless said")
    print(f"{'arch':<18} {'attn':<5} {'dtype':<5} {'ckpt':>4} {'batch':>6} {'measured':>8} {'meta':>8} "
          f"{'error':>7} {'calibr.':>8} {'error':>7} {'formula':>8} {'approx.':>7}")
    meta_errors, calibrated_errors = [], []
    forced: dict[str, list[float]] = {kind: [] for kind in FALLBACKS}
    for r in rows:
        s: Setting = r["setting"]
        head = (f"{s.label:<18} {s.attn:<5} {s.dtype.replace('float', 'fp'):<5} "
                f"{'on' if s.checkpointing else 'off':>4} {f'{s.batch}x{s.seq}':>6}")
        if "error" in r:
            print(f"{head} {r['error']}")
            continue
        meta_err = r["meta"] / r["measured"] - 1
        meta_errors.append(meta_err)
        line = f"{head} {_mib(r['measured'])} {_mib(r['meta'])} {meta_err:>+7.1%}"
        if r["calibrated"] is not None:
            cal_err = r["calibrated"] / r["measured"] - 1
            calibrated_errors.append(cal_err)
            line += f" {_mib(r['calibrated'])} {cal_err:>+7.1%}"
        else:
            line += f" {'-':>8} {'-':>7}"
        for kind, total in r["fallbacks"].items():
            forced[kind].append(total / r["measured"] - 1)
            line += f" {forced[kind][-1]:>+{8 if kind == 'formula' else 7}.1%}"
        if r["used"]:
            line += f"  (meta used: {', '.join(r['used'])})"
        print(line)
    if meta_errors:
        worst = f"worst |error|: meta {max(map(abs, meta_errors)):.1%}"
        mean = f"mean |error|: meta {sum(map(abs, meta_errors)) / len(meta_errors):.1%}"
        if calibrated_errors:
            worst += f", calibrated {max(map(abs, calibrated_errors)):.1%}"
            mean += f", calibrated {sum(map(abs, calibrated_errors)) / len(calibrated_errors):.1%}"
        print(f"{worst}; {mean}")
        print(f"range: meta {_range(meta_errors)}, calibrated {_range(calibrated_errors)}")
        print("last resorts forced on every row (the estimate's expected error when it falls back): "
              f"formula {_range(forced['formula'])}, approximation {_range(forced['approximation'])}")


def main(argv: list[str] | None = None) -> int:
    """Print the table: per architecture x setting, measured, meta and calibrated peaks and errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK)}, float32, no variants")
    parser.add_argument("--arch", nargs="*", choices=sorted(ARCHITECTURES), help="only these architectures")
    parser.add_argument("--attn", nargs="*", choices=ATTENTIONS, help="only these attentions")
    parser.add_argument("--dtype", nargs="*", choices=DTYPES, help="only these dtypes")
    parser.add_argument("--no-variants", action="store_true", help="only the default shape")
    parser.add_argument("--no-calibrate", action="store_true", help="without the calibrated column")
    args = parser.parse_args(argv)
    names = args.arch or (list(QUICK) if args.quick else list(ARCHITECTURES))
    dtypes = tuple(args.dtype or (("float32",) if args.quick else DTYPES))
    todo = settings(names, dtypes, tuple(args.attn or ATTENTIONS), not (args.quick or args.no_variants))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in todo:
            rows.append(row(Path(tmp), setting, calibrate=not args.no_calibrate))
            print(f"  {setting.label} {setting.attn} {setting.dtype} ckpt={int(setting.checkpointing)}: "
                  f"{rows[-1].get('error') or 'done'}", file=sys.stderr, flush=True)
    _table(rows)
    skipped = sorted({name for name in names if attentions(name) == ("eager",)})
    if skipped:
        print(f"eager only (the class has no SDPA support): {', '.join(skipped)}")
    for v in VARIANTS:
        if v.arch in names and not (args.quick or args.no_variants):
            print(f"{v.arch} {v.label}: {v.why}")
    notes: dict[str, list[str]] = {}
    for r in rows:
        for note in r.get("notes", []):
            s = r["setting"]
            notes.setdefault(note, []).append(f"{s.label} {s.attn} {s.dtype} ckpt {'on' if s.checkpointing else 'off'}")
    for note, where in sorted(notes.items()):
        print(f"note ({len(where)} rows: {'; '.join(where[:3])}{'; ...' if len(where) > 3 else ''}): {note}")
    print(f"({len(rows)} rows, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
