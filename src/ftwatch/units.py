"""Byte sizes: parse the sizes users write ("20GiB", "22.3GB") and print sizes people can read."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Parse a size such as ``"20GiB"``, ``"22.3GB"``, ``"512 MiB"`` or a plain byte count.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers
    of 1024, as on a GPU's spec sheet and in ``nvidia-smi`` respectively. Raises ``ValueError``
    with a readable message for anything else.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size like \"20GiB\", got {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {text!r}")
        return int(text)
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"expected a size like \"20GiB\" or \"22.3GB\", got {text!r}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (use B, kB, MB, GB, KiB, MiB, GiB)")
    return int(float(number) * factor)


def format_bytes(n: int | float | None, precision: int = 1) -> str:
    """Format a byte count in binary units: ``1536 -> "1.5 KiB"``; ``None -> "n/a"``."""
    if n is None:
        return "n/a"
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.{precision}f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """Format seconds as ``"1h02m"``, ``"3m05s"`` or ``"12.3s"``."""
    if seconds is None or seconds != seconds:  # None or NaN
        return "n/a"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
