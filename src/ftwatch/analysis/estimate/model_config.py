"""The model's config: reading config.json (locally or from the hub), its fields, and the weights' dtype."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ftwatch.analysis.estimate.quiet import _quiet
from ftwatch.common.config_errors import ConfigError

#: Bytes per element of the dtypes a config can name.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


def resolve_dtype(dtype: str, model_config: Any) -> str:
    """The dtype the weights load in: ``auto`` means config.json's ``dtype``/``torch_dtype``, else float32."""
    if dtype != "auto":
        return dtype
    for key in ("dtype", "torch_dtype"):
        value = _config_get(model_config, key)
        if value is not None:
            name = str(value).removeprefix("torch.")
            if name in DTYPE_BYTES:
                return name
    return "float32"


def _config_get(model_config: Any, key: str) -> Any:
    if isinstance(model_config, Mapping):
        return model_config.get(key)
    with contextlib.suppress(Exception):
        return getattr(model_config, key, None)
    return None


def load_model_config(name: str, trust_remote_code: bool = False) -> Any:
    """The model's config (a ``PretrainedConfig``) from a local directory, the hub cache, or the hub.

    Raises :class:`ConfigError` (no path attached) when no ``config.json`` can be read.
    """
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(None, f"[model].name: no config.json in {path}")
    if path.is_dir():
        return _read_config(lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), name)
    try:
        with _quiet():
            return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception:  # not in the local hub cache: ask the hub, if it can be reached
        pass
    unreachable = _hub_unreachable()
    if unreachable:
        raise ConfigError(None, f"[model].name: {name!r} is not a local directory and not in the hub cache, "
                                f"and the hub cannot be reached ({unreachable}); point it at a directory "
                                "holding the model's config.json")
    return _read_config(lambda: AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code), name)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no route), or ``None`` if it may be.

    Checked up front because the hub client retries for half a minute before giving up.
    """
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: let the client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}: {exc.strerror or exc}"
    return None


def _read_config(load: Callable[[], Any], name: str) -> Any:
    try:
        with _quiet():
            return load()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(None, f"[model].name: cannot read the config.json of {name!r}: {first}") from None


def _to_pretrained_config(model_config: Any, trust_remote_code: bool = False) -> Any:
    """Accept a ``PretrainedConfig`` or a config.json dict."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model_config, PretrainedConfig):
        return model_config
    if isinstance(model_config, Mapping):
        data = dict(model_config)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise ConfigError(None, "[model].name: config.json has no model_type")
        try:
            return AutoConfig.for_model(model_type, **data)
        except ValueError as exc:
            raise ConfigError(None, f"[model].name: unknown model_type {model_type!r}: {exc}") from None
    raise TypeError(f"expected a PretrainedConfig or a dict, got {type(model_config).__name__}")
