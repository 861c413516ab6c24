"""End to end on the CPU: two training processes through torchrun (DDP over gloo), each measured by
its own probe into its own log, followed by one viewer.

Every rank holds a full replica, so each rank's weights/LoRA/grads/optimizer must equal the figures
computed from the tiny model's config.json (as in test_run_end_to_end), rank by rank.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_run_end_to_end import expected_tiny_bytes

from conftest import EXAMPLES, REPO, run_cli, wait_for
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.events import EVENTS_FILE

pytestmark = pytest.mark.slow

LAUNCH = {"nproc_per_node": 2}


def rank_events(runs: Path, rank: int) -> list[dict]:
    """Rank ``rank``'s events of the one run under ``runs`` (empty until its log exists)."""
    logs = list(runs.glob(f"*/rank{rank}/{EVENTS_FILE}"))
    return list(read_events(logs[0])) if logs else []


def reached_step(runs: Path, rank: int, step: int) -> bool:
    return any(e["kind"] == "snapshot" and (e.get("step") or 0) >= step for e in rank_events(runs, rank))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> dict[tuple[str, str], float]:
    """``{(metric name, rank label): value}`` of the lora bytes and the step; empty if unreachable."""
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ftwatch_step" or (sample.name == "ftwatch_memory_bytes"
                                                 and sample.labels.get("category") == "lora"):
                out[(sample.name, sample.labels["rank"])] = sample.value
    return out


def test_two_ranks_each_measure_their_own_replica(tiny_config, tmp_path):
    config = tiny_config(launch=LAUNCH, training={"max_steps": 6})
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json",
                                "--metrics-port", str(port), "--metrics-linger", "5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    scraped: dict = {}
    try:
        wait_for(lambda: rank_events(tmp_path / "runs", 1) and rank_events(tmp_path / "runs", 1)[-1]["kind"] == "exit"
                 and rank_events(tmp_path / "runs", 0)[-1]["kind"] == "exit", timeout=240)
        def final_state_served() -> bool:  # the viewer folds a moment after the logs end: wait for it
            scraped.clear()
            scraped.update(scrape(f"http://127.0.0.1:{port}/metrics"))
            return scraped.get(("ftwatch_step", "0")) == scraped.get(("ftwatch_step", "1")) == 6

        wait_for(final_state_served, timeout=30)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    for entry in summary["ranks"]:
        assert entry["status"] == "finished" and entry["steps"] == 6
        assert entry["local_rank"] == entry["rank"] and entry["pid"] != os.getpid()
        for category in ("weights", "lora", "grads", "optimizer"):
            assert entry["peak_bytes"][category] == expected[category], (entry["rank"], category)
        assert entry["params_trainable"] == expected["params_trainable"]
        assert entry["peak_bytes"]["activations"] > 0
    assert summary["ranks"][0]["pid"] != summary["ranks"][1]["pid"]

    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {"config.toml", "launch.json", "rank0", "rank1", "worker.log"} <= {p.name for p in run_dir.iterdir()}
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["world_size"] == 2 and launch["ranks"] == [0, 1] and launch["launcher"] == "torchrun"
    for rank in (0, 1):
        header = next(e for e in rank_events(tmp_path / "runs", rank) if e["kind"] == "header")
        assert (header["rank"], header["local_rank"], header["world_size"]) == (rank, rank, 2)

    # each rank's loss is on the Trainer's scale: their mean is what the Trainer logs (every step here)
    import ast

    logged = [float(ast.literal_eval(line[line.index("{"):])["loss"])
              for line in (run_dir / "worker.log").read_text().splitlines() if line.startswith("{'loss'")]
    per_rank = [{e["step"]: e["loss"] for e in rank_events(tmp_path / "runs", r) if e["kind"] == "snapshot"
                 and e.get("step")} for r in (0, 1)]
    assert len(logged) == 6
    for step, trainer_loss in enumerate(logged, 1):
        assert (per_rank[0][step] + per_rank[1][step]) / 2 == pytest.approx(trainer_loss, abs=6e-4), step

    # the endpoint served one series per rank, with each rank's own figures
    assert scraped[("ftwatch_step", "0")] == scraped[("ftwatch_step", "1")] == 6
    assert scraped[("ftwatch_memory_bytes", "0")] == scraped[("ftwatch_memory_bytes", "1")] == expected["lora"]

    replay = run_cli("replay", str(run_dir), "--json")
    assert replay.returncode == 0, replay.stderr
    again = json.loads(replay.stdout)
    assert [(r["rank"], r["status"], r["peak_bytes"]) for r in again["ranks"]] == \
        [(r["rank"], r["status"], r["peak_bytes"]) for r in summary["ranks"]]


