"""``k`` under a launcher: the ranks agree on the step to stop at.

``torchrun`` (and ``accelerate launch``, which runs it) passes the SIGINT the dashboard sends the
launcher on to every rank. In a rank the first SIGINT or SIGTERM only asks for a stop; at each
step end the ranks all-reduce their requests (:class:`ftwatch.training.worker_stop.AgreedStop`, the
worker's own), so every rank stops after the same step and ``train()`` returns in each. The next
signal goes to the handler the rank had before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from ftwatch.training.wrapped import say


class RankStop:
    """The first SIGINT/SIGTERM of a rank asks for a stop; the next go to the previous handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take the signals (main thread only; once)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for number in self.SIGNALS:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous, self._previous = self._previous, {}
        for number, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, RuntimeError, TypeError):
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            say(f"{signal.Signals(signum).name}: this rank stops at the step boundary the ranks agree on")
            return
        self.restore()
        os.kill(os.getpid(), signum)  # as it would have been without us


def agreed_stop(rank_stop: RankStop) -> Any:
    """The callback's ``stop_requested`` for a rank: the ranks' all-reduced request."""
    from ftwatch.training.worker_stop import AgreedStop

    return AgreedStop(rank_stop)  # it reads ``.requested`` alone
