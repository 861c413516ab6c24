"""Measure the truncated copies of a run's model: 1 and 2 decoder layers, real training steps.

:func:`check_calibration` is the cheap part (what can be refused before anything is built);
:func:`measure_copies` builds each copy (:mod:`.truncated_model`), trains it for a few real steps
(:mod:`.steps`) and returns, per copy, the peak of its steady step with the split at it
(:class:`~ftwatch.analysis.estimate.calibration.CopyPeak`). The steady step is the highest peak
after the first: the optimizer state exists from the first step on, so the first one is lower.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from typing import Any

from ftwatch.analysis.estimate.calibration import CopyPeak
from ftwatch.analysis.estimate.truncate import layer_count
from ftwatch.common.config import Config
from ftwatch.training.calibrate.steps import StepFigures, run_measured_steps
from ftwatch.training.calibrate.truncated_model import CannotBuild, build_truncated_model, first_line

#: Optimizer steps each copy trains; the figures are the steady steps' (all but the first).
STEPS = 2
#: The depths of the copies.
DEPTHS = (1, 2)


def check_calibration(cfg: Config, model_config: Any, device: str) -> None:
    """Refuse, before anything is built, what a calibration cannot measure (:class:`CannotBuild`)."""
    if cfg.model.load_in_4bit or cfg.model.load_in_8bit:
        key = "load_in_4bit" if cfg.model.load_in_4bit else "load_in_8bit"
        raise CannotBuild(f"--calibrate builds copies with random weights, which bitsandbytes cannot quantize "
                          f"from a config ([model] {key}); drop --calibrate for this config")
    try:
        layer_count(model_config)
    except ValueError as exc:
        raise CannotBuild(f"--calibrate: {exc}") from None
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CannotBuild("--calibrate measures on the device it estimates for, and torch sees no CUDA GPU "
                              "here (--device cpu calibrates for the CPU)")


def copy_depths(model_config: Any) -> list[int]:
    """The depths of the copies to train: 1 and 2 layers (only 1 for a 1-layer model)."""
    return [d for d in DEPTHS if d <= layer_count(model_config)]


def measure_copies(cfg: Config, model_config: Any, device: str, batch: int, seq_len: int,
                   progress: Callable[[str], None] | None = None) -> list[CopyPeak]:
    """Build and train each copy at ``batch`` x ``seq_len`` on ``device``; its steady peak and split.
    Raises :class:`CannotBuild` (one line) when a copy cannot be built or trained."""
    copies = []
    for depth in copy_depths(model_config):
        model = build_truncated_model(cfg, model_config, depth, device)  # a config that cannot build: no progress line
        if progress is not None:
            progress(f"calibrating: training a {depth}-layer copy ({STEPS} steps of {batch} x {seq_len} tokens "
                     f"on {device})")
        try:
            figures = run_measured_steps(cfg, model, device, STEPS, batch, seq_len)
        except Exception as exc:
            raise CannotBuild(f"training the {depth}-layer copy failed: {type(exc).__name__}: "
                              f"{first_line(exc)}") from None
        finally:
            del model
            _release(device)
        copies.append(steady_copy(depth, figures))
    return copies


def steady_copy(depth: int, figures: list[StepFigures]) -> CopyPeak:
    """The copy's figures: its highest step after the first (the first when it trained only one)."""
    if not figures:
        raise CannotBuild(f"the {depth}-layer copy trained, but no step was measured")
    steady = max(figures[1:] or figures, key=lambda f: f.peak)
    categories = dict(steady.split)
    if steady.non_torch is not None:
        categories["non_torch"] = steady.non_torch
    peak = sum(categories.values()) if steady.reserved is not None else steady.peak
    return CopyPeak(depth, int(peak), categories, [f.peak for f in figures])


def _release(device: str) -> None:
    """Free what the copy held before the next one is built (its peak must not include the last)."""
    gc.collect()
    if device == "cuda":
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()

