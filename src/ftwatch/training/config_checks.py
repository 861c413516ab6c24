"""The one validation ``ftwatch run`` and ``ftwatch estimate`` share: :func:`check_config`.

:func:`ftwatch.common.config.load_config` has checked the syntax, the sections, ftwatch's own keys and the
common LoRA/training keys. This finds the rest before the worker starts (no weights load, no run
directory), each as one :class:`ConfigError` line naming the file and the key:

1. torch-free and fast (a bad input fails in a fraction of a second): every number finite and in
   its range, the data file (UTF-8, JSON records with a string ``text_field``, some text), the
   model's files (config.json, the weights' headers, the hub cache when offline), bitsandbytes for
   4-bit/8-bit loading, a writable ``output_dir``;
2. then with transformers/peft/torch (seconds of imports): every ``[lora]``/``[training]`` key
   against the installed classes, the model type, ``target_modules`` against the model built on the
   ``meta`` device, and with packing one block of ``max_length`` tokens in the data.

What only a run needs (the weights, the tokenizer, bitsandbytes, a writable ``output_dir``) is an
error for ``run`` and a note for ``estimate``, which predicts a run from config.json alone.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError, _show
from ftwatch.training.data import ReadLimit, scan_texts
from ftwatch.training.model_files import ModelFiles, check_model_files

Purpose = Literal["run", "estimate"]

#: How much of the data file the checks read (the worker checks the rest as it reads it all).
SCAN_BYTES = 256 * 2**20

#: Ranges of common numeric ``[training]`` fields the libraries accept but fail on later:
#: (lowest, highest, lowest included, integer).
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "warmup_steps": (0, math.inf, True, False),
    "warmup_ratio": (0, 1, True, False),
    "weight_decay": (0, math.inf, True, False),
    "max_grad_norm": (0, math.inf, True, False),
    "adam_beta1": (0, 1, True, False),
    "adam_beta2": (0, 1, True, False),
    "adam_epsilon": (0, math.inf, False, False),
    "label_smoothing_factor": (0, 1, True, False),
    "per_device_eval_batch_size": (1, math.inf, True, True),
    "eval_accumulation_steps": (1, math.inf, True, True),
    "dataloader_num_workers": (0, math.inf, True, True),
    "dataloader_prefetch_factor": (1, math.inf, True, True),
    "save_steps": (0, math.inf, False, False),
    "eval_steps": (0, math.inf, False, False),
    "save_total_limit": (0, math.inf, True, True),
    "torch_empty_cache_steps": (1, math.inf, True, True),
    "seed": (0, 2**32 - 1, True, True),  # numpy's seeding takes 32 bits
    "data_seed": (0, 2**32 - 1, True, True),
}


def check_config(cfg: Config, purpose: Purpose = "run") -> list[str]:
    """Check everything a run of ``cfg`` needs; raise :class:`ConfigError` for the first problem.

    Returns notes for ``purpose="estimate"``: what ``ftwatch run`` would still refuse.
    """
    needs, files = check_without_libraries(cfg)
    if needs and purpose == "run":
        raise ConfigError(cfg.path, needs[0])
    needs += check_with_libraries(cfg, files)
    if needs and purpose == "run":
        raise ConfigError(cfg.path, needs[0])
    return [f"`ftwatch run` would refuse this config: {'; '.join(needs)}"] if needs else []


def check_without_libraries(cfg: Config) -> tuple[list[str], ModelFiles]:
    """The torch-free checks: what only a run needs and is missing (``[key] ...`` texts), and the
    model's files as found."""
    check_numbers(cfg)
    if cfg.data is not None:
        scan_texts(cfg.data, cfg.path, ReadLimit(SCAN_BYTES))
    files = check_model_files(cfg)
    needs = [f"[model].name: {files.directory} holds {' and '.join(files.missing)}"] if files.missing else []
    needs += _quantization_needs(cfg) + _output_dir_needs(cfg)
    return needs, files


def check_with_libraries(cfg: Config, files: ModelFiles) -> list[str]:
    """The checks that import transformers/peft/torch (after the fast ones); returns what only a
    run needs and cannot have here (an attention kernel that is not installed)."""
    from ftwatch.analysis.estimate.quiet import _quiet
    from ftwatch.training.library_checks import attention_need, check_model, check_tokens
    from ftwatch.training.library_config import validate_library_sections

    with _quiet():  # deprecation warnings are the worker's to print, in worker.log
        validate_library_sections(cfg, dry=True)
    inputs = check_model(cfg, files)
    if files.directory is None or files.has_tokenizer:
        check_tokens(cfg, SCAN_BYTES)
    need = attention_need(cfg, inputs)
    return [need] if need else []


def check_numbers(cfg: Config) -> None:
    """Every number in ``[lora]``/``[training]`` finite; the common fields in their ranges."""
    for section in ("lora", "training"):
        for key, value in getattr(cfg, section).items():
            _check_finite(cfg, f"[{section}].{key}", value)
    for key, (low, high, low_included, integer) in _RANGES.items():
        if key not in cfg.training:
            continue
        value = cfg.training[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # the type checks against TrainingArguments report it
        if integer and not isinstance(value, int):
            raise ConfigError(cfg.path, f"[training].{key} must be an integer, got {_show(value)}")
        if value < low or (value == low and not low_included) or value > high:
            raise ConfigError(cfg.path, f"[training].{key} must be {_range_text(low, high, low_included, integer)}, "
                                        f"got {_show(value)}")


def _check_finite(cfg: Config, where: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(cfg.path, f"{where} must be a finite number, got {_show(value)}")
    if isinstance(value, list):
        for item in value:
            _check_finite(cfg, where, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(cfg, f"{where}.{key}", item)


def _range_text(low: float, high: float, low_included: bool, integer: bool) -> str:
    kind = "an integer " if integer else ""
    low_text, high_text = (f"{int(low):,}", f"{int(high) if high != math.inf else 0:,}") if integer else \
        (f"{low:g}", f"{high:g}")
    if high == math.inf:
        return f"{kind}at least {low_text}" if low_included else f"{kind}larger than {low_text}"
    return (f"{kind}from {low_text} to {high_text}" if low_included
            else f"{kind}larger than {low_text} and at most {high_text}")


def _quantization_needs(cfg: Config) -> list[str]:
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(cfg.model, key) and importlib.util.find_spec("bitsandbytes") is None:
            return [f"[model].{key} needs the bitsandbytes package, which is not installed "
                    "(pip install bitsandbytes)"]
    return []


def _output_dir_needs(cfg: Config) -> list[str]:
    """``[training] output_dir`` (relative to the current directory, as the worker sees it) must be a
    directory this user can write, or creatable."""
    value = cfg.training.get("output_dir")
    if not isinstance(value, str) or not value.strip():
        return []
    path = Path(os.path.expanduser(value)).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is" if probe == path else f"would be under {probe}, which is"
        return [f"[training].output_dir {path} {where} not a directory"]
    try:  # a real try, not os.access: root passes access() where mkdir fails (/proc, a read-only mount)
        os.rmdir(tempfile.mkdtemp(prefix=".ftwatch-check-", dir=probe))
    except OSError as exc:
        where = "" if probe == path else f" (its nearest existing parent {probe})"
        return [f"[training].output_dir {path}{where} is not writable by this user ({exc.strerror or exc})"]
    return []
