"""Ends told truly, and a viewer that never harms the run it watches.

Ctrl-C in ``attach --headless`` only detaches (the watched process gets no signal); a worker
killed without an exit event gets one stamped at its last event (headless followers, the
dashboard's feed, a vanished rank); a quiet log is reported (stopped process, or running and
silent); a run directory deleted under the follower ends it with exit 1; a failed run makes
``attach`` exit 1. Targets are small sleeping Python processes, so every test is fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, wait_for
from ftwatch.runlog import registry
from ftwatch.runlog.endings import exit_code
from ftwatch.runlog.events import encode
from ftwatch.runlog.ranks import record_vanished_rank
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.follow import follow_run
from fuzzkit import cli

#: A target that records any SIGINT it gets in a file (and otherwise sleeps until killed).
TARGET = """
import signal, sys, time
flag = sys.argv[1]
def hit(signum, frame):
    open(flag, "a").write("SIGINT\\n")
signal.signal(signal.SIGINT, hit)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

T0 = 1_700_000_000.0


def start_target(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A sleeping Python process that notes every SIGINT it receives in ``flag``."""
    flag = tmp_path / "sigint-received"
    proc = subprocess.Popen([sys.executable, "-c", TARGET, str(flag)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, flag


def stop_target(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
    proc.kill()
    proc.wait()


def header(pid: int, t: float = T0, sample_hz: float = 10.0) -> str:
    return encode("header", {"name": "target", "pid": pid, "host": os.uname().nodename, "model": "tiny",
                             "device": {"type": "cpu", "name": "cpu", "capacity": 8 << 30,
                                        "capacity_source": "ram"},
                             "sample_hz": sample_hz, "max_steps": 10, "rank": 0, "world_size": 1}, t)


def sample(t: float, rss: int = 100 << 20) -> str:
    return encode("sample", {"rss": rss}, t)


def run_dir_with(tmp_path: Path, lines: list[str], name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "events.jsonl").write_text("".join(lines))
    return run


def log_events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def alive_and_untouched(proc: subprocess.Popen[str], flag: Path) -> bool:
    status = psutil.Process(proc.pid).status()
    return proc.poll() is None and status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED) \
        and not flag.exists()


class Lines:
    """Collects a subprocess's stdout lines from a thread (so a test can wait on one)."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def attach_subprocess(*args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "ftwatch", "attach", *args, "--headless"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    return proc, Lines(proc.stdout)


# -- Ctrl-C only detaches ------------------------------------------------------------------------

@pytest.mark.parametrize("registered", [True, False], ids=["monitored-run", "uninstrumented"])
def test_ctrl_c_in_headless_attach_detaches_and_never_signals_the_target(tmp_path: Path, registered: bool) -> None:
    target, flag = start_target(tmp_path)
    try:
        if registered:
            run = run_dir_with(tmp_path, [header(target.pid, time.time()), sample(time.time())])
            registry.register(target.pid, run, "target")
        viewer, out = attach_subprocess(str(target.pid))
        try:
            # the first progress line is printed from inside the follower (its Ctrl-C handler is set)
            wait_for(lambda: out.has("] run "), timeout=60)
            viewer.send_signal(signal.SIGINT)
            code = viewer.wait(timeout=60)
        finally:
            if viewer.poll() is None:
                viewer.kill()
                viewer.wait()
        text = out.text()
        assert code == 0, text
        assert f"detached (Ctrl-C); process {target.pid} was sent no signal" in text
        assert f"ftwatch attach {target.pid}" in text  # how to come back
        assert "Traceback" not in text
        assert alive_and_untouched(target, flag)
        if registered:
            assert all(e["kind"] != "exit" for e in log_events(run))  # the run goes on: no end recorded
    finally:
        stop_target(target)
    assert not flag.exists()


# -- a killed worker's end, stamped at its last event ------------------------------------------

def killed_worker(tmp_path: Path) -> tuple[WorkerHandle, Path, float]:
    """A worker process killed with SIGKILL whose log stops at T0 + 5 (no exit event)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    run = run_dir_with(tmp_path, [header(proc.pid, T0), *(sample(T0 + i * 0.5) for i in range(1, 11))])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return WorkerHandle(proc.pid, run, proc), run, T0 + 5.0


def test_a_sigkilled_worker_gets_its_exit_stamped_at_its_last_event_headless(tmp_path: Path) -> None:
    handle, run, last_t = killed_worker(tmp_path)
    out = io.StringIO()
    followed = follow_run(run, handle, out)
    events = log_events(run)
    end, before = events[-1], events[-2]
    assert end["kind"] == "exit" and end["by"] == "monitor" and end["status"] == "failed"
    assert end["t"] == end["last_event_t"] == before["t"] == last_t
    assert "killed by SIGKILL" in end["message"]
    assert followed.state.exit["t"] == last_t and exit_code(followed.state.status) == 1
    replay = cli("replay", str(run), "--json")
    assert replay.code == 0, replay.stderr
    assert json.loads(replay.stdout)["elapsed_seconds"] == pytest.approx(last_t - T0)  # 5 s, not until now


async def test_the_dashboard_records_a_killed_worker_while_polling(tmp_path: Path) -> None:
    from ftwatch.views.dashboard.app import FtwatchApp

    handle, run, last_t = killed_worker(tmp_path)
    app = FtwatchApp(run / "events.jsonl", handle)
    app.feed.exit_grace = 0.1
    async with app.run_test(size=(120, 36)) as pilot:
        deadline = time.monotonic() + 20
        while log_events(run)[-1]["kind"] != "exit":  # recorded while the dashboard runs, not at quit
            assert time.monotonic() < deadline, "no exit recorded"
            await pilot.pause(0.05)
        assert app.is_running
        end, before = log_events(run)[-2:][::-1]
        assert end["by"] == "monitor" and end["t"] == end["last_event_t"] == before["t"] == last_t
        assert "killed by SIGKILL" in end["message"]
        await pilot.press("q")
    assert app.return_value == "quit"
    assert sum(e["kind"] == "exit" for e in log_events(run)) == 1


def test_a_vanished_rank_is_stamped_at_its_last_event(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    (run / "rank1").mkdir(parents=True)
    lines = [header(4321, T0), sample(T0 + 1.0), sample(T0 + 2.25)]
    (run / "rank1" / "events.jsonl").write_text("".join(lines))
    state = RunState()
    state.apply_all([json.loads(line) for line in lines])
    record_vanished_rank(run, 1, state)
    end = log_events(run / "rank1")[-1]
    assert end["kind"] == "exit" and end["by"] == "monitor" and end["error_type"] == "WorkerVanished"
    assert end["t"] == end["last_event_t"] == T0 + 2.25
    assert state.exit["t"] == T0 + 2.25 and state.elapsed == pytest.approx(2.25)


# -- a quiet log is reported -------------------------------------------------------------------

def _in_background(work) -> threading.Thread:  # noqa: ANN001 - a zero-argument callable
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_sigstopped_target_is_reported_once_then_its_events_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import ftwatch.views.headless.follow

    looked: list[str | None] = []
    real = ftwatch.views.headless.follow.process_condition

    def counted(pid: int | None) -> str | None:
        looked.append(real(pid))
        return looked[-1]

    monkeypatch.setattr(ftwatch.views.headless.follow, "process_condition", counted)
    target, flag = start_target(tmp_path)
    run = run_dir_with(tmp_path, [header(target.pid, time.time()), sample(time.time())])
    out = io.StringIO()
    seen: dict[str, bool] = {}

    def drive() -> None:  # the follower must run in the main thread (it sets a SIGINT handler)
        try:
            wait_for(lambda: "] run " in out.getvalue(), timeout=30)
            os.kill(target.pid, signal.SIGSTOP)
            wait_for(lambda: "(process stopped)" in out.getvalue(), timeout=30)
            then = len(looked)
            wait_for(lambda: looked[then:].count("stopped") >= 3, timeout=30)  # still stopped, looked at again
            with (run / "events.jsonl").open("a") as log:
                log.write(sample(time.time()))
            wait_for(lambda: "events again after" in out.getvalue(), timeout=30)
            seen["ok"] = True
        finally:
            stop_target(target)

    thread = _in_background(drive)
    followed = follow_run(run, WorkerHandle(target.pid, run), out, stall_after=0.3)
    thread.join(timeout=30)
    text = out.getvalue()
    assert seen.get("ok"), text
    assert text.count("(process stopped)") == 1, text  # once, though it was seen stopped again and again
    assert f"(process stopped); kill -CONT {target.pid} resumes it" in text
    assert text.index("(process stopped)") < text.index("events again after")
    assert followed.state.exit is not None  # then the target was killed: its end is recorded


def test_a_silent_running_target_is_reported_as_still_running(tmp_path: Path) -> None:
    target, flag = start_target(tmp_path)
    run = run_dir_with(tmp_path, [header(target.pid, time.time())])
    out = io.StringIO()

    def drive() -> None:
        try:
            wait_for(lambda: "process still running" in out.getvalue(), timeout=30)
        finally:
            stop_target(target)

    thread = _in_background(drive)
    follow_run(run, WorkerHandle(target.pid, run), out, stall_after=0.3)
    thread.join(timeout=30)
    assert f"; process still running (pid {target.pid})" in out.getvalue()
    assert "(process stopped)" not in out.getvalue()
    assert not flag.exists()


# -- the run directory deleted mid-run -----------------------------------------------------------

def _has_open(path: Path) -> bool:
    """True once this process holds ``path`` open (the follower has started reading it)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_deleted_run_directory_is_reported_and_attach_exits_1(tmp_path: Path) -> None:
    target, flag = start_target(tmp_path)
    run = run_dir_with(tmp_path, [header(target.pid, time.time()), sample(time.time())])
    registry.register(target.pid, run, "target")
    log = (run / "events.jsonl").resolve()

    def drive() -> None:
        wait_for(lambda: _has_open(log), timeout=30)
        shutil.rmtree(run)

    thread = _in_background(drive)
    try:
        outcome = cli("attach", str(target.pid), "--headless")
        thread.join(timeout=30)
        assert outcome.code == 1, outcome.stdout + outcome.stderr
        assert f"the run directory {run} was deleted; the log is gone" in outcome.stdout
        assert f"process {target.pid} is still running" in outcome.stdout
        assert alive_and_untouched(target, flag)  # the viewer stopped following; the process is untouched
    finally:
        stop_target(target)


# -- the exit code tells how the run ended ---------------------------------------------------------

@pytest.mark.parametrize(("status", "code"), [("failed", 1), ("oom", 1), ("stopped", 130), ("finished", 0)])
def test_headless_attach_exits_with_the_runs_outcome(tmp_path: Path, status: str, code: int) -> None:
    target, flag = start_target(tmp_path)
    ending = encode("exit", {"status": status, "step": 3, "by": "worker", "message": "boom",
                             "error_type": "RuntimeError" if status == "failed" else None}, time.time())
    run = run_dir_with(tmp_path, [header(target.pid, time.time()), sample(time.time()), ending])
    registry.register(target.pid, run, "target")
    try:
        outcome = cli("attach", str(target.pid), "--headless")
    finally:
        stop_target(target)
    assert outcome.code == code, outcome.stdout + outcome.stderr
    assert outcome.stdout.startswith("[") and f"exit {status} at step 3" in outcome.stdout


# -- attach targets that are no running user process -----------------------------------------------

def test_attach_to_a_zombie_says_it_has_exited(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for: a zombie of ours
    try:
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, timeout=30)
        outcome = cli("attach", str(child.pid), "--headless")
        outcome.assert_one_line_error(f"PID {child.pid}", "has exited", "zombie", f"parent (PID {os.getpid()})")
        assert "finished" not in outcome.stderr and not outcome.stdout
    finally:
        child.wait()


# -- the multi-process follower: the same rules ------------------------------------------------------

def ranks_dir(tmp_path: Path, pid: int) -> Path:
    run = tmp_path / "ddp-run"
    (run / "rank0").mkdir(parents=True)
    (run / "launch.json").write_text(json.dumps({"launcher": "torchrun", "launcher_pid": pid, "world_size": 1,
                                                 "ranks": [0]}))
    (run / "rank0" / "events.jsonl").write_text(header(pid, time.time()) + sample(time.time()))
    return run


def test_ctrl_c_in_the_multi_process_follower_detaches_without_a_signal(tmp_path: Path) -> None:
    from ftwatch.views.headless.follow_multi import follow_ranks

    target, flag = start_target(tmp_path)
    run = ranks_dir(tmp_path, target.pid)
    out = io.StringIO()

    def drive() -> None:
        wait_for(lambda: "rank 0: " in out.getvalue(), timeout=30)  # printed from inside the follow loop
        os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C of the terminal, to this (the viewer's) process

    thread = _in_background(drive)
    try:
        followed = follow_ranks(run, WorkerHandle(target.pid, run, group=True), out, ctrl_c="detach")
        thread.join(timeout=30)
        assert followed.detached, out.getvalue()
        assert "detached (Ctrl-C)" in out.getvalue()
        assert alive_and_untouched(target, flag)
        assert all(e["kind"] != "exit" for e in log_events(run / "rank0"))
    finally:
        stop_target(target)


def test_the_multi_process_follower_reports_a_deleted_run_directory(tmp_path: Path) -> None:
    from ftwatch.views.headless.follow_multi import follow_ranks

    target, flag = start_target(tmp_path)
    run = ranks_dir(tmp_path, target.pid)
    out = io.StringIO()

    def drive() -> None:
        wait_for(lambda: "rank 0: " in out.getvalue(), timeout=30)
        shutil.rmtree(run)

    thread = _in_background(drive)
    try:
        followed = follow_ranks(run, WorkerHandle(target.pid, run), out)
        thread.join(timeout=30)
        assert f"the run directory {run} was deleted; the logs are gone" in out.getvalue()
        assert followed.state.ranks[0].exit["error_type"] == "RunDirectoryDeleted"
        assert exit_code(followed.state.status) == 1
        assert alive_and_untouched(target, flag)
    finally:
        stop_target(target)


@pytest.mark.parametrize(("code", "status"), [(0, "finished"), (130, "stopped"), (1, "failed")])
def test_a_worker_whose_own_exit_event_was_lost_is_told_by_its_exit_code(tmp_path: Path, code: int,
                                                                         status: str) -> None:
    """A full disk can cost the worker its own exit event: a worker that exited 0 (or 130) then
    finished (or stopped), it was not killed; the record says so and why the event is missing."""
    from ftwatch.runlog.endings import record_vanished_worker

    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({code})"])
    proc.wait()
    run = run_dir_with(tmp_path, [header(proc.pid), sample(T0 + 1), sample(T0 + 2)])
    state = RunState()
    for line in (run / "events.jsonl").read_text().splitlines():
        state.apply(json.loads(line))
    record_vanished_worker(run, WorkerHandle(proc.pid, run, proc), state)
    written = json.loads((run / "events.jsonl").read_text().splitlines()[-1])
    assert state.status == written["status"] == status
    assert written["by"] == "monitor" and written["t"] == written["last_event_t"] == T0 + 2
    if code in (0, 130):
        assert "could not be written" in written["message"]
    else:
        assert "without an exit event" in written["message"]
