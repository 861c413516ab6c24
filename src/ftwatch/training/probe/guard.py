"""Keeping the probe's own failures out of the training loop.

Every entry point the Trainer or a user's loop calls (the callback's ``on_*`` methods, the forward
and optimizer hooks, ``step_begin``/``step_end``/``snapshot``/``finish``) runs under a
:class:`Guard`: an exception of ours is recorded once per part (a ``probe_failed`` note in the run
log and one line on stderr) and, for a measurement, that measurement is switched off; training
goes on. ``BaseException``s that are not ``Exception`` (``KeyboardInterrupt``, the worker's stop
request) pass through: they are the user's, not ours.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from ftwatch.common.safe_text import say


def say_raw(message: str) -> None:
    """Like :func:`say`, with one ``write(2)`` on descriptor 2: safe inside a signal handler, where
    writing to ``sys.stderr`` could re-enter a write the handler interrupted."""
    with contextlib.suppress(Exception):
        os.write(2, f"ftwatch: {message}\n".encode("utf-8", "replace"))


class Guard:
    """Records internal failures once per part and remembers which parts are switched off.

    ``note(part, message)`` writes the record (the probe's run log); it must not raise, and is
    called at most once per part.
    """

    def __init__(self, note: Callable[[str, str], None] | None = None) -> None:
        self.note = note
        #: part -> the first failure's text, for every part that failed.
        self.failed: dict[str, str] = {}
        #: Parts switched off after a failure.
        self.off: set[str] = set()

    def record(self, part: str, exc: BaseException, *, disable: bool = False, effect: str = "") -> None:
        """Record a failure of ``part`` (once); ``disable`` switches the part off."""
        if disable:
            self.off.add(part)
        if part in self.failed:
            return
        text = f"{type(exc).__name__}: {exc}"
        self.failed[part] = text
        effect = effect or ("training goes on without it" if disable else "training goes on")
        message = f"the probe's {part} failed ({text}); {effect}"
        say(message)
        if self.note is not None:
            with contextlib.suppress(Exception):
                self.note(part, message)


F = TypeVar("F", bound=Callable[..., Any])


def guarded(part: str, *, disable: bool = False, default: Any = None) -> Callable[[F], F]:
    """Run a probe method so that no exception of it reaches the caller (the training loop): a
    failure is recorded once for ``part``; ``disable`` switches ``part`` off for the rest of the
    run (later calls return ``default`` at once)."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if disable and part in self.guard.off:
                return default
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                self.guard.record(part, exc, disable=disable)
                return default

        return run  # type: ignore[return-value]

    return wrap
