"""Run directories: where each run's log lives (light: no torch)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def new_run_dir(log_dir: str | os.PathLike[str], name: str) -> Path:
    """Create ``log_dir/<name>-<YYYYmmdd-HHMMSS>`` (private to the user) and return it."""
    base = Path(log_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        candidate = base / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(mode=0o700)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")
