"""Bad attach targets: every one ends as one clear line on stderr naming what is wrong, exit 2, no
traceback (through ``tests/fuzzkit.py``, in this process: fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from ftwatch.commands.attach import is_kernel_thread
from ftwatch.runlog import registry
from fuzzkit import cli


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        return 1 << 22


#: (argument, words the one line must hold): targets that cannot be a PID or a run directory.
NOT_TARGETS: list[tuple[str, tuple[str, ...]]] = [
    ("-5", ("-5", "not a PID", "positive")),
    ("-1", ("-1", "not a PID", "positive")),
    ("0", ("0", "not a PID", "positive")),
    ("-0", ("-0", "not a PID")),
    ("+0", ("+0", "not a PID")),
    ("000", ("000", "not a PID")),
    ("99999999999", ("no process with PID 99999999999", "go up to")),
    ("9" * 400, ("no process with PID 999", "go up to")),
    ("9" * 5000, ("no process with PID 999", "go up to")),
    (str(2 ** 63), (f"no process with PID {2 ** 63}",)),
    ("12abc", ("12abc", "neither a PID", "nor a run directory")),
    ("1.5", ("1.5", "neither a PID")),
    ("0x1F", ("0x1F", "neither a PID")),
    ("1e3", ("1e3", "neither a PID")),
    ("5 6", ("'5 6'", "neither a PID")),
    ("１２", ("１２", "neither a PID")),
    ("", ("empty",)),
    ("   ", ("empty",)),
    ("\t", ("empty",)),
    ("1\x002", ("NUL",)),
    ("a" * 5000, ("neither a PID nor a usable run directory", "too long")),
    ("/nonexistent/ftwatch-run", ("no such run directory", "/nonexistent/ftwatch-run")),
    ("/dev/zero", ("/dev/zero", "not a run directory")),
    ("/etc/hostname", ("/etc/hostname", "not a run directory")),
    ("\x1b]0;pwned\x07/nope", ("no such run directory", "/nope")),
]


@pytest.mark.parametrize(("target", "needles"), NOT_TARGETS, ids=[repr(t[0])[:30] for t in NOT_TARGETS])
def test_a_bad_attach_target_is_one_clear_line(target: str, needles: tuple[str, ...]) -> None:
    outcome = cli("attach", target, "--headless")
    outcome.assert_one_line_error(*needles)
    assert "\x1b" not in outcome.stderr and "\x07" not in outcome.stderr  # nothing of it reaches the terminal
    assert not outcome.stdout


def test_a_pid_above_the_systems_largest_is_refused() -> None:
    limit = _pid_max()
    cli("attach", str(limit + 1)).assert_one_line_error(f"no process with PID {limit + 1}", str(limit))


def test_a_pid_nobody_holds_is_refused() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: the PID is free
    cli("attach", str(gone.pid), "--headless").assert_one_line_error(f"no process with PID {gone.pid}")


def test_a_zombie_is_not_reported_finished() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie
    try:
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, timeout=30)
        outcome = cli("attach", str(child.pid), "--headless")
        outcome.assert_one_line_error("has exited", "zombie", "not yet reaped")
        assert "finished" not in outcome.stderr
    finally:
        child.wait()


@pytest.mark.skipif(not (Path("/proc/2").exists() and is_kernel_thread(psutil.Process(2))),
                    reason="no kernel thread at PID 2 here (a container's own PID namespace)")
@pytest.mark.parametrize("pid", ["2", "+2", "002"])
def test_a_kernel_thread_is_refused(pid: str) -> None:
    cli("attach", pid, "--headless").assert_one_line_error("PID 2", "kernel thread", "not a user process")


def test_a_directory_without_a_run_log_is_refused(tmp_path: Path) -> None:
    cli("attach", str(tmp_path)).assert_one_line_error(str(tmp_path), "no run log")


def test_a_finished_runs_directory_points_at_replay(tmp_path: Path) -> None:
    run = tmp_path / "done"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"v": 1, "t": 1.0, "kind": "exit", "status": "finished"}) + "\n")
    cli("attach", str(run)).assert_one_line_error("no live run", f"ftwatch replay {run}")


def test_an_ended_registered_run_points_at_replay(tmp_path: Path) -> None:
    registry.register(os.getpid(), tmp_path, "mine")  # register a live pid, then end its entry
    registry.unregister(os.getpid())
    cli("attach", str(os.getpid())).assert_one_line_error(f"PID {os.getpid()}", "has ended", "ftwatch replay")
