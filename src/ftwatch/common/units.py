"""Byte sizes: parse the sizes users write ("20GiB", "22.3GB") and print sizes people can read."""

from __future__ import annotations

import math
import re
from fractions import Fraction

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

_SIZE_RE = re.compile(r"^\s*([+-]?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_NOT_FINITE = re.compile(r"^\s*[+-]?\s*(?:inf|infinity|nan)\s*[a-zA-Z]*\s*$", re.IGNORECASE)
#: The largest size there is (int64: what the event log and every consumer can hold).
MAX_SIZE = (1 << 63) - 1
#: Sizes written longer than this are refused before they are read (nobody types 100 digits).
_MAX_CHARS = 64


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else f"{shown[:30]}…' ({len(str(text))} characters)"


def parse_size(text: str | int | float, *, positive: bool = False, unit_required: bool = False) -> int:
    """Parse a size such as ``"20GiB"``, ``"22.3GB"``, ``"512 MiB"`` or a plain byte count.

    ``unit_required``: a text without a unit (``"24"``) is refused, for what a user types: nobody
    means 24 bytes of GPU memory (``"24B"`` still says bytes). Zero is refused as zero.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers
    of 1024, as on a GPU's spec sheet and in ``nvidia-smi`` respectively. The figure is read
    exactly (no float rounding or overflow). Raises ``ValueError`` with a readable message for
    anything else: negative, infinite or NaN sizes, sizes of 8 EiB or more, and zero when
    ``positive``.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size like \"20GiB\", got {text!r}")
    if isinstance(text, (int, float)):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValueError(f"a size must be a finite number, got {text!r}")
        if text < 0:
            raise ValueError(f"a size must be positive, got {_shown(text)}")
        value = int(text) if text <= MAX_SIZE else MAX_SIZE + 1
    else:
        raw = str(text)
        match = _SIZE_RE.match(raw) if len(raw) <= _MAX_CHARS else None
        if match is None:
            if len(raw) > _MAX_CHARS and _SIZE_RE.match(raw):
                raise ValueError(f"a size must be below 8 EiB, got {_shown(raw)}")
            if _NOT_FINITE.match(raw):
                raise ValueError(f"a size must be a finite number, got {_shown(raw)}")
            raise ValueError(f"expected a size like \"20GiB\" or \"22.3GB\", got {_shown(raw)}")
        sign, number, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise ValueError(f"unknown size unit {unit!r} in {_shown(raw)} (use B, kB, MB, GB, KiB, MiB, GiB)")
        value = int(Fraction(number) * factor)
        if sign == "-" and Fraction(number) != 0:
            raise ValueError(f"a size must be positive, got {_shown(raw)}")
        if unit_required and not unit and value != 0:
            raise ValueError(f'a size needs a unit: "{number}GiB" or "{number}GB" ("{number}B" for bytes), '
                             f"got {_shown(raw)}")
    if value > MAX_SIZE:
        raise ValueError(f"a size must be below 8 EiB, got {_shown(text)}")
    if positive and value <= 0:
        raise ValueError(f"a size must be positive, got {_shown(text)}")
    return value


def _scaled(n: float, below: float) -> tuple[str, float, str]:
    """``(sign, value, unit)``: ``n`` in the first binary unit where it is under ``below``."""
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < below:
            return sign, value, unit
        value /= 1024
    return sign, value, "TiB"


def format_bytes(n: int | float | None, precision: int = 1) -> str:
    """Format a byte count in binary units: ``1536 -> "1.5 KiB"``; ``None -> "n/a"``."""
    if n is None:
        return "n/a"
    sign, value, unit = _scaled(n, 1024)
    return f"{sign}{int(value)} B" if unit == "B" else f"{sign}{value:.{precision}f} {unit}"


def format_size3(n: int | float | None) -> str:
    """Bytes in binary units with three significant digits, at most 8 characters for a positive
    count: ``15.0 GiB``, ``530 MiB``, ``1.30 GiB`` (the dashboard's and the tables' fixed-width cells)."""
    if n is None:
        return "n/a"
    sign, value, unit = _scaled(n, 1000)
    if unit == "B":
        return f"{sign}{int(value)} B"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{sign}{value:.{digits}f} {unit}"


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
