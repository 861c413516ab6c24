"""Reading one config table into typed values: :class:`_Section` and the common ``[lora]``/``[training]`` keys.

Each getter returns the value of the expected type or raises a :class:`ConfigError` that names
the key path; ``_check_common`` checks the usual LoRA and training keys without importing the
libraries.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ftwatch.common.config_errors import ConfigError, _show, _type_name, _unknown_key


class _Section:
    """Reads one table, tracking its key path for messages."""

    def __init__(self, path: Path, name: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, f"[{name}] must be a table, got {_type_name(table)}")
        self.path, self.name, self.table = path, name, table

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, f"[{self.name}].{key} {message}")

    def check_keys(self, known: list[str]) -> None:
        for key in self.table:
            if key not in known:
                raise _unknown_key(self.path, self.name, key, known)

    def get_str(self, key: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                raise ConfigError(self.path, f"[{self.name}].{key} is required")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.err(key, f"must be a non-empty string, got {_show(value)}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"must be true or false, got {_show(value)}")
        return value

    def get_positive_int(self, key: str, default: int | None) -> int | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.err(key, f"must be a positive integer, got {_show(value)}")
        return value

    def get_positive_number(self, key: str, default: float) -> float:
        value = self.table.get(key, default)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise self.err(key, f"must be a positive number, got {_show(value)}")
        return float(value)


# --- common [lora] / [training] keys checked without importing the libraries -----------------

_POSITIVE_INT = "positive_int"
_NON_NEGATIVE_INT = "non_negative_int"
_INT = "int"
_MAX_STEPS = "max_steps"
_POSITIVE_NUMBER = "positive_number"
_PROBABILITY = "probability"
_BOOL = "bool"
_STR = "str"
_STR_OR_LIST = "str_or_list"

_COMMON_KEYS: dict[str, dict[str, str]] = {
    "lora": {"r": _POSITIVE_INT, "lora_alpha": _POSITIVE_NUMBER, "lora_dropout": _PROBABILITY,
             "target_modules": _STR_OR_LIST, "bias": _STR, "use_rslora": _BOOL, "use_dora": _BOOL},
    "training": {"per_device_train_batch_size": _POSITIVE_INT, "gradient_accumulation_steps": _POSITIVE_INT,
                 "max_steps": _MAX_STEPS, "num_train_epochs": _POSITIVE_NUMBER, "learning_rate": _POSITIVE_NUMBER,
                 "gradient_checkpointing": _BOOL, "bf16": _BOOL, "fp16": _BOOL, "seed": _NON_NEGATIVE_INT,
                 "output_dir": _STR, "optim": _STR, "logging_steps": _POSITIVE_NUMBER},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_common(section: _Section, key: str, kind: str) -> None:
    value = section.table[key]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = _is_number(value) and math.isfinite(value)
    ok, expected = {
        _POSITIVE_INT: (is_int and value > 0, "a positive integer"),
        _NON_NEGATIVE_INT: (is_int and value >= 0, "a non-negative integer"),
        _INT: (is_int, "an integer"),
        _MAX_STEPS: (is_int and (value > 0 or value == -1),
                     "a positive integer (or -1: train for num_train_epochs instead)"),
        _POSITIVE_NUMBER: (is_num and value > 0, "a positive number"),
        _PROBABILITY: (is_num and 0 <= value < 1, "a number from 0 up to 1"),
        _BOOL: (isinstance(value, bool), "true or false"),
        _STR: (isinstance(value, str), "a string"),
        _STR_OR_LIST: (isinstance(value, str) or (isinstance(value, list) and value
                                                  and all(isinstance(v, str) for v in value)),
                       "a module name or a list of module names"),
    }[kind]
    if not ok:
        raise section.err(key, f"must be {expected}, got {_show(value)}")
