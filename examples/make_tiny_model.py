"""Generate the bundled tiny Llama model (config, safetensors weights, tokenizer).

Run from anywhere: ``python examples/make_tiny_model.py``. The output is deterministic and is
committed under ``src/ftwatch/bundled_example/tiny-llama/``, package data that ``ftwatch example``
writes out for pip users (``examples/tiny-llama`` links to it), so tests and the example need no
model hub. The tokenizer is a byte-level BPE trained on the example data set; the weights are
random (seeded): the model exists to exercise the real ``from_pretrained`` -> peft -> Trainer
path, not to be good.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED = HERE.parent / "src" / "ftwatch" / "bundled_example"
OUT = BUNDLED / "tiny-llama"
DATA = BUNDLED / "data" / "field-notes.jsonl"

VOCAB_SIZE = 512
CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def build_tokenizer():
    """Train a byte-level BPE tokenizer on the example texts and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def main() -> None:
    """Write ``src/ftwatch/bundled_example/tiny-llama``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        **CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    tokenizer.save_pretrained(OUT)
    n = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({n:,} parameters, {size / 1024:.0f} KiB on disk)")


if __name__ == "__main__":
    main()
