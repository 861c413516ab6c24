"""The dashboard's data side: a background thread that follows the run and folds it into state.

The UI thread never reads a file. :class:`RunFeed` polls the run log (``events.jsonl``) and the
worker's output (``worker.log``) from its own thread, folds the events into a
:class:`~ftwatch.runlog.state.RunState` under a lock and bumps a version number. The app's render timer
takes a :class:`RunView` (a consistent copy of what it needs) only when the version moved, so the
screen refreshes at a fixed cadence whatever the sample rate. The training side never waits for
any of this: it only appends to its files.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftwatch.common.safe_text import safe
from ftwatch.runlog.events import ReadStats, SchemaVersionError
from ftwatch.runlog.sources import LogFollower, WorkerHandle
from ftwatch.runlog.state import PhaseRecord, RunState, TimelinePoint
from ftwatch.views.headless.follow import record_vanished_worker, signal_name

if TYPE_CHECKING:
    from ftwatch.views.dashboard.rank_rows import RanksView

WORKER_LOG = "worker.log"
#: What a replay says of a log that ends without an exit event.
NO_EXIT = "the log ends without an exit event: the training process was killed"


def clean_line(text: str) -> str:
    """A line as it would look on a terminal: carriage returns overwrite, escapes and controls go."""
    return safe(text, one_line=False).replace("\t", "    ").replace("\n", " ")


class TextTail:
    """Follows a growing text file without blocking and keeps its last lines.

    A file that does not exist yet is waited for; a huge existing file is read from its last
    ``initial_bytes`` only; a file that shrinks (rotated, rewritten) is read again from the start.
    Progress bars that redraw with carriage returns show as their latest state.
    """

    def __init__(self, path: str | os.PathLike[str], max_lines: int = 2000, initial_bytes: int = 256 * 1024,
                 chunk_size: int = 256 * 1024) -> None:
        self.path = Path(path)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.partial = ""
        self.initial_bytes = initial_bytes
        self.chunk_size = chunk_size
        self._handle: Any = None
        self._pos = 0

    def poll(self) -> bool:
        """Read what was appended since the last call; True when the visible text changed."""
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open while following
            except OSError:
                return False
            size = os.fstat(self._handle.fileno()).st_size
            if size > self.initial_bytes:
                self._handle.seek(size - self.initial_bytes)
                self._handle.readline()  # drop the cut first line
            self._pos = self._handle.tell()
        try:
            size = os.fstat(self._handle.fileno()).st_size
        except OSError:
            return False
        if size < self._pos:
            self._handle.seek(0)
            self._pos = 0
            self.lines.clear()
            self.partial = ""
        changed = False
        while True:
            chunk = self._handle.read(self.chunk_size)
            if not chunk:
                break
            self._pos += len(chunk)
            self._feed(chunk.decode("utf-8", errors="replace"))
            changed = True
        return changed

    def _feed(self, text: str) -> None:
        data = self.partial + text
        parts = data.split("\n")
        self.partial = parts.pop()
        for part in parts:
            self.lines.append(clean_line(part))
        if len(self.partial) > 8192:  # a progress bar that never ends its line: keep only its tail
            self.partial = self.partial[-8192:]

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines, the unfinished one (a progress bar) included."""
        out = list(self.lines)[-n:] if n > 0 else []
        if self.partial.strip():
            out.append(clean_line(self.partial))
        return out[-n:] if n > 0 else []

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass(frozen=True)
class ReplayInfo:
    """Where a replay stands (see :mod:`ftwatch.views.dashboard.replay`); ``None`` on a live view."""

    playing: bool
    rate: float | None  # run seconds per second of playback; None while still unknown
    position: int  # events shown so far
    total: int | None  # events in the log, once it has been read to its end
    loaded: float  # share of the log read so far (0..1)
    run_seconds: float  # where the replay stands, from the start of the run
    duration: float | None  # the whole recording, when known
    at_end: bool
    loading: bool = False  # the screen follows the log as it is read, up to its end (``--speed max``)


