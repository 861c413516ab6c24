"""The ``guarded`` decorator: how a probe method is kept from raising into the training loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

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
