"""``torchrun`` for ``ftwatch run`` of a ``[launch]`` config: ``python -m torch.distributed.run``,
less the traceback of a stop.

A stop asked by ftwatch (``k`` in the dashboard, Ctrl-C of a headless run) is a SIGINT to the
launcher. torchrun's handler raises ``SignalException``; the agent catches it, passes the signal on
to the ranks and waits for them (they agree on a step boundary, write their exit events and exit
130), then raises it again, and Python printed that as a traceback at the end of ``worker.log``. Here
it ends in one line and the signal's exit status (128 + the signal: 130 for SIGINT), the status a
shell gives a process a signal ended. A stop that reached a rank rather than the launcher (the ranks
agree on it and all exit 130) ends the same way instead of torchrun's ``ChildFailedError`` report.
Every other failure of the launcher is torchrun's own, as before.
"""

from __future__ import annotations

import signal
import sys

from ftwatch.training.worker import EXIT_STOPPED as STOPPED  # a rank's exit code for a stop


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv`` (its options, then ``-m module args``); the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(sys.argv[1:] if argv is None else argv)
    except SignalException as exc:
        _say(f"{exc.sigval.name}: the ranks were asked to stop and have ended")
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        # a rank that ended first makes torchrun SIGTERM the others: a stop is the ranks' 130s, and
        # those SIGTERMs (a rank that had not written its exit yet is told by its log, not here)
        if STOPPED not in codes or not set(codes) <= {STOPPED, -signal.SIGTERM}:
            raise
        ended = codes.count(-signal.SIGTERM)
        _say(f"the ranks stopped on request (exit code {STOPPED}"
             + (f"; torchrun sent SIGTERM to {ended} after the first" if ended else "")
             + "); their run logs say at which step")
        return STOPPED
    return 0


def _say(message: str) -> None:
    print(f"ftwatch torchrun: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
