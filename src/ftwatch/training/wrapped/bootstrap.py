"""Post-import hooks: patch a library the moment the script imports it, and cost nothing before.

:func:`install` (called by the wrapped command's ``sitecustomize``) puts :class:`PostImportFinder`
first on ``sys.meta_path``. For the few module names it watches it finds the module as the other
finders would and wraps that loader's ``exec_module``, so the patch runs right after the module's
own code; every other import is passed on at once. Every hook runs inside a guard: a patch that
fails is said once on stderr and that library goes unmonitored, the import itself never fails.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ftwatch.training.wrapped.session import say

Hook = Callable[[ModuleType], None]


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs ``hooks[name](module)`` once module ``name`` has been executed (first import only)."""

    def __init__(self, hooks: dict[str, Hook]) -> None:
        self.hooks = dict(hooks)
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """The spec the other finders give, its loader wrapped to run the hook after the module."""
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        except Exception:
            return None
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        # The hook stays until the module runs: a spec asked for and never loaded (transformers'
        # ``importlib.util.find_spec("peft")`` to see whether peft is installed) must not use it up.
        self._wrap_loader(spec.loader, fullname)
        return spec

    def _wrap_loader(self, loader: Any, name: str) -> None:
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            with contextlib.suppress(Exception):
                del loader.exec_module  # the loader is this module's own: back to its class's method
            hook = self.hooks.pop(name, None)
            if hook is not None:
                run_hook(name, hook, module)

        loader.exec_module = exec_module


def run_hook(name: str, hook: Hook, module: ModuleType) -> None:
    """Run one patch; a failure is one line on stderr and that library goes unmonitored."""
    try:
        hook(module)
    except Exception as exc:
        say(f"cannot watch {name} ({type(exc).__name__}: {exc}); it runs unmonitored")


def install() -> None:
    """Install the hooks (once) and note the script's exit code for the run log's exit event."""
    if any(isinstance(f, PostImportFinder) for f in sys.meta_path):
        return
    from ftwatch.training.wrapped import loop, patches, session

    hooks: dict[str, Hook] = {
        "transformers.modeling_utils": patches.patch_modeling_utils,
        "transformers.trainer": patches.patch_trainer,
        "peft": patches.patch_peft,
        "peft.peft_model": patches.patch_peft_model,
        "torch.optim.optimizer": loop.patch_optimizer,
    }
    for name, hook in list(hooks.items()):
        module = sys.modules.get(name)
        if module is not None:  # imported already (by the environment's own sitecustomize)
            run_hook(name, hook, module)
            del hooks[name]
    sys.meta_path.insert(0, PostImportFinder(hooks))
    session.SESSION.installed = True
    session.watch_exit_code()
