"""What every command shares about how it was called: the exit codes, the usage error (one line,
exit 2) and the checks of option values. :mod:`ftwatch.cli` turns these into the command line's
behaviour; the commands raise them."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130
#: The viewer's output closed (``ftwatch run ... | head``) while the training it started goes on:
#: 128 + SIGPIPE, what a shell reports for a writer whose reader went away.
EXIT_OUTPUT_CLOSED = 141

#: The training processes this command started and follows (what a closed output leaves running).
STARTED: list[Any] = []

#: Values longer than this are cut in messages (a 5,000-digit number needs not be printed whole).
_SHOW_CHARS = 60


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit code 2."""


def show_value(text: object) -> str:
    """A value the user gave, quoted and cut for a one-line message."""
    shown = repr(str(text))
    return shown if len(shown) <= _SHOW_CHARS else shown[: _SHOW_CHARS - 2] + "…'"


def size_argument(text: str) -> int:
    """An argparse type for a size option (``--gpu-memory 24GiB``): positive, finite, below 8 EiB;
    its errors read ``ftwatch CMD: --option: a size must be positive, got '-5GiB' (ftwatch CMD --help)``."""
    from ftwatch.common.units import parse_size

    try:
        return parse_size(text, positive=True, unit_required=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
