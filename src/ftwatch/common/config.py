"""TOML config -> typed config, with errors that name the file and the key path.

The sections use the names users already know from Hugging Face: ``[model]`` takes the
``from_pretrained`` options, ``[lora]`` the fields of ``peft.LoraConfig``, ``[training]`` the fields
of ``transformers.TrainingArguments``; ``[data]``, ``[monitor]`` and ``[launch]`` are ftwatch's own.

:func:`load_config` checks everything that can be checked without importing torch (syntax,
sections, ftwatch's own keys, the common LoRA/training keys, files). The training worker then
calls :func:`validate_library_sections`, which checks every ``[lora]`` and ``[training]`` key
against the installed peft/transformers classes, so every option the libraries have works and a
typo is caught with a suggestion.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ftwatch.common.safe_text import safe
from ftwatch.common.units import parse_size

SECTIONS = ("model", "lora", "training", "data", "monitor", "launch")
DTYPES = ("auto", "bfloat16", "float16", "float32")
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """A config problem, phrased for the user: ``file: [section].key <what is wrong>``.

    The text is always one line, free of control characters (it quotes the user's files).
    """

    def __init__(self, path: str | os.PathLike[str] | None, message: str) -> None:
        self.path = str(path) if path is not None else None
        self.message = safe(message, one_line=True)
        where = safe(self.path, one_line=True) if self.path else None
        super().__init__(f"{where}: {self.message}" if where else self.message)


@dataclass
class ModelConfig:
    """``[model]``: what ``from_pretrained`` gets."""

    name: str
    dtype: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    device_map: str | dict[str, Any] | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    is_local: bool = False


@dataclass
class DataConfig:
    """``[data]``: a local text or JSON-lines file, tokenized to ``max_length`` blocks."""

    path: Path
    text_field: str = "text"
    max_length: int = 128
    packing: bool = True


@dataclass
class MonitorConfig:
    """``[monitor]``: how ftwatch samples and where it writes the run log."""

    sample_hz: float = 10.0
    log_dir: Path = Path("ftwatch-runs")
    budget: int | None = None
    print_every: int | None = None
    track_activations: bool = True
    activations_every: int = 10
    preflight: bool = True


@dataclass
class LaunchConfig:
    """``[launch]``: how many training processes ``ftwatch run`` starts, through ``torchrun``.

    The fields are torchrun's (``--nproc-per-node``, ``--nnodes``, ``--node-rank``,
    ``--master-addr``, ``--master-port``). With one node and no ``master_port`` torchrun runs
    ``--standalone`` (it picks a free port itself).
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nproc_per_node * self.nnodes

    @property
    def distributed(self) -> bool:
        """True when the run needs torchrun (more than one process in all)."""
        return self.world_size > 1

    def torchrun_arguments(self) -> list[str]:
        """The ``torch.distributed.run`` options for this launch."""
        args = [f"--nproc-per-node={self.nproc_per_node}"]
        if self.nnodes == 1 and self.master_port is None:
            return ["--standalone", *args]
        args += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                 f"--master-addr={self.master_addr or '127.0.0.1'}", f"--master-port={self.master_port or 29500}"]
        return args


@dataclass
class Config:
    """A validated config file."""

    path: Path
    model: ModelConfig
    lora: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    data: DataConfig | None = None
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    @property
    def name(self) -> str:
        """The run's name: the config file's stem."""
        return self.path.stem


# --- small checking helpers -------------------------------------------------------------------

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
    close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    where = f"[{section}].{key}" if section else f"[{key}]"
    kind = "unknown key" if section else "unknown section"
    return ConfigError(path, f"{kind} {where}{hint}")


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


