"""The ``ftwatch`` command line: one module per command under ``ftwatch.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Usage errors exit 2 with one clear line and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ftwatch import __version__
from ftwatch.config import ConfigError

#: Command name -> module under ftwatch.commands.
COMMANDS: dict[str, str] = {
    "run": "run",
    "replay": "replay",
    "attach": "attach",
    "ls": "ls",
    "estimate": "estimate",
    "explain": "explain",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="ftwatch",
        description="Watch the GPU memory of a LoRA fine-tune, and warn before it runs out.",
    )
    parser.add_argument("--version", action="version", version=f"ftwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"ftwatch.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftwatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._module.main(args) or 0)
    except (ConfigError, UsageError, FileNotFoundError) as exc:
        print(f"ftwatch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_STOPPED
    except BrokenPipeError:  # `ftwatch ... | head`
        return EXIT_OK
    except OSError as exc:  # an unreadable or unwritable path the user gave: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ftwatch {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
