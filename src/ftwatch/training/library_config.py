"""The config's ``[lora]`` and ``[training]`` as the libraries see them (imported here, late).

- :func:`validate_library_sections`: every key is a field of ``peft.LoraConfig`` /
  ``TrainingArguments`` with a value of its type, and the classes' own checks accept them.
- :func:`build_lora_config`, :func:`build_training_arguments`: what the worker trains with.
- :func:`dry_training_arguments`: ``TrainingArguments`` built without setting up a device, so the
  viewer and ``ftwatch estimate`` never create a CUDA context (it would hold GPU memory beside the
  run being watched) nor an accelerate state.
"""

from __future__ import annotations

import difflib
import enum
import typing
from typing import Any

from ftwatch.common.config import Config
from ftwatch.common.config_errors import ConfigError, _show, _unknown_key


def validate_library_sections(cfg: Config, *, dry: bool = False) -> None:
    """Check ``[lora]`` and ``[training]`` against ``peft.LoraConfig`` / ``TrainingArguments``.

    Unknown keys get the nearest field name as a suggestion; values are checked against the
    fields' type hints; finally the classes are built so their own checks run, and any error they
    raise is reported against the section. ``dry``: build the arguments without setting up a
    device (no CUDA context, no accelerate state), for the processes that do not train.
    """
    from peft import LoraConfig
    from transformers import TrainingArguments

    for section, cls in (("lora", LoraConfig), ("training", TrainingArguments)):
        table = getattr(cfg, section)
        hints = _field_hints(cls)
        fields = [f.name for f in cls.__dataclass_fields__.values() if f.init]
        for key, value in table.items():
            if key not in fields:
                raise _unknown_key(cfg.path, section, key, fields)
            hint = hints.get(key)
            if hint is not None and not _matches(value, hint):
                raise ConfigError(cfg.path, f"[{section}].{key} must be {_describe(hint, value)}, got {_show(value)}")
    try:
        build_lora_config(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(cfg.path, f"[lora] is rejected by peft: {exc}") from None
    output_dir = str(cfg.training.get("output_dir", "/tmp/ftwatch-check"))
    try:
        if dry:
            dry_training_arguments(training_kwargs(cfg, output_dir))
        else:
            build_training_arguments(cfg, output_dir=output_dir)
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(cfg.path, f"[training] is rejected by transformers: {_first_line(exc)}") from None


def build_lora_config(cfg: Config) -> Any:
    """The ``peft.LoraConfig`` for this config (task type causal LM unless given)."""
    from peft import LoraConfig

    kwargs = dict(cfg.lora)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(**kwargs)


def build_training_arguments(cfg: Config, output_dir: str, **forced: Any) -> Any:
    """The ``TrainingArguments`` for this config, with ftwatch's quiet defaults where unset and
    ``forced`` fields over the config's (the worker forces ``use_cpu`` for DDP on the CPU)."""
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(cfg, output_dir, **forced))


def training_kwargs(cfg: Config, output_dir: str, **forced: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`build_training_arguments`."""
    kwargs = dict(cfg.training)
    kwargs.update(forced)
    _current_names(kwargs)
    kwargs.setdefault("output_dir", output_dir)
    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("disable_tqdm", True)
    kwargs.setdefault("save_strategy", "no")
    return kwargs


#: ``TrainingArguments`` fields transformers 5 renamed (the old names are deprecated aliases there,
#: a FutureWarning each): a config may use either name, the worker passes the installed one.
_RENAMED = (("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


def _current_names(kwargs: dict[str, Any]) -> None:
    """Rename, in place, the deprecated checkpointing fields the installed transformers renamed."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    for old, new in _RENAMED:
        if old in kwargs and new in fields and new not in kwargs:
            kwargs[new] = kwargs.pop(old)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to no type checking
        return {}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is None:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # Union[SomeEnum, str]: the string must name a member
            return any(_matches(value, e) for e in enums)
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            return False
        inner = args[0] if args else Any
        return all(_matches(v, inner) for v in value) if inner is not Ellipsis else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) and value in {str(m.value) for m in hint}
    return True  # classes the config cannot spell (callables, objects): let the library decide


def _describe(hint: Any, value: Any = None) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            return _describe(enums[0], value)
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return "a list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [str(m.value) for m in hint]
        close = difflib.get_close_matches(str(value), values, n=3, cutoff=0.5) if value is not None else []
        shown = ", ".join(close or values[:8]) + ("" if close or len(values) <= 8 else ", ...")
        return f"one of {shown}" if not close else f"a valid name (closest: {shown})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(hint, getattr(hint, "__name__", str(hint)))


def dry_training_arguments(kwargs: dict[str, Any]) -> Any:
    """``TrainingArguments(**kwargs)`` with every check it makes, but no device set up.

    The hardware checks it makes (bf16 and tf32 support) are answered from NVML's compute
    capability instead of a CUDA context.
    """
    import torch
    import transformers.training_args as training_args
    from transformers import TrainingArguments

    class DryTrainingArguments(TrainingArguments):
        @property
        def device(self) -> Any:  # no torch.cuda.set_device, no PartialState
            return torch.device("cpu")

    patched = {"is_torch_bf16_gpu_available": _bf16_gpu_available, "is_torch_tf32_available": _tf32_available}
    saved = {name: getattr(training_args, name) for name in patched if hasattr(training_args, name)}
    try:
        for name in saved:
            setattr(training_args, name, patched[name])
        return DryTrainingArguments(**kwargs)
    finally:
        for name, value in saved.items():
            setattr(training_args, name, value)


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first visible GPU's compute capability through NVML (no CUDA context); ``None`` without one."""
    from ftwatch.common.nvml_query import ask_first_gpu

    def capability(nvml: Any, handle: Any) -> tuple[int, int]:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)

    return ask_first_gpu(capability)


def _bf16_gpu_available() -> bool:
    capability = gpu_compute_capability()
    return capability is not None and capability[0] >= 8


def _tf32_available() -> bool:
    return _bf16_gpu_available()  # both came with Ampere (compute capability 8.0)
