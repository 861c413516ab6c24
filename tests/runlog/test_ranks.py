"""Multi-process runs without training: the rank layout, the fold over every rank, the worst rank,
the [launch] config, and the replay/metrics views of recorded two-rank runs.

The fixtures are real: `tests/fixtures/logs/ddp-finished` is `ftwatch run examples/tiny-lora-ddp.toml`
on this CPU (two ranks, gloo); `ddp-rank-died` is the same with rank 1 SIGKILLed at step ~41 (the
monitor recorded it as vanished; rank 0 then failed on the broken connection).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES_ROOT, run_cli, write_config
from ftwatch.common.config import LaunchConfig, load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.events import EVENTS_FILE, TENSOR_CATEGORIES, encode
from ftwatch.runlog.ranks import (
    MultiLogFollower,
    RankedRun,
    find_rank_dirs,
    is_multi_rank_dir,
    multi_rank_root,
    record_vanished_rank,
)
from ftwatch.runlog.state import RunState
from ftwatch.views.exporters.prometheus_metrics import RunStateCollector

FIXTURES = FIXTURES_ROOT / "logs"
FINISHED = FIXTURES / "ddp-finished"
DIED = FIXTURES / "ddp-rank-died"
T0 = 1_760_000_000.0


def fold(run_dir: Path) -> RankedRun:
    follower = MultiLogFollower(run_dir)
    run = RankedRun()
    run.apply_all(follower.poll() + follower.finish())
    follower.close()
    return run


def raw_events(run_dir: Path, rank: int) -> list[dict]:
    """The rank's events parsed here with json alone (not through ftwatch's reader)."""
    lines = (run_dir / f"rank{rank}" / EVENTS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# -- layout -----------------------------------------------------------------------------------------

def test_a_multi_rank_directory_is_recognised_from_itself_and_from_a_rank(tmp_path: Path) -> None:
    assert is_multi_rank_dir(FINISHED)
    assert multi_rank_root(FINISHED / "rank1") == FINISHED
    assert multi_rank_root(FINISHED / "rank1" / EVENTS_FILE) == FINISHED
    assert not is_multi_rank_dir(FINISHED / "rank0")  # one rank's directory is an ordinary run
    assert not is_multi_rank_dir(FIXTURES / "cpu-finished")
    assert multi_rank_root(FIXTURES / "cpu-finished") is None
    assert list(find_rank_dirs(FINISHED)) == [0, 1]
    (tmp_path / "rank3").mkdir()  # a rank directory without a log yet is not listed
    assert find_rank_dirs(tmp_path) == {}


def test_ranks_that_start_late_are_picked_up(tmp_path: Path) -> None:
    follower = MultiLogFollower(tmp_path)
    assert follower.poll() == []
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / EVENTS_FILE).write_text(encode("header", {"name": "x", "rank": 0}, t=T0))
    assert [(r, e["kind"]) for r, e in follower.poll()] == [(0, "header")]
    (tmp_path / "rank1").mkdir()
    (tmp_path / "rank1" / EVENTS_FILE).write_text(encode("header", {"name": "x", "rank": 1}, t=T0)
                                                  + "not json\n")
    assert [(r, e["kind"]) for r, e in follower.poll()] == [(1, "header")]
    assert follower.stats.events == 2 and follower.stats.corrupt_lines == 1
    follower.close()


# -- the fold -----------------------------------------------------------------------------------------

def test_each_rank_is_folded_from_its_own_log() -> None:
    run = fold(FINISHED)
    assert sorted(run.ranks) == [0, 1] and run.world_size == 2 and run.ended and run.status == "finished"
    for rank in (0, 1):
        events = raw_events(FINISHED, rank)
        header = events[0]
        assert header["rank"] == rank and header["local_rank"] == rank and header["world_size"] == 2
        last_step = [e for e in events if e["kind"] == "snapshot" and e.get("step")][-1]
        state = run.ranks[rank]
        assert state.step == last_step["step"] == 60
        assert state.categories == last_step["categories"]
        assert state.header["pid"] == header["pid"]


def test_ddp_replicates_the_tensors_every_rank_holds() -> None:
    summary = fold(FINISHED).summary()
    peaks = [r["peak_bytes"] for r in summary["ranks"]]
    for category in ("weights", "lora", "grads", "optimizer"):
        assert peaks[0][category] == peaks[1][category] > 0, category


def test_the_rank_that_died_first_is_the_worst_and_on_top() -> None:
    run = fold(DIED)
    rank0, rank1 = run.ranks[0], run.ranks[1]
    assert rank1.exit["error_type"] == "WorkerVanished" and rank1.exit["by"] == "monitor"
    assert rank0.exit["error_type"] == "RuntimeError"  # the peer's connection went
    # rank 1 was last heard of before rank 0 failed: it is the cause, whatever the rank numbers
    assert rank1.exit["last_event_t"] < rank0.exit["t"]
    assert run.worst_rank() == 1
    summary = run.summary()
    assert summary["rank"] == 1 and summary["status"] == "failed"
    assert summary["steps"] == rank1.step and "rank 1" in summary["error"]
    assert [r["status"] for r in summary["ranks"]] == ["failed", "failed"]


def state_with(rank: int, capacity: int, occupied: int, warning: str | None = None,
               exit_status: str | None = None, t: float = T0) -> RunState:
    state = RunState()
    state.apply({"v": 1, "t": t, "kind": "header", "name": "job", "rank": rank, "world_size": 3,
                 "device": {"type": "cpu", "capacity": capacity}})
    state.apply({"v": 1, "t": t + 1, "kind": "snapshot", "step": 5,
                 "categories": {"weights": occupied, "lora": 0, "grads": 0, "optimizer": 0, "activations": 0}})
    if warning:
        state.apply({"v": 1, "t": t + 2, "kind": "warning", "code": "forecast", "level": warning, "message": "m"})
    if exit_status:
        state.apply({"v": 1, "t": t + 3, "kind": "exit", "status": exit_status})
    return state


@pytest.mark.parametrize(("states", "worst"), [
    # the fullest rank, when none warns or ended
    ([(100, 50), (100, 80), (100, 60)], 1),
    # a warning outranks a fuller bar
    ([(100, 50, "watch"), (100, 80), (100, 60)], 0),
    ([(100, 50, "watch"), (100, 80), (100, 60, "danger")], 2),
    # an out-of-memory ending outranks everything; a clean stop outranks running
    ([(100, 50, "danger"), (100, 10, None, "oom"), (100, 60, None, "failed")], 1),
    ([(100, 90), (100, 10, None, "stopped"), (100, 60)], 1),
    # equals: the lowest rank
    ([(100, 50), (100, 50), (100, 50)], 0),
])
def test_worst_rank_rules(states: list[tuple], worst: int) -> None:
    run = RankedRun()
    for rank, spec in enumerate(states):
        run.ranks[rank] = state_with(rank, *spec)
    assert run.worst_rank() == worst
    assert run.summary()["rank"] == worst


def test_a_rank_missing_from_the_launch_keeps_the_run_open() -> None:
    run = RankedRun({"world_size": 4, "ranks": [0, 1, 2, 3]})
    run.ranks[0] = state_with(0, 100, 10, exit_status="finished")
    assert run.missing_ranks == [1, 2, 3] and not run.ended and run.status == "running"
    summary = run.summary()
    assert summary["world_size"] == 4 and summary["missing_ranks"] == [1, 2, 3]


def test_warnings_in_the_summary_name_their_rank() -> None:
    run = RankedRun()
    run.ranks[0] = state_with(0, 100, 10)
    run.ranks[1] = state_with(1, 100, 10, warning="watch")
    summary = run.summary()
    assert summary["rank"] == 1
    assert [w["rank"] for w in summary["warnings"]] == [1]
    assert summary["ranks"][0]["warnings"] == [] and summary["ranks"][1]["warnings"][0]["rank"] == 1


def test_a_vanished_rank_is_recorded_in_its_own_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "job"
    shutil.copytree(FINISHED, run_dir)
    log = run_dir / "rank1" / EVENTS_FILE
    kept = [line for line in log.read_text().splitlines(keepends=True) if '"kind":"exit"' not in line]
    log.write_text("".join(kept))
    run = fold(run_dir)
    assert run.ranks[1].exit is None
    last_t = run.ranks[1].last_t
    record_vanished_rank(run_dir, 1, run.ranks[1], apply=False)
    events = list(read_events(log))
    assert events[-1]["kind"] == "exit" and events[-1]["by"] == "monitor"
    assert events[-1]["error_type"] == "WorkerVanished" and events[-1]["last_event_t"] == last_t
    assert events[-1]["step"] == 60
    assert list(read_events(run_dir / "rank0" / EVENTS_FILE))[-1]["status"] == "finished"  # untouched


# -- the [launch] section -------------------------------------------------------------------------------

def launch_config(tmp_path: Path, launch: dict) -> Path:
    data = tmp_path / "d.txt"
    data.write_text("hello\n")
    return write_config(tmp_path / "c.toml", {"model": {"name": "some/model"}, "data": {"path": str(data)},
                                              "launch": launch})


def test_launch_defaults_to_one_process_without_torchrun(tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("hello\n")
    cfg = load_config(write_config(tmp_path / "c.toml", {"model": {"name": "m/m"}, "data": {"path": str(data)}}))
    assert cfg.launch == LaunchConfig() and not cfg.launch.distributed


def test_one_node_launch_lets_torchrun_pick_its_port(tmp_path: Path) -> None:
    cfg = load_config(launch_config(tmp_path, {"nproc_per_node": 4}))
    assert cfg.launch.world_size == 4 and cfg.launch.distributed
    assert cfg.launch.torchrun_arguments() == ["--standalone", "--nproc-per-node=4"]


def test_several_nodes_pass_their_rendezvous_through(tmp_path: Path) -> None:
    cfg = load_config(launch_config(tmp_path, {"nproc_per_node": 8, "nnodes": 2, "node_rank": 1,
                                               "master_addr": "10.0.0.1", "master_port": 29511}))
    assert cfg.launch.world_size == 16
    assert cfg.launch.torchrun_arguments() == ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1",
                                               "--master-addr=10.0.0.1", "--master-port=29511"]


@pytest.mark.parametrize(("launch", "message"), [
    ({"nproc": 2}, "unknown key [launch].nproc (did you mean \"nproc_per_node\"?)"),
    ({"nproc_per_node": 0}, "[launch].nproc_per_node must be a positive integer, got 0"),
    ({"nnodes": 2, "node_rank": 2, "master_addr": "h", "master_port": 1}, "[launch].node_rank must be an integer from 0"),
    ({"nnodes": 2, "master_addr": "h"}, "[launch].master_port is needed when nnodes > 1"),
    ({"nnodes": 2, "master_port": 29500}, "[launch].master_addr is needed when nnodes > 1"),
    ({"master_port": 70000}, "[launch].master_port must be a port number (1-65535), got 70000"),
])
def test_launch_mistakes_name_the_key_and_file(tmp_path: Path, launch: dict, message: str) -> None:
    path = launch_config(tmp_path, launch)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value)


# -- viewers of a recorded two-rank run --------------------------------------------------------------

def test_replay_json_of_a_rank_directory_describes_every_rank() -> None:
    result = run_cli("replay", str(DIED), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rank"] == 1 and summary["world_size"] == 2
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    for entry in summary["ranks"]:
        events = raw_events(DIED, entry["rank"])
        assert entry["pid"] == events[0]["pid"]
        assert entry["steps"] == max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
        tensor_peaks = {c: max(e["categories"][c] for e in events if e["kind"] == "snapshot") for c in TENSOR_CATEGORIES}
        assert {c: entry["peak_bytes"][c] for c in TENSOR_CATEGORIES} == tensor_peaks
    assert summary["log"]["events"] == sum(len(raw_events(DIED, r)) for r in (0, 1))


def test_replay_text_report_has_a_line_per_rank_and_the_worst_in_full() -> None:
    result = run_cli("replay", str(DIED), "--headless", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2 ranks here (world size 2); worst: rank 1"
    assert lines[2].split()[:2] == ["0", "failed"] and lines[2].endswith("RuntimeError")
    assert lines[3].split()[:2] == ["1", "failed"] and lines[3].endswith("WorkerVanished")
    assert "rank 1:" in lines and any(line.startswith("error: the training process of rank 1") for line in lines)


def test_replay_of_one_rank_and_of_a_rank_that_is_not_there() -> None:
    one = run_cli("replay", str(DIED), "--rank", "0", "--json", timeout=120)
    assert one.returncode == 0 and json.loads(one.stdout)["error"].startswith("RuntimeError")
    missing = run_cli("replay", str(DIED), "--rank", "7", "--json", timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("has no log of rank 7 (it has ranks 0, 1)")


def test_replay_csv_has_a_rank_column_and_every_sample() -> None:
    result = run_cli("replay", str(FINISHED), "--csv", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("rank,t,elapsed,phase,step")
    samples = {r: sum(1 for e in raw_events(FINISHED, r) if e["kind"] == "sample") for r in (0, 1)}
    assert [row.split(",")[0] for row in rows[1:]] == ["0"] * samples[0] + ["1"] * samples[1]


def test_metrics_serve_one_series_per_rank() -> None:
    run = fold(FINISHED)
    collector = RunStateCollector()
    collector.publish_ranks(run.ranks.values())
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    steps = {}
    lora = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ftwatch_step":
                steps[sample.labels["rank"]] = sample.value
            if sample.name == "ftwatch_memory_bytes" and sample.labels["category"] == "lora":
                lora[sample.labels["rank"]] = sample.value
    last = {r: [e for e in raw_events(FINISHED, r) if e["kind"] == "snapshot"][-1] for r in (0, 1)}
    assert lora == {str(r): float(last[r]["categories"]["lora"]) for r in (0, 1)}
    assert steps == {str(r): float(last[r]["step"]) for r in (0, 1)}


def test_a_directory_of_runs_points_to_the_newest_multi_process_run(tmp_path: Path) -> None:
    import os

    from ftwatch.runlog.event_reader import resolve_log_path

    shutil.copytree(FIXTURES / "cpu-finished", tmp_path / "older")
    shutil.copytree(FINISHED, tmp_path / "newer")
    os.utime(tmp_path / "older" / EVENTS_FILE, (T0, T0))
    with pytest.raises(FileNotFoundError, match=f"the newest run in it is {tmp_path / 'newer'}$"):
        resolve_log_path(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is a multi-process run \(rank0, rank1\)"):
        resolve_log_path(tmp_path / "newer")
    result = run_cli("replay", str(tmp_path), "--json", timeout=120)
    assert result.returncode == 2 and f"the newest run in it is {tmp_path / 'newer'}" in result.stderr


def test_the_estimate_adds_ddps_gradient_buckets_as_measured(tiny_config) -> None:
    """DDP keeps one more copy of the gradients in its buckets; the estimate of a [launch] config
    adds exactly what DistributedDataParallel reports allocating for the same LoRA model."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from conftest import TINY_MODEL
    from ftwatch.analysis.estimate import estimate

    alone = estimate(load_config(tiny_config()))
    ddp = estimate(load_config(tiny_config(launch={"nproc_per_node": 4})))
    added = ddp.categories["other"] - alone.categories["other"]
    assert {k: v for k, v in ddp.categories.items() if k != "other"} == \
        {k: v for k, v in alone.categories.items() if k != "other"}
    assert any("each of the 4 DDP processes" in note for note in ddp.notes)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj"]))
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        ids = torch.randint(0, 100, (2, 16))
        wrapped(input_ids=ids, labels=ids).loss.backward()
        buckets = sum(int(size) for size in str(wrapped._get_ddp_logging_data()["bucket_sizes"]).split(", "))
    finally:
        dist.destroy_process_group()
    assert added == buckets > 0



def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_more_processes_than_gpus_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    from ftwatch.training.worker import check_gpu_for_rank

    config = tmp_path / "c.toml"
    check_gpu_for_rank(1, 2, config, 2)  # local rank 1 of 2 on two GPUs: fine
    with pytest.raises(ConfigError) as info:
        check_gpu_for_rank(2, 2, config, 4)
    assert str(info.value) == (f"{config}: [launch].nproc_per_node = 4, but this node has 2 GPUs visible to "
                               "torch (one process per GPU; set use_cpu = true in [training] to train on the CPU)")
