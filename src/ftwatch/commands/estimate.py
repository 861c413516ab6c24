"""``ftwatch estimate CONFIG``: will this fine-tune fit, before any weight is loaded?

Prints the predicted bytes of every memory category, the peak, a verdict against the capacity
(``--gpu-memory``, else the GPU's free memory via NVML, else ``[monitor] budget``; on the CPU the
budget, else the RAM, as ``ftwatch run``'s pre-flight) and the quantified fixes (under "if you need
more room" when the run fits). The device it estimates for: ``--device``, else CUDA when a GPU is
visible or ``--gpu-memory`` is given, else the CPU; the output says which and why. Without packing
the data's lengths are scanned and the longest batch priced (:mod:`ftwatch.training.longest_batch`).
``--json`` prints one object (see :meth:`Estimate.to_json`, plus ``device``, ``suggestions_optional``
and ``longest_batch``). ``--calibrate`` also trains copies of the model cut to 1 and 2 layers on
the target device and extrapolates their measured peaks (:mod:`ftwatch.commands.estimate_calibrate`):
a section after the table, ``calibrated`` in the JSON, and ``--strict`` judges by its peak. ``--by-module`` adds the estimate's module tree: a table after the usual
output (blocks, then one row per decoder layer), and ``modules`` in the JSON (the payload of
:mod:`ftwatch.runlog.module_tree`; ``null`` when the activations come from the formula, which knows
no modules).

Exit status: 0 when the estimate ran, whatever the verdict (1 with ``--strict`` when it does not
fit); 2 for usage errors (bad config, unreadable model config.json, bad ``--gpu-memory``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from ftwatch.common.config import Config, load_config
from ftwatch.common.nvml_query import ask_first_gpu
from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes, parse_size
from ftwatch.training.config_checks import check_config

_VERDICT_TEXT = {"fits": "fits", "tight": "TIGHT", "does_not_fit": "DOES NOT FIT"}
_PHASE_TEXT = {"loading_model": "while loading the model", "training": "during training"}
#: How each capacity source is named in the text output (shared with `ftwatch fit`).
CAPACITY_TEXT = {"--gpu-memory": "--gpu-memory", "nvml": "free GPU memory (NVML)", "budget": "[monitor] budget",
                 "ram": "the RAM"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's arguments."""
    parser.add_argument("config", help="the run's TOML config")
    parser.add_argument("--gpu-memory", metavar="SIZE",
                        help='capacity to check against, e.g. "24GiB" or "22.3GB" '
                             "(default: the GPU's free memory, else [monitor] budget)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="the device to estimate for (default: cuda when a GPU is visible or "
                             "--gpu-memory is given, else cpu)")
    parser.add_argument("--no-data-scan", action="store_true",
                        help="do not scan the data's token lengths for the longest batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--by-module", action="store_true",
                        help="also attribute the memory to the model's modules (blocks, each decoder layer)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when it does not fit")
    parser.add_argument("--calibrate", action="store_true",
                        help="also train 1- and 2-layer copies of the model (random weights) for a few real "
                             "steps on the device, and extrapolate their measured peaks to the full depth")


def main(args: argparse.Namespace) -> int:
    """Run the estimate and print it."""
    from ftwatch.analysis.estimate.meta_model import skip_bitsandbytes_dispatch
    from ftwatch.commands.usage import UsageError

    skip_bitsandbytes_dispatch()  # this process wraps no real model in the meta window
    cfg = load_config(args.config)
    try:
        if args.gpu_memory is not None:  # a bad size is told first: it costs nothing to check
            resolve_capacity(cfg, args.gpu_memory)
    except ValueError as exc:
        raise UsageError(f"--gpu-memory: {exc}") from None
    device = getattr(args, "device", None)
    if device == "cpu" and args.gpu_memory is not None:
        raise UsageError("--gpu-memory is a GPU's capacity: not with --device cpu (set [monitor] budget instead)")
    # the validation `ftwatch run` makes, word for word (a typo'd key: the same "did you mean" line),
    # before the GPU is asked and before the estimate's trace
    notes = check_config(cfg, "estimate")
    device, why = choose_device(cfg, args.gpu_memory, device)
    capacity, source, on_gpu = resolve_capacity(cfg, args.gpu_memory, device=device)

    from ftwatch.analysis.advice import estimate_and_advise

    calibrating = bool(getattr(args, "calibrate", False))
    if calibrating:  # refused before the trace when it cannot be measured at all (quantized, no GPU)
        from ftwatch.analysis.estimate import inputs_from_config
        from ftwatch.commands import estimate_calibrate

        estimate_calibrate.check(cfg, inputs_from_config(cfg, on_gpu).model_config, device)
    result = estimate_and_advise(cfg, capacity, on_gpu=on_gpu, capacity_source=source)
    result.notes.extend(notes)
    calibration = estimate_calibrate.calibrate(cfg, result, device) if calibrating else None
    longest = None if getattr(args, "no_data_scan", False) else longest_batch(cfg, result)
    by_module = bool(getattr(args, "by_module", False))
    if by_module:
        from ftwatch.analysis.estimate.module_estimate import estimate_modules

        result.modules = estimate_modules(result)
    if args.json:
        data = result.to_json()
        data["device"] = {"type": device, "reason": why}
        data["suggestions_optional"] = result.verdict == "fits"
        data["longest_batch"] = longest.to_json() if longest is not None else None
        if by_module:
            data["modules"] = result.modules
        if calibration is not None:
            data["calibrated"] = estimate_calibrate.to_json(result, calibration)
        print(json.dumps(data, indent=2))
    else:
        print(render(cfg, result, device_reason=why, longest=longest))
        if calibration is not None:
            print()
            print("\n".join(estimate_calibrate.render(result, calibration)))
        if by_module:
            print()
            print(render_by_module(result))
    verdict = result.verdict
    if calibration is not None:  # --strict judges by the calibrated peak
        verdict = estimate_calibrate.judge_calibrated(result, calibration)[0]
    return 1 if args.strict and verdict == "does_not_fit" else 0


#: What ``--by-module`` says when the formula stood in for the trace.
NO_TREE_TEXT = ("module tree: not available (the activations come from the Llama-style formula, "
                "which knows layers, not modules)")


def render_by_module(result: Any, width: int | None = None) -> str:
    """The ``--by-module`` table of an estimate (its ``modules``), no wider than ``width`` (default:
    the terminal's, 80 when it is not one); one line when there is no tree."""
    if result.modules is None:
        return NO_TREE_TEXT
    from ftwatch.views.headless.modules_table import render_modules_table

    if width is None:
        import shutil

        width = shutil.get_terminal_size((80, 24)).columns
    needed = None
    if result.capacity_bytes is not None and result.total > result.capacity_bytes:
        needed = result.total - result.capacity_bytes
    return render_modules_table(result.modules, width, needed_bytes=needed).rstrip("\n")


def choose_device(cfg: Config, gpu_memory: str | None, device: str | None = None) -> tuple[str, str]:
    """``(device, why)``: ``--device``, else CUDA for ``--gpu-memory``, else the CPU for ``use_cpu``,
    else CUDA when NVML sees a GPU, else the CPU (``why`` is the sentence the output shows)."""
    if device is not None:
        return device, f"--device {device}"
    if gpu_memory is not None:
        return "cuda", "--gpu-memory given: estimating for a GPU"
    if cfg.training.get("use_cpu", False):
        return "cpu", "[training] use_cpu = true: estimating for the CPU"
    if nvml_free_bytes() is not None:
        return "cuda", "a GPU is visible (NVML): estimating for it; --device cpu for the CPU"
    return "cpu", "no GPU visible: estimating for the CPU; --device cuda for a GPU"


def resolve_capacity(cfg: Config, gpu_memory: str | None, *,
                     device: str | None = None) -> tuple[int | None, str | None, bool]:
    """``(capacity_bytes, source, on_gpu)`` for ``device`` (default: :func:`choose_device`'s).

    CUDA: ``--gpu-memory``, else NVML's free memory, else the budget. CPU: the budget, else the
    RAM (``ram``), as ``ftwatch run``'s pre-flight judges a CPU run.
    Raises ``ValueError`` for a size that does not parse or is not positive.
    """
    if gpu_memory is not None:
        size = parse_size(gpu_memory, unit_required=True)
        if size <= 0:
            raise ValueError(f"must be larger than zero, got {gpu_memory!r}")
        return size, "--gpu-memory", device != "cpu"
    if device is None:
        device, _why = choose_device(cfg, gpu_memory)
    if device == "cpu":
        if cfg.monitor.budget is not None:
            return cfg.monitor.budget, "budget", False
        return ram_bytes(), "ram", False
    free = nvml_free_bytes()
    if free is not None:
        return free, "nvml", True
    if cfg.monitor.budget is not None:
        return cfg.monitor.budget, "budget", True
    return None, None, True


def ram_bytes() -> int | None:
    """The machine's RAM (what the probe's header calls the capacity of a CPU run)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - no capacity is a valid answer (the verdict is then unknown)
        return None


def longest_batch(cfg: Config, result: Any) -> Any:
    """The data's longest batch (:class:`~ftwatch.training.longest_batch.LongestBatch`); ``None``
    without ``[data]`` or when loading already fails (the data cannot matter then)."""
    if cfg.data is None or result.inputs is None or result.fails_at == "loading_model":
        return None
    from ftwatch.training.data_lengths import LengthScan, scan_lengths
    from ftwatch.training.longest_batch import check_longest_batch

    # with packing every block is max_length tokens: no need to tokenize
    scan = LengthScan(True, cfg.data.max_length, [], []) if cfg.data.packing else scan_lengths(cfg)
    return check_longest_batch(cfg, scan, result)


def nvml_free_bytes() -> int | None:
    """Free memory of the first visible GPU via NVML; ``None`` without a GPU, a driver or pynvml."""
    return ask_first_gpu(lambda nvml, handle: int(nvml.nvmlDeviceGetMemoryInfo(handle).free))


# --- the table -----------------------------------------------------------------------------------

def render(cfg: Config, result: Any, *, device_reason: str | None = None, longest: Any = None) -> str:
    """The human report: header, category table, verdict, longest batch, suggestions."""
    lines = _header(cfg, result)
    if device_reason:
        lines.append(f"  device: {safe(device_reason, one_line=True)}")
    lines += [""] + _table(result) + [""] + _verdict(result)
    if longest is not None:
        lines += ["", *_longest_lines(longest)]
    if result.suggestions:
        if result.verdict == "fits":
            lines += ["", "  if you need more room (optional: the run fits; savings on the peak):"]
        else:
            lines += ["", "  what to change (each alone unless it says together; savings on the peak):"]
        for n, s in enumerate(result.suggestions, 1):
            lines += _suggestion_lines(n, s)
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def _header(cfg: Config, result: Any) -> list[str]:
    a = result.assumptions()
    quant = {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(a["quantization"], a["dtype"])
    lora = cfg.lora
    targets = lora.get("target_modules", "peft's default modules")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    mixed = f", {a['mixed_precision']} autocast" if a["mixed_precision"] else ""
    checkpointing = "on" if a["gradient_checkpointing"] else "off"
    return [
        f"ftwatch estimate  {cfg.name}: {Path(cfg.model.name).name} "
        f"({_count(result.params_base)} parameters)",
        f"  {quant} weights{mixed}, LoRA r={lora.get('r', 8)} on {targets} "
        f"({_count(result.params_trainable)} trainable), {a['optim']}",
        f"  batch {a['batch_size']} x {a['seq_len']} tokens (x{a['gradient_accumulation_steps']} accumulation), "
        f"gradient checkpointing {checkpointing}, target {a['device']}",
    ]


def _count(n: int) -> str:
    for factor, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return str(n)


def _table(result: Any) -> list[str]:
    total = result.total or 1
    lines = [f"  {'category':<12} {'size':>10} {'share':>7}"]
    for name, value in result.categories.items():
        lines.append(f"  {name:<12} {format_bytes(value):>10} {value / total:>7.1%}")
    lines.append(f"  {'peak':<12} {format_bytes(result.total):>10} {1:>7.1%}")
    return lines


def _verdict(result: Any) -> list[str]:
    if result.capacity_bytes is None:
        return ["  capacity     unknown (no GPU found): pass --gpu-memory SIZE or set [monitor] budget"]
    source = CAPACITY_TEXT.get(result.capacity_source or "", result.capacity_source or "given")
    lines = [f"  capacity     {format_bytes(result.capacity_bytes)} ({source})"]
    text = f"  verdict      {_VERDICT_TEXT[result.verdict]}"
    if result.fails_at == "loading_model":
        text += (f": out of memory {_PHASE_TEXT['loading_model']} (needs {format_bytes(result.loading_bytes)} "
                 f"before training starts)")
    elif result.fails_at:
        text += f": out of memory {_PHASE_TEXT[result.fails_at]} (peak {format_bytes(result.total)})"
    else:
        text += f" ({format_bytes(result.capacity_bytes - result.total)} left at the peak)"
    return lines + [text]


def _longest_lines(longest: Any) -> list[str]:
    """The longest batch: one line, then its fixes when it alone does not fit."""
    lines = [f"  data         {safe(longest.message(), one_line=True)}"]
    if longest.warn:
        lines.append("    to make the longest batch fit (each alone):")
        for fix in longest.fixes:
            saves = f"    saves {format_bytes(fix['saves_bytes'])}" if fix["saves_bytes"] else ""
            lines += [f"    - {fix['change']}", f"        {fix['config']}{saves}"]
    return lines


def _suggestion_lines(n: int, s: Any) -> list[str]:
    if s.fits_after is None:
        outcome = ""
    elif s.fits_after:
        outcome = " -> fits"
    elif s.fails_at_after == "loading_model":
        outcome = " -> still fails while loading"
    else:
        outcome = " -> loads, still fails during training"
    lines = [f"  {n:>2}. {s.change}", f"      {s.config}    saves {format_bytes(s.saves_bytes)}{outcome}"]
    if s.why:
        lines += [f"      {part}" for part in textwrap.wrap(s.why, 94)]
    return lines
