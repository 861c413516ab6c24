"""``ftwatch example [DIR]``: write the bundled example (a tiny Llama, its data and a config) to a
directory, so an install from a wheel has something to run: ``ftwatch example && ftwatch run
ftwatch-example/tiny-lora.toml``.

The files are package data under ``ftwatch/bundled_example/`` (listed in ``pyproject.toml``'s
``[tool.setuptools.package-data]``); in a clone, ``examples/`` links to the same files. The config
names its model and data relative to itself, so the copy runs from any directory. An existing
directory is written into only when it is empty: nothing the user has is ever overwritten.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ftwatch.commands.usage import EXIT_FAILED, EXIT_OK, UsageError
from ftwatch.common.safe_text import safe

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; the package supports 3.10
    from importlib.resources.abc import Traversable


#: Where the example lies inside the installed package.
PACKAGE_DIR = "bundled_example"
#: The config ``ftwatch run`` takes, relative to the written directory.
CONFIG = "tiny-lora.toml"
#: Every file the example needs, relative to :data:`PACKAGE_DIR` (and to the written directory).
FILES: tuple[str, ...] = (
    CONFIG,
    "data/field-notes.jsonl",
    "tiny-llama/config.json",
    "tiny-llama/generation_config.json",
    "tiny-llama/model.safetensors",
    "tiny-llama/tokenizer.json",
    "tiny-llama/tokenizer_config.json",
)
DEFAULT_DIR = "ftwatch-example"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ftwatch example``."""
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR",
                        help=f"where to write it: a new or empty directory (default: {DEFAULT_DIR})")


def bundled_files() -> dict[str, Traversable]:
    """Each of :data:`FILES` in the installed package; raises FileNotFoundError naming the first missing."""
    root = resources.files("ftwatch") / PACKAGE_DIR
    found: dict[str, Traversable] = {}
    for name in FILES:
        item = root
        for part in name.split("/"):
            item = item / part
        if not item.is_file():
            raise FileNotFoundError(f"this ftwatch install lacks its example file {PACKAGE_DIR}/{name} "
                                    "(reinstall ftwatch)")
        found[name] = item
    return found


def check_target(target: Path) -> None:
    """Refuse (UsageError) a target that is a file, or a directory that holds anything."""
    if not str(target):
        raise UsageError("DIR is empty: name a new or empty directory")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory: name a new or empty directory")
    if target.is_dir() and any(target.iterdir()):
        raise UsageError(f"{target} exists and is not empty: name a new or empty directory "
                         "(nothing is overwritten)")


def write_example(target: Path) -> list[Path]:
    """Write the bundled example into ``target`` (new or empty); returns the paths written."""
    check_target(target)
    sources = bundled_files()
    written = []
    for name, source in sources.items():
        dest = target.joinpath(*name.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as handle:  # never replaces a file (nor follows a link planted meanwhile)
            handle.write(source.read_bytes())
        written.append(dest)
    return written


def main(args: argparse.Namespace) -> int:
    """Write the example and say how to run it."""
    target = Path(args.dir)
    try:
        write_example(target)
    except FileNotFoundError as exc:
        if exc.filename is not None:  # the target's own path: cli.py says it as a usage error
            raise
        print(f"ftwatch example: {safe(str(exc), one_line=True)}", file=sys.stderr)
        return EXIT_FAILED
    shown = safe(str(target), one_line=True)
    config = shlex.quote(str(target / CONFIG))
    print(f"wrote the bundled example to {shown}/: a tiny Llama (tiny-llama/), its data (data/) "
          f"and a config ({CONFIG})")
    print(f"next: ftwatch run {safe(config, one_line=True)}")
    return EXIT_OK
