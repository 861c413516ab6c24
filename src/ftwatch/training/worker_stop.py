"""The worker's stop control: SIGINT/SIGTERM ask for a clean stop, during training at the next step
boundary, before training at once (:class:`StopRequested`); a second signal stops at once. While the
run writes its ending (its exit event) a signal is only noted; once it is written, signals take their
default action again. Under ``torchrun`` the ranks agree on a stop request at each step boundary
(:class:`AgreedStop`).
"""

from __future__ import annotations

import signal
from typing import Any

from ftwatch.training.worker_output import _log


class StopRequested(BaseException):
    """Raised by the signal handler to stop outside a step boundary (a BaseException, so library
    code that catches ``Exception`` cannot swallow it)."""


class StopControl:
    """Turns SIGINT/SIGTERM into a stop at the next step boundary (or at once, outside training)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_training = False
        #: The run is writing its ending (its exit event): a signal now is noted, never raised.
        self.ending = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM; ignore SIGHUP (the terminal is the viewer's, not ours)."""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def end(self) -> None:
        """The run is ending: from now on SIGINT/SIGTERM are noted, never raised, so the exit event is
        written whole (under ``torchrun`` a rank that fails on a dead peer gets the launcher's SIGTERM
        while it writes its own ending)."""
        self.ending = True

    def release(self) -> None:
        """The ending is written: SIGINT and SIGTERM take their default action again (a process that
        hangs on its way out, in a library's teardown, still ends on the launcher's SIGTERM)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.ending:
            self.requested = True
            _log(f"{signal.Signals(signum).name}: the run is ending; its exit is written first")
            return
        if self.in_training and not self.requested:
            self.requested = True
            _log(f"{signal.Signals(signum).name}: stopping at the next step boundary")
            return
        raise StopRequested(signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.requested


class AgreedStop:
    """A stop request all ranks agree on: at each step boundary the ranks all-reduce their flags
    (max), so a signal seen by any rank stops every rank after the same step (DDP would hang if
    one rank stopped a step before the others). Alone, it is the local flag."""

    def __init__(self, stop: StopControl) -> None:
        self.stop = stop

    def __call__(self) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return self.stop.requested
        backend = str(dist.get_backend())
        on_cpu = "gloo" in backend or not torch.cuda.is_available()
        device = torch.device("cpu") if on_cpu else torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([1 if self.stop.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = bool(flag.item())
        if agreed and not self.stop.requested:
            self.stop.requested = True
            _log("another rank was asked to stop: stopping at this step boundary")
        # what the ranks agreed on, never the local flag: a signal that lands during the reduce sets
        # it on this rank alone, and stopping on it here would leave the others in the next step
        # (they agree on it at the next boundary)
        return agreed
