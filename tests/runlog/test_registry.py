"""The run registry: live runs, ended runs, stale entries of killed or reused PIDs, privacy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ftwatch.runlog import registry


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


def test_entries_of_the_wrong_shape_are_not_entries():
    good = {"pid": 4242, "run_dir": "/r", "name": "n", "started": 1.0, "create_time": None}
    assert registry.parse_entry(json.dumps(good).encode()).pid == 4242
    bad = [{**good, "pid": True}, {**good, "pid": "4242"}, {**good, "pid": 10**400}, {**good, "pid": -1},
           {**good, "run_dir": ["/r"]}, {**good, "run_dir": ""}, {**good, "name": {"x": 1}},
           {**good, "started": "soon"}, {**good, "create_time": float("inf")}, {**good, "ended": "yes"}]
    assert [registry.parse_entry(json.dumps(b).encode()) for b in bad] == [None] * len(bad)
    for text in (b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100_000, b'{"pid": NaN}'):
        assert registry.parse_entry(text) is None
    assert registry.parse_entry(json.dumps({**good, "started": float("nan")}).encode()) is None


def test_a_crafted_name_is_made_safe_and_the_directory_kept_to_open(tmp_path):
    run_dir = tmp_path / "run\x1b]0;t\x07"
    run_dir.mkdir()
    registry.register(os.getpid(), run_dir, "me\x1b[2J\x9b31m\nyou")
    entry = registry.find(os.getpid())
    assert entry.name == "me you"
    assert entry.run_dir == str(run_dir) and entry.display_dir == str(tmp_path / "run")
    raw = registry.runs_dir() / f"{os.getpid()}.json"  # a name planted by hand is cleaned on reading
    raw.write_text(json.dumps({**json.loads(raw.read_text()), "name": "x\x1b]52;c;AAAA\x07y"}))
    assert registry.find(os.getpid()).name == "xy"


def test_temp_files_a_killed_writer_left_are_cleaned(tmp_path):
    runs = registry.runs_dir()
    old, fresh = runs / ".4242.abcd1234.tmp", runs / ".4243.efgh5678.tmp"
    for path in (old, fresh):
        path.write_text("{")
    past = os.stat(old).st_mtime - registry.STALE_TEMP_SECONDS - 60
    os.utime(old, (past, past))
    assert registry.live_runs() == []
    assert not old.exists() and fresh.exists()  # a writer may be between create and rename
