"""The worker's output as the dashboard shows it: :class:`TextTail` follows ``worker.log`` without
blocking and keeps its last lines, cleaned the way a terminal would show them (:func:`clean_line`).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe

WORKER_LOG = "worker.log"
#: What the panel says while there is no output to show, for a run whose process writes no
#: ``worker.log`` (by the header's ``origin``).
OWN_TERMINAL = {"callback": "this script writes its output to its own terminal"}


def missing_log_note(exists: bool, origin: str | None = None, external: bool = False) -> str:
    """The panel's line while it has no output to show: ``worker.log`` is empty, not there yet, or
    never written (a script with ``FtwatchCallback``, a process ``ftwatch attach`` only samples)."""
    if exists:
        return "no output yet"
    if origin in OWN_TERMINAL:
        return OWN_TERMINAL[origin]
    if external:
        return "this process writes its output to its own terminal"
    return f"no {WORKER_LOG} in the run directory (yet)"


def clean_line(text: str) -> str:
    """A line as it would look on a terminal: carriage returns overwrite, escapes and controls go."""
    return safe(text, one_line=False).replace("\t", "    ").replace("\n", " ")


class TextTail:
    """Follows a growing text file without blocking and keeps its last lines.

    A file that does not exist yet is waited for; a huge existing file is read from its last
    ``initial_bytes`` only; a file that shrinks (rotated, rewritten) is read again from the start.
    Progress bars that redraw with carriage returns show as their latest state.
    """

    def __init__(self, path: str | os.PathLike[str], max_lines: int = 2000, initial_bytes: int = 256 * 1024,
                 chunk_size: int = 256 * 1024) -> None:
        self.path = Path(path)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.partial = ""
        self.initial_bytes = initial_bytes
        self.chunk_size = chunk_size
        self._handle: Any = None
        self._pos = 0

    def poll(self) -> bool:
        """Read what was appended since the last call; True when the visible text changed."""
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open while following
            except OSError:
                return False
            size = os.fstat(self._handle.fileno()).st_size
            if size > self.initial_bytes:
                self._handle.seek(size - self.initial_bytes)
                self._handle.readline()  # drop the cut first line
            self._pos = self._handle.tell()
        try:
            size = os.fstat(self._handle.fileno()).st_size
        except OSError:
            return False
        if size < self._pos:
            self._handle.seek(0)
            self._pos = 0
            self.lines.clear()
            self.partial = ""
        changed = False
        while True:
            chunk = self._handle.read(self.chunk_size)
            if not chunk:
                break
            self._pos += len(chunk)
            self._feed(chunk.decode("utf-8", errors="replace"))
            changed = True
        return changed

    def _feed(self, text: str) -> None:
        data = self.partial + text
        parts = data.split("\n")
        self.partial = parts.pop()
        for part in parts:
            self.lines.append(clean_line(part))
        if len(self.partial) > 8192:  # a progress bar that never ends its line: keep only its tail
            self.partial = self.partial[-8192:]

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines, the unfinished one (a progress bar) included."""
        out = list(self.lines)[-n:] if n > 0 else []
        if self.partial.strip():
            out.append(clean_line(self.partial))
        return out[-n:] if n > 0 else []

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
