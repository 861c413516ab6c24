"""The ``ftwatch`` command line: one module per command under ``ftwatch.commands``.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``; its one line of
help is in :data:`COMMANDS`. Usage errors exit 2 with one clear line and no traceback: argparse's own
errors too (:class:`Parser`), each naming the command and the option, e.g.
``ftwatch estimate: --gpu-memory: expected one argument (ftwatch estimate --help)``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from ftwatch.commands.usage import _SHOW_CHARS, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, UsageError, show_value
from ftwatch.common.config_errors import ConfigError
from ftwatch.common.safe_text import safe
from ftwatch.version import __version__

#: Command name -> (module under ftwatch.commands, its one line of help). Only the module of the
#: command being run is imported: each command starts without the others' imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run",
            "start a LoRA fine-tune from a TOML config (or any Python training command after --) and watch its memory"),
    "replay": ("replay", "replay a recorded run log (events.jsonl or its run directory)"),
    "attach": ("attach", "watch a run that is already going, by PID or run directory"),
    "ls": ("ls", "list the monitored runs on this machine"),
    "estimate": ("estimate", "predict a config's memory before loading it, and what to change if it will not fit"),
    "fit": ("fit", "find the micro-batch (and, if needed, the changes) with which a config fits, before loading it"),
    "explain": ("explain", "explain a CUDA out-of-memory message (from FILE, or pasted on stdin)"),
    "example": ("example", "write a tiny model, its data and a config to try ftwatch on (nothing to download)"),
}

#: A value that starts with a dash and then a digit or a point (``-5GiB``, ``-0.5``, ``-3``) is an
#: option's value, never an option: its own check then says what is wrong with it.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")
#: argparse's "invalid int value: 'x'", said in words.
_INVALID_VALUE = re.compile(r"^invalid (\w+) value: (.*)$", re.DOTALL)
_TYPE_WORDS = {"int": "a whole number", "float": "a number"}
class Parser(argparse.ArgumentParser):
    """argparse with ftwatch's usage errors: one line on stderr, exit 2, naming the option.

    Values that look like negative numbers or sizes (``--gpu-memory -5GiB``) reach the option's
    own check (which says "a size must be positive") instead of being taken for options.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: MESSAGE (PROG --help)`` as one line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: {usage_message(message)} ({self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Exit, printing ``message`` made safe (one line when it is an error)."""
        if message:
            text = safe(message.rstrip("\n"), one_line=status != 0) + "\n"
            (sys.stderr if status else sys.stdout).write(text)
        raise SystemExit(status)


def usage_message(message: str) -> str:
    """argparse's message in ftwatch's words: ``argument --x: invalid int value: 'y'`` becomes
    ``--x: expected a whole number, got 'y'``."""
    message = message.strip()
    if message.startswith("argument "):
        message = message.removeprefix("argument ")
    option, sep, rest = message.partition(": ")
    if sep:
        invalid = _INVALID_VALUE.match(rest)
        if invalid is not None:
            kind, value = invalid.groups()
            what = _TYPE_WORDS.get(kind, "a valid value")
            shown = value if len(value) <= _SHOW_CHARS else value[: _SHOW_CHARS - 2] + "…'"
            rest = f"expected {what}, got {shown}"
        if option == "COMMAND" and rest.startswith("invalid choice: "):
            return "unknown command " + rest.removeprefix("invalid choice: ")
        message = f"{option}: {rest}"
    return message


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command registered; only the command that ``argv`` names (its
    first word that is no option) gets its module imported and its options (the others' parsers
    are never reached: argparse parses one command)."""
    chosen = next((word for word in (argv or ()) if not word.startswith("-")), None)
    parser = Parser(
        prog="ftwatch",
        description="Watch the GPU memory of a LoRA fine-tune, and warn before it runs out.",
    )
    parser.add_argument("--version", action="version", version=f"ftwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, (module_name, help_line) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_line, description=help_line)
        if name == chosen:
            module = importlib.import_module(f"ftwatch.commands.{module_name}")
            module.add_arguments(cmd)
            cmd.set_defaults(_module=module)
        commands[name] = cmd
    parser.set_defaults(_commands=commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; arguments a command does not know are that command's usage error.
    ``ftwatch run [OPTIONS] -- COMMAND...``: what follows ``--`` is the command, never parsed."""
    from ftwatch.commands.run_command_checks import split_command

    argv, command = split_command(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if command is not None:
        args.wrapped_command = command
    if extra:
        command = args._commands.get(getattr(args, "command", None) or "", parser)
        command.error(f"unrecognized arguments: {' '.join(show_value(a) for a in extra)}")
    return args


def _output_closed(command: str) -> int:
    """stdout's reader went away (``| head``): quiet for a listing; a training this command started
    goes on, and stderr says how to get back to it."""
    from ftwatch.commands.usage import EXIT_OUTPUT_CLOSED, STARTED

    with contextlib.suppress(OSError):  # nothing more to write there: not even at the interpreter's exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    running = [handle for handle in STARTED if handle.is_alive()]
    if not running:
        return EXIT_OK
    with contextlib.suppress(OSError):
        print(f"ftwatch {command}: the output closed; {running[0].reattach_hint()}", file=sys.stderr)
    return EXIT_OUTPUT_CLOSED


def _say(command: str, message: object) -> int:
    print(f"ftwatch {command}: {safe(str(message), one_line=True)}", file=sys.stderr)
    return EXIT_USAGE


#: bitsandbytes' CPU backend warns when it is imported (by transformers or peft, whenever it is installed)
#: on a CPU with AVX512-BF16 and without the optional ``kernels`` package, which would fetch a faster
#: 4-bit kernel from the Hugging Face hub. The commands here never run 4-bit matmuls (the worker does,
#: and keeps the warning in worker.log): a line about it would spoil their one-line answers.
_OPTIONAL_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def _quiet_optional_kernel_warning() -> None:
    import logging

    logging.getLogger(_OPTIONAL_KERNEL_LOGGER).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftwatch`` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    try:
        args = _parse(parser, words)
    except SystemExit as exc:  # a usage error (printed), --help or --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _quiet_optional_kernel_warning()
    try:
        return int(args._module.main(args) or 0)
    except (ConfigError, UsageError, FileNotFoundError) as exc:
        return _say(args.command, exc)
    except KeyboardInterrupt:
        return EXIT_STOPPED
    except BrokenPipeError:  # `ftwatch ... | head`
        return _output_closed(args.command)
    except OSError as exc:  # an unreadable or unwritable path the user gave: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        return _say(args.command, f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
