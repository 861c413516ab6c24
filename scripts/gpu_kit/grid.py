"""One grid row: a random-weight model of a real shape, trained a few steps by the real ``Trainer``
under ftwatch's probe, with the kit's own readings each step and ftwatch's estimate of the same config.

The row follows what ``ftwatch run``'s worker does (phases, ``enable_input_require_grads`` before
checkpointing, ``FtwatchCallback`` sharing the probe), but builds the model with ``from_config`` on
the device instead of loading weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import traceback
from pathlib import Path
from typing import Any

from gpu_kit.common import Kit, read_jsonl, write_toml
from gpu_kit.readings import Devices
from gpu_kit.shapes import Row

TENSOR_CATEGORIES = ("weights", "lora", "grads", "optimizer", "activations")


class RandomBlocks:
    """A map-style data set of random token blocks, shaped like the worker's packed blocks."""

    def __init__(self, count: int, seq: int, vocab: int, seed: int = 0) -> None:
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (count, seq), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def write_model_dir(kit: Kit, name: str, config: dict[str, Any]) -> Path:
    """``work/models/NAME/config.json``: what ``[model] name`` points the estimate at."""
    directory = kit.work / "models" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def build_model(devices: Devices, config: dict[str, Any], dtype: str, attn: str) -> Any:
    """A random-weight model of ``config``'s shape, built directly on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch = devices.torch
    fields = dict(config)
    fields.pop("architectures", None)
    fields.pop("torch_dtype", None)
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    with torch.device(devices.device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype, attn_implementation=attn)
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch_dtype, attn_implementation=attn)
    target = torch.device(devices.device)
    if next(model.parameters()).device.type != target.type:  # the device context was not honoured
        model = model.to(target)
    return model


def param_bytes(model: Any) -> dict[str, int]:
    """Frozen (parameters + buffers) and trainable bytes, counted here as numel x element size,
    each distinct data pointer once (a tied embedding counts once)."""
    seen: set[tuple[str, int]] = set()
    trainable = frozen = 0
    tensors = [(p, p.requires_grad) for p in model.parameters()] + [(b, False) for b in model.buffers()]
    for tensor, grad in sorted(tensors, key=lambda item: not item[1]):  # trainable first, as ftwatch
        key = (str(tensor.device), tensor.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        size = tensor.numel() * tensor.element_size()
        if grad:
            trainable += size
        else:
            frozen += size
    return {"frozen": frozen, "trainable": trainable}


def row_config(kit: Kit, row: Row, model_dir: Path, steps: int, log_dir: Path, data_file: Path) -> Path:
    """The ``ftwatch`` TOML config of a row (what its estimate reads)."""
    path = kit.work / "configs" / f"{row.id}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_toml(path, {
        "model": {"name": str(model_dir), "dtype": row.dtype, "attn_implementation": row.attn},
        "lora": row.lora(),
        "training": row.training(steps, kit.dry_run),
        "data": {"path": str(data_file), "max_length": row.seq},
        "monitor": {"sample_hz": 10, "log_dir": str(log_dir)},
    })


def estimate_row(config_path: Path, capacity: int | None, on_gpu: bool, calibrate: bool = False) -> dict[str, Any]:
    """ftwatch's estimate of the row's config (in-process, no suggestions), with its time; with
    ``calibrate``, also ``ftwatch estimate --calibrate``'s (copies cut to 1 and 2 layers trained on
    this device) under ``calibrated``, or the reason it could not be made."""
    from ftwatch.analysis.estimate import estimate
    from ftwatch.common.config import load_config

    start = time.monotonic()
    cfg = load_config(config_path)
    result = estimate(cfg, capacity, on_gpu=on_gpu)
    out = result.to_json()
    out.pop("suggestions", None)
    out["seconds"] = round(time.monotonic() - start, 2)
    if calibrate:
        from ftwatch.commands import estimate_calibrate

        try:
            with contextlib.redirect_stderr(io.StringIO()):
                out["calibrated"] = estimate_calibrate.calibrate(cfg, result, "cuda" if on_gpu else "cpu").to_json()
        except Exception as exc:  # noqa: BLE001 - a calibration that fails is a finding of the row
            out["calibrated"] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    return out


def make_recorder(devices: Devices) -> Any:
    """A ``TrainerCallback`` that reads the allocator and NVML at every step end (after the probe's)."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self._t = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            devices.sync()
            self.steps.append({"step": int(state.global_step), "seconds": round(time.perf_counter() - self._t, 4),
                               "allocator": devices.allocator(), "nvml": devices.nvml_used()})

    return StepRecorder()


def run_row(kit: Kit, devices: Devices, row: Row, model_config: dict[str, Any], model_dir: Path,
            steps: int, data_file: Path, capacity: int | None, calibrate: bool = False) -> dict[str, Any]:
    """Train one row and measure it (``calibrate``: its calibrated estimate too); every failure is
    recorded in the row, never raised."""
    record: dict[str, Any] = {"id": row.id, "factors": row.factors(), "status": None, "error": None,
                              "seconds": {}}
    run_root = kit.work / "grid-runs" / row.id
    config_path = row_config(kit, row, model_dir, steps, run_root, data_file)
    record["config_toml"] = config_path.read_text()
    try:
        record["estimate"] = estimate_row(config_path, capacity, on_gpu=devices.cuda, calibrate=calibrate)
    except Exception as exc:  # noqa: BLE001
        record["estimate"] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    record["before"] = devices.free()
    objects: dict[str, Any] = {}
    start = time.monotonic()
    try:
        _train(kit, devices, row, model_config, steps, run_root, record, objects)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a row's failure (an OOM too) is a finding
        record["status"] = "oom" if _is_oom(exc) else "error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]
        probe = objects.get("probe")
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.finish_with_exception(exc)
    finally:
        record["seconds"]["total"] = round(time.monotonic() - start, 2)
        trainer = objects.pop("trainer", None)
        if trainer is not None:
            with contextlib.suppress(Exception):
                trainer.accelerator.free_memory()
        objects.clear()
        del trainer
        record["after_free"] = devices.free()
    _fold_log(record, run_root)
    return record


def _is_oom(exc: BaseException) -> bool:
    """A CUDA (or CPU) out-of-memory error, in any form torch raises it."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _train(kit: Kit, devices: Devices, row: Row, model_config: dict[str, Any], steps: int, run_root: Path,
           record: dict[str, Any], objects: dict[str, Any]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    from ftwatch import FtwatchCallback, Probe

    run_dir = run_root / "run"
    probe = Probe(run_dir, name=row.id, model_name=row.model, device=devices.device, sample_hz=10.0,
                  max_steps=steps)
    objects["probe"] = probe
    probe.start()
    probe.phase("loading_model")
    t = time.monotonic()
    model = build_model(devices, model_config, row.dtype, row.attn)
    devices.sync()
    record["seconds"]["build"] = round(time.monotonic() - t, 2)
    probe.attach_model(model, emit_model_event=False, base_only=True)
    probe.snapshot()
    probe.phase("applying_lora")
    if row.checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **row.lora()))
    objects["model"] = model
    probe.attach_model(model)
    probe.snapshot()
    record["param_bytes"] = param_bytes(model)
    record["params"] = {"total": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
                        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    record["after_load"] = devices.allocator()
    probe.phase("preparing_trainer")
    args = TrainingArguments(output_dir=str(run_root / "output"), report_to="none", disable_tqdm=True,
                             save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                             **row.training(steps, kit.dry_run))
    recorder = make_recorder(devices)
    vocab = int(model_config["vocab_size"])
    trainer = Trainer(model=model, args=args, train_dataset=RandomBlocks(row.batch * steps, row.seq, vocab),
                      data_collator=default_data_collator, callbacks=[FtwatchCallback(probe=probe), recorder])
    objects["trainer"] = trainer
    probe.snapshot()
    t = time.monotonic()
    trainer.train()
    devices.sync()
    record["seconds"]["train"] = round(time.monotonic() - t, 2)
    record["recorded_steps"] = recorder.steps
    probe.finish("finished", step=int(trainer.state.global_step))
    record["run_dir"] = str(run_dir)
    kit.log_dirs.append((run_dir, f"grid/{row.id}"))


def _fold_log(record: dict[str, Any], run_root: Path) -> None:
    """Join the probe's snapshots (from its run log) with the kit's step readings; peaks; errors."""
    logs = sorted(run_root.glob("**/events.jsonl"))
    if not logs:
        return
    events = read_jsonl(logs[0])
    snapshots = {e.get("step"): e for e in events if e.get("kind") == "snapshot" and e.get("step") is not None}
    samples = [e for e in events if e.get("kind") == "sample"]
    record["log"] = {"events": len(events), "samples": len(samples),
                     "cuda_samples": sum(1 for e in samples if "cuda" in e),
                     "exit": next((e for e in reversed(events) if e.get("kind") == "exit"), None)}
    steps = []
    for reading in record.get("recorded_steps", []):
        snap = snapshots.get(reading["step"], {})
        steps.append({**reading, "categories": snap.get("categories"), "probe_allocated_peak": snap.get("allocated_peak"),
                      "probe_reserved": snap.get("reserved"), "activations_measured": snap.get("activations_measured", True),
                      "snapshot_bytes": snap.get("_bytes")})
    record["steps"] = steps
    record.pop("recorded_steps", None)
    record["phase_snapshots"] = [{"phase": e.get("phase"), "categories": e.get("categories"),
                                  "allocated_peak": e.get("allocated_peak"), "reserved": e.get("reserved")}
                                 for e in events if e.get("kind") == "snapshot" and e.get("step") is None]
    record["peaks"] = peaks(steps)
    record["errors"] = estimate_errors(record.get("estimate") or {}, record["peaks"])


def peaks(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest figure of each kind over the row's steps (None where never read)."""
    def top(values: Any) -> int | None:
        values = [v for v in values if isinstance(v, (int, float))]
        return int(max(values)) if values else None

    out: dict[str, Any] = {
        "max_allocated": top(s["allocator"].get("max_allocated") for s in steps),
        "max_reserved": top(s["allocator"].get("max_reserved") for s in steps),
        "nvml_used": top(s["nvml"].get("used") for s in steps),
        "nvml_process": top(s["nvml"].get("process") for s in steps),
        "categories": {},
    }
    for step in steps:
        for name, value in (step.get("categories") or {}).items():
            if isinstance(value, (int, float)):
                out["categories"][name] = max(out["categories"].get(name, 0), int(value))
    measured_non_torch = [s["nvml"]["process"] - s["allocator"]["reserved"] for s in steps
                          if isinstance(s["nvml"].get("process"), int) and isinstance(s["allocator"].get("reserved"), int)]
    out["non_torch_measured"] = max(measured_non_torch) if measured_non_torch else None
    return out


def _error(estimate: int | None, measured: int | None) -> dict[str, Any] | None:
    if not isinstance(estimate, int) or not isinstance(measured, int) or measured <= 0:
        return None
    return {"estimate": estimate, "measured": measured, "error_bytes": estimate - measured,
            "error_pct": round(100.0 * (estimate - measured) / measured, 1)}


def estimate_errors(estimate: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """The estimate against the allocated peak, the reserved peak, NVML, and category by category.

    The estimate's torch part (every category but ``non_torch``) is what the allocator can see; the
    whole estimate (with the ``non_torch`` allowance) is compared with this process's NVML usage.
    """
    cats = estimate.get("estimate_bytes") or {}
    if not cats:
        return {}
    total = cats.get("total")
    torch_part = total - cats.get("non_torch", 0) if isinstance(total, int) else None
    measured = peak.get("categories", {})
    out: dict[str, Any] = {"allocated": _error(torch_part, peak.get("max_allocated")),
           "reserved": _error(torch_part, peak.get("max_reserved")),
           "nvml_process": _error(total, peak.get("nvml_process")),
           "non_torch": _error(cats.get("non_torch"), peak.get("non_torch_measured")),
           "categories": {name: _error(cats.get(name), measured.get(name))
                          for name in (*TENSOR_CATEGORIES, "other") if name in cats}}
    for key, value in estimate.items():  # the calibrated estimate (estimate --calibrate): the same comparisons
        if "calibrat" in key and isinstance(value, dict) and isinstance(value.get("estimate_bytes"), dict):
            measured_cats = value["estimate_bytes"]
            # its allocated part leaves out what the copies measured beyond the allocator's peak
            allocated = sum(v for k, v in measured_cats.items() if k not in ("total", "cache", "non_torch"))
            reserved = sum(v for k, v in measured_cats.items() if k not in ("total", "non_torch"))
            out[f"{key}_vs_allocated"] = _error(allocated, peak.get("max_allocated"))
            out[f"{key}_vs_reserved"] = _error(reserved, peak.get("max_reserved"))
            out[f"{key}_vs_nvml_process"] = _error(measured_cats.get("total"), peak.get("nvml_process"))
    return out
