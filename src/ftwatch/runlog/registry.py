"""The per-user registry of monitored runs on this machine (``ftwatch ls`` / ``ftwatch attach``).

Each run has one small JSON file, ``<state dir>/runs/<pid>.json``, written when it starts (by
``ftwatch run`` at once, and again by the probe) and marked ended when it finishes, so that
``attach PID`` can point at the log of a run that is over. The state directory is
``$FTWATCH_HOME``, else ``$XDG_STATE_HOME/ftwatch``, else ``~/.local/state/ftwatch``; it and its
files are private to the user (0700 / 0600). An entry whose process is gone (killed) or whose PID
now belongs to another process (the start time differs) is not live; it is marked ended when the
registry is read, and ended entries are removed after a week.

Another local user must not be able to steer these writes: the state directory and ``runs/`` are
checked (:func:`ftwatch.runlog.paths.check_dir`: one's own, not writable by others, no planted
symbolic link), an entry is written to a temp file of an unpredictable name created exclusively
(``mkstemp``: ``O_CREAT|O_EXCL|O_NOFOLLOW``) and renamed onto its name (a rename replaces a link
there, never follows it), and entries are read with ``O_NOFOLLOW``. An entry that is not a small
regular file of JSON (a directory, a link, a FIFO, a huge or garbled file) is skipped, and
removed when it is the user's own. A run's name is made safe for a terminal when it is written and
when it is read (:func:`ftwatch.common.safe_text.safe`); its directory is kept as it is, to open, and
shown through :attr:`RunEntry.display_dir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from ftwatch.common.safe_text import safe
from ftwatch.runlog.paths import check_dir, make_private_dirs

#: How long an ended run's entry is kept (for "that run has ended: replay it with ...").
KEEP_ENDED_SECONDS = 7 * 24 * 3600
#: An entry is a few hundred bytes; anything larger than this is not one (and is not read whole).
MAX_ENTRY_BYTES = 64 * 1024
#: Temp files of entries being written: ``.<pid>.<random>.tmp`` (hidden from the ``*.json`` listing).
TEMP_SUFFIX = ".tmp"
#: A temp file this old was left by a writer that was killed between creating and renaming it.
STALE_TEMP_SECONDS = 600


def state_dir() -> Path:
    """Where ftwatch keeps its per-user state."""
    if os.environ.get("FTWATCH_HOME"):
        return Path(os.environ["FTWATCH_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ftwatch"


def checked_state_dir() -> Path:
    """The state directory, created private (parents too) and checked
    (:func:`~ftwatch.runlog.paths.check_dir`); a refusal is a one-line ``PermissionError``."""
    path = make_private_dirs(state_dir())
    return check_dir(path, "ftwatch state directory", shared_ok=True)


def runs_dir() -> Path:
    """The registry directory, created private to the user; refused (``PermissionError``) when
    it, or the state directory, is not the user's own or others may write into it."""
    path = make_private_dirs(checked_state_dir() / "runs")
    return check_dir(path, "run registry directory")


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
    def display_dir(self) -> str:
        """``run_dir`` fit for a terminal (:func:`~ftwatch.common.safe_text.safe`, one line); ``run_dir``
        itself stays as it is, to open."""
        return safe(self.run_dir, one_line=True)

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
    if previous is None and os.path.lexists(path):
        _discard(path)  # a directory, link or garbage at our name: ours goes, another's stays (refused)
    run_dir_text = str(Path(run_dir).resolve())
    started = previous.started if previous and previous.run_dir == run_dir_text and not previous.ended else time.time()
    entry = RunEntry(pid=pid, run_dir=run_dir_text, name=safe(name, one_line=True), started=started,
                     create_time=process_create_time(pid))
    _write(path, entry)
    return path


def _write(path: Path, entry: RunEntry) -> None:
    """Write ``entry`` at ``path`` atomically, never through a link: a fresh temp file (exclusive,
    ``O_NOFOLLOW``, unpredictable name, 0600) renamed onto it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(entry), handle)
        os.replace(tmp, path)  # a symlink at `path` is replaced, not followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def _read_bytes(path: Path) -> bytes | None:
    """The content of a regular file of at most :data:`MAX_ENTRY_BYTES`, read without following
    a link and without blocking on a FIFO; ``None`` for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            return None
        data = os.read(fd, MAX_ENTRY_BYTES + 1)
        return data if len(data) <= MAX_ENTRY_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _finite(value: object, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def parse_entry(data: bytes) -> RunEntry | None:
    """An entry from a file's bytes; ``None`` unless it is a JSON object of the right fields and
    types (a PID in range, finite times)."""
    try:
        obj = json.loads(data.decode("utf-8"))
        if not isinstance(obj, dict):
            return None
        pid, run_dir, name = obj["pid"], obj["run_dir"], obj.get("name", "")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
            return None
        if not isinstance(run_dir, str) or not run_dir or not isinstance(name, str):
            return None
        return RunEntry(pid=pid, run_dir=run_dir, name=safe(name, one_line=True),
                        started=_finite(obj.get("started", 0), optional=False) or 0.0,
                        create_time=_finite(obj.get("create_time"), optional=True),
                        ended=_finite(obj.get("ended"), optional=True))
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        return None


def read_entry(path: Path) -> RunEntry | None:
    """Parse one entry file; ``None`` if it is not a small regular file holding an entry."""
    data = _read_bytes(path)
    return parse_entry(data) if data is not None else None


def _discard(path: Path) -> None:
    """Remove a bad entry if it is the user's own: a file or link is unlinked (a link, not its
    target), a directory only when empty; anything else stays (and stays skipped)."""
    try:
        info = os.lstat(path)
        if info.st_uid != os.geteuid():
            return
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def _clean_temp_files(runs: Path, now: float) -> None:
    """Remove temp files a killed writer left (hidden, and older than :data:`STALE_TEMP_SECONDS`)."""
    for path in runs.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            stale = now - info.st_mtime > STALE_TEMP_SECONDS
            if stale and info.st_uid == os.geteuid() and not stat.S_ISDIR(info.st_mode):
                os.unlink(path)


def live_runs(clean: bool = True) -> list[RunEntry]:
    """Registered runs whose process still runs (oldest first).

    Entries of processes that died without finishing (killed) are marked ended; ended entries
    older than :data:`KEEP_ENDED_SECONDS` are removed.
    """
    entries = []
    now = time.time()
    runs = runs_dir()
    if clean:
        _clean_temp_files(runs, now)
    for path in sorted(runs.glob("*.json")):
        entry = read_entry(path)
        if entry is not None and is_alive(entry):
            entries.append(entry)
        elif clean and entry is None:
            _discard(path)
        elif clean and entry.ended and now - entry.ended > KEEP_ENDED_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        elif clean and entry is not None and not entry.ended:
            entry.ended = now
            with contextlib.suppress(OSError):
                _write(path, entry)
    return sorted(entries, key=lambda e: e.started)


def find(pid: int) -> RunEntry | None:
    """The registered run of ``pid`` (live or not; the caller checks)."""
    return read_entry(runs_dir() / f"{pid}.json")
