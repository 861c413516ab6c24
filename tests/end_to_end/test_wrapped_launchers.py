"""End to end: ``ftwatch run -- accelerate launch`` and ``-- torchrun`` of a Trainer script with two
CPU processes (gloo): every rank measured into ``rank<N>/``, exactly; ``k`` stops both ranks after
the same step and the script's code after ``train()`` runs in each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from test_wrapped_trainer import AFTER_TRAIN, SCRIPTS, check_exact_figures, finished, ftwatch_run

from conftest import wait_for
from ftwatch.runlog.event_reader import read_events

pytestmark = pytest.mark.slow

ACCELERATE = Path(sys.executable).with_name("accelerate")


def rank_events(tmp_path: Path) -> dict[int, list[dict]]:
    logs = sorted((tmp_path / "runs").glob("*/rank*/events.jsonl")) if (tmp_path / "runs").is_dir() else []
    return {int(log.parent.name.removeprefix("rank")): list(read_events(log)) for log in logs}


@pytest.mark.skipif(not ACCELERATE.exists() and shutil.which("accelerate") is None, reason="accelerate not installed")
def test_accelerate_launch_of_two_processes_measures_each_rank_exactly(tmp_path):
    code, out, err = finished(ftwatch_run(tmp_path, *_accelerate(), str(SCRIPTS / "trainer_script.py"),
                                          str(tmp_path / "out"), "3"))
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished"
    events = rank_events(tmp_path)
    assert sorted(events) == [0, 1]
    launch = json.loads(next((tmp_path / "runs").glob("*/launch.json")).read_text())
    assert launch["launcher"] == "accelerate" and launch["world_size"] == 2
    for rank, rank_summary in ((r["rank"], r) for r in summary["ranks"]):
        check_exact_figures(rank_summary, events[rank], 3)  # the model is replicated: every rank holds it all
        header = events[rank][0] if events[rank][0]["kind"] == "header" else events[rank][1]
        assert header["rank"] == rank and header["world_size"] == 2
    assert err.count(f"{AFTER_TRAIN} 3") == 2


def _accelerate() -> list[str]:
    accelerate = str(ACCELERATE) if ACCELERATE.exists() else shutil.which("accelerate")
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_k_stops_both_ranks_after_the_same_step(tmp_path, launcher):
    if launcher == "accelerate" and not ACCELERATE.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate not installed")
    launch_command = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
                      if launcher == "torchrun" else _accelerate())
    process = ftwatch_run(tmp_path, *launch_command, str(SCRIPTS / "trainer_script.py"), str(tmp_path / "out"),
                          "100000")
    try:
        wait_for(lambda: all(any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 2 for e in log)
                             for log in rank_events(tmp_path).values()) and len(rank_events(tmp_path)) == 2)
        launch = json.loads(next((tmp_path / "runs").glob("*/launch.json")).read_text())
        os.kill(launch["launcher_pid"], signal.SIGINT)  # what `k` sends: torchrun passes it on to the ranks
    except BaseException:
        process.kill()
        raise
    code, out, err = finished(process)
    assert code == 130, err[-3000:]
    exits = {rank: log[-1] for rank, log in rank_events(tmp_path).items()}
    assert all(e["kind"] == "exit" and e["status"] == "stopped" and e["by"] == "worker" for e in exits.values())
    assert exits[0]["step"] == exits[1]["step"]  # they agreed on the step boundary
    assert err.count(f"{AFTER_TRAIN} {exits[0]['step']}") == 2  # train() returned in each rank


def test_ranks_a_launcher_was_told_of_elsewhere_are_found_by_their_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("PET_NPROC_PER_NODE", "2")  # torchrun's count from the environment, not the command line
    code, out, err = finished(ftwatch_run(tmp_path, sys.executable, "-m", "torch.distributed.run",
                                          str(SCRIPTS / "trainer_script.py"), str(tmp_path / "out"), "2"))
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished"
    assert sorted(r["rank"] for r in summary["ranks"]) == [0, 1]
    events = rank_events(tmp_path)
    for rank in (0, 1):
        check_exact_figures(next(r for r in summary["ranks"] if r["rank"] == rank), events[rank], 2)
    launch = json.loads(next((tmp_path / "runs").glob("*/launch.json")).read_text())
    assert launch["world_size"] == 2 and launch["ranks"] == [0, 1]
