"""The per-user registry of monitored runs on this machine (``ftwatch ls`` / ``ftwatch attach``).

Each run has one small JSON file, ``<state dir>/runs/<pid>.json``, written when it starts (by
``ftwatch run`` at once, and again by the probe) and marked ended when it finishes, so that
``attach PID`` can point at the log of a run that is over. The state directory is
``$FTWATCH_HOME``, else ``$XDG_STATE_HOME/ftwatch``, else ``~/.local/state/ftwatch``; it and its
files are private to the user (0700 / 0600). An entry whose process is gone (killed) or whose PID
now belongs to another process (the start time differs) is not live; it is marked ended when the
registry is read, and ended entries are removed after a week.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

#: How long an ended run's entry is kept (for "that run has ended: replay it with ...").
KEEP_ENDED_SECONDS = 7 * 24 * 3600


def state_dir() -> Path:
    """Where ftwatch keeps its per-user state."""
    if os.environ.get("FTWATCH_HOME"):
        return Path(os.environ["FTWATCH_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ftwatch"


def runs_dir() -> Path:
    """The registry directory, created private to the user."""
    path = state_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    return path


@dataclass
class RunEntry:
    """One registered run."""

    pid: int
    run_dir: str
    name: str
    started: float
    create_time: float | None
    ended: float | None = None

    @property
    def log_path(self) -> Path:
        """The run's ``events.jsonl``."""
        return Path(self.run_dir) / "events.jsonl"


def process_create_time(pid: int) -> float | None:
    """The process's start time (to tell a reused PID from the original), ``None`` if gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None


def register(pid: int, run_dir: Path, name: str) -> Path:
    """Record a live run (again: keeps its first start time); returns the entry's path."""
    path = runs_dir() / f"{pid}.json"
    previous = read_entry(path)
    run_dir_text = str(Path(run_dir).resolve())
    started = previous.started if previous and previous.run_dir == run_dir_text and not previous.ended else time.time()
    entry = RunEntry(pid=pid, run_dir=run_dir_text, name=name, started=started, create_time=process_create_time(pid))
    _write(path, entry)
    return path


def _write(path: Path, entry: RunEntry) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(entry), handle)
    os.replace(tmp, path)


def unregister(pid: int) -> None:
    """Mark a run's entry ended (kept a while so ``attach PID`` can point at its log)."""
    path = runs_dir() / f"{pid}.json"
    entry = read_entry(path)
    if entry is not None and not entry.ended:
        entry.ended = time.time()
        _write(path, entry)


def is_alive(entry: RunEntry) -> bool:
    """True while the entry's process runs and is the same process that registered."""
    if entry.ended:
        return False
    current = process_create_time(entry.pid)
    if current is None:
        return _pid_exists(entry.pid) and entry.create_time is None
    return entry.create_time is None or abs(current - entry.create_time) < 1.0


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_entry(path: Path) -> RunEntry | None:
    """Parse one entry file; ``None`` if unreadable."""
    try:
        data = json.loads(path.read_text())
        return RunEntry(pid=int(data["pid"]), run_dir=str(data["run_dir"]), name=str(data.get("name", "")),
                        started=float(data.get("started", 0)), create_time=data.get("create_time"),
                        ended=data.get("ended"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_runs(clean: bool = True) -> list[RunEntry]:
    """Registered runs whose process still runs (oldest first).

    Entries of processes that died without finishing (killed) are marked ended; ended entries
    older than :data:`KEEP_ENDED_SECONDS` are removed.
    """
    entries = []
    now = time.time()
    for path in sorted(runs_dir().glob("*.json")):
        entry = read_entry(path)
        if entry is not None and is_alive(entry):
            entries.append(entry)
        elif clean and (entry is None or (entry.ended and now - entry.ended > KEEP_ENDED_SECONDS)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        elif clean and not entry.ended:
            entry.ended = now
            with contextlib.suppress(OSError):
                _write(path, entry)
    return sorted(entries, key=lambda e: e.started)


def find(pid: int) -> RunEntry | None:
    """The registered run of ``pid`` (live or not; the caller checks)."""
    return read_entry(runs_dir() / f"{pid}.json")