# --- loading ------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` naming the file and key."""
    cfg_path = Path(path)
    if not cfg_path.exists():
        raise ConfigError(cfg_path, "no such config file")
    if cfg_path.is_dir():
        raise ConfigError(cfg_path, "is a directory, expected a .toml config file")
    if not cfg_path.is_file():  # a FIFO or a device would block the read (or never end)
        raise ConfigError(cfg_path, "is not a regular file, expected a .toml config file")
    if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(cfg_path, f"is {cfg_path.stat().st_size:,} bytes: too large for a config file")
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(cfg_path, f"TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(cfg_path, f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except ValueError:  # a number tomllib cannot convert (an integer of thousands of digits)
        raise ConfigError(cfg_path, f"{_huge_number_line(cfg_path)}: a number too long to read") from None
    except OSError as exc:
        raise ConfigError(cfg_path, f"cannot read: {exc}") from None
    return parse_config(raw, cfg_path)


def _huge_number_line(cfg_path: Path) -> str:
    """``line N (key)`` of the first line holding a number of thousands of digits."""
    for number, line in enumerate(cfg_path.read_text(encoding="utf-8").splitlines(), 1):
        if re.search(r"[0-9_]{1000}", line):
            return f"line {number} ({safe(line.split('=', 1)[0].strip(), one_line=True)[:60]})"
    return "a value"


def parse_config(raw: dict[str, Any], cfg_path: Path) -> Config:
    """Validate an already parsed TOML document (see :func:`load_config`)."""
    for key in raw:
        if key not in SECTIONS:
            raise _unknown_key(cfg_path, "", key, list(SECTIONS))
    if "model" not in raw:
        raise ConfigError(cfg_path, "[model] section is missing (it needs at least name = ...)")
    base = cfg_path.parent

    m = _Section(cfg_path, "model", raw["model"])
    m.check_keys([f.name for f in ModelConfig.__dataclass_fields__.values() if f.name != "is_local"])
    name = m.get_str("name", required=True)
    dtype = m.get_str("dtype", "auto")
    if dtype not in DTYPES:
        raise m.err("dtype", f"must be one of {', '.join(DTYPES)}, got {_show(dtype)}")
    local = _resolve_local_model(base, name)
    if local is None and _looks_like_path(name):
        raise m.err("name", f"no such model directory: {name} (paths are relative to {base or '.'})")
    device_map = m.table.get("device_map")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise m.err("device_map", f"must be a string such as \"auto\" or a table, got {_show(device_map)}")
    model = ModelConfig(
        name=str(local) if local else name,
        dtype=dtype,
        load_in_4bit=m.get_bool("load_in_4bit", False),
        load_in_8bit=m.get_bool("load_in_8bit", False),
        device_map=device_map,
        attn_implementation=m.get_str("attn_implementation"),
        trust_remote_code=m.get_bool("trust_remote_code", False),
        is_local=local is not None,
    )
    if model.load_in_4bit and model.load_in_8bit:
        raise m.err("load_in_4bit", "and load_in_8bit cannot both be true")

    sections: dict[str, dict[str, Any]] = {}
    for name_ in ("lora", "training"):
        sec = _Section(cfg_path, name_, raw.get(name_, {}))
        for key, kind in _COMMON_KEYS[name_].items():
            if key in sec.table:
                _check_common(sec, key, kind)
        sections[name_] = dict(sec.table)

    data = None
    if "data" in raw:
        d = _Section(cfg_path, "data", raw["data"])
        d.check_keys(list(DataConfig.__dataclass_fields__))
        data_path = (base / d.get_str("path", required=True)).resolve()
        if not data_path.exists():
            raise d.err("path", f"no such data file: {d.table['path']} (paths are relative to {base or '.'})")
        if data_path.is_dir():
            raise d.err("path", f"{data_path} is a directory, expected a .jsonl or .txt file")
        if not data_path.is_file():  # a FIFO or a device: a read could block or never end
            raise d.err("path", f"{data_path} is not a regular file, expected a .jsonl or .txt file")
        data = DataConfig(
            path=data_path,
            text_field=d.get_str("text_field", "text"),
            max_length=d.get_positive_int("max_length", 128) or 128,
            packing=d.get_bool("packing", True),
        )
    else:
        raise ConfigError(cfg_path, "[data] section is missing (it needs at least path = ...)")

    mon = _Section(cfg_path, "monitor", raw.get("monitor", {}))
    mon.check_keys(list(MonitorConfig.__dataclass_fields__))
    budget = None
    if "budget" in mon.table:
        try:
            budget = parse_size(mon.table["budget"])
        except (ValueError, OverflowError) as exc:
            raise mon.err("budget", f"is not a size: {exc}") from None
        if budget <= 0:
            raise mon.err("budget", "must be larger than zero")
    sample_hz = mon.get_positive_number("sample_hz", 10.0)
    if sample_hz > 1000:
        raise mon.err("sample_hz", f"must be at most 1000, got {_show(mon.table['sample_hz'])}")
    monitor = MonitorConfig(
        sample_hz=sample_hz,
        log_dir=Path(mon.get_str("log_dir", "ftwatch-runs")),
        budget=budget,
        print_every=mon.get_positive_int("print_every", None),
        track_activations=mon.get_bool("track_activations", True),
        activations_every=mon.get_positive_int("activations_every", 10) or 10,
        preflight=mon.get_bool("preflight", True),
    )
    return Config(path=cfg_path, model=model, lora=sections["lora"], training=sections["training"],
                  data=data, monitor=monitor, launch=_parse_launch(_Section(cfg_path, "launch", raw.get("launch", {}))))


def _parse_launch(section: _Section) -> LaunchConfig:
    section.check_keys(list(LaunchConfig.__dataclass_fields__))
    nnodes = section.get_positive_int("nnodes", 1) or 1
    node_rank = section.table.get("node_rank", 0)
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < nnodes:
        raise section.err("node_rank", f"must be an integer from 0 to nnodes - 1 ({nnodes - 1}), got {_show(node_rank)}")
    port = section.table.get("master_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise section.err("master_port", f"must be a port number (1-65535), got {_show(port)}")
    if nnodes > 1 and port is None:
        raise section.err("master_port", "is needed when nnodes > 1 (every node must name the same one)")
    master_addr = section.get_str("master_addr", None)
    if nnodes > 1 and not master_addr:
        raise section.err("master_addr", "is needed when nnodes > 1 (the address of node 0)")
    return LaunchConfig(nproc_per_node=section.get_positive_int("nproc_per_node", 1) or 1, nnodes=nnodes,
                        node_rank=node_rank, master_addr=master_addr, master_port=port)


def _looks_like_path(name: str) -> bool:
    """Names that start like a path are paths; anything else may be a hub id ("org/model")."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _resolve_local_model(base: Path, name: str) -> Path | None:
    """A local model directory, relative to the config file; ``None`` when it is a hub id."""
    candidate = Path(os.path.expanduser(name))
    if not candidate.is_absolute():
        candidate = base / candidate
    if candidate.is_dir():
        return candidate.resolve()
    return None
