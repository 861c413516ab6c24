"""The run registry: live runs, ended runs, stale entries of killed or reused PIDs, privacy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ftwatch import registry


def test_register_list_and_end(tmp_path):
    path = registry.register(os.getpid(), tmp_path, "me")
    assert path.stat().st_mode & 0o777 == 0o600
    assert registry.runs_dir().stat().st_mode & 0o777 == 0o700
    assert [e.pid for e in registry.live_runs()] == [os.getpid()]
    first = registry.find(os.getpid()).started
    registry.register(os.getpid(), tmp_path, "me")  # the probe registers again: start time kept
    assert registry.find(os.getpid()).started == first
    registry.unregister(os.getpid())
    assert registry.live_runs() == []
    assert registry.find(os.getpid()).ended is not None  # kept, so attach can point at the log


def test_dead_process_is_not_live_and_gets_marked_ended(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    registry.register(child.pid, tmp_path, "gone")
    assert registry.live_runs() == []
    assert registry.find(child.pid).ended is not None


def test_reused_pid_is_detected_by_start_time(tmp_path):
    path = registry.register(os.getpid(), tmp_path, "me")
    data = json.loads(path.read_text())
    data["create_time"] -= 3600  # the registered process started an hour earlier: not this one
    path.write_text(json.dumps(data))
    assert registry.live_runs() == []


def test_unreadable_entries_are_removed(tmp_path):
    bad = registry.runs_dir() / "123.json"
    bad.write_text("{not json")
    assert registry.live_runs() == []
    assert not bad.exists()


def test_old_ended_entries_are_removed(tmp_path, monkeypatch):
    registry.register(os.getpid(), tmp_path, "me")
    registry.unregister(os.getpid())
    monkeypatch.setattr(registry, "KEEP_ENDED_SECONDS", -1)
    registry.live_runs()
    assert registry.find(os.getpid()) is None
