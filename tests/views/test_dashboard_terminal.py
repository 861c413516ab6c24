"""The dashboard in a real terminal: ``ftwatch run`` inside tmux at 80x24, driven by keystrokes."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]


#: Numbers the tmux servers of this test process.
_SOCKETS = itertools.count()


class Tmux:
    """One detached tmux session on a private server socket."""

    def __init__(self, name: str, width: int = 80, height: int = 24) -> None:
        # a server of its own per session: a killed server of the same name may still be going away
        self.socket = f"ftwatch-test-{os.getpid()}-{name}-{next(_SOCKETS)}"
        self.name = name
        self.width, self.height = width, height

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check,
                              timeout=30)

    def start(self, command: str) -> None:
        # one tmux command list: the pane stays on exit even when the command ends at once
        self.run("new-session", "-d", "-x", str(self.width), "-y", str(self.height), "-s", self.name,
                 "-e", "TERM=xterm-256color", command, ";", "set-option", "-t", self.name, "remain-on-exit", "on")

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", self.name, check=False)
        return result.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def kill(self) -> None:
        self.run("kill-server", check=False)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, screen: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n{screen()}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0): look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_dir_of(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()] if runs.exists() else []
    return dirs[0] if len(dirs) == 1 else Path("/nonexistent")


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def start_run(tmux: Tmux, config: Path) -> None:
    command = f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m ftwatch run {shlex.quote(str(config))}"
    tmux.start(f"{command}; echo FTWATCH-EXIT=$?; sleep 600")


def test_run_dashboard_at_80x24_then_quit_and_stop(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(training={"max_steps": 2000, "logging_steps": 5})
    tmux = Tmux("stop")
    worker_pid = None
    try:
        start_run(tmux, config)
        screens: list[str] = []

        def seen(text: str) -> bool:
            screen = tmux.screen()
            screens.append(screen)
            return text in screen

        wait_until(lambda: seen("phase training"), 240, "the training phase", tmux.screen)
        first_states = [s.splitlines()[0] for s in screens if s.strip()]
        assert any("phase training" not in line for line in first_states), "never saw a phase before training"
        # the panels and the footer draw a moment after the status line on a loaded machine
        parts = ("Memory · RSS", "▲", "✔ loading", "▶ training", "q Quit", "Detach")
        wait_until(lambda: all(part in tmux.screen() for part in parts), 60, "the whole training screen",
                   tmux.screen)
        screen = tmux.screen()
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "LIVE" in lines[0] and config.stem in lines[0]
        assert "Memory · RSS" in screen and "▲" in screen  # the bar's title and its peak marker
        assert "✔ loading" in screen and "▶ training" in screen  # the phase strip
        assert "q Quit" in screen and "Detach" in screen
        run = run_dir_of(tmp_path / "runs")
        worker_pid = events(run)[0]["pid"]
        assert alive(worker_pid)

        tmux.keys("q")
        wait_until(lambda: "still running" in tmux.screen(), 60, "the quit question", tmux.screen)
        tmux.keys("k")
        wait_until(lambda: "FTWATCH-EXIT=" in tmux.screen(), 90, "ftwatch to exit", tmux.screen)
        screen = tmux.screen()
        assert "FTWATCH-EXIT=130" in screen  # stopped
        assert "stopped after" in screen
        wait_until(lambda: not alive(worker_pid), 60, "the worker to be gone", tmux.screen)
        exit_event = events(run)[-1]
        assert exit_event["kind"] == "exit" and exit_event["status"] == "stopped" and exit_event["by"] == "worker"
    finally:
        tmux.kill()
        if worker_pid is not None and alive(worker_pid):
            os.kill(worker_pid, 9)


def test_killing_the_terminal_leaves_the_training_to_finish(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(training={"max_steps": 120})
    tmux = Tmux("hangup")
    worker_pid = None
    try:
        start_run(tmux, config)
        wait_until(lambda: "phase training" in tmux.screen(), 240, "the training phase", tmux.screen)
        run = run_dir_of(tmp_path / "runs")
        worker_pid = events(run)[0]["pid"]
        tmux.kill()  # the terminal goes away mid-run (a dropped SSH link)
        assert alive(worker_pid)
        wait_until(lambda: not alive(worker_pid), 300, "the worker to finish", lambda: "")
        exit_event = events(run)[-1]
        assert exit_event["kind"] == "exit", exit_event
        assert exit_event["status"] == "finished" and exit_event["by"] == "worker"
        assert exit_event["step"] == 120
    finally:
        tmux.kill()
        if worker_pid is not None and alive(worker_pid):
            os.kill(worker_pid, 9)


def test_two_rank_run_at_80x24_shows_every_rank_then_stops_them_all(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(launch={"nproc_per_node": 2}, training={"max_steps": 3000, "logging_steps": 50})
    tmux = Tmux("ranks")
    pids: list[int] = []
    try:
        start_run(tmux, config)
        wait_until(lambda: "phase training" in tmux.screen() and "r1 cpu" in tmux.screen(), 240,
                   "both ranks training", tmux.screen)
        screen = tmux.screen()
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "Ranks 2/2" in screen and "r0 cpu" in screen and "r1 cpu" in screen
        run = run_dir_of(tmp_path / "runs")
        pids = [events(run / f"rank{r}")[0]["pid"] for r in (0, 1)]
        launcher = json.loads((run / "launch.json").read_text())["launcher_pid"]
        assert all(alive(pid) for pid in [*pids, launcher])

        tmux.keys("]")  # the focus moves off the worst rank, and the memory title follows
        wait_until(lambda: "Memory · rank" in tmux.screen(), 60, "a rank in the memory title", tmux.screen)

        tmux.keys("q")
        wait_until(lambda: "still running" in tmux.screen(), 60, "the quit question", tmux.screen)
        tmux.keys("k")
        wait_until(lambda: "FTWATCH-EXIT=" in tmux.screen(), 120, "ftwatch to exit", tmux.screen)
        assert "FTWATCH-EXIT=130" in tmux.screen()
        wait_until(lambda: not any(alive(p) for p in [*pids, launcher]), 60, "every process to be gone", tmux.screen)
        ends = [events(run / f"rank{r}")[-1] for r in (0, 1)]
        assert [e["status"] for e in ends] == ["stopped", "stopped"] and ends[0]["step"] == ends[1]["step"]
        assert all(e["by"] == "worker" for e in ends)
    finally:
        tmux.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


def test_a_wrapped_command_in_the_dashboard_at_80x24_stops_at_a_step_and_its_code_after_train_runs(
        tmp_path: Path) -> None:
    """``ftwatch run -- python script.py`` through the dashboard, as a user types it: the phases come
    from the script's own calls, and ``k`` then ``y`` stops the Trainer at a step boundary."""
    script = REPO / "tests" / "fixtures" / "scripts" / "trainer_script.py"
    runs = tmp_path / "runs"
    q = shlex.quote
    command = (f"cd {q(str(tmp_path))} && FTWATCH_LOG_DIR={q(str(runs))} {q(sys.executable)} -m ftwatch run -- "
               f"{q(sys.executable)} {q(str(script))} {q(str(tmp_path / 'out'))} 5000")
    tmux = Tmux("wrapped")
    pid = None
    try:
        tmux.start(f"{command}; echo FTWATCH-EXIT=$?; sleep 600")
        parts = ("phase training", "trainer_script", "✔ loading", "✔ LoRA", "✔ setup", "▶ training", "/5000",
                 "q Quit", "k Stop")
        wait_until(lambda: all(part in tmux.screen() for part in parts), 240, "the training screen", tmux.screen)
        lines = tmux.screen().rstrip("\n").splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        run = run_dir_of(runs)
        header = next(e for e in events(run) if e["kind"] == "header")
        pid = header["pid"]
        assert header["origin"] == "command" and alive(pid)
        tmux.keys("k")
        wait_until(lambda: "Stop the training" in tmux.screen(), 60, "the stop question", tmux.screen)
        tmux.keys("y")
        wait_until(lambda: "STOPPED" in tmux.screen() and "run stopped after" in tmux.screen(), 120,
                   "the stopped run", tmux.screen)  # the final state stays on screen until q
        tmux.keys("q")
        wait_until(lambda: "FTWATCH-EXIT=" in tmux.screen(), 60, "ftwatch to exit", tmux.screen)
        assert "FTWATCH-EXIT=130" in tmux.screen()
        wait_until(lambda: not alive(pid), 60, "the command to end", tmux.screen)
        log = events(run)
        exit_event = log[-1]
        assert exit_event["kind"] == "exit" and exit_event["status"] == "stopped"
        steps = [e["step"] for e in log if e["kind"] == "snapshot" and e.get("step")]
        assert exit_event["step"] == steps[-1] < 5000  # at a step boundary, long before the end
        assert f"AFTER-TRAIN-MARKER {steps[-1]}" in (run / "worker.log").read_text()  # the code after train()
    finally:
        tmux.kill()
        if pid is not None and alive(pid):
            os.kill(pid, 9)
