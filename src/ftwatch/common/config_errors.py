"""The wording of config errors: :class:`ConfigError`, how a value is shown, unknown-key suggestions.

Every config problem reaches the user as one line, ``file: [section].key <what is wrong>``; the
helpers here quote the user's values safely and suggest the key that was probably meant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe


class ConfigError(ValueError):
    """A config problem, phrased for the user: ``file: [section].key <what is wrong>``.

    The text is always one line, free of control characters (it quotes the user's files).
    """

    def __init__(self, path: str | os.PathLike[str] | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.message = safe(message, one_line=True)
        where = safe(self.path, one_line=True) if self.path else None
        super().__init__(f"{where}: {self.message}" if where else self.message)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = safe(value, one_line=True)
        return f'"{text[:80]}..."' if len(text) > 80 else f'"{text}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"a {len(str(abs(value))) if abs(value) < 10**4000 else 'huge'}-digit number"
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


#: Names people often type for a field, by section (difflib cannot guess "rank" -> "r").
_ALIASES: dict[str, dict[str, str]] = {
    "lora": {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules",
             "target": "target_modules", "modules": "target_modules"},
    "training": {"batch_size": "per_device_train_batch_size", "per_device_batch_size": "per_device_train_batch_size",
                 "train_batch_size": "per_device_train_batch_size", "lr": "learning_rate",
                 "grad_accum": "gradient_accumulation_steps", "steps": "max_steps", "epochs": "num_train_epochs",
                 "optimizer": "optim", "checkpointing": "gradient_checkpointing"},
    "model": {"model": "name", "path": "name", "torch_dtype": "dtype"},
    "data": {"file": "path", "seq_len": "max_length", "max_seq_length": "max_length", "field": "text_field"},
    "launch": {"nproc": "nproc_per_node", "gpus": "nproc_per_node", "processes": "nproc_per_node",
               "nodes": "nnodes", "num_nodes": "nnodes", "rank": "node_rank", "port": "master_port",
               "addr": "master_addr", "master": "master_addr"},
}


def _unknown_key(path: Path, section: str, key: str, known: list[str]) -> ConfigError:
    alias = _ALIASES.get(section, {}).get(key)
    import difflib  # (here: only a misspelt key needs it)

    close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    where = f"[{section}].{key}" if section else f"[{key}]"
    kind = "unknown key" if section else "unknown section"
    return ConfigError(path, f"{kind} {where}{hint}")
