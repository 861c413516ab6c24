"""``ftwatch run --fit CONFIG``: the fitted config (:mod:`ftwatch.commands.fit`) is what the worker runs.

The fitted text is written to a private temporary folder under the config's own file name (the run's
name stays the same), with ``[model] name`` (a local model) and ``[data] path`` made absolute so that
they resolve as they did from the original's folder; ``run`` copies it into the run directory as
``config.toml`` as it copies any config.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TextIO

from ftwatch.commands.estimate import CAPACITY_TEXT
from ftwatch.commands.fit import DEFAULT_HEADROOM, _write_new, render, search
from ftwatch.commands.fit_toml import Setting
from ftwatch.common.config import Config, load_config
from ftwatch.common.config_errors import ConfigError


def fitted_for_run(cfg: Config, stream: TextIO) -> Config:
    """Fit ``cfg`` (capacity as ``ftwatch estimate`` finds it, 10% headroom), print the report on
    ``stream`` and return the fitted config, loaded from its temporary copy (:func:`discard` removes it).

    Raises :class:`ConfigError` when nothing fits or the config cannot be rewritten.
    """
    extra: list[Setting] = []
    if cfg.model.is_local:
        extra.append(("model", "name", str(cfg.model.name)))
    if cfg.data is not None:
        extra.append(("data", "path", str(cfg.data.path)))
    found = search(cfg, None, None, DEFAULT_HEADROOM, extra)
    print(render(cfg.name, found.result, CAPACITY_TEXT.get(found.source or "", found.source), found.why,
                 found.diff, None), file=stream)
    if not found.result.fitted:
        raise ConfigError(cfg.path, "--fit: no config that fits was found (see the table above); not started")
    if found.text is None:
        raise ConfigError(cfg.path, "--fit: the fitted config cannot be written (see the note above); not started")
    folder = Path(tempfile.mkdtemp(prefix="ftwatch-fit-"))
    path = folder / cfg.path.name
    _write_new(path, found.text)
    return load_config(path)


def discard(cfg: Config) -> None:
    """Remove the temporary folder of a config :func:`fitted_for_run` made."""
    folder = cfg.path.parent
    if folder.name.startswith("ftwatch-fit-") and folder.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(folder, ignore_errors=True)
