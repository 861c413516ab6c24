"""The model shapes and the grid of runs the kit measures.

Real shapes are written out here (no downloads): a Llama-3-8B shape cut to a few layers, the
Qwen2.5-1.5B shape whole, and a Gemma-3-1B shape whole. The dry run uses the same families at tiny
sizes. The grid is far too big to run whole in a few minutes (2^7 settings x 3 models), so the rows
are a covering subset: a base run, each factor varied alone against it, the other models at the
base, then pairs of factors, ordered most valuable first so a time limit cuts the least useful.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: Llama-3-8B's config.json fields; the kit keeps ``LLAMA_LAYERS`` of its 32 layers.
LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
LLAMA_LAYERS = 4

#: Qwen2.5-1.5B's config.json fields (whole: 28 layers, tied embeddings).
QWEN25_1_5B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": True,
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
    "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}

#: Gemma-3-1B's (text) config.json fields (whole: 26 layers, 262k vocabulary, sliding attention).
GEMMA3_1B: dict[str, Any] = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
    "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
    "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 512,
    "sliding_window_pattern": 6, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    "torch_dtype": "bfloat16",
}

#: What a tiny stand-in keeps small (the dry run); everything else is the real shape's.
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "max_position_embeddings": 512,
         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": None}


def model_configs(tiny: bool) -> dict[str, dict[str, Any]]:
    """``{name: config.json dict}`` of the three families, real shapes or tiny ones."""
    llama = dict(LLAMA3_8B, num_hidden_layers=LLAMA_LAYERS)
    models = {"llama3-8b-4l": llama, "qwen2.5-1.5b": dict(QWEN25_1_5B), "gemma3-1b": dict(GEMMA3_1B)}
    if tiny:
        models = {name: {**cfg, **_TINY, **({"query_pre_attn_scalar": 16, "sliding_window": 32}
                                            if cfg["model_type"].startswith("gemma") else {})}
                  for name, cfg in models.items()}
    return models


#: The model the ``ftwatch run`` stages save to disk and load (OOM and the finished CUDA run).
SAVED_MODEL = "llama3-8b-2l"


def saved_model_config(tiny: bool) -> dict[str, Any]:
    """The saved model's config.json: the Llama-3-8B shape cut to 2 layers (tiny in the dry run)."""
    base = dict(LLAMA3_8B, num_hidden_layers=2)
    return {**base, **_TINY} if tiny else base


@dataclass(frozen=True)
class Row:
    """One run of the grid: a model and the settings that shape its memory."""

    model: str = "qwen2.5-1.5b"
    dtype: str = "bfloat16"
    batch: int = 4
    seq: int = 512
    r: int = 8
    targets: str = "attention"  # or "all-linear"
    checkpointing: bool = False
    attn: str = "sdpa"  # or "eager"
    autocast: bool = False  # [training] bf16 = true (mixed precision over float32 weights)

    @property
    def id(self) -> str:
        """A readable unique name, e.g. ``qwen2.5-1.5b-bf16-b4-s512-r8-attn-ck0-sdpa``."""
        dtype = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(self.dtype, self.dtype)
        targets = "attn" if self.targets == "attention" else "all"
        amp = "-amp" if self.autocast else ""
        return (f"{self.model}-{dtype}{amp}-b{self.batch}-s{self.seq}-r{self.r}-{targets}"
                f"-ck{int(self.checkpointing)}-{self.attn}")

    def factors(self) -> dict[str, Any]:
        """The row's settings as a plain dict."""
        return asdict(self)

    def lora(self) -> dict[str, Any]:
        """``peft.LoraConfig`` fields (the ``[lora]`` section)."""
        modules: Any = list(ATTENTION) if self.targets == "attention" else "all-linear"
        return {"r": self.r, "lora_alpha": 2 * self.r, "lora_dropout": 0.0, "target_modules": modules}

    def training(self, steps: int, dry_run: bool) -> dict[str, Any]:
        """``TrainingArguments`` fields (the ``[training]`` section), the same for run and estimate."""
        out: dict[str, Any] = {"per_device_train_batch_size": self.batch, "gradient_accumulation_steps": 1,
                               "max_steps": steps, "learning_rate": 1e-4, "seed": 0,
                               "gradient_checkpointing": self.checkpointing}
        if self.autocast:
            out["bf16"] = True
        if dry_run:
            out["use_cpu"] = True
        return out


