"""Colours, glyphs and labels of the memory categories, shared by every widget.

Colours are picked from the xterm 256-colour cube so a terminal without true colour (most SSH
sessions) shows the same hues. Every category also has its own fill glyph: with ``NO_COLOR`` the
bar and its legend stay readable through the glyphs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftwatch.runlog.events import CATEGORIES


@dataclass(frozen=True)
class CategoryLook:
    """How one category is drawn: bar colour, a text colour readable on it, a fill glyph, a label."""

    colour: str
    ink: str
    glyph: str
    label: str


#: Pseudo-category of a CPU run: the process's resident memory beyond the measured tensors.
PROCESS_REST = "process_rest"
#: Pseudo-category of a process watched from outside (``attach PID`` without a probe): all it holds.
OUTSIDE = "outside"

LOOKS: dict[str, CategoryLook] = {
    "weights": CategoryLook("#5f87af", "#000000", "█", "weights"),
    "lora": CategoryLook("#d75fd7", "#000000", "▓", "lora"),
    "grads": CategoryLook("#ff8700", "#000000", "▒", "grads"),
    "optimizer": CategoryLook("#d7d75f", "#000000", "░", "optimizer"),
    "activations": CategoryLook("#5faf5f", "#000000", "#", "activations"),
    "other": CategoryLook("#5fafaf", "#000000", "=", "other"),
    "cache": CategoryLook("#8787af", "#000000", ":", "cache"),
    "non_torch": CategoryLook("#af875f", "#000000", "+", "non-torch"),
    "other_processes": CategoryLook("#875f87", "#ffffff", "x", "other procs"),
    "free": CategoryLook("#303030", "#9e9e9e", "·", "free"),
    PROCESS_REST: CategoryLook("#585858", "#ffffff", "-", "rest of RSS"),
    OUTSIDE: CategoryLook("#8a8a8a", "#000000", "%", "process (no breakdown)"),
}
assert all(name in LOOKS for name in CATEGORIES)

#: The empty part of a CPU run's bar (no category: what is left of the budget or the RAM).
TRACK = CategoryLook("#262626", "#767676", "·", "")

#: One-line explanation of each category, for the help screen.
MEANINGS: dict[str, str] = {
    "weights": "frozen base parameters and buffers",
    "lora": "trainable adapter parameters",
    "grads": "gradients (before the optimizer step)",
    "optimizer": "optimizer state (Adam moments, ...)",
    "activations": "saved for backward in the largest forward",
    "other": "PyTorch allocations outside the above",
    "cache": "reserved by the caching allocator, not allocated",
    "non_torch": "this process beyond PyTorch (CUDA context, cuBLAS)",
    "other_processes": "other processes on the same device",
    "free": "what is left on the device",
    PROCESS_REST: "CPU run: resident memory beyond the tensors",
    OUTSIDE: "a process watched from outside: all it holds, not split",
}

DANGER = "#ff5f5f"
WATCH = "#ffd75f"
GOOD = "#87d787"
DIM = "#8a8a8a"
ACCENT = "#87afd7"
