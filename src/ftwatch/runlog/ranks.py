"""Multi-process runs: one run directory, one event log per rank, one view over all of them.

A run launched through ``torchrun`` (``[launch]`` in the config, or a user's script with
``FtwatchCallback``) keeps every rank's log in a directory of its own inside the run directory::

    ftwatch-runs/tiny-lora-20261125-101500/
        launch.json            what ftwatch run started (world size, nodes, launcher pid)
        worker.log             the processes' output (every rank)
        rank0/events.jsonl     rank 0's run log: an ordinary single-process log
        rank1/events.jsonl

Each ``rankN`` directory is an ordinary run directory (``ftwatch replay run/rank1`` works on it
alone). :class:`MultiLogFollower` follows every rank's log (ranks appear as they start) and
:class:`RankedRun` folds each into its own :class:`~ftwatch.runlog.state.RunState`; its summary is the
worst rank's summary plus ``ranks``, one summary per rank. Light: no torch, no textual.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftwatch.runlog.event_reader import ReadStats
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.occupancy import risk_level, used_fraction
from ftwatch.runlog.paths import rank_dir
from ftwatch.runlog.sources import LogFollower, record_monitor_exit
from ftwatch.runlog.state import RunState

LAUNCH_FILE = "launch.json"
_RANK_DIR = re.compile(r"rank(\d+)$")
#: How bad a rank's ending is, for picking the worst rank (higher is worse).
OUTCOME_SEVERITY: dict[str, int] = {"oom": 3, "failed": 2, "stopped": 1}


def find_rank_dirs(run_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """The ``rankN`` directories of a run directory that hold a run log, by rank."""
    found: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for child in Path(run_dir).iterdir():
            match = _RANK_DIR.match(child.name)
            if match and child.is_dir() and any((child / n).exists() for n in (EVENTS_FILE, EVENTS_FILE + ".gz")):
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def is_multi_rank_dir(path: str | os.PathLike[str]) -> bool:
    """True for the run directory of a multi-process run (its logs are in ``rankN/``)."""
    p = Path(path)
    if not p.is_dir() or (p / EVENTS_FILE).exists() or (p / (EVENTS_FILE + ".gz")).exists():
        return False
    return (p / LAUNCH_FILE).exists() or bool(find_rank_dirs(p))


def multi_rank_root(path: str | os.PathLike[str]) -> Path | None:
    """The multi-process run directory ``path`` is, or is a rank of (``None`` for any other)."""
    p = Path(path)
    if p.name == EVENTS_FILE or p.name == EVENTS_FILE + ".gz":
        p = p.parent
    if is_multi_rank_dir(p):
        return p
    if _RANK_DIR.match(p.name) and is_multi_rank_dir(p.parent):
        return p.parent
    return None


def write_launch(run_dir: Path, **fields: Any) -> None:
    """Record what ``ftwatch run`` launched (``launch.json``), so viewers know the ranks to expect."""
    path = Path(run_dir) / LAUNCH_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(fields, handle, indent=2)
        handle.write("\n")


def _small_int(value: Any, lowest: int) -> bool:
    return type(value) is int and lowest <= value < 2**31


def read_launch(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``launch.json`` of a run directory (empty when there is none or it cannot be read).

    It is a hint (the rank logs are the record), so a field of the wrong type is dropped, not
    trusted: ``world_size`` a count, ``ranks`` a list of ranks, pids positive."""
    try:
        data = json.loads((Path(run_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    checks = {"world_size": lambda v: _small_int(v, 1), "ranks": lambda v: isinstance(v, list)
              and all(_small_int(r, 0) for r in v), "launcher_pid": lambda v: _small_int(v, 1),
              "nnodes": lambda v: _small_int(v, 1), "node_rank": lambda v: _small_int(v, 0),
              "nproc_per_node": lambda v: _small_int(v, 1)}
    return {k: v for k, v in data.items() if k not in checks or checks[k](v)}


class MultiLogFollower:
    """Follows every rank's log of a multi-process run; ranks that start late are picked up.

    ``poll()`` returns ``(rank, event)`` pairs, each rank's events in order; it never blocks.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.followers: dict[int, LogFollower] = {}

    def _discover(self) -> None:
        for rank, path in find_rank_dirs(self.run_dir).items():
            if rank not in self.followers:
                self.followers[rank] = LogFollower(path)

    def poll(self, max_bytes: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Events completed since the last poll, tagged with their rank."""
        self._discover()
        out: list[tuple[int, dict[str, Any]]] = []
        for rank, follower in self.followers.items():
            out.extend((rank, event) for event in follower.poll(max_bytes))
        return out

    def finish(self) -> list[tuple[int, dict[str, Any]]]:
        """Call once the writers are gone: the last unterminated lines that parse, per rank."""
        self._discover()
        out: list[tuple[int, dict[str, Any]]] = []
        for rank, follower in self.followers.items():
            out.extend((rank, event) for event in follower.finish())
        return out

    @property
    def stats(self) -> ReadStats:
        """What was read and skipped, over every rank's log."""
        total = ReadStats()
        for follower in self.followers.values():
            total.add(follower.decoder.stats)
        return total

    def close(self) -> None:
        """Close every log."""
        for follower in self.followers.values():
            follower.close()


class RankedRun:
    """The state of every rank of one run, each folded from its own log."""

    def __init__(self, launch: dict[str, Any] | None = None, timeline_capacity: int = 2048) -> None:
        self.launch = dict(launch or {})
        self.timeline_capacity = timeline_capacity
        self.ranks: dict[int, RunState] = {}

    def state(self, rank: int) -> RunState:
        """Rank ``rank``'s state (created empty on first use)."""
        state = self.ranks.get(rank)
        if state is None:
            state = self.ranks[rank] = RunState(self.timeline_capacity)
            self.ranks = dict(sorted(self.ranks.items()))
        return state

    def apply(self, rank: int, event: dict[str, Any]) -> None:
        """Fold one of rank ``rank``'s events."""
        self.state(rank).apply(event)

    def apply_all(self, pairs: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Fold ``(rank, event)`` pairs in order."""
        for rank, event in pairs:
            self.state(rank).apply(event)

    @property
    def world_size(self) -> int:
        """Ranks in the job: the launch record's, else the largest any header reports."""
        sizes = [int(s.header.get("world_size") or 1) for s in self.ranks.values() if s.header]
        return int(self.launch.get("world_size") or max(sizes, default=len(self.ranks) or 1))

    @property
    def expected_ranks(self) -> list[int]:
        """The ranks whose logs belong in this directory (this node's, when the launch says)."""
        ranks = self.launch.get("ranks")
        if isinstance(ranks, list) and all(isinstance(r, int) for r in ranks):
            return sorted(ranks)
        return sorted(self.ranks)

    @property
    def missing_ranks(self) -> list[int]:
        """Ranks the launch started whose log has not appeared (yet)."""
        return [r for r in self.expected_ranks if r not in self.ranks or not self.ranks[r].header]

    def severity(self, rank: int) -> tuple[int, float, int, float]:
        """How badly rank ``rank`` stands (compare tuples: larger is worse): its ending; among
        failed ranks the one that went first (the others usually fail because a peer vanished);
        then its risk level; then the share of its capacity in use."""
        state = self.ranks[rank]
        outcome = OUTCOME_SEVERITY.get(state.exit.get("status", ""), 0) if state.exit else 0
        first = 0.0
        if outcome >= OUTCOME_SEVERITY["failed"] and state.exit is not None:
            first = -float(state.exit.get("last_event_t") or state.exit.get("t") or 0.0)
        fraction = used_fraction(state)
        return outcome, first, risk_level(state), fraction if fraction is not None else -1.0

    def worst_rank(self) -> int | None:
        """The rank in the worst standing (the lowest rank among equals); ``None`` before any."""
        if not self.ranks:
            return None
        return max(self.ranks, key=lambda r: (self.severity(r), -r))

    @property
    def worst(self) -> RunState:
        """The worst rank's state (an empty state before any rank has written)."""
        rank = self.worst_rank()
        return self.ranks[rank] if rank is not None else RunState()

    @property
    def ended(self) -> bool:
        """True when every expected rank has an exit event."""
        return bool(self.ranks) and not self.missing_ranks and all(s.exit for s in self.ranks.values())

    @property
    def status(self) -> str:
        """``running`` while any rank runs; else the worst rank's ending."""
        if not self.ended:
            return "running"
        return self.worst.status

    def rank_summary(self, rank: int) -> dict[str, Any]:
        """One rank's summary with who it is: rank, local rank, host, pid, device index."""
        state = self.ranks[rank]
        header = state.header
        return {"rank": rank, "local_rank": header.get("local_rank"), "host": header.get("host"),
                "pid": header.get("pid"), "device_index": state.device.get("index"), **state.summary()}

    def summary(self) -> dict[str, Any]:
        """The worst rank's summary at the top level, plus ``rank``, ``world_size`` and ``ranks``
        (one summary per rank whose log is here); warnings name their rank."""
        worst = self.worst_rank()
        top = self.rank_summary(worst) if worst is not None else RunState().summary()
        if worst is None or not self.ended:
            top["status"] = self.status if worst is not None else "failed"
        ranks = [self.rank_summary(r) for r in self.ranks]
        for entry in [top, *ranks]:
            rank = entry.get("rank")
            entry["warnings"] = [{"rank": rank, **w} for w in entry.get("warnings", [])]
        top.update(world_size=self.world_size, ranks=ranks, missing_ranks=self.missing_ranks)
        return top


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """True while ``pid`` runs (a zombie has ended; a reused pid started after ``started`` is not it)."""
    if not pid:
        return False
    import psutil  # imported here: a replay of a finished run never needs it

    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or process.create_time() <= started + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def vanished_ranks(run: RankedRun, host: str) -> list[int]:
    """Ranks on ``host`` whose process is gone without writing an exit event."""
    gone = []
    for rank, state in run.ranks.items():
        header = state.header
        ours = state.exit is None and header and header.get("host") == host and header.get("pid")
        if ours and not process_alive(int(header["pid"]), state.first_t):
            gone.append(rank)
    return gone


def record_vanished_rank(run_dir: Path, rank: int, state: RunState, apply: bool = True) -> None:
    """Rank ``rank`` ended without an exit event (killed): record it in that rank's log, as ours,
    stamped at its last event (when it was last seen alive), which ``last_event_t`` repeats
    (:func:`~ftwatch.runlog.sources.record_monitor_exit`). ``apply=False`` leaves the folding to whoever
    follows the log. Raises ``OSError`` when that log cannot be written."""
    message = f"the training process of rank {rank} ended without an exit event"
    record = record_monitor_exit(rank_dir(run_dir, rank) / EVENTS_FILE, state, error_type="WorkerVanished",
                                 message=message)
    if apply:
        state.apply(record)


def run_key(run_dir: str | os.PathLike[str]) -> Path:
    """What identifies a run among registered processes: the multi-process run directory for its
    launcher and each of its ranks, else the run directory itself."""
    root = multi_rank_root(run_dir)
    return root if root is not None else Path(run_dir)


def launcher_of(pid: int) -> int | None:
    """The ``torchrun`` launcher a rank process runs under (its parent), if it is one."""
    import psutil

    try:
        parent = psutil.Process(pid).parent()
        command = " ".join(parent.cmdline()) if parent is not None else ""
    except psutil.Error:
        return None
    if parent is not None and ("torch.distributed.run" in command or "torchrun" in command):
        return int(parent.pid)
    return None
