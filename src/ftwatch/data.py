"""The training data of ``[data]``: a local ``.jsonl`` or ``.txt`` file, tokenized into blocks.

With ``packing`` (the default) every text is tokenized, joined with the EOS token and cut into
blocks of exactly ``max_length`` tokens, so every batch has the same shape and no memory goes to
padding. Without packing each text is one example, truncated to ``max_length`` and padded per batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftwatch.config import ConfigError, DataConfig


def load_texts(data: DataConfig, config_path: Path) -> list[str]:
    """The texts of the data file: one per JSON line (``text_field``) or per non-empty text line."""
    texts: list[str] = []
    with open(data.path, encoding="utf-8", errors="replace") as handle:
        if data.path.suffix in (".jsonl", ".json"):
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ConfigError(config_path, f"[data].path: line {number} of {data.path} is not JSON") from None
                if not isinstance(record, dict) or not isinstance(record.get(data.text_field), str):
                    raise ConfigError(config_path, f'[data].text_field "{data.text_field}" is not a string '
                                                   f"field of line {number} of {data.path}")
                texts.append(record[data.text_field])
        else:
            texts = [line.rstrip("\n") for line in handle if line.strip()]
    if not texts:
        raise ConfigError(config_path, f"[data].path: {data.path} holds no text")
    return texts


class TokenBlocks:
    """A map-style dataset of tokenized examples (``input_ids``, ``attention_mask``, ``labels``)."""

    def __init__(self, examples: list[dict[str, list[int]]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def build_dataset(tokenizer: Any, data: DataConfig, config_path: Path) -> TokenBlocks:
    """Tokenize the data file into a dataset the Trainer can use."""
    texts = load_texts(data, config_path)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if data.packing:
        stream: list[int] = []
        for ids in encoded:
            stream.extend(ids)
            if eos is not None:
                stream.append(eos)
        size = data.max_length
        if len(stream) < size:
            raise ConfigError(config_path, f"[data].max_length = {size} is longer than the whole data set "
                                           f"({len(stream)} tokens); lower it or set packing = false")
        blocks = [stream[i:i + size] for i in range(0, len(stream) - size + 1, size)]
        return TokenBlocks([{"input_ids": b, "attention_mask": [1] * size, "labels": list(b)} for b in blocks])
    examples = []
    for ids in encoded:
        ids = ids[: data.max_length]
        if ids:
            examples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return TokenBlocks(examples)


def data_collator(tokenizer: Any, data: DataConfig) -> Any:
    """Stacks packed blocks as they are; pads unpacked examples (labels -100 on padding)."""
    if data.packing:
        from transformers import default_data_collator

        return default_data_collator
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=False)