@dataclass
class RunView:
    """A consistent copy of what the screen shows, taken under the feed's lock."""

    version: int
    header: dict[str, Any]
    model: dict[str, Any]
    phase: str | None
    phases: list[PhaseRecord]
    step: int
    loss: float | None
    categories: dict[str, int]
    snapshot: dict[str, Any] | None
    sample: dict[str, Any] | None
    peaks: dict[str, int]
    peak_total: int
    peak_rss: int
    warnings: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    exit: dict[str, Any] | None
    timeline: list[TimelinePoint]
    samples: int
    snapshots: int
    steps_per_second: float | None
    elapsed: float
    capacity: int | None
    is_cuda: bool
    max_steps: int | None
    log_lines: list[str]
    log_version: int
    log_exists: bool
    worker_alive: bool | None
    stop_requested_at: float | None
    last_event_wall: float | None
    error: str | None
    summary: dict[str, Any] | None
    skipped: dict[str, int] = field(default_factory=dict)
    replay: ReplayInfo | None = None
    #: Every rank of a multi-process run (the rest of the view is the focused rank's); else None.
    ranks: RanksView | None = None

    @property
    def status(self) -> str:
        """``waiting`` before the first event, ``running`` until the exit event, then its status."""
        if self.exit is not None:
            return str(self.exit.get("status") or "failed")
        return "running" if self.header or self.samples else "waiting"

    @property
    def run_status(self) -> str:
        """The whole run's status: :attr:`status`, or over every rank of a multi-process run."""
        return self.ranks.status if self.ranks is not None else self.status

    @property
    def run_ended(self) -> bool:
        """True once the whole run has ended (every rank of a multi-process run)."""
        return self.ranks.ended if self.ranks is not None else self.ended

    @property
    def device(self) -> dict[str, Any]:
        """The header's device description."""
        return self.header.get("device") or {}

    @property
    def ended(self) -> bool:
        """True once the run has an exit (written by the worker, or recorded by this viewer)."""
        return self.exit is not None

    @property
    def external(self) -> bool:
        """True for a process watched from outside (``attach PID`` without a probe): no breakdown."""
        return bool(self.header.get("external"))


