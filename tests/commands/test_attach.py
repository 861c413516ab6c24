"""Attach: to a detached run by PID (history and live), after a killed viewer; to any process from
the outside; and the clear errors for PIDs that cannot be attached to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, wait_for
from ftwatch.runlog.event_reader import read_events

pytestmark = pytest.mark.slow



def _detach(config) -> int:
    result = run_cli("run", str(config), "--detach")
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("pid ")[1].split(",")[0])


def _log(tmp_path):
    logs = list((tmp_path / "runs").glob("*/events.jsonl"))
    return list(read_events(logs[0])) if logs else []


def test_detached_run_viewer_killed_and_reattached_sees_the_whole_history(tiny_config, tmp_path):
    config = tiny_config(training={"max_steps": 150})
    pid = _detach(config)
    ls = json.loads(run_cli("ls", "--json").stdout)
    assert [row["pid"] for row in ls] == [pid]
    wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 2 for e in _log(tmp_path)))
    os.kill(pid, signal.SIGSTOP)  # held mid-run while viewers come and go: it cannot end before they attach
    try:
        viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "attach", str(pid), "--headless"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert viewer.stdout is not None and viewer.stdout.readline()  # it is following the run
        viewer.kill()  # the viewer dies hard; training must not notice
        viewer.wait()
        os.kill(pid, 0)  # still there
        err_path = tmp_path / "second-attach.err"
        with open(err_path, "w") as err:
            second = subprocess.Popen([sys.executable, "-m", "ftwatch", "attach", str(pid), "--headless", "--json"],
                                      stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
        wait_for(lambda: "phase loading_model" in err_path.read_text())  # the history from the start
    finally:
        os.kill(pid, signal.SIGCONT)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, err_path.read_text()[-2000:]
    summary = json.loads(out)
    assert summary["status"] == "finished" and summary["steps"] == 150
    assert [p["name"] for p in summary["phases"]] == ["loading_model", "applying_lora", "preparing_trainer",
                                                      "training"]
    events = _log(tmp_path)
    steps = [e["step"] for e in events if e["kind"] == "snapshot" and e.get("step")]
    assert steps == list(range(1, 151))  # complete: every step, in order
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "finished"
    ended = run_cli("attach", str(pid))
    assert ended.returncode == 2 and "has ended; replay it with: ftwatch replay" in ended.stderr


ALLOCATOR = """
import time, torch
blocks = []
for i in range(20):
    blocks.append(torch.ones(4 * 1024 * 1024 // 4 * (i + 1)))  # growing tensors, no probe
    time.sleep(0.15)
"""


def test_attach_to_a_process_without_probe_shows_the_outside_view():
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATOR])
    try:
        result = run_cli("attach", str(proc.pid), "--headless", "--json", timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert any("not instrumented by ftwatch" in n for n in summary["notes"])
    assert summary["status"] == "finished" and summary["steps"] == 0
    assert "weights" not in summary["peak_bytes"]  # no breakdown is invented
    assert summary["peak_rss_bytes"] > 100 * 1024 * 1024  # it saw the tensors grow the RSS


def test_attach_errors_are_one_clear_line(tmp_path):
    result = run_cli("attach", "999999")
    assert result.returncode == 2 and result.stderr.strip().startswith("ftwatch attach: no process with PID 999999")
    none = run_cli("attach")
    assert none.returncode == 2 and "no monitored runs" in none.stderr
    assert "Traceback" not in result.stderr + none.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_attach_to_another_users_process_is_refused(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])  # root's process
    home = tmp_path / "nobody-home"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)  # the other user's own, private state directory
    try:
        env = dict(os.environ, FTWATCH_HOME=str(home), HOME=str(home))
        try:
            result = subprocess.run([sys.executable, "-m", "ftwatch", "attach", str(sleeper.pid)],
                                    capture_output=True, text=True, user=65534, env=env, cwd="/", timeout=60)
        except PermissionError:
            pytest.skip("the test user cannot run this Python installation")
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
    if "Permission denied" in result.stderr and "ftwatch attach" not in result.stderr:
        pytest.skip("the test user cannot run this Python installation")
    assert result.returncode == 2, result.stderr
    assert "belongs to" in result.stderr and "only to your own runs" in result.stderr
    assert "Traceback" not in result.stderr


def test_another_users_process_is_refused_by_its_owner(monkeypatch):
    """The same rule without a second user: a process whose real uid is not ours."""
    from types import SimpleNamespace

    from ftwatch.commands import attach
    from ftwatch.commands.usage import UsageError

    class Foreign:
        def __init__(self, pid):
            self.pid = pid

        def uids(self):
            return SimpleNamespace(real=4321)

        def username(self):
            return "alice"

        def status(self):
            return "sleeping"

    monkeypatch.setattr(attach.psutil, "Process", Foreign)
    monkeypatch.setattr(attach, "is_kernel_thread", lambda process: False)
    monkeypatch.setattr(attach.os, "getuid", lambda: 1000)
    with pytest.raises(UsageError, match="PID 777 belongs to user alice; ftwatch attaches only to your own runs"):
        attach.choose_run(777)


def test_ctrl_c_in_headless_attach_leaves_a_real_run_training(tiny_config, tmp_path):
    """The run of the issue was stopped at step 94 by a Ctrl-C in attach: now it only detaches."""
    config = tiny_config(training={"max_steps": 150, "logging_steps": 10})
    pid = _detach(config)
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "attach", str(pid), "--headless"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[str] = []

    def read() -> None:
        for line in viewer.stdout:
            lines.append(line)

    import threading

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("step " in line for line in lines), timeout=240)  # following, mid-training
        viewer.send_signal(signal.SIGINT)
        assert viewer.wait(timeout=60) == 0
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    reader.join(timeout=10)
    text = "".join(lines)
    assert "detached (Ctrl-C)" in text and f"ftwatch attach {pid}" in text, text
    os.kill(pid, 0)  # still running
    wait_for(lambda: any(e["kind"] == "exit" for e in _log(tmp_path)), timeout=300)
    end = _log(tmp_path)[-1]
    assert end["kind"] == "exit" and end["status"] == "finished" and end["step"] == 150  # trained to the end
