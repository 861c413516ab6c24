"""The worker's own output: its log line (``ftwatch worker: ...``, with the rank under ``torchrun``),
and the wrappers of its stdout/stderr (``worker.log``, on the run log's disk) that count and drop a
write that fails, never raising it into the Trainer, transformers' logging or tqdm.
"""

from __future__ import annotations

import sys
from typing import Any


class SafeStream:
    """A text stream whose failed writes (a full disk under ``worker.log``, a closed pipe) are
    swallowed and counted instead of raised into whoever printed (the Trainer, tqdm, logging)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        #: Writes (and flushes) that failed.
        self.lost = 0
        self.last_error: BaseException | None = None

    def _failed(self, exc: BaseException) -> None:
        self.lost += 1
        self.last_error = exc

    def write(self, text: str) -> int:
        """Write ``text``; a failure is counted, never raised (a reentrant write from a signal
        handler included)."""
        try:
            return self._stream.write(text)
        except (OSError, ValueError, RuntimeError) as exc:
            self._failed(exc)
            return len(text)

    def writelines(self, lines: Any) -> None:
        """Write each line (see :meth:`write`)."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush; a failure is counted, never raised."""
        try:
            self._stream.flush()
        except (OSError, ValueError, RuntimeError) as exc:
            self._failed(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect_output() -> list[SafeStream]:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`SafeStream` (before transformers or tqdm
    take a reference to them); returns the wrappers."""
    streams = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SafeStream):
            stream = SafeStream(stream)
            setattr(sys, name, stream)
        if isinstance(stream, SafeStream):
            streams.append(stream)
    return streams


_PROTECTED: list[SafeStream] = []

_LOG_PREFIX = "ftwatch worker"


def _log(message: str) -> None:
    print(f"{_LOG_PREFIX}: {message}", flush=True)

