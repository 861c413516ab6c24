"""Attach and replay in a real terminal (tmux, 80x24): attach after the terminal of ``ftwatch run`` is
gone (the stand-in for a dropped SSH link), attach to a process that has no probe (the outside
view), and a replay driven by its keys."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_dashboard_terminal import REPO, Tmux, alive, events, run_dir_of, wait_until

from conftest import FIXTURES_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]


def ftwatch_command(home: Path, *args: str) -> str:
    """A shell command running ftwatch with this test's private state directory, then holding the pane."""
    argv = " ".join(shlex.quote(a) for a in args)
    return (f"cd {shlex.quote(str(REPO))} && FTWATCH_HOME={shlex.quote(str(home))} "
            f"{shlex.quote(sys.executable)} -m ftwatch {argv}; echo FTWATCH-EXIT=$?; sleep 600")


def test_a_run_survives_its_terminal_and_is_attached_to_until_it_finishes(tiny_config, tmp_path: Path,
                                                                         private_state_dir: Path) -> None:
    config = tiny_config(training={"max_steps": 200, "logging_steps": 10})
    first, second = Tmux("ssh-1"), Tmux("ssh-2")
    worker_pid = None
    try:
        first.start(ftwatch_command(private_state_dir, "run", str(config)))
        wait_until(lambda: "phase training" in first.screen(), 240, "the training phase", first.screen)
        run = run_dir_of(tmp_path / "runs")
        worker_pid = events(run)[0]["pid"]
        first.kill()  # the SSH link drops: the terminal and the viewer in it are gone
        assert alive(worker_pid)
        step_then = max((e.get("step") or 0) for e in events(run) if e["kind"] == "snapshot")

        second.start(ftwatch_command(private_state_dir, "attach", str(worker_pid)))
        wait_until(lambda: "phase training" in second.screen() and "Detach" in second.screen(), 60,
                   "the attached dashboard", second.screen)
        screen = second.screen()
        rows = screen.rstrip("\n").splitlines()
        assert "LIVE" in rows[0] and config.stem in rows[0]
        assert "/200" in rows[1] and "━" in rows[1]  # steps and their bar
        assert "Memory · RSS" in screen and "▲" in screen
        assert "✔ loading" in screen and "▶ training" in screen  # the history from the start, not a tail
        assert "Detach" in rows[-1]
        wait_until(lambda: "FINISHED" in second.screen(), 300, "the run to finish", second.screen)
        assert "run finished after 200 steps" in second.screen()
        second.keys("q")
        wait_until(lambda: "FTWATCH-EXIT=0" in second.screen(), 60, "attach to exit", second.screen)
        wait_until(lambda: not alive(worker_pid), 60, "the worker to end", second.screen)
        log = events(run)
        assert log[-1]["kind"] == "exit" and log[-1]["status"] == "finished" and log[-1]["by"] == "worker"
        steps = [e["step"] for e in log if e["kind"] == "snapshot" and e.get("step") is not None]
        assert steps == list(range(1, 201)) and step_then < 200  # nothing lost while nobody watched
    finally:
        first.kill()
        second.kill()
        if worker_pid is not None and alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


