"""Run at the start of a command under ``ftwatch run --``: install ftwatch's import hooks.

It chains first to the ``sitecustomize`` the environment had (this directory leaves ``sys.path``
for that import and comes back), and it never raises: a bootstrap that fails leaves the command
running unmonitored, with one line on stderr. Nothing heavy is imported here.
"""

import contextlib
import os
import sys


def _chain_to_the_original() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved_path = list(sys.path)
    ours = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        try:
            import sitecustomize  # noqa: F401 - the environment's own, if it has one
        except ImportError as exc:
            if getattr(exc, "name", None) != "sitecustomize":
                raise
    finally:
        original = sys.modules.get("sitecustomize")
        sys.path[:] = saved_path
        if ours is not None:
            sys.modules["sitecustomize"] = ours
        if original is not None and original is not ours:
            sys.modules["ftwatch_original_sitecustomize"] = original


def _install() -> None:
    try:
        from ftwatch.training.wrapped import bootstrap
    except ImportError:
        root = os.environ.get("FTWATCH_PACKAGE_ROOT")
        if not root:
            raise
        sys.path.append(root)
        from ftwatch.training.wrapped import bootstrap
    bootstrap.install()


def _say(what: str, exc: BaseException, effect: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"ftwatch: {what} ({type(exc).__name__}: {exc}); {effect}\n")


try:
    _chain_to_the_original()
except Exception as _exc:
    _say("the environment's own sitecustomize failed", _exc, "going on without it")
try:
    _install()
except Exception as _exc:
    _say("cannot install the bootstrap", _exc, "this process runs unmonitored")
