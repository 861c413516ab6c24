"""Probe overhead on the device (steps/s with the probe off and on, interleaved pairs) and the size
of the events a CUDA run writes (``sample`` with the allocator and NVML fields, ``snapshot``)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from gpu_kit.common import Kit, read_jsonl
from gpu_kit.readings import Devices
from gpu_kit.shapes import BASE, Row


def overhead_stage(kit: Kit, devices: Devices, model_config: dict[str, Any], row: Row = BASE,
                   pairs: int = 4, steps: int = 10) -> dict[str, Any]:
    """Steps/s of a hand-written loop with no probe and with a started ``Probe`` (hooks, sampler),
    in interleaved pairs (off-on, on-off, ...) so drift hits both sides alike."""
    from peft import LoraConfig, get_peft_model

    from ftwatch import Probe
    from gpu_kit.grid import build_model

    torch = devices.torch
    devices.free()
    model = build_model(devices, model_config, row.dtype, row.attn)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **row.lora()))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    held = {"model": model, "optimizer": torch.optim.AdamW(trainable, lr=1e-4),
            "ids": torch.randint(0, int(model_config["vocab_size"]), (row.batch, row.seq), generator=gen).to(devices.device)}
    del model, trainable
    counter = {"step": 0}

    def segment(probe: Any) -> float:
        devices.sync()
        start = time.perf_counter()
        for _ in range(steps):
            counter["step"] += 1
            if probe is not None:
                probe.step_begin()
            loss = held["model"](input_ids=held["ids"], labels=held["ids"]).loss
            loss.backward()
            held["optimizer"].step()
            held["optimizer"].zero_grad(set_to_none=True)
            if probe is not None:
                probe.step_end(counter["step"])
        devices.sync()
        return steps / (time.perf_counter() - start)

    segment(None)  # warm-up: kernels, optimizer state, allocator cache
    off: list[float] = []
    on: list[float] = []
    for pair in range(pairs):
        for with_probe in ((False, True) if pair % 2 == 0 else (True, False)):
            if not with_probe:
                off.append(segment(None))
                continue
            probe = Probe(kit.work / "overhead" / f"pair{pair}", name="overhead", device=devices.device,
                          sample_hz=10.0)
            probe.start()
            probe.phase("training")
            probe.attach_model(held["model"], emit_model_event=False)
            probe.attach_optimizer(held["optimizer"])
            try:
                on.append(segment(probe))
            finally:
                probe.finish("finished", step=counter["step"])
    held.clear()
    devices.free()
    ratio = [b / a for a, b in zip(off, on, strict=False)]
    out = {"row": row.id, "pairs": pairs, "steps_per_segment": steps, "steps_per_s_off": [round(x, 3) for x in off],
           "steps_per_s_on": [round(x, 3) for x in on], "median_off": round(statistics.median(off), 3),
           "median_on": round(statistics.median(on), 3),
           "overhead_pct_median_pair": round(100.0 * (1.0 - statistics.median(ratio)), 2),
           "ms_per_step_added": round(1000.0 * (1 / statistics.median(on) - 1 / statistics.median(off)), 3),
           "device": devices.device}
    kit.results["overhead"] = out
    return out


def _sizes(values: list[int]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"count": len(values), "mean": round(statistics.mean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def event_sizes_stage(kit: Kit, logs: list[tuple[Path, str]]) -> dict[str, Any]:
    """Bytes per event (line plus newline) in every run log the kit wrote, by kind."""
    per_log = {}
    all_cuda: list[int] = []
    all_cpu: list[int] = []
    all_snap: list[int] = []
    for run_dir, name in logs:
        path = run_dir / "events.jsonl"
        if not path.exists():
            continue
        events = read_jsonl(path)
        cuda = [e["_bytes"] for e in events if e.get("kind") == "sample" and "cuda" in e]
        nvml = [e["_bytes"] for e in events if e.get("kind") == "sample" and "cuda" in e and "nvml" in e]
        cpu = [e["_bytes"] for e in events if e.get("kind") == "sample" and "cuda" not in e]
        snap = [e["_bytes"] for e in events if e.get("kind") == "snapshot" and e.get("step") is not None]
        per_log[name] = {"cuda_sample": _sizes(cuda), "cuda_nvml_sample": _sizes(nvml), "cpu_sample": _sizes(cpu),
                         "step_snapshot": _sizes(snap), "events": len(events)}
        all_cuda += cuda
        all_cpu += cpu
        all_snap += snap
    out = {"cuda_sample": _sizes(all_cuda) or {"absent": "no CUDA sample in any log (dry run: CPU only)"},
           "cpu_sample": _sizes(all_cpu), "step_snapshot": _sizes(all_snap), "per_log": per_log}
    kit.results["event_sizes"] = out
    return out


_STOP_FLAG = r"""
import json, os, socket, statistics, sys, time
import torch
import torch.distributed as dist
backend = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
t = time.perf_counter()
dist.init_process_group(backend, rank=0, world_size=1)
init_s = time.perf_counter() - t
device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
times = []
for i in range(220):
    t = time.perf_counter()
    flag = torch.tensor([0], dtype=torch.int32, device=device)  # as ftwatch.training.worker_stop.AgreedStop does, per step
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    flag.item()
    if i >= 20:
        times.append(time.perf_counter() - t)
dist.destroy_process_group()
print(json.dumps({"backend": backend, "world_size": 1, "init_s": round(init_s, 3), "reps": len(times),
                  "median_ms": round(1000 * statistics.median(times), 4), "max_ms": round(1000 * max(times), 4)}))
"""


def stop_flag_stage(kit: Kit, devices: Devices) -> dict[str, Any]:
    """The per-step cost of the ranks' stop agreement (one int32 all-reduce and its ``.item()``) on
    this device's backend (NCCL on the GPU, gloo in the dry run), in a one-rank group: a lower bound,
    since a real job adds the network; the two-GPU test covers the agreement itself."""
    from gpu_kit.common import last_json_object, tail

    backend = "nccl" if devices.cuda else "gloo"
    result = kit.run([kit.python, "-c", _STOP_FLAG, backend], timeout=kit.cap(40.0, keep_s=30.0))
    parsed = last_json_object(result["stdout"])
    out = {"rc": result["rc"], "timed_out": result["timed_out"], "seconds": result["seconds"],
           **(parsed if isinstance(parsed, dict) else {"stderr": tail(result["stderr"], 1500)})}
    kit.results["stop_flag"] = out
    if result["rc"] != 0:
        raise RuntimeError(f"the {backend} all-reduce check failed (rc {result['rc']}): {tail(result['stderr'], 300)}")
    return out