ALLOCATOR = """
import sys, time, torch
blocks = [torch.ones(8 * 1024 * 1024 // 4) for _ in range(8)]  # 64 MiB of tensors, no probe
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_attach_to_a_process_without_probe_shows_the_outside_view_and_q_leaves_it_running(
        private_state_dir: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", ALLOCATOR, "300"], stdout=subprocess.PIPE, text=True)
    tmux = Tmux("outside")
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        tmux.start(ftwatch_command(private_state_dir, "attach", str(process.pid)))
        wait_until(lambda: "No category breakdown" in tmux.screen(), 60, "the outside view", tmux.screen)
        wait_until(lambda: "process (no breakdown)" in tmux.screen() and "q Quit" in tmux.screen(), 60,
                   "the first sample", tmux.screen)
        screen = tmux.screen()
        rows = screen.rstrip("\n").splitlines()
        assert len(rows) <= 24 and all(len(row) <= 80 for row in rows)
        assert "LIVE" in rows[0] and f"pid {process.pid}" in rows[0]
        assert "outside view" in rows[1]
        assert "no breakdown" in rows[2]
        assert f"PID {process.pid} is watched from outside" in screen
        assert "callbacks=[FtwatchCallback()]" in screen and "from ftwatch import FtwatchCallback" in screen
        assert "q Quit" in rows[-1] and "Detach" not in rows[-1] and "Stop" not in rows[-1]  # not ours to stop
        wait_until(lambda: "elapsed 3" in tmux.screen(), 60, "a few seconds of watching", tmux.screen)
        assert "FAILED" not in tmux.screen() and "LIVE" in tmux.screen()
        tmux.keys("q")
        wait_until(lambda: "FTWATCH-EXIT=0" in tmux.screen(), 60, "attach to exit", tmux.screen)
        assert process.poll() is None  # the watched process never noticed
        logs = list((private_state_dir / "external").glob("*/events.jsonl"))
        assert len(logs) == 1 and '"external":true' in logs[0].read_text().splitlines()[0]
    finally:
        tmux.kill()
        process.kill()
        process.wait()


FIXTURES = FIXTURES_ROOT / "logs"


def test_replay_in_a_terminal_steps_and_jumps(tmp_path: Path, private_state_dir: Path) -> None:
    run = tmp_path / "cuda-finished"
    shutil.copytree(FIXTURES / "cuda-finished", run)
    tmux = Tmux("replay")
    try:
        tmux.start(ftwatch_command(private_state_dir, "replay", str(run)))
        wait_until(lambda: "FINISHED" in tmux.screen() and "Back" in tmux.screen(), 60, "the end", tmux.screen)
        for key, expected in (("Left", "step 59/60"), ("Left", "step 58/60"), ("Home", "step 0/60"),
                              ("Right", "step 1/60"), ("Right", "step 2/60")):
            tmux.keys(key)
            wait_until(lambda expected=expected: expected in tmux.screen() and "PAUSED" in tmux.screen(), 60,
                       expected, tmux.screen)
            assert "PAUSED" in tmux.screen().splitlines()[0]
        tmux.keys("End")
        wait_until(lambda: "FINISHED" in tmux.screen(), 60, "the end again", tmux.screen)
        tmux.keys("q")
        wait_until(lambda: "FTWATCH-EXIT=0" in tmux.screen(), 60, "replay to exit", tmux.screen)
    finally:
        tmux.kill()


@pytest.mark.parametrize(("content", "message"), [('{"v":2,"t":1,"kind":"header"}\n', "schema v2"), ("", "empty")])
def test_replay_refuses_a_bad_log_before_the_dashboard_opens(tmp_path: Path, private_state_dir: Path,
                                                             content: str, message: str) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(content)
    tmux = Tmux("bad-replay")
    try:
        tmux.start(ftwatch_command(private_state_dir, "replay", str(log)))
        wait_until(lambda: "FTWATCH-EXIT=" in tmux.screen(), 60, "replay to exit", tmux.screen)
        screen = tmux.screen()
        assert "FTWATCH-EXIT=2" in screen and message in screen and "Traceback" not in screen
    finally:
        tmux.kill()


#: A monitored process stand-in: registers itself with a one-line log, notes any SIGINT it gets.
REGISTERED_TARGET = """
import os, signal, sys, time
from pathlib import Path
from ftwatch.runlog import registry
from ftwatch.runlog.events import encode
run, flag, ready = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGINT, lambda *a: open(flag, "a").write("SIGINT\\n"))
run.mkdir()
(run / "events.jsonl").write_text(encode("header", {"name": "target", "pid": os.getpid(), "model": "tiny",
    "device": {"type": "cpu", "capacity": 8 << 30, "capacity_source": "ram"}, "sample_hz": 10.0,
    "max_steps": 10, "rank": 0, "world_size": 1}))
registry.register(os.getpid(), run, "target")
open(ready, "w").write(str(os.getpid()))
while True:
    time.sleep(1)
"""


def test_ctrl_c_in_the_attach_dashboard_only_asks_and_the_target_gets_no_signal(
        tmp_path: Path, private_state_dir: Path) -> None:
    """The target runs in the terminal's foreground process group (a background job of a shell
    without job control), so a Ctrl-C the terminal turned into SIGINT would reach it: the
    dashboard reads Ctrl-C as a key (the quit question; twice: detach) and nothing is signalled."""
    script, flag, ready = tmp_path / "target.py", tmp_path / "sigint-received", tmp_path / "ready"
    script.write_text(REGISTERED_TARGET)
    q = shlex.quote
    attach = (f"{q(sys.executable)} {q(str(script))} {q(str(tmp_path / 'run'))} {q(str(flag))} {q(str(ready))} & "
              f"while [ ! -s {q(str(ready))} ]; do sleep 0.1; done; "
              f"{q(sys.executable)} -m ftwatch attach $!; echo FTWATCH-EXIT=$?; sleep 600")
    tmux = Tmux("ctrl-c")
    pid = None
    try:
        tmux.start(f"cd {q(str(REPO))}; export FTWATCH_HOME={q(str(private_state_dir))}; {attach}")
        wait_until(lambda: "Detach" in tmux.screen(), 60, "the attached dashboard", tmux.screen)
        pid = int(ready.read_text())
        tmux.keys("C-c")
        wait_until(lambda: "still running" in tmux.screen(), 60, "the quit question", tmux.screen)
        assert alive(pid) and not flag.exists()
        tmux.keys("C-c")  # twice: leave, harmlessly
        wait_until(lambda: "FTWATCH-EXIT=0" in tmux.screen(), 60, "attach to exit", tmux.screen)
        assert f"follow it with: ftwatch attach {pid}" in tmux.screen()
        assert alive(pid) and not flag.exists()
    finally:
        tmux.kill()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
