"""Real training steps of a (truncated) model, measured as ``ftwatch run`` measures them.

The steps run in a real ``transformers.Trainer`` built from the config's ``[training]`` (its
optimizer, mixed precision, activation checkpointing, loss path), with the probe's own
:class:`~ftwatch.training.probe.callback.FtwatchCallback` attached, on batches of random token ids
at the run's micro-batch and sequence length. Every step is a measured step (``activations_every
= 1``); the figures are what the probe writes in each step's snapshot:

- on the CPU, the step's true peak of live tensor bytes (``tensor_peak``, the peak meter) and its
  split by category at the peak (``tensor_peak_split``);
- on CUDA, ``torch.cuda.max_memory_allocated`` over the step (the probe resets it at each step's
  begin), the allocator's reservation, and, when NVML reads this process, what the process holds
  beyond the reservation (the CUDA context, cuBLAS/cuDNN handles and workspaces).

What is forced, to keep the measurement short and its own: ``max_steps`` (the steps asked for),
at most two micro-batches of gradient accumulation (the second one already runs with the first
one's gradients live), no evaluation, saving, logging or dataloader workers, and an output
directory of its own that is removed afterwards.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from ftwatch.common.config import Config

#: Gradient accumulation is cut to this many micro-batches per optimizer step (see the module's text).
MAX_ACCUMULATION = 2
#: What the output says when the run accumulates more micro-batches than the copies do.
MAX_ACCUMULATION_NOTE = (f"the copies accumulate {MAX_ACCUMULATION} micro-batches per step, not the config's "
                         "gradient_accumulation_steps: from the second micro-batch on every one runs with the "
                         "gradients of the first live, so the peak is the same")


@dataclass
class StepFigures:
    """What one measured step held: ``peak`` (bytes), its ``split`` by category at the peak (CPU),
    the CUDA allocator's ``reserved`` bytes and the process's ``non_torch`` bytes when known."""

    step: int
    peak: int
    split: dict[str, int] = field(default_factory=dict)
    reserved: int | None = None
    non_torch: int | None = None


def run_measured_steps(cfg: Config, model: Any, device: str, steps: int, batch: int, seq_len: int) -> list[StepFigures]:
    """Train ``model`` for ``steps`` optimizer steps of ``batch`` x ``seq_len`` random tokens on
    ``device`` (``cpu`` or ``cuda``); the figures of each step, in order. Raises whatever training
    raises (the caller turns it into one line)."""
    import torch
    from transformers import Trainer, default_data_collator
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ftwatch.analysis.estimate.quiet import _quiet
    from ftwatch.training.library_config import build_training_arguments
    from ftwatch.training.probe.callback import FtwatchCallback
    from ftwatch.training.probe.probe import Probe

    accumulation = min(int(cfg.training.get("gradient_accumulation_steps", 1) or 1), MAX_ACCUMULATION)
    target = f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu"
    vocab = int(model.get_base_model().config.vocab_size)
    data = RandomTokens(vocab, seq_len, batch * accumulation * steps)
    figures: list[StepFigures] = []
    with tempfile.TemporaryDirectory(prefix="ftwatch-calibrate-") as tmp:
        probe = Probe(tmp, name="calibrate", device=target, activations_every=1, modules="off",
                      record=False, handle_signals=False, origin="worker")
        probe.estimate_made = True
        probe.writer.listeners.append(lambda event: _collect(event, figures))
        forced: dict[str, Any] = {
            "max_steps": steps, "gradient_accumulation_steps": accumulation, "per_device_train_batch_size": batch,
            "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no", "load_best_model_at_end": False,
            "push_to_hub": False, "dataloader_num_workers": 0, "report_to": "none", "disable_tqdm": True,
            "use_cpu": device == "cpu",
        }
        if device == "cpu":
            forced["dataloader_pin_memory"] = False
        args = build_training_arguments(cfg, output_dir=tmp, **_known_fields(forced))
        with _quiet():
            trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                              callbacks=[FtwatchCallback(probe=probe, estimate=False)])
            for printer in (PrinterCallback, ProgressCallback):  # the output is the command's alone
                trainer.remove_callback(printer)
            trainer.train()
        if device == "cuda":
            _add_non_torch(figures, probe)
    return figures


def _known_fields(forced: dict[str, Any]) -> dict[str, Any]:
    """The forced fields this transformers' ``TrainingArguments`` has (names change between versions)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {k: v for k, v in forced.items() if k in fields}


def _collect(event: dict[str, Any], figures: list[StepFigures]) -> None:
    """A step's snapshot (``step`` set) -> its figures: the CPU's true peak, else CUDA's allocated peak."""
    if event.get("kind") != "snapshot" or event.get("step") is None:
        return
    if event.get("tensor_peak") is not None:
        figures.append(StepFigures(int(event["step"]), int(event["tensor_peak"]),
                                   {k: int(v) for k, v in (event.get("tensor_peak_split") or {}).items()}))
    elif event.get("allocated_peak") is not None:
        figures.append(StepFigures(int(event["step"]), int(event["allocated_peak"]), dict(event.get("categories") or {}),
                                   reserved=int(event.get("reserved") or 0)))


def _add_non_torch(figures: list[StepFigures], probe: Any) -> None:
    """What this process holds on the GPU beyond the allocator's reservation, from NVML (the CUDA
    context and library workspaces); left unknown where NVML does not tell this process apart."""
    try:
        from ftwatch.training.probe.devices import NvmlReader

        used = NvmlReader(device_index=probe.device.index or 0).read().get("process")
    except Exception:  # no NVML, or it cannot read this process: the figure stays unknown
        return
    if used is None:
        return
    for f in figures:
        f.non_torch = max(int(used) - int(f.reserved or 0), 0)


class RandomTokens:
    """A data set of ``size`` rows of ``seq_len`` random token ids below ``vocab``, labels = inputs,
    every position attended (as a packed or full-length batch)."""

    def __init__(self, vocab: int, seq_len: int, size: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (size, seq_len), generator=generator)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
