"""A child process on a pseudo-terminal, for the benchmarks that time what a user's terminal shows.

Shared by ``dashboard.py`` and ``replay.py``: the child runs at a fixed size with a 256-colour
``TERM`` and this checkout first on ``PYTHONPATH``; a thread collects everything it writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLS, ROWS = 120, 36


def terminal_env() -> dict[str, str]:
    """The child's environment: a 256-colour terminal of the benchmark's size, this checkout first."""
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS))
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


class PtyProcess:
    """A command on a pseudo-terminal of the benchmark's size, its output collected in a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.started = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:  # the child
            if cwd is not None:
                os.chdir(cwd)
            os.execve(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.output = bytearray()
        self.lock = threading.Lock()
        self._done = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._done:
            ready, _, _ = select.select([self.fd], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.output.extend(data)

    def seen(self, needle: bytes) -> bool:
        """True once ``needle`` has been written to the terminal."""
        with self.lock:
            return needle in self.output

    def wait_for(self, pattern: bytes, timeout: float, start: int = 0) -> float:
        """Seconds since the spawn until ``pattern`` (a regex) appears after byte ``start``."""
        regex = re.compile(pattern)
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if regex.search(self.output, start):
                    return time.perf_counter() - self.started
            time.sleep(0.002)
        raise TimeoutError(f"{pattern!r} not on the terminal after {timeout:.0f} s")

    def mark(self) -> int:
        """How much output there is now (to wait for what comes after)."""
        with self.lock:
            return len(self.output)

    def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        os.write(self.fd, data)

    def close(self) -> None:
        """End the child (it was started here) and stop reading."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self._done = True
        self._thread.join(timeout=1)
        os.close(self.fd)
