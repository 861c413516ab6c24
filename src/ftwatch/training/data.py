"""The training data of ``[data]``: a local ``.jsonl`` or ``.txt`` file, tokenized into blocks.

With ``packing`` (the default) every text is tokenized, joined with the EOS token and cut into
blocks of exactly ``max_length`` tokens, so every batch has the same shape and no memory goes to
padding. Without packing each text is one example, truncated to ``max_length`` and padded per batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ftwatch.common.config import DataConfig
from ftwatch.common.config_errors import ConfigError

#: Suffixes read as JSON records (one object per line; a ``.json`` file may also be one array).
JSON_SUFFIXES = (".jsonl", ".json")


def load_texts(data: DataConfig, config_path: Path) -> list[str]:
    """The texts of the data file: one per JSON line (``text_field``) or per non-empty text line."""
    texts = list(iter_texts(data, config_path))
    if not any(text.strip() for text in texts):
        raise _no_text(data, config_path, bool(texts))
    return texts


class ReadLimit:
    """How much of a data file the parent process reads (``None``: all); ``cut`` once it stopped short."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.read = 0
        self.cut = False

    def spend(self, size: int) -> bool:
        """Count ``size`` bytes read; True when the limit is reached (the reading stops there)."""
        self.read += size
        if self.max_bytes is not None and self.read >= self.max_bytes:
            self.cut = True
        return self.cut


def scan_texts(data: DataConfig, config_path: Path, limit: ReadLimit | None = None) -> int:
    """Check the data file as :func:`load_texts` reads it, without keeping it; the number of texts.

    ``limit``: stop after that many bytes (the rest is checked when the worker reads it all).
    Raises :class:`ConfigError` naming the file and the line.
    """
    limit = limit or ReadLimit()
    count = blank = 0
    for text in iter_texts(data, config_path, limit):
        count += 1
        blank += not text.strip()
    if count == blank and not limit.cut:
        raise _no_text(data, config_path, count > 0)
    return count


def _no_text(data: DataConfig, config_path: Path, had_records: bool) -> ConfigError:
    if data.path.stat().st_size == 0:
        return ConfigError(config_path, f"[data].path: {data.path} is empty")
    if had_records and data.path.suffix in JSON_SUFFIXES:
        return ConfigError(config_path, f'[data].text_field "{data.text_field}" is empty on every line of {data.path}')
    return ConfigError(config_path, f"[data].path: {data.path} holds no text (only blank lines)")


def iter_texts(data: DataConfig, config_path: Path, limit: ReadLimit | None = None) -> Iterator[str]:
    """The texts of the data file one at a time, decoded strictly (UTF-8).

    Raises :class:`ConfigError` naming the file and the line for text that is not UTF-8, a line
    that is not JSON, a record without a string ``text_field``, or a JSON array in a .jsonl file.
    """
    for _where, text in iter_numbered_texts(data, config_path, limit):
        yield text


def iter_numbered_texts(data: DataConfig, config_path: Path,
                        limit: ReadLimit | None = None) -> Iterator[tuple[str, str]]:
    """``(where, text)`` for every text :func:`iter_texts` yields: ``where`` is ``"line 7"`` (JSON
    lines, text files) or ``"record 3"`` (a ``.json`` array, counted from 0)."""
    try:
        handle = open(data.path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError as exc:
        raise ConfigError(config_path, f"[data].path: cannot read {data.path}: {exc.strerror or exc}") from None
    limit = limit or ReadLimit()
    try:
        if data.path.suffix in JSON_SUFFIXES:
            yield from _json_texts(handle, data, config_path, limit)
        else:
            for number, line in _lines(handle, data, config_path, limit):
                if line.strip():
                    yield f"line {number}", line
    finally:
        handle.close()


def _lines(handle: BinaryIO, data: DataConfig, config_path: Path,
           limit: ReadLimit) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` without the line end; a UTF-8 byte order mark is dropped."""
    for number, raw in enumerate(handle, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(config_path, f"[data].path: line {number} of {data.path} is not UTF-8 text "
                                           f"(byte {raw[exc.start]:#04x} at column {exc.start + 1})") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield number, line.rstrip("\r\n")
        if limit.spend(len(raw)):
            return


def _json_texts(handle: BinaryIO, data: DataConfig, config_path: Path,
                limit: ReadLimit) -> Iterator[tuple[str, str]]:
    first = _first_character(handle)
    if first == "[" and data.path.suffix == ".json":
        yield from _json_array_texts(handle, data, config_path, limit)
        return
    for number, line in _lines(handle, data, config_path, limit):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            if first == "[" and not isinstance(exc, RecursionError):  # the start of a (pretty-printed) array
                raise _array_in_jsonl(data, config_path) from None
            why = "nested too deeply" if isinstance(exc, RecursionError) else _json_reason(exc)
            raise ConfigError(config_path, f"[data].path: line {number} of {data.path} is not JSON ({why})") from None
        if first == "[" and isinstance(record, list):
            raise _array_in_jsonl(data, config_path)
        first = ""  # only the first record can start the file's array
        yield f"line {number}", _record_text(record, data, config_path, f"line {number}")


def _array_in_jsonl(data: DataConfig, config_path: Path) -> ConfigError:
    return ConfigError(config_path, f"[data].path: {data.path} holds a JSON array, not JSON lines (one object "
                                    "per line); name the file .json or write one record a line")


def _first_character(handle: BinaryIO) -> str:
    """The first character that is not white space (or a byte order mark); the file is rewound."""
    head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    handle.seek(0)
    return chr(head[0]) if head else ""


def _json_array_texts(handle: BinaryIO, data: DataConfig, config_path: Path,
                      limit: ReadLimit) -> Iterator[tuple[str, str]]:
    """The records of a ``.json`` file that is one array (read whole: the parent skips large ones)."""
    if limit.spend(data.path.stat().st_size):
        return  # too large to parse in the parent: the worker reads it
    raw = handle.read()
    try:
        records = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(config_path, f"[data].path: line {line} of {data.path} is not UTF-8 text "
                                       f"(byte {raw[exc.start]:#04x})") from None
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else _json_reason(exc)
        raise ConfigError(config_path, f"[data].path: {data.path} is not JSON ({why})") from None
    if not isinstance(records, list):
        raise ConfigError(config_path, f"[data].path: {data.path} is not a JSON array of records")
    for index, record in enumerate(records):
        yield f"record {index}", _record_text(record, data, config_path, f"record {index}")


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


_JSON_KINDS = {list: "a JSON array", str: "a JSON string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _record_text(record: Any, data: DataConfig, config_path: Path, where: str) -> str:
    """The ``text_field`` of one record, or the error naming the key and the record."""
    field = data.text_field
    if not isinstance(record, dict):
        kind = _JSON_KINDS.get(type(record), type(record).__name__)
        raise ConfigError(config_path, f'[data].path: {where} of {data.path} is {kind}, expected an object '
                                       f'with a "{field}" field')
    if field not in record:
        fields = ", ".join(f'"{k}"' for k in list(record)[:6]) or "none"
        raise ConfigError(config_path, f'[data].text_field "{field}": {where} of {data.path} has no such field '
                                       f"(its fields: {fields})")
    value = record[field]
    if not isinstance(value, str):
        kind = "an object" if isinstance(value, dict) else _JSON_KINDS.get(type(value), type(value).__name__)
        raise ConfigError(config_path, f'[data].text_field "{field}": {where} of {data.path} holds {kind} '
                                       "there, expected a string")
    return value


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
