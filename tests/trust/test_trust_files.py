"""Nothing another local user controls steers what ftwatch writes: the registry never writes through
a planted link, directories of others (or writable by others) are refused with one line, what
ftwatch creates is private whatever the umask, run directory names never run out, and a registry
entry that is not a small JSON file is skipped by ``ls`` and ``attach``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ftwatch.commands import attach
from ftwatch.runlog import paths, registry
from fuzzkit import cli

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A private file of the user's that a planted link points at."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- the registry writes no file through a link ----------------------------------------------------

def test_a_link_at_the_old_predictable_temp_name_is_not_followed(tmp_path, victim):
    runs = registry.runs_dir()
    pid = os.getpid()
    planted = [runs / f"{pid}.{pid}.tmp", runs / f"{pid}.json.tmp", runs / f"{pid}.tmp"]
    for link in planted:
        link.symlink_to(victim)
    registry.register(pid, tmp_path, "me")
    registry.unregister(pid)
    assert victim.read_text() == "precious\n" and mode_of(victim) == 0o600
    assert all(link.is_symlink() for link in planted)  # left alone, never written through
    entry = runs / f"{pid}.json"
    assert stat.S_ISREG(os.lstat(entry).st_mode) and mode_of(entry) == 0o600
    assert json.loads(entry.read_text())["pid"] == pid
    leftovers = {p.name for p in runs.iterdir()} - {entry.name} - {p.name for p in planted}
    assert leftovers == set()  # the temp file was renamed, not left behind


def test_a_link_at_the_entry_name_is_replaced_not_followed(tmp_path, victim):
    entry = registry.runs_dir() / f"{os.getpid()}.json"
    entry.symlink_to(victim)
    registry.register(os.getpid(), tmp_path, "me")
    assert victim.read_text() == "precious\n" and mode_of(victim) == 0o600
    assert not entry.is_symlink() and json.loads(entry.read_text())["run_dir"] == str(tmp_path.resolve())


def test_an_entry_read_through_a_link_is_not_believed(tmp_path):
    """A link to a well-formed entry elsewhere (someone else's forged run) is not read."""
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"pid": os.getpid(), "run_dir": str(tmp_path), "name": "forged",
                                  "started": 1.0, "create_time": None}))
    link = registry.runs_dir() / f"{os.getpid()}.json"
    link.symlink_to(forged)
    assert registry.find(os.getpid()) is None
    assert registry.live_runs() == []
    assert not os.path.lexists(link) and forged.exists()  # the link is cleaned, its target kept


# -- directories of others are refused with one line -----------------------------------------------

def refused_by_ls(state: Path, monkeypatch, *needles: str) -> None:
    monkeypatch.setenv("FTWATCH_HOME", str(state))
    cli("ls").assert_one_line_error(str(state), "refusing", *needles)


@as_root
def test_a_state_dir_of_another_user_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    refused_by_ls(state, monkeypatch, "owned by", str(NOBODY))
    assert list(state.iterdir()) == []  # nothing written into it


def test_a_world_writable_state_dir_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "state-777"
    state.mkdir()
    state.chmod(0o777)
    refused_by_ls(state, monkeypatch, "writable by others", "0777")
    assert list(state.iterdir()) == []


@as_root
def test_a_state_dir_writable_by_a_shared_group_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "state-770"
    state.mkdir()
    state.chmod(0o770)
    os.chown(state, os.geteuid(), NOBODY)  # a group of other users ('nogroup'), not the user's own
    refused_by_ls(state, monkeypatch, "writable by its group", "0770")
    assert list(state.iterdir()) == []


def test_a_state_dir_writable_by_the_users_private_group_is_used(tmp_path, monkeypatch):
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid())
    if group.gr_name != user or set(group.gr_mem) - {user}:
        pytest.skip("this user has no private group (user private groups, as Debian and Ubuntu make)")
    state = tmp_path / "state-775"
    state.mkdir()
    state.chmod(0o775)  # what umask 002 gives every directory under user private groups
    monkeypatch.setenv("FTWATCH_HOME", str(state))
    assert cli("ls").code == 0
    assert (state / "runs").is_dir()


def test_a_world_writable_runs_dir_is_refused(tmp_path, monkeypatch):
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    (state / "runs").chmod(0o777)
    state.chmod(0o700)
    monkeypatch.setenv("FTWATCH_HOME", str(state))
    cli("ls").assert_one_line_error(str(state / "runs"), "refusing", "writable by others")