BASE = Row()


def grid_rows() -> list[Row]:
    """The covering subset, most valuable first: base, the other models, each factor alone, pairs."""
    b = BASE
    rows = [
        b,
        replace(b, model="llama3-8b-4l"),
        replace(b, model="gemma3-1b"),
        replace(b, seq=2048),
        replace(b, checkpointing=True),
        replace(b, attn="eager"),
        replace(b, targets="all-linear"),
        replace(b, r=64),
        replace(b, batch=1),
        replace(b, dtype="float32"),
        # pairs: where one factor changes what another costs
        replace(b, seq=2048, checkpointing=True),
        replace(b, seq=2048, attn="eager"),
        replace(b, model="llama3-8b-4l", seq=2048),
        replace(b, model="gemma3-1b", seq=2048),
        replace(b, dtype="float32", autocast=True),
        replace(b, targets="all-linear", r=64),
        replace(b, checkpointing=True, attn="eager"),
        replace(b, model="llama3-8b-4l", checkpointing=True),
        replace(b, model="gemma3-1b", attn="eager"),
        replace(b, batch=1, seq=2048),
        replace(b, model="llama3-8b-4l", targets="all-linear", r=64),
        replace(b, model="gemma3-1b", seq=2048, checkpointing=True),
        replace(b, model="llama3-8b-4l", dtype="float32"),
        replace(b, seq=2048, checkpointing=True, targets="all-linear", attn="eager"),
        replace(b, dtype="float32", seq=2048),
        replace(b, model="llama3-8b-4l", attn="eager", seq=2048),
        replace(b, model="gemma3-1b", dtype="float32"),
        replace(b, batch=1, checkpointing=True, r=64),
    ]
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row.id not in seen:
            seen.add(row.id)
            unique.append(row)
    return unique


#: The dry run's rows: every code path (each family, fp32, autocast, checkpointing, eager, all-linear).
DRY_ROWS = [
    BASE,
    replace(BASE, model="llama3-8b-4l", checkpointing=True),
    replace(BASE, model="gemma3-1b", attn="eager"),
    replace(BASE, dtype="float32", targets="all-linear", r=64),
    replace(BASE, dtype="float32", autocast=True, seq=2048, batch=1),
]

#: The dry run's sequence lengths for the grid's 512 and 2048 (tiny models, CPU).
DRY_SEQ = {512: 32, 2048: 64}


def replace_seq(row: Row, dry_run: bool) -> Row:
    """``row`` with the dry run's tiny sequence length (unchanged on the GPU)."""
    return replace(row, seq=DRY_SEQ.get(row.seq, row.seq)) if dry_run else row


def dry_rows() -> list[Row]:
    """The dry run's rows, with its tiny sequence lengths."""
    return [replace_seq(row, True) for row in DRY_ROWS]


def predicted_seconds(row: Row, params: int, steps: int, tflops_bf16: float = 300.0,
                      tflops_fp32: float = 40.0) -> float:
    """A rough cost of a row's training steps (6 x params x tokens FLOPs; eager/checkpointing extra)."""
    tokens = row.batch * row.seq * steps
    rate = (tflops_fp32 if row.dtype == "float32" and not row.autocast else tflops_bf16) * 1e12
    flops = 6.0 * params * tokens * (1.35 if row.checkpointing else 1.0) * (1.3 if row.attn == "eager" else 1.0)
    return flops / rate
