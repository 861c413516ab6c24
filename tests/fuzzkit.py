"""Shared helpers of the bad-input tests (``tests/test_fuzz_*.py``).

Every bad input must end as one clear line on stderr, exit code 2, and no traceback. ``cli``
runs the command in this process (fast: no interpreter start, no torch import per case) and
fails the test on any exception that escapes ``ftwatch.cli.main``; ``cli_subprocess`` runs it as
a user would, for the few cases where the process boundary matters (a worker, a signal, stdin).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """What one command printed and returned."""

    code: int
    stdout: str
    stderr: str

    def assert_one_line_error(self, *needles: str) -> None:
        """Exit 2, no traceback, exactly one non-blank line on stderr mentioning every needle
        (case-insensitive)."""
        assert self.code == 2, f"exit code {self.code}, stderr: {self.stderr!r}"
        assert "Traceback" not in self.stderr and "Traceback" not in self.stdout, self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {self.stderr!r}"
        for needle in needles:
            assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


def cli(*args: str, stdin: str = "") -> Outcome:
    """Run ``ftwatch ARGS`` in this process; an exception escaping ``main`` fails the test."""
    from ftwatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = old_stdin
    return Outcome(int(code or 0), out.getvalue(), err.getvalue())


def cli_subprocess(*args: str, stdin: str | None = None, timeout: float = 120,
                   cwd: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
    """Run ``python -m ftwatch ARGS`` as its own process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    done = subprocess.run([sys.executable, "-m", "ftwatch", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=full_env, input=stdin)
    return Outcome(done.returncode, done.stdout, done.stderr)
