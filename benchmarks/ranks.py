"""What multi-process runs cost: the ranks' stop agreement, and a viewer following many ranks.

    .venv/bin/python benchmarks/ranks.py [--calls 2000] [--ranks 8] [--events 20000] [--rounds 3]

1. The agreed stop: every rank of an ``ftwatch run`` with ``[launch]`` all-reduces one int32 at each
   step boundary (so a stop asked of any rank ends every rank after the same step). Two processes
   on gloo (this machine has no GPU; NCCL is not measured) time ``--calls`` of those all-reduces;
   the figure is the time per call against a step of the bundled example measured in the same
   two processes (forward + backward + AdamW on the tiny model, batch 4 x 64 tokens), the smallest
   real step there is.
2. The viewer: ``--ranks`` synthetic rank logs of ``--events`` events each (samples at 10 Hz and a
   snapshot per step, like a real run's) folded by ``MultiLogFollower`` + ``RankedRun``, against
   the same events folded from one log by ``LogFollower`` + ``RunState``: the ratio is what
   following many ranks costs per event over following one (medians of ``--rounds``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ftwatch.runlog.events import encode  # noqa: E402

MiB = 1 << 20


# -- 1. the agreed stop -------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, port: int, calls: int, results: object) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    flag = torch.zeros(1, dtype=torch.int32)
    for _ in range(50):  # warm up the connection
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        flag = torch.tensor([0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        flag.item()
    per_call = (time.perf_counter() - t0) / calls
    step = _tiny_step_seconds()
    if rank == 0:
        results.put((per_call, step))  # type: ignore[attr-defined]
    dist.destroy_process_group()


def _tiny_step_seconds(steps: int = 30) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(REPO / "examples" / "tiny-llama", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (4, 64))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[5:])


def agreed_stop(calls: int) -> tuple[float, float]:
    """(seconds per all-reduce, seconds per tiny step) measured in two gloo processes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, calls, results)) for r in range(2)]
    for p in procs:
        p.start()
    per_call, step = results.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return per_call, step


# -- 2. the viewer ---------------------------------------------------------------------------------
def write_rank_log(path: Path, rank: int, events: int) -> None:
    """A CPU rank's log: header, phases, ten samples per step, a snapshot per step, exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = 1_760_000_000.0
    lines = [encode("header", {"name": "bench", "rank": rank, "world_size": 8, "local_rank": rank, "pid": 1,
                               "host": "h", "device": {"type": "cpu", "capacity": 64 << 30}}, t)]
    lines.append(encode("phase", {"name": "training"}, t))
    step = 0
    while len(lines) < events - 1:
        step += 1
        for _ in range(10):
            t += 0.1
            lines.append(encode("sample", {"phase": "training", "rss": 400 * MiB + rank, "sys_used": 12 << 30,
                                           "sys_total": 64 << 30, "cpu_percent": 98.0}, t))
        lines.append(encode("snapshot", {"phase": "training", "step": step, "loss": 6.0, "categories": {
            "weights": 664896, "lora": 16384, "grads": 16384, "optimizer": 32800, "activations": 2578440}}, t))
    lines.append(encode("exit", {"status": "finished", "step": step}, t))
    path.write_text("".join(lines))


def fold_ranks(run_dir: Path) -> float:
    from ftwatch.runlog.ranks import MultiLogFollower, RankedRun

    t0 = time.perf_counter()
    follower = MultiLogFollower(run_dir)
    run = RankedRun()
    run.apply_all(follower.poll())
    run.worst_rank()
    follower.close()
    return time.perf_counter() - t0


def fold_one(log: Path) -> float:
    from ftwatch.runlog.sources import LogFollower
    from ftwatch.runlog.state import RunState

    t0 = time.perf_counter()
    follower = LogFollower(log)
    state = RunState()
    state.apply_all(follower.poll())
    follower.close()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    per_call, step = agreed_stop(args.calls)
    print("| agreed stop (2 ranks, gloo, this CPU) | value |")
    print("|---|---|")
    print(f"| all-reduce of the stop flag, per step | {per_call * 1e6:.0f} us |")
    print(f"| tiny example step (forward+backward+AdamW, 4x64) | {step * 1e3:.1f} ms |")
    print(f"| ratio | {100 * per_call / step:.2f}% of a step |")
    print()

    with tempfile.TemporaryDirectory() as tmp:
        multi = Path(tmp) / "multi"
        for rank in range(args.ranks):
            write_rank_log(multi / f"rank{rank}" / "events.jsonl", rank, args.events)
        single = Path(tmp) / "single.jsonl"
        single.write_text("".join((multi / f"rank{r}" / "events.jsonl").read_text() for r in range(args.ranks)))
        total = args.ranks * args.events
        multi_times, single_times = [], []
        for _ in range(args.rounds):
            multi_times.append(fold_ranks(multi))
            single_times.append(fold_one(single))
        m, s = statistics.median(multi_times), statistics.median(single_times)
        print(f"| viewer: {args.ranks} ranks x {args.events:,} events | value |")
        print("|---|---|")
        print(f"| one log, one state: {total:,} events | {s:.2f} s ({total / s:,.0f} events/s) |")
        print(f"| {args.ranks} logs, a state per rank | {m:.2f} s ({total / m:,.0f} events/s) |")
        print(f"| ratio (ranks / one) | {m / s:.2f}x |")
        print(f"| a rank at 10 Hz writes 11 events/s: one viewer core keeps up with | "
              f"{total / m / 11:,.0f} ranks |")


if __name__ == "__main__":
    main()