def test_a_stop_asked_of_one_rank_stops_every_rank_after_the_same_step(tiny_config, tmp_path):
    config = tiny_config(launch=LAUNCH, training={"max_steps": 100000})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: reached_step(tmp_path / "runs", 1, 3), timeout=240)
        os.kill(rank_events(tmp_path / "runs", 1)[0]["pid"], signal.SIGINT)  # rank 1 alone hears it
        out, err = viewer.communicate(timeout=240)  # a generous cap: the ranks end at their own pace under load
    finally:
        if viewer.poll() is None:
            viewer.kill()
    assert viewer.returncode == 130, err[-3000:]
    summary = json.loads(out)
    assert [r["status"] for r in summary["ranks"]] == ["stopped", "stopped"]
    ends = []
    for rank in (0, 1):
        events = rank_events(tmp_path / "runs", rank)
        last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
        assert events[-1]["kind"] == "exit" and events[-1]["by"] == "worker" and events[-1]["step"] == last_step
        ends.append(last_step)
    assert ends[0] == ends[1]
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = run_dir / "worker.log"  # torchrun's last words come after the ranks' exits
    wait_for(lambda: "ftwatch torchrun:" in log.read_text() or "Traceback" in log.read_text(), timeout=120)
    assert "Traceback" not in log.read_text() and "ChildFailedError" not in log.read_text(), log.read_text()[-3000:]


def test_a_stop_asked_by_ftwatch_ends_without_torchruns_traceback(tiny_config, tmp_path):
    """``k`` (and a headless Ctrl-C) signal the launcher through the worker handle: the ranks stop
    after the same step, and worker.log ends with one line, not torchrun's SignalException trace."""
    import psutil

    from ftwatch.runlog.ranks import read_launch
    from ftwatch.runlog.sources import WorkerHandle

    config = tiny_config(launch=LAUNCH, training={"max_steps": 100000})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: reached_step(tmp_path / "runs", 1, 3), timeout=240)
        (run_dir,) = (tmp_path / "runs").iterdir()
        launcher = int(read_launch(run_dir)["launcher_pid"])
        WorkerHandle(launcher, run_dir, group=True).request_stop()  # what the dashboard's k does
        out, err = viewer.communicate(timeout=240)
    finally:
        if viewer.poll() is None:
            viewer.kill()
    assert viewer.returncode == 130, err[-3000:]
    assert [r["status"] for r in json.loads(out)["ranks"]] == ["stopped", "stopped"]
    ends = {max(e["step"] for e in rank_events(tmp_path / "runs", rank) if e["kind"] == "snapshot" and e.get("step"))
            for rank in (0, 1)}
    assert len(ends) == 1  # the stop agreement: both after the same step

    def launcher_gone() -> bool:
        try:
            return psutil.Process(launcher).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(launcher_gone, timeout=120)  # it writes its last words after the ranks' exits
    log = (run_dir / "worker.log").read_text()
    assert "Traceback" not in log and "SignalException" not in log, log[-3000:]
    assert log.rstrip().endswith("ftwatch torchrun: SIGINT: the ranks were asked to stop and have ended"), log[-2000:]


def test_a_killed_rank_is_shown_dead_and_blamed(tiny_config, tmp_path):
    config = tiny_config(launch=LAUNCH, training={"max_steps": 100000})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: reached_step(tmp_path / "runs", 1, 3), timeout=240)
        os.kill(rank_events(tmp_path / "runs", 1)[0]["pid"], signal.SIGKILL)
        out, err = viewer.communicate(timeout=120)
    finally:
        if viewer.poll() is None:
            viewer.kill()
    assert viewer.returncode == 1, err[-3000:]
    summary = json.loads(out)
    said = f"summary: {out[-2000:]}\nstderr: {err[-2000:]}"  # what a failure here needs to be read
    assert summary["status"] == "failed" and summary["rank"] == 1, said
    dead = summary["ranks"][1]
    assert dead["status"] == "failed" and "rank 1 ended without an exit event" in dead["error"], said
    events = rank_events(tmp_path / "runs", 1)
    assert events[-1]["by"] == "monitor" and events[-1]["error_type"] == "WorkerVanished", events[-1]
    assert "rank 1: exit failed" in err, said  # the progress lines name the rank
    # rank 0 wrote its own ending (its peer was gone): its log is complete
    assert rank_events(tmp_path / "runs", 0)[-1]["by"] == "worker", rank_events(tmp_path / "runs", 0)[-1]


