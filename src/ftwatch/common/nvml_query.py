"""One question to NVML about the first visible GPU, without a CUDA context (light: no torch).

``ftwatch estimate`` asks for its free memory, the config checks for its compute capability
(bf16/tf32 support); neither may create a CUDA context beside a live run, so both go through NVML.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def first_visible_gpu() -> int:
    """The NVML index of CUDA device 0 (``CUDA_VISIBLE_DEVICES`` by index; UUIDs fall back to 0)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def ask_first_gpu(question: Callable[[Any, Any], T]) -> T | None:
    """``question(pynvml, handle)`` for the first visible GPU; ``None`` without pynvml, a driver or
    a GPU, or when NVML refuses the question."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return question(pynvml, pynvml.nvmlDeviceGetHandleByIndex(first_visible_gpu()))
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
