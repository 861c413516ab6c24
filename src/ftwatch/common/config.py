"""TOML config -> typed config, with errors that name the file and the key path.

The sections use the names users already know from Hugging Face: ``[model]`` takes the
``from_pretrained`` options, ``[lora]`` the fields of ``peft.LoraConfig``, ``[training]`` the fields
of ``transformers.TrainingArguments``; ``[data]``, ``[monitor]`` and ``[launch]`` are ftwatch's own.

:func:`load_config` checks everything that can be checked without importing torch (syntax,
sections, ftwatch's own keys, the common LoRA/training keys, files). The training worker then
calls :func:`validate_library_sections`, which checks every ``[lora]`` and ``[training]`` key
against the installed peft/transformers classes, so every option the libraries have works and a
typo is caught with a suggestion.

This module holds the schema (the section dataclasses and their defaults), the loading and the
path resolution; the error wording is in :mod:`ftwatch.common.config_errors` and the typed
readers of one table in :mod:`ftwatch.common.config_sections`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

from ftwatch.common.config_errors import ConfigError, _show, _unknown_key
from ftwatch.common.config_sections import _COMMON_KEYS, _check_common, _Section
from ftwatch.common.safe_text import safe
from ftwatch.common.units import parse_size

#: A ``[monitor] budget`` given as a TOML number is a byte count; below this it is a forgotten unit.
SMALLEST_NUMBER_BUDGET = 1 << 10

SECTIONS = ("model", "lora", "training", "data", "monitor", "launch")
DTYPES = ("auto", "bfloat16", "float16", "float32")
#: ``[monitor] modules``: no module attribution, the blocks and layers, or the whole module tree too.
MODULE_MODES = ("off", "summary", "full")
MAX_CONFIG_BYTES = 1 << 20


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
    #: Module attribution on measured steps (the ``modules`` event): one of :data:`MODULE_MODES`.
    modules: str = "summary"


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
        raise m.err("name", f"no such model directory: {name}{_relative_to(base, name)}")
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
            raise d.err("path", f"no such data file: {d.table['path']}{_relative_to(base, d.table['path'])}")
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
            budget = parse_size(mon.table["budget"], unit_required=True)
        except (ValueError, OverflowError) as exc:
            raise mon.err("budget", f"is not a size: {exc}") from None
        written = mon.table["budget"]
        if isinstance(written, (int, float)) and 0 < budget < SMALLEST_NUMBER_BUDGET:
            raise mon.err("budget", f'is a number, so a byte count: {budget} B; write a unit, like "{written}GiB"')
        if budget <= 0:
            raise mon.err("budget", "must be larger than zero")
    sample_hz = mon.get_positive_number("sample_hz", 10.0)
    if sample_hz > 1000:
        raise mon.err("sample_hz", f"must be at most 1000, got {_show(mon.table['sample_hz'])}")
    modules = mon.get_str("modules", "summary")
    if modules not in MODULE_MODES:
        raise mon.err("modules", f"must be one of {', '.join(MODULE_MODES)}, got {_show(modules)}")
    monitor = MonitorConfig(
        sample_hz=sample_hz,
        log_dir=Path(mon.get_str("log_dir", "ftwatch-runs")),
        budget=budget,
        print_every=mon.get_positive_int("print_every", None),
        track_activations=mon.get_bool("track_activations", True),
        activations_every=mon.get_positive_int("activations_every", 10) or 10,
        preflight=mon.get_bool("preflight", True),
        modules=modules,
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


def _relative_to(base: Path, written: str) -> str:
    """Where a relative path in the config was looked for (nothing to add for an absolute one)."""
    if written.startswith(("/", "~")):
        return ""
    return f" (paths are relative to {base or '.'})"


def _resolve_local_model(base: Path, name: str) -> Path | None:
    """A local model directory, relative to the config file; ``None`` when it is a hub id."""
    candidate = Path(os.path.expanduser(name))
    if not candidate.is_absolute():
        candidate = base / candidate
    if candidate.is_dir():
        return candidate.resolve()
    return None