def test_a_users_torchrun_script_writes_one_run_directory_of_ranks(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(EXAMPLES / "own_script.py"), "--log-dir", str(tmp_path), "--max-steps", "4"],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["rank0", "rank1"]
    for rank in (0, 1):
        events = list(read_events(run_dir / f"rank{rank}" / EVENTS_FILE))
        assert events[0]["rank"] == rank and events[0]["world_size"] == 2
        assert events[-1]["kind"] == "exit" and events[-1]["status"] == "finished" and events[-1]["step"] == 4
    replay = run_cli("replay", str(run_dir), "--json")
    assert json.loads(replay.stdout)["world_size"] == 2


def test_attach_to_a_rank_follows_the_whole_run(tiny_config, tmp_path):
    config = tiny_config(launch=LAUNCH, training={"max_steps": 150})
    started = run_cli("run", str(config), "--detach")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: reached_step(tmp_path / "runs", 1, 2), timeout=240)
    rank1_pid = rank_events(tmp_path / "runs", 1)[0]["pid"]
    listing = run_cli("ls", "--json")
    rows = json.loads(listing.stdout)
    assert len(rows) == 1 and rows[0]["ranks"] == 2 and rank1_pid in rows[0]["pids"]
    (run_dir,) = (tmp_path / "runs").iterdir()
    # Hold both ranks while the two viewers start, so that a loaded machine cannot finish the run
    # before they look for it; they go on once each has said the ranks are quiet (SIGSTOPped).
    rank_pids = [rank_events(tmp_path / "runs", rank)[0]["pid"] for rank in (0, 1)]
    for pid in rank_pids:
        os.kill(pid, signal.SIGSTOP)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    viewers = [subprocess.Popen([sys.executable, "-m", "ftwatch", "attach", target, "--headless", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
               for target in (str(rank1_pid), str(run_dir))]
    said: list[list[str]] = [[], []]
    readers = [threading.Thread(target=lambda v=v, lines=lines: lines.extend(v.stderr), daemon=True)
               for v, lines in zip(viewers, said, strict=True)]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: all(any("process stopped" in line for line in lines) for lines in said)
                 or any(v.poll() is not None for v in viewers), timeout=240)
    finally:
        for pid in rank_pids:
            os.kill(pid, signal.SIGCONT)
    outcomes = []
    for viewer, reader, lines in zip(viewers, readers, said, strict=True):
        out = viewer.stdout.read()
        viewer.wait(timeout=600)
        reader.join(timeout=60)
        outcomes.append((viewer.returncode, out, "".join(lines)))
    for code, text, errors in outcomes:
        assert code == 0, errors[-2000:]
        summary = json.loads(text)
        assert [r["status"] for r in summary["ranks"]] == ["finished", "finished"]
        assert summary["steps"] == 150
    ended = run_cli("attach", str(run_dir))
    assert ended.returncode == 2
    assert ended.stderr.strip() == f"ftwatch attach: no live run in {run_dir} (ftwatch ls lists them); " \
                                   f"a finished one replays with: ftwatch replay {run_dir}"


@pytest.mark.gpu
def test_each_rank_trains_on_its_own_gpu(tiny_config):
    """Where a node has two GPUs or more: NCCL, one device per local rank, the CUDA split per rank."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    config = tiny_config(launch=LAUNCH, training={"use_cpu": False, "max_steps": 4})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    assert [r["device_index"] for r in summary["ranks"]] == [0, 1]
    for entry in summary["ranks"]:
        for category in ("weights", "lora", "grads", "optimizer"):
            assert entry["peak_bytes"][category] == expected[category]
        assert "other" in entry["peak_bytes"] and "cache" in entry["peak_bytes"]
