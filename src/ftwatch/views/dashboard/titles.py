"""The dashboard's panel titles, as text: the memory panel's (how much is used of what), the
warnings panel's, and the focused rank that a multi-process run's titles name.

Pure functions of a :class:`~ftwatch.views.dashboard.run_view.RunView`, so they are tested without a screen.
"""

from __future__ import annotations

from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.breakdown import Breakdown
from ftwatch.views.dashboard.run_view import RunView


def rank_suffix(view: RunView) -> str:
    """`` · rank 1`` in a multi-process run's panel titles (the focused rank); else nothing."""
    if view.ranks is None or view.ranks.focus is None:
        return ""
    return f" · rank {view.ranks.focus}"


def memory_title(view: RunView, bd: Breakdown) -> str:
    """The memory panel's title: how much is used of what, and what is left."""
    memory = "Memory" + rank_suffix(view)
    if not bd.parts:
        return memory
    where = {"snapshot": f"step {view.step}" if view.phase == "training" else "phase end",
             "live": "live", "oom": "at the failure", "outside": "no breakdown"}.get(bd.source, "")
    device = view.device
    if view.is_cuda:
        free = next((p.bytes for p in bd.parts if p.name == "free"), None)
        head = f"{memory} · GPU {device.get('index', 0)} · {fmt.size(bd.used)} of {fmt.size(bd.scale)}"
        head += f" ({fmt.share(bd.share(bd.used))})"
        if free is not None:
            head += f" · free {fmt.size(free)}"
    else:
        head = f"{memory} · RSS {fmt.size(bd.used)} of {fmt.size(bd.scale)} {bd.capacity_label}"
        head += f" ({fmt.share(bd.share(bd.used))})"
        if bd.source != "outside":
            head += f" · tensors {fmt.size(bd.tensor_total)}"
    return f"{head} · {where}" if where else head


def alerts_title(view: RunView, *, width: int | None = None, overflows: bool = False, opened: bool = False) -> str:
    """The warnings panel's title (naming the focused rank of a multi-process run), and how to
    see the rest when it holds more than it shows: ``f`` gives it the room, Tab then the arrows
    scroll it (open, it has the focus: the arrows alone). The longest hint that fits ``width``."""
    status = (view.exit or {}).get("status")
    if status in ("oom", "failed"):
        title = "Post-mortem"
    elif view.ended:
        title = "Summary"
    else:
        title = f"Warnings ({len(view.warnings)})" if view.warnings else "Warnings"
    title += rank_suffix(view)
    if opened:
        hints = ["  ↓ more: ↑↓ scroll · f: less", "  ↓ ↑↓ · f: less"] if overflows else ["  (f: less)"]
    elif overflows:
        hints = ["  ↓ more: f, or Tab ↑↓", "  ↓ more: f · Tab ↑↓", "  ↓ f, Tab ↑↓", "  ↓ f"]
    else:
        hints = []
    for hint in hints:
        if width is None or len(title) + len(hint) <= width:
            return title + hint
    return title + hints[-1] if hints else title
