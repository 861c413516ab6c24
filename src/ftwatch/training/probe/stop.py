"""SIGINT as a stop request at the next step boundary, for a user's own script.

``ftwatch``'s dashboard stops a watched run with ``k``, which sends SIGINT (as Ctrl-C does). In a
user's script the probe turns the first SIGINT into a request (:attr:`SigintStop.requested`) that
the Trainer callback honours at the next step boundary (and a hand-written loop through
``Probe.should_stop``). The next SIGINT goes to the handler the script had before: chained, never
replaced (Python's default one raises ``KeyboardInterrupt``). The handler is installed from the main
thread only, never under ``torchrun`` (the ranks of a user's script have no agreement on the step to
stop at, and stopping one rank alone would hang the others), and restored when training ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from ftwatch.training.probe.guard import say_raw


class SigintStop:
    """The first SIGINT asks for a stop at the next step boundary; the next go to the previous handler."""

    def __init__(self) -> None:
        self.requested = False
        #: Whether our handler is the process's SIGINT handler now.
        self.installed = False
        #: Whether :meth:`install` was tried (it is tried once).
        self.tried = False
        self._previous: Any = None

    def install(self) -> bool:
        """Handle SIGINT (main thread only, not under torchrun); True if installed now or before."""
        if self.tried:
            return self.installed
        self.tried = True
        if threading.current_thread() is not threading.main_thread():
            return False
        from ftwatch.runlog.paths import distributed_rank

        with contextlib.suppress(Exception):
            if distributed_rank()[2] > 1:
                return False
        try:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        except (ValueError, OSError, RuntimeError):
            return False
        self.installed = True
        return True

    def restore(self) -> None:
        """Put the previous handler back (main thread only; only if ours is still the one installed)."""
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        self.installed = False
        with contextlib.suppress(Exception):
            if signal.getsignal(signal.SIGINT) == self._handle:
                previous = self._previous
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            say_raw("SIGINT: stopping at the next step boundary (SIGINT again to interrupt now)")
            return
        previous = self._previous
        if previous is signal.SIG_IGN:
            return
        if callable(previous):  # the script's own handler, or Python's default_int_handler
            previous(signum, frame)
            return
        if previous == signal.SIG_DFL:  # the process dies of the signal, as it would have
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        raise KeyboardInterrupt  # a handler set outside Python: the usual interruption
