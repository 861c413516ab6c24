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


def rank_dir(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Where rank ``rank`` of a multi-process run keeps its log: ``run_dir/rank<N>``."""
    return Path(run_dir) / f"rank{int(rank)}"


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the environment ``torchrun`` sets (``0, 0, 1`` alone)."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default
    return number("RANK", 0), number("LOCAL_RANK", 0), max(1, number("WORLD_SIZE", 1))


def shared_run_dir(log_dir: str | os.PathLike[str], name: str, launcher_pid: int, launcher_started: float) -> Path:
    """The run directory every local rank of one ``torchrun`` job agrees on without talking:
    named after the launcher (the ranks' parent) and the time it started."""
    base = Path(log_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(launcher_started))
    path = base / f"{name}-{stamp}-p{launcher_pid}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
