"""Synthetic run logs with the real event schema, for tests, benchmarks and screenshots.

Three scenarios: a LoRA fine-tune of an 8B model on an 80 GiB CUDA card (all ten categories), the
same card running out of memory while a 70B model loads, and the bundled tiny model on a CPU.
Every line is made by :func:`ftwatch.runlog.events.encode`, so the field names are the schema's own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

from ftwatch.runlog.events import encode

GiB = 1 << 30
MiB = 1 << 20

Scenario = Literal["cuda", "cuda-oom-loading", "cpu"]
Ending = Literal["finished", "oom", "failed", "stopped", "running"]

T0 = 1_760_000_000.0
H100_TOTAL = 81559 * MiB
CONTEXT = 530 * MiB
OTHER_PROCS = 1300 * MiB


class _Sim:
    """A tiny clock-driven simulation: events stamped in order, samples at ``hz`` in between."""

    def __init__(self, hz: float, t0: float) -> None:
        self.t = t0
        self.hz = hz
        self.out: list[tuple[str, dict[str, Any], float]] = []
        self.phase: str | None = None
        self.allocated = 0
        self.reserved = 0
        self.max_allocated = 0
        self.rss = 380 * MiB
        self.cuda = True

    def emit(self, kind: str, **fields: Any) -> None:
        self.out.append((kind, fields, self.t))

    def sample(self) -> None:
        fields: dict[str, Any] = {
            "phase": self.phase, "rss": self.rss, "sys_used": 9 * GiB + self.rss, "sys_total": 62 * GiB,
            "cpu_percent": 98.0,
        }
        if self.cuda:
            self.max_allocated = max(self.max_allocated, self.allocated)
            process = self.reserved + CONTEXT
            used = process + OTHER_PROCS
            fields["cuda"] = {"allocated": self.allocated, "reserved": self.reserved,
                              "max_allocated": self.max_allocated, "alloc_retries": 0, "ooms": 0}
            fields["nvml"] = {"total": H100_TOTAL, "used": used, "free": H100_TOTAL - used, "process": process,
                              "others": [[4242, OTHER_PROCS]], "util": 97}
        self.emit("sample", **fields)

    def run_for(self, seconds: float, update: Any = None) -> None:
        """Advance the clock by ``seconds``, sampling; ``update(fraction)`` moves the memory."""
        ticks = max(int(round(seconds * self.hz)), 1)
        for i in range(ticks):
            self.t += 1.0 / self.hz
            if update is not None:
                update((i + 1) / ticks)
            self.sample()


def _cuda_categories(sim: _Sim, tensors: dict[str, int], peak_allocated: int) -> dict[str, int]:
    tensor_total = sum(tensors.values())
    allocated = max(peak_allocated, tensor_total)
    reserved = max(sim.reserved, allocated + (1200 * MiB if tensors.get("activations") else 180 * MiB))
    process = reserved + CONTEXT
    used = process + OTHER_PROCS
    return {**tensors, "other": allocated - tensor_total, "cache": reserved - allocated,
            "non_torch": CONTEXT, "other_processes": OTHER_PROCS, "free": max(H100_TOTAL - used, 0)}


def synthetic_events(scenario: Scenario = "cuda", *, steps: int = 60, ending: Ending = "finished",
                     hz: float = 10.0, step_seconds: float = 0.5, t0: float = T0,
                     ) -> list[tuple[str, dict[str, Any], float]]:
    """The events of a synthetic run as ``(kind, fields, t)``, in time order."""
    sim = _Sim(hz, t0)
    cpu = scenario == "cpu"
    sim.cuda = not cpu
    if cpu:
        device = {"type": "cpu", "index": None, "name": "x86_64", "capacity": 62 * GiB, "capacity_source": "ram"}
        model, name = "tiny-llama", "tiny-lora"
    elif scenario == "cuda-oom-loading":
        device = {"type": "cuda", "index": 0, "name": "NVIDIA H100 80GB HBM3", "capacity": H100_TOTAL,
                  "capacity_source": "nvml"}
        model, name = "meta-llama/Llama-3.1-70B", "llama70b-lora"
    else:
        device = {"type": "cuda", "index": 0, "name": "NVIDIA H100 80GB HBM3", "capacity": H100_TOTAL,
                  "capacity_source": "nvml"}
        model, name = "meta-llama/Llama-3.1-8B", "llama8b-lora"
    sim.emit("header", run_id="synthetic01", name=name, config_path=f"/home/ana/{name}.toml", pid=4321,
             host="gpu-node-3", user="ana",
             versions={"ftwatch": "0.1.0", "python": "3.11.9", "torch": "2.5.1", "transformers": "4.46.0",
                       "peft": "0.13.2"},
             model=model, device=device, budget=None, sample_hz=hz, max_steps=steps, rank=0, world_size=1)
    if cpu:
        sim.emit("note", code="no_gpu", message="no CUDA device visible to torch: tensor accounting only, "
                                                  "within the process's RSS, against the RAM")
    sim.sample()

    # -- loading ---------------------------------------------------------------------------
    sim.phase = "loading_model"
    sim.emit("phase", name="loading_model")
    if scenario == "cuda-oom-loading":
        sim.emit("warning", code="load_will_not_fit", level="danger", step=None, category="weights",
                 message="the bf16 weights need about 131.4 GiB; the device has 79.6 GiB",
                 suggestions=[
                     {"change": "load the base model in 4-bit (QLoRA; the saving is of the full model)", "config": "[model] load_in_4bit = true",
                      "saves_bytes": int(98.5 * GiB)},
                     {"change": "load it in 8-bit (the saving is of the full model)", "config": "[model] load_in_8bit = true",
                      "saves_bytes": int(65.7 * GiB)}])
        limit = H100_TOTAL - CONTEXT - OTHER_PROCS - 300 * MiB

        def load_big(f: float) -> None:
            sim.allocated = int(min(f * 131.4 * GiB, limit - 64 * MiB))
            sim.reserved = min(sim.allocated + 200 * MiB, limit)
            sim.rss = int(2 * GiB + f * 1.2 * GiB)

        sim.run_for(9.0, lambda f: load_big(f * 0.6))
        last = _cuda_categories(sim, {"weights": sim.allocated}, sim.allocated)
        for key in ("lora", "grads", "optimizer", "activations"):
            last.pop(key, None)
        message = ("CUDA out of memory. Tried to allocate 448.00 MiB. GPU 0 has a total capacity of 79.65 GiB "
                   "of which 301.00 MiB is free. Including non-PyTorch memory, this process has 77.9 GiB "
                   "memory in use.")
        sim.emit("exit", status="oom", step=None, by="worker", error_type="OutOfMemoryError", message=message,
                 traceback=["  File \"transformers/modeling_utils.py\", line 4255, in from_pretrained",
                            "  File \"accelerate/utils/modeling.py\", line 329, in set_module_tensor_to_device",
                            "torch.OutOfMemoryError: " + message[:60]],
                 oom={"phase": "loading_model", "message": message, "requested_bytes": 448 * MiB,
                      "last_categories": last},
                 suggestions=[
                     {"change": "load the base model in 4-bit (QLoRA; the saving is of the full model)", "config": "[model] load_in_4bit = true",
                      "saves_bytes": int(98.5 * GiB)},
                     {"change": "use a card with more memory, or shard the model over two",
                      "config": "[model] device_map = \"auto\"", "saves_bytes": None}])
        return sim.out

    weights = 640 * 1024 if cpu else int(14.96 * GiB)
    lora = 32 * 1024 if cpu else 42 * MiB
    acts = 1_600 * 1024 if cpu else int(44.0 * GiB)

    def load(f: float) -> None:
        if cpu:
            sim.rss = int(380 * MiB + f * 230 * MiB)
        else:
            sim.allocated = int(f * weights)
            sim.reserved = sim.allocated + int(f * 180 * MiB)
            sim.rss = int(1.1 * GiB + f * 2.4 * GiB)

    sim.run_for(0.8 if cpu else 8.0, load)
    tensors: dict[str, int] = {"weights": weights, "lora": 0, "grads": 0, "optimizer": 0, "activations": 0}
    _snapshot(sim, tensors, None)

    sim.phase = "applying_lora"
    sim.emit("phase", name="applying_lora")

    def add_lora(f: float) -> None:
        if cpu:
            sim.rss += 1024
        else:
            sim.allocated = weights + int(f * lora)
            sim.reserved = max(sim.reserved, sim.allocated + 2 * MiB)

    sim.run_for(0.3 if cpu else 1.2, add_lora)
    tensors["lora"] = lora
    sim.emit("model", params_total=166_000 if cpu else 8_051_232_768, params_trainable=8_192 if cpu else 10_485_760,
             dtype={"float32": 166_000} if cpu else {"bfloat16": 8_030_261_248, "float32": 10_485_760},
             lora_targets=["q_proj", "v_proj"] if cpu else ["q_proj", "k_proj", "v_proj", "o_proj"])
    _snapshot(sim, tensors, None)

    sim.phase = "preparing_trainer"
    sim.emit("phase", name="preparing_trainer")

    def prepare(f: float) -> None:
        sim.rss += 2 * MiB

    sim.run_for(0.4 if cpu else 2.0, prepare)
    _snapshot(sim, tensors, None)

    sim.phase = "training"
    sim.emit("phase", name="training")
    end_step = steps if ending == "finished" else max(steps * 2 // 3, 1)
    for step in range(1, end_step + 1):
        growth = 1.0 + 0.04 * math.sin(step / 3.0) + 0.002 * step
        step_acts = int(acts * growth)

        def forward(f: float, step_acts: int = step_acts, step: int = step) -> None:
            if cpu:
                sim.rss = int(640 * MiB + f * 40 * MiB + step * 64 * 1024)
            else:
                sim.allocated = weights + lora + 3 * lora + int(math.sin(f * math.pi) * step_acts) + int(2.5 * GiB * f)
                sim.reserved = max(sim.reserved, sim.allocated + int(2.4 * GiB + step * 12 * MiB))

        sim.run_for(step_seconds, forward)
        tensors.update(grads=lora, optimizer=2 * lora, activations=step_acts)
        peak_alloc = weights + 4 * lora + step_acts + int(2.5 * GiB)
        loss = 2.45 * math.exp(-step / (steps * 0.6)) + 1.1 + 0.05 * math.sin(step)
        _snapshot(sim, tensors, step, peak_alloc, loss=round(loss, 4), lr=1e-3 * (1 - step / (steps + 1)),
                  tokens=4 * 64 if cpu else 4 * 2048, seq_len=64 if cpu else 2048)
        if not cpu and step == max(steps // 2, 1):
            sim.emit("warning", code="oom_risk", level="watch", category="activations", step=step,
                     message="peak near 85% of the card: a batch of longer sequences may not fit",
                     suggestions=[
                         {"change": "enable gradient checkpointing",
                          "config": "[training] gradient_checkpointing = true", "saves_bytes": int(12.4 * GiB)},
                         {"change": "halve the batch and double accumulation",
                          "config": "[training] per_device_train_batch_size = 2", "saves_bytes": int(8.6 * GiB)}])
    if ending == "running":
        return sim.out
    sim.run_for(0.2)
    fields: dict[str, Any] = {"status": ending, "step": end_step, "by": "worker", "suggestions": []}
    if ending in ("oom", "failed"):
        message = ("CUDA out of memory. Tried to allocate 2.00 GiB." if ending == "oom"
                   else "RuntimeError: expected scalar type BFloat16 but found Float")
        fields.update(error_type="OutOfMemoryError" if ending == "oom" else "RuntimeError", message=message,
                      traceback=["  File \"trainer.py\", line 2240, in _inner_training_loop", message])
        fields["oom"] = ({"phase": "training", "message": message, "requested_bytes": 2 * GiB,
                          "last_categories": dict(sim.out[-2][1].get("categories") or {})}
                         if ending == "oom" else None)
        if ending == "oom":
            fields["suggestions"] = [{"change": "enable gradient checkpointing",
                                      "config": "[training] gradient_checkpointing = true",
                                      "saves_bytes": int(12.4 * GiB)}]
    sim.emit("exit", **fields)
    return sim.out


def _snapshot(sim: _Sim, tensors: dict[str, int], step: int | None, peak_allocated: int | None = None,
              **fields: Any) -> None:
    cats = dict(tensors)
    extra: dict[str, Any] = {}
    if sim.cuda:
        peak = peak_allocated if peak_allocated is not None else sim.allocated
        cats = _cuda_categories(sim, cats, peak)
        extra = {"allocated_peak": max(peak, sum(tensors.values())), "reserved": max(sim.reserved, peak)}
    sim.emit("snapshot", phase=sim.phase, step=step, categories=cats, **extra, **fields)


def synthetic_lines(scenario: Scenario = "cuda", **kwargs: Any) -> list[str]:
    """The synthetic run as JSONL lines (each ends with a newline)."""
    return [encode(kind, fields, t) for kind, fields, t in synthetic_events(scenario, **kwargs)]


def iter_lines(scenario: Scenario = "cuda", **kwargs: Any) -> Iterator[tuple[float, str]]:
    """``(t, line)`` pairs, for writers that replay a synthetic run in real time."""
    for kind, fields, t in synthetic_events(scenario, **kwargs):
        yield t, encode(kind, fields, t)
