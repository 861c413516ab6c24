"""``ftwatch run -- COMMAND``: ftwatch installed inside a training command that knows nothing of it.

The parent (:mod:`ftwatch.commands.run_command`) starts the command with :data:`SITE_DIR` first on
its ``PYTHONPATH``; Python imports ``sitecustomize`` from there at start-up, which chains to the
environment's own ``sitecustomize`` and installs :mod:`.bootstrap`: post-import hooks that patch
transformers, peft and torch's optimizers only when the script imports them (:mod:`.patches`,
:mod:`.loop`). The first training call makes the process's one probe (:mod:`.session`).

This package's ``__init__`` stays free of torch: the parent imports it for the constants alone.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

#: The directory put first on the child's ``PYTHONPATH`` (it holds ``sitecustomize.py`` alone).
SITE_DIR = Path(__file__).resolve().parent / "site"
#: Set to ``1`` in a wrapped command's environment (and its children's).
WRAPPED_ENV = "FTWATCH_WRAPPED"
#: The run's name (the script's stem), chosen by the parent.
NAME_ENV = "FTWATCH_RUN_NAME"
#: The directory that holds the ``ftwatch`` package, for an interpreter that cannot import it otherwise.
PACKAGE_ROOT_ENV = "FTWATCH_PACKAGE_ROOT"


def say(message: str) -> None:
    """One line on stderr (``ftwatch: ...``), never raising."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"ftwatch: {message}\n")
        sys.stderr.flush()