class RunFeed:
    """Follows one run from a background thread; the UI asks it for a :class:`RunView`."""

    def __init__(self, log_path: str | os.PathLike[str], handle: WorkerHandle | None = None, *,
                 poll_interval: float = 0.05, batch_bytes: int = 256 * 1024, timeline_capacity: int = 2048,
                 log_lines: int = 2000, exit_grace: float = 1.5) -> None:
        self.log_path = Path(log_path)
        if self.log_path.is_dir():
            self.log_path = self.log_path / "events.jsonl"
        self.run_dir = self.log_path.parent
        self.handle = handle
        self.poll_interval = poll_interval
        self.batch_bytes = batch_bytes
        self.exit_grace = exit_grace
        self.state = RunState(timeline_capacity=timeline_capacity)
        self.follower = LogFollower(self.log_path)
        self.worker_log = TextTail(self.run_dir / WORKER_LOG, max_lines=log_lines)
        self.lock = threading.Lock()
        self.version = 0
        self.log_version = 0
        self.error: str | None = None
        self.stop_requested_at: float | None = None
        self.last_event_wall: float | None = None
        self.worker_alive: bool | None = None
        self._dead_since: float | None = None
        self._next_alive_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished_reading = False

    # -- the thread --------------------------------------------------------------------------
    def start(self) -> None:
        """Start following in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ftwatch-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the files."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.follower.close()
        self.worker_log.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.pump()
            except Exception as exc:  # the viewer must never die of a bad line or a vanished file
                with self.lock:
                    self.error = f"reading the run stopped: {type(exc).__name__}: {exc}"
                    self.version += 1
                return
            if not busy:
                self._stop.wait(self.poll_interval)

    # -- one round ---------------------------------------------------------------------------
    def pump(self) -> bool:
        """One polling round (also callable directly, e.g. by tests). True when more is waiting."""
        if self.error is not None:
            return False
        try:
            events = self.follower.poll(max_bytes=self.batch_bytes)
        except SchemaVersionError as exc:
            with self.lock:
                self.error = str(exc)
                self.version += 1
            return False
        now = time.monotonic()
        if events:
            self._fold(events, now)
        if self.worker_log.poll():
            with self.lock:
                self.log_version += 1
                self.version += 1
        more = len(events) > 0 and self._stream_was_cut()
        if not more:
            self._caught_up(now)
            self._check_end(now, had_events=bool(events))
        return more

    def _caught_up(self, now: float) -> None:
        """Called when a round has read everything there was (a multi-process feed checks its ranks)."""

    def _stream_was_cut(self) -> bool:
        # poll() stops after batch_bytes; a full batch likely means more is waiting (a replay).
        handle = self.follower._handle
        if handle is None:
            return False
        try:
            return handle.tell() < os.fstat(handle.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            return False

    def _fold(self, events: list[dict[str, Any]], now: float) -> None:
        with self.lock:
            self.state.apply_all(events)
            self.last_event_wall = now
            self.version += 1

    def _check_end(self, now: float, had_events: bool) -> None:
        """Notice a run that is over: a replay read to its end, or a worker that went away."""
        if self._ended_or_read():
            return
        if self.handle is None:
            if self._recording_complete(had_events):
                self._finish(NO_EXIT)
            return
        if now < self._next_alive_check:
            return
        self._next_alive_check = now + 0.5
        alive = self.handle.is_alive()
        if alive != self.worker_alive:
            with self.lock:
                self.worker_alive = alive
                self.version += 1
        if alive:
            self._dead_since = None
            return
        if self._dead_since is None:
            self._dead_since = now
        if had_events or now - self._dead_since < self.exit_grace or self._still_writing():
            return  # give the last lines time to land
        code = self.handle.returncode()
        if code is not None and code < 0:
            detail = f" ({self.handle_name} killed by {signal_name(-code)})"
        else:
            detail = f" ({self.handle_name} exit code {code})" if code is not None else ""
        self._finish(f"the training process ended without writing an exit event{detail}")

    #: What the handle's process is called in messages (a multi-process run's is the launcher).
    handle_name = "worker"

    def _ended_or_read(self) -> bool:
        """True when nothing is left to notice: the run has its exit, or was read to its end."""
        return self.state.exit is not None or self._finished_reading

    def _recording_complete(self, had_events: bool) -> bool:
        """A replay: True when the log has been read to its end without an exit event (an outside
        view's log grows until its watcher writes the exit)."""
        return not had_events and self.log_path.exists() and not self.state.header.get("external")

    def _still_writing(self) -> bool:
        """True while a writer other than the handle's process may still append (none here)."""
        return False

    def _finish(self, message: str) -> None:
        """The run is over without an exit event: a live worker that vanished gets its exit
        recorded in its log now, stamped at its last event (as a headless follower does); a
        replay's end is told in memory only."""
        events = self.follower.finish()
        with self.lock:
            self.state.apply_all(events)
            self._finished_reading = True
            if self.state.exit is None and self.handle is not None:
                record_vanished_worker(self.run_dir, self.handle, self.state, message)
            elif self.state.exit is None:
                self.state.apply({"v": 1, "t": self.state.last_t or time.time(), "kind": "exit",
                                  "status": "failed", "step": self.state.step, "by": "monitor",
                                  "message": message, "last_event_t": self.state.last_t})
            self.version += 1

    @property
    def ended(self) -> bool:
        """True once the run has an exit (written by the worker, or recorded by this viewer)."""
        return self.state.exit is not None

    # -- the UI side -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to stop at its next step boundary (remembered for the status line)."""
        if self.handle is not None:
            self.handle.request_stop()
            with self.lock:
                if self.stop_requested_at is None:
                    self.stop_requested_at = time.monotonic()
                self.version += 1

    def read_stats(self) -> ReadStats:
        """What the reader skipped so far (corrupt lines, unknown kinds)."""
        return self.follower.decoder.stats

    def replay_info(self) -> ReplayInfo | None:
        """Where a replay stands; a live feed has none."""
        return None

    def view(self, log_lines: int = 200) -> RunView:
        """A consistent copy of the state for one render."""
        with self.lock:
            s = self.state
            stats = self.read_stats()
            return RunView(
                version=self.version,
                header=s.header,
                model=s.model,
                phase=s.phase,
                phases=[dataclasses.replace(p) for p in s.phases],
                step=s.step,
                loss=s.loss,
                categories=s.categories,
                snapshot=s.last_snapshot,
                sample=s.last_sample,
                peaks=dict(s.peaks),
                peak_total=s.peak_total,
                peak_rss=s.peak_rss,
                warnings=list(s.warnings),
                notes=list(s.notes),
                exit=s.exit,
                timeline=s.timeline.all_points(),
                samples=s.samples,
                snapshots=s.snapshots,
                steps_per_second=s.steps_per_second,
                elapsed=s.elapsed,
                capacity=s.capacity,
                is_cuda=s.is_cuda,
                max_steps=s.max_steps,
                log_lines=self.worker_log.tail(log_lines),
                log_version=self.log_version,
                log_exists=self.worker_log._handle is not None,
                worker_alive=self.worker_alive,
                stop_requested_at=self.stop_requested_at,
                last_event_wall=self.last_event_wall,
                error=self.error,
                summary=s.summary() if s.exit is not None else None,
                skipped={"corrupt": stats.corrupt_lines, "unknown": stats.unknown_kinds},
                replay=self.replay_info(),
            )