@as_root
def test_a_link_to_another_users_directory_is_refused(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    mine = tmp_path / "state-link"
    mine.symlink_to(theirs)
    refused_by_ls(mine, monkeypatch, "symbolic link to", str(theirs), "owned by")
    planted = tmp_path / "planted-link"  # a link someone else made, pointing at a place of mine
    planted.symlink_to(tmp_path)
    os.lchown(planted, NOBODY, NOBODY)
    refused_by_ls(planted, monkeypatch, "symbolic link owned by")


def test_a_link_to_my_own_directory_is_fine(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("FTWATCH_HOME", str(link))
    outcome = cli("ls")
    assert outcome.code == 0 and "no monitored runs" in outcome.stdout, outcome
    assert (real / "runs").is_dir()


def test_a_shared_sticky_place_like_tmp_is_fine_as_a_parent_of_ftwatch_dirs(tmp_path):
    """``/tmp`` itself (root's, sticky, world-writable) may hold the log_dir or be it: ftwatch
    only creates private directories of its own in it, exclusively."""
    shared = Path("/tmp")
    info = os.stat(shared)
    if info.st_uid != 0 or not info.st_mode & stat.S_ISVTX:
        pytest.skip("/tmp is not a root-owned sticky directory here")
    run_dir = paths.new_run_dir(shared, f"ftwatch-test-{os.getpid()}")
    try:
        assert run_dir.parent == shared and mode_of(run_dir) == 0o700
    finally:
        run_dir.rmdir()
    with pytest.raises(PermissionError, match="run directory"):  # but never to write files into
        paths.check_dir(shared, "run directory")


def run_refused(tiny_config, log_dir: Path, *needles: str) -> None:
    """``ftwatch run --headless`` with this log_dir: one line naming it, and no run started."""
    config = tiny_config(monitor={"log_dir": str(log_dir)})
    before = sorted(os.listdir(log_dir)) if log_dir.is_dir() else None
    cli("run", "--headless", str(config)).assert_one_line_error("log_dir", str(log_dir), *needles)
    after = sorted(os.listdir(log_dir)) if log_dir.is_dir() else None
    assert after == before  # no run directory made
    assert registry.live_runs() == []  # no worker registered


@as_root
def test_run_refuses_a_log_dir_of_another_user(tiny_config, tmp_path):
    log_dir = tmp_path / "their-runs"
    log_dir.mkdir(mode=0o755)
    os.chown(log_dir, NOBODY, NOBODY)
    run_refused(tiny_config, log_dir, "owned by")


def test_run_refuses_a_world_writable_log_dir(tiny_config, tmp_path):
    log_dir = tmp_path / "open-runs"
    log_dir.mkdir()
    log_dir.chmod(0o777)
    run_refused(tiny_config, log_dir, "writable by others")


@as_root
def test_run_refuses_a_log_dir_that_links_to_another_users_directory(tiny_config, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    link = tmp_path / "runs-link"
    link.symlink_to(theirs)
    run_refused(tiny_config, link, "symbolic link to", "owned by")
    assert list(theirs.iterdir()) == []


@as_root
def test_run_refuses_a_state_dir_of_another_user_before_starting(tiny_config, tmp_path, monkeypatch):
    state = tmp_path / "their-state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    monkeypatch.setenv("FTWATCH_HOME", str(state))
    log_dir = tmp_path / "runs"
    config = tiny_config(monitor={"log_dir": str(log_dir)})
    cli("run", "--headless", str(config)).assert_one_line_error(str(state), "owned by")
    assert not log_dir.exists() or list(log_dir.iterdir()) == []  # no run started
    assert list(state.iterdir()) == []


# -- what ftwatch creates is private ---------------------------------------------------------------

def test_created_parents_are_private_whatever_the_umask(tmp_path, monkeypatch):
    with umask(0o000):
        run_dir = paths.new_run_dir(tmp_path / "a" / "b" / "logs", "x")
        monkeypatch.setenv("FTWATCH_HOME", str(tmp_path / "h1" / "h2"))
        runs = registry.runs_dir()
    created = [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "logs", run_dir,
               tmp_path / "h1", tmp_path / "h1" / "h2", runs]
    assert {str(p.relative_to(tmp_path)): oct(mode_of(p)) for p in created} == \
        {str(p.relative_to(tmp_path)): "0o700" for p in created}


def test_an_existing_parent_keeps_its_mode(tmp_path):
    shared = tmp_path / "team"
    shared.mkdir()
    shared.chmod(0o755)
    with umask(0o000):
        run_dir = paths.new_run_dir(shared / "mine", "x")
    assert mode_of(shared) == 0o755 and mode_of(shared / "mine") == 0o700 and mode_of(run_dir) == 0o700


# -- run directory names never run out -------------------------------------------------------------

NAME = re.compile(r"^x-\d{8}-\d{6}(-\d+|-[0-9a-f]{8})?$")


def test_a_hundred_runs_in_one_second_get_distinct_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(paths.time, "strftime", lambda *args: "20260101-120000")  # all one second
    made = [paths.new_run_dir(tmp_path, "x") for _ in range(150)]
    on_disk = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(set(made)) == 150 and sorted(made) == on_disk
    assert all(NAME.match(p.name) for p in made), [p.name for p in made if not NAME.match(p.name)]
    assert made[0].name == "x-20260101-120000" and made[1].name == "x-20260101-120000-1"


def test_names_taken_by_someone_else_still_leave_a_free_one(tmp_path, monkeypatch):
    """Past the numbered names (all taken: a crowded or hostile directory) a random suffix."""
    monkeypatch.setattr(paths.time, "strftime", lambda *args: "20260101-120000")
    monkeypatch.setattr(paths, "SAME_SECOND_NUMBERS", 5)
    for n in range(5):
        (tmp_path / ("x-20260101-120000" + (f"-{n}" if n else ""))).mkdir()
    made = {paths.new_run_dir(tmp_path, "x") for _ in range(20)}
    assert len(made) == 20 and all(re.fullmatch(r"x-20260101-120000-[0-9a-f]{8}", p.name) for p in made)


def test_the_run_name_cannot_leave_the_log_dir(tmp_path):
    run_dir = paths.new_run_dir(tmp_path / "logs", "../../escape\x1b]0;t\x07")
    assert run_dir.parent == tmp_path / "logs" and "\x1b" not in run_dir.name and "/" not in run_dir.name


# -- registry entries that are not entries ---------------------------------------------------------

def plant_bad_entries(runs: Path, tmp_path: Path) -> dict[str, Path]:
    pids = [dead_pid(), 900001, 900002, 900003, 900004, 900005]
    bad = {
        "directory": runs / f"{pids[0]}.json",
        "fifo": runs / f"{pids[1]}.json",
        "garbage": runs / f"{pids[2]}.json",
        "huge": runs / f"{pids[3]}.json",
        "deep": runs / f"{pids[4]}.json",
        "wrong types": runs / f"{pids[5]}.json",
    }
    bad["directory"].mkdir()
    os.mkfifo(bad["fifo"])
    bad["garbage"].write_bytes(b"\x00\xff{not json")
    entry = {"pid": os.getpid(), "run_dir": str(tmp_path), "name": "x" * (200 * 1024), "started": 1.0,
             "create_time": None}
    bad["huge"].write_text(json.dumps(entry))
    bad["deep"].write_text("[" * 50_000)
    bad["wrong types"].write_text(json.dumps({"pid": "1e400", "run_dir": ["a"], "started": "NaN"}))
    return bad


def in_thread(function, timeout: float = 20.0):
    """Call ``function`` in a thread: a hang (a FIFO opened for reading) fails the test."""
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(value=function()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "hung"
    return result["value"]


def test_ls_skips_and_cleans_entries_that_are_not_entries(tmp_path):
    runs = registry.runs_dir()
    bad = plant_bad_entries(runs, tmp_path)
    registry.register(os.getpid(), tmp_path, "the-real-one")
    outcome = in_thread(lambda: cli("ls", "--json"))
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome
    assert [row["pid"] for row in json.loads(outcome.stdout)] == [os.getpid()]
    assert {kind for kind, path in bad.items() if os.path.lexists(path)} == set()  # all ours: cleaned
    text = in_thread(lambda: cli("ls"))
    assert text.code == 0 and "the-real-one" in text.stdout and text.stderr == ""


def test_a_directory_entry_that_is_not_empty_is_skipped_and_kept(tmp_path):
    entry = registry.runs_dir() / "900009.json"
    entry.mkdir()
    (entry / "keep").write_text("mine")
    outcome = cli("ls")
    assert outcome.code == 0 and "no monitored runs" in outcome.stdout, outcome
    assert (entry / "keep").read_text() == "mine"


def test_attach_skips_entries_that_are_not_entries(tmp_path):
    bad = plant_bad_entries(registry.runs_dir(), tmp_path)
    in_thread(lambda: cli("attach", "--headless")).assert_one_line_error("no monitored runs")
    bad = plant_bad_entries(registry.runs_dir(), tmp_path)
    registry.register(os.getpid(), tmp_path, "the-real-one")
    chosen = in_thread(lambda: attach.choose_run(None))
    assert isinstance(chosen, registry.RunEntry) and chosen.pid == os.getpid()
    directory_pid = int(bad["directory"].stem)  # attach PID whose entry is a directory: a dead PID
    in_thread(lambda: cli("attach", str(directory_pid))).assert_one_line_error(str(directory_pid))


def test_register_over_a_bad_entry_of_its_own(tmp_path):
    entry = registry.runs_dir() / f"{os.getpid()}.json"
    entry.mkdir()
    registry.register(os.getpid(), tmp_path, "me")
    assert registry.find(os.getpid()).name == "me"
