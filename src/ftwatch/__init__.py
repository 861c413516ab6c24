"""ftwatch: watch the GPU memory of a LoRA fine-tune, and warn before it runs out.

``from ftwatch import FtwatchCallback`` gives a ``transformers.TrainerCallback`` that monitors any
``Trainer``; ``from ftwatch import Probe`` the same for a hand-written loop. Importing ``ftwatch``
itself is light: torch is imported only when one of those is used.
"""

from __future__ import annotations

from typing import Any

from ftwatch.version import __version__

__all__ = ["FtwatchCallback", "Probe", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "FtwatchCallback":
        from ftwatch.training.probe.callback import FtwatchCallback

        return FtwatchCallback
    if name == "Probe":
        from ftwatch.training.probe.probe import Probe

        return Probe
    raise AttributeError(f"module 'ftwatch' has no attribute {name!r}")
