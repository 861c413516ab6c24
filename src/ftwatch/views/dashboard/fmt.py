"""Short, fixed-width formats for the dashboard (sizes with three significant digits, shares)."""

from __future__ import annotations

from ftwatch.common.units import format_size3

__all__ = ["size", "share", "duration"]


def size(n: int | float | None) -> str:
    """Bytes in binary units with three significant digits: ``15.0 GiB``, ``530 MiB``, ``1.30 GiB``."""
    return format_size3(n)


def share(fraction: float | None) -> str:
    """A share as a whole percentage; tiny non-zero shares read ``<1%``."""
    if fraction is None:
        return ""
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction * 100:.0f}%"


def duration(seconds: float | None) -> str:
    """Seconds for people: ``8.3s`` under ten seconds, then ``42s``, ``3m05s``, ``1h02m``.

    Whole seconds from ten on, so a live clock changes once a second, not with every sample.
    """
    if seconds is None or seconds != seconds:
        return "n/a"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
