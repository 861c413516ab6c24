"""The model's files, checked without torch: config.json, the weights' headers, the hub cache.

``ftwatch run`` checks them before the worker starts, so a broken download is one line naming
``[model].name`` rather than a traceback from ``from_pretrained`` after the run began. A
safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data: the header is read and checked against the file's
size (a cut download ends before its last tensor), never the data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
#: The safetensors library refuses larger headers (100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of the safetensors dtypes.
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


@dataclass
class ModelFiles:
    """What the checks found: the model's directory (``None`` for a hub id not in the cache) and
    what a run would still miss there (``missing``), which only ``ftwatch run`` refuses."""

    directory: Path | None
    has_weights: bool = False
    has_tokenizer: bool = False
    missing: list[str] = field(default_factory=list)


def is_offline() -> bool:
    """Whether the Hugging Face libraries are told not to reach the hub."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model_files(cfg: Config) -> ModelFiles:
    """Check ``[model].name``'s files; raise :class:`ConfigError` for a broken one.

    A local directory needs a readable config.json and, for a run, weights whose headers fit their
    files. A hub id is looked up in the local cache; offline, it must be there.
    """
    name = cfg.model.name
    if cfg.model.is_local:
        directory = Path(name)
    else:
        directory = _cached_snapshot(cfg)
        if directory is None:
            return ModelFiles(None)
    _check_config_json(cfg, directory)
    weights = _check_weights(cfg, directory)
    tokenizer = any((directory / f).is_file() for f in TOKENIZER_FILES)
    result = ModelFiles(directory, has_weights=weights, has_tokenizer=tokenizer)
    online_hub = not cfg.model.is_local and not is_offline()  # what is missing will be downloaded
    if not weights and not online_hub:
        result.missing.append(f"no weights ({SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS})")
    if not tokenizer and not online_hub:
        result.missing.append("no tokenizer (tokenizer.json, tokenizer.model, ...)")
    return result


def _cached_snapshot(cfg: Config) -> Path | None:
    """The hub cache's snapshot holding ``name``'s config.json; ``None`` when not cached (an
    error offline, where nothing can be downloaded)."""
    name = cfg.model.name
    base = cfg.path.parent
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # transformers needs it; without it the worker reports what is wrong
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(cfg.path, f'[model].name "{name}" is neither a model directory (paths are relative '
                                    f"to {base}) nor a valid hub id") from None
    found = try_to_load_from_cache(name, "config.json")
    if isinstance(found, str):
        return Path(found).parent
    if is_offline():
        raise ConfigError(cfg.path, f'[model].name "{name}" is not a model directory (paths are relative to '
                                    f"{base}) and not in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
                                    "download it first or name a local directory")
    return None


def _check_config_json(cfg: Config, directory: Path) -> None:
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(cfg.path, f"[model].name: no config.json in {directory}")
    record = _read_json(cfg, path, "the model config")
    if not isinstance(record, dict):
        raise ConfigError(cfg.path, f"[model].name: {path} is not a JSON object")
    model_type = record.get("model_type")
    if "model_type" in record and (not isinstance(model_type, str) or not model_type.strip()):
        raise ConfigError(cfg.path, f"[model].name: model_type in {path} must be a non-empty string")


def _read_json(cfg: Config, path: Path, what: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text.removeprefix("\ufeff"))
    except OSError as exc:
        raise ConfigError(cfg.path, f"[model].name: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(cfg.path, f"[model].name: {what} {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(cfg.path, f"[model].name: {what} {path} is not valid JSON ({exc.msg} at line "
                                    f"{exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise ConfigError(cfg.path, f"[model].name: {what} {path} is not valid JSON (nested too deeply)") from None


def _check_weights(cfg: Config, directory: Path) -> bool:
    """True when the directory holds weights (checked); ``False`` when it holds none."""
    if (directory / SAFE_WEIGHTS).exists():
        check_safetensors(cfg, directory / SAFE_WEIGHTS)
        return True
    if (directory / SAFE_INDEX).exists():
        _check_index(cfg, directory, SAFE_INDEX, check_safetensors)
        return True
    if (directory / TORCH_WEIGHTS).exists():
        _check_torch_file(cfg, directory / TORCH_WEIGHTS)
        return True
    if (directory / TORCH_INDEX).exists():
        _check_index(cfg, directory, TORCH_INDEX, _check_torch_file)
        return True
    return False


def _check_index(cfg: Config, directory: Path, index_name: str, check: Any) -> None:
    index = _read_json(cfg, directory / index_name, "weights index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(cfg.path, f"[model].name: {directory / index_name} has no weight_map of tensor -> file")
    for shard in sorted(set(weight_map.values())):
        path = directory / shard
        if not path.is_file():
            raise ConfigError(cfg.path, f"[model].name: {path} is missing (named by {index_name}): "
                                        "the download is incomplete")
        tensors = check(cfg, path)
        if tensors is not None:
            absent = [k for k, v in weight_map.items() if v == shard and k not in tensors]
            if absent:
                raise ConfigError(cfg.path, f"[model].name: {path} lacks {absent[0]} (named by {index_name})")


def check_safetensors(cfg: Config, path: Path) -> set[str]:
    """Check a safetensors file's header against its size; the names of its tensors."""
    def broken(why: str) -> ConfigError:
        return ConfigError(cfg.path, f"[model].name: {path} is not a valid safetensors file ({why})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise broken(f"{size} bytes, shorter than its header")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise broken(f"header length {length:,} bytes, file {size:,} bytes")
            raw = handle.read(length)
    except OSError as exc:
        raise ConfigError(cfg.path, f"[model].name: cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise broken("its header is not JSON") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    data_bytes = size - 8 - length
    end_of_data = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end_of_data = max(end_of_data, _tensor_end(info, name, data_bytes, broken))
    if end_of_data < data_bytes:
        raise broken(f"{data_bytes - end_of_data:,} bytes after the last tensor")
    return {name for name in header if name != "__metadata__"}


def _tensor_end(info: Any, name: str, data_bytes: int, broken: Any) -> int:
    """Where tensor ``name`` ends in the data, checked against its dtype, shape and the file's size."""
    ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
          and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
    if not ok:
        raise broken(f"tensor {name} has no valid dtype, shape and data_offsets")
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end:
        raise broken(f"tensor {name} has data_offsets {begin}..{end}")
    if end > data_bytes:
        raise broken(f"tensor {name} ends at byte {end:,} of the data, the file holds {data_bytes:,}: "
                     "the download was cut short")
    item = DTYPE_SIZES.get(info["dtype"])
    if item is not None and (end - begin) != math.prod(info["shape"]) * item:
        raise broken(f"tensor {name} holds {end - begin:,} bytes, its shape {info['shape']} of "
                     f"{info['dtype']} needs {math.prod(info['shape']) * item:,}")
    return end


def _check_torch_file(cfg: Config, path: Path) -> None:
    """A ``torch.save`` file is a zip archive (or, from old torch, a pickle): check its first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ConfigError(cfg.path, f"[model].name: cannot read {path}: {exc.strerror or exc}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ConfigError(cfg.path, f"[model].name: {path} is not a PyTorch weights file")
    return None
