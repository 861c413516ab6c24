"""``ftwatch fit CONFIG``: the config that fits, decided before loading (:mod:`ftwatch.analysis.fit`).

Prints what it tried (micro-batch -> estimated peak -> fits), the fixes it needed beyond the
micro-batch (each with its saving) and the config diff; ``--write OUT.toml`` writes the fitted
config (the original text, only those keys changed or added; never over an existing file);
``--json`` prints one object. Capacity as ``ftwatch estimate`` finds it. ``--calibrate`` prices
the micro-batches with calibrated peaks (:mod:`ftwatch.commands.fit_calibrate`).

Exit status: 0 when a config that fits was found, 1 when none was, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftwatch.commands.estimate import CAPACITY_TEXT, choose_device, resolve_capacity
from ftwatch.commands.fit_toml import Setting, edit, setting_line
from ftwatch.commands.usage import UsageError
from ftwatch.common.config import Config, load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes
from ftwatch.training.config_checks import check_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

#: The share of the capacity kept free at the peak unless ``--headroom`` says otherwise.
DEFAULT_HEADROOM = 0.10



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's arguments."""
    parser.add_argument("config", help="the run's TOML config")
    parser.add_argument("--gpu-memory", metavar="SIZE",
                        help='capacity to fit, e.g. "24GiB" (default: the GPU\'s free memory, else [monitor] budget)')
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="the device to fit for (default: as `ftwatch estimate` chooses)")
    parser.add_argument("--headroom", default="10%", metavar="SHARE",
                        help='share of the capacity kept free at the peak, "10%%" or 0.1 (default 10%%)')
    parser.add_argument("--write", metavar="OUT.toml", help="write the fitted config there (a new file)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calibrate", action="store_true",
                        help="price the micro-batches with calibrated peaks (1- and 2-layer copies trained "
                             "at two micro-batches on the device; see `ftwatch estimate --calibrate`)")


def parse_headroom(text: str) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1; ``ValueError`` unless it is in [0, 1)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"expected a share such as 10% or 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise ValueError(f"must be at least 0% and below 100%, got {text!r}")
    return value


def main(args: argparse.Namespace) -> int:
    """Check the input, search the fitting config, print it (and write it with ``--write``)."""
    from ftwatch.analysis.estimate.meta_model import skip_bitsandbytes_dispatch

    skip_bitsandbytes_dispatch()  # this process wraps no real model in the meta window
    cfg = load_config(args.config)
    try:
        headroom = parse_headroom(args.headroom)
    except ValueError as exc:
        raise UsageError(f"--headroom: {exc}") from None
    try:
        if args.gpu_memory is not None:
            resolve_capacity(cfg, args.gpu_memory)
    except ValueError as exc:
        raise UsageError(f"--gpu-memory: {exc}") from None
    if args.device == "cpu" and args.gpu_memory is not None:
        raise UsageError("--gpu-memory is a GPU's capacity: not with --device cpu (set [monitor] budget instead)")
    out = Path(args.write) if args.write else None
    if out is not None:
        if out.exists() or out.is_symlink():
            raise UsageError(f"--write: {out} already exists; fit never overwrites a file (give a new name)")
        if not out.parent.is_dir():
            raise UsageError(f"--write: no such directory: {out.parent}")
    moved = moved_paths(cfg, out.parent) if out is not None else []
    found = search(cfg, args.gpu_memory, args.device, headroom, extra=moved,
                   calibrate=bool(getattr(args, "calibrate", False)))
    result, source, device, why = found.result, found.source, found.device, found.why
    if out is not None and not result.fitted:
        result.notes.append(f"nothing written to {out}: no config that fits was found")
    fitted_text, diff = found.text, found.diff
    if out is not None and result.fitted and fitted_text is not None:
        _write_new(out, fitted_text)
        if moved:
            result.notes.append(f"{out} is in another directory than {cfg.path}: its "
                                + " and ".join(f"[{section}] {key}" for section, key, _ in moved)
                                + " were rewritten to name the same files from there")
    if args.json:
        print(json.dumps({**result.to_json(), "capacity_source": source, "device": {"type": device, "reason": why},
                          "calibrated": bool(getattr(args, "calibrate", False)),
                          "diff": [{"old": o, "new": n} for o, n in diff],
                          "written": str(out) if out is not None and result.fitted and fitted_text else None},
                         indent=2))
    else:
        print(render(cfg.name, result, CAPACITY_TEXT.get(source or "", source), why, diff,
                     out if fitted_text else None))
    return 0 if result.fitted else 1


@dataclass
class Found:
    """A fit of a config: the search's result, the capacity's source, the device and why, the fitted
    text (``None`` when the layout cannot be rewritten) and its diff."""

    result: Any
    source: str | None
    device: str
    why: str
    text: str | None
    diff: list[tuple[str | None, str]]


def search(cfg: Config, gpu_memory: str | None, device: str | None, headroom: float,
           extra: Sequence[Setting] = (), calibrate: bool = False) -> Found:
    """Check the config, find the capacity, search the fit and rewrite the config's text with it
    (``extra`` settings written too, not shown in the diff). ``calibrate``: price the trials with
    calibrated peaks (:mod:`ftwatch.commands.fit_calibrate`). Usage errors raise :class:`UsageError`."""
    notes = check_config(cfg, "estimate")
    device, why = choose_device(cfg, gpu_memory, device)
    capacity, source, on_gpu = resolve_capacity(cfg, gpu_memory, device=device)
    if capacity is None:
        raise UsageError("no capacity to fit: no GPU memory found; pass --gpu-memory SIZE or set [monitor] budget")

    from ftwatch.analysis.estimate import inputs_from_config
    from ftwatch.analysis.fit import fit

    try:
        inputs = inputs_from_config(cfg, on_gpu)
        estimator = None
        if calibrate:
            from ftwatch.commands import estimate_calibrate
            from ftwatch.commands.fit_calibrate import CalibratedEstimator

            estimate_calibrate.check(cfg, inputs.model_config, device)
            estimator = CalibratedEstimator(cfg, inputs, device)
        result = fit(inputs, capacity, headroom, estimator=estimator)
    except ConfigError as exc:
        raise ConfigError(cfg.path, exc.message) from None
    result.notes.extend(notes)
    if estimator is not None:
        result.notes.extend(estimator.notes())
    text = cfg.path.read_text(encoding="utf-8")
    try:
        fitted_text, diff = edit(text, [*result.settings, *extra])
        diff = diff[:len(result.settings)]
    except ValueError as exc:
        fitted_text, diff = None, [(None, setting_line(s)) for s in result.settings]
        result.notes.append(f"cannot write the fitted config: {exc}; change these lines by hand")
    return Found(result, source, device, why, fitted_text, diff)


def moved_paths(cfg: Config, directory: Path) -> list[Setting]:
    """The settings that keep a config's relative paths (``[model] name`` of a local model, ``[data]
    path``; they resolve from the config's directory) pointing at the same files from ``directory``.
    Absolute and ``~`` paths stay as written; nothing changes when the directory is the config's."""
    if directory.resolve() == cfg.path.resolve().parent:
        return []
    raw = tomllib.loads(cfg.path.read_text(encoding="utf-8"))
    written = [("model", "name", raw.get("model", {}).get("name"), cfg.model.name if cfg.model.is_local else None),
               ("data", "path", raw.get("data", {}).get("path"), cfg.data.path if cfg.data is not None else None)]
    return [(section, key, os.path.relpath(target, directory.resolve()))
            for section, key, value, target in written
            if target is not None and isinstance(value, str) and not value.startswith(("/", "~"))]


def _write_new(out: Path, text: str) -> None:
    """Write ``text`` to a file that must not exist yet (one line, exit 2 if it appeared meanwhile)."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise UsageError(f"--write: {out} already exists; fit never overwrites a file (give a new name)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _fix_lines(fixes: list[Any]) -> list[str]:
    """One numbered change each (the settings of one change together), with its saving."""
    groups: list[list[Any]] = []
    for fix in fixes:
        if groups and fix.saves_bytes == 0 and groups[-1][0].change == fix.change:
            groups[-1].append(fix)
        else:
            groups.append([fix])
    lines = []
    for n, group in enumerate(groups, 1):
        settings = "; ".join(setting_line(f.setting) for f in group)
        lines += [f"  {n:>2}. {group[0].change}", f"      {settings}    saves {format_bytes(group[0].saves_bytes)}"]
    return lines


def render(name: str, result: Any, source: str | None, why: str, diff: list[tuple[str | None, str]],
           written: Path | None) -> str:
    """The human report: capacity, the trials table, the fixes, the verdict and the diff."""
    lines = [f"ftwatch fit  {name}", f"  device   {why}",
             f"  capacity {format_bytes(result.capacity_bytes)} ({source}), headroom {result.headroom:.0%}: "
             f"the peak must stay at or under {format_bytes(result.limit_bytes)}",
             f"  effective batch {result.effective_batch} (micro-batch x gradient accumulation), kept", "",
             f"  {'micro-batch':>11} {'accum':>5} {'peak':>10}  fits"]
    for t in result.trials:
        tags = (" (with the changes below)" if t.with_fixes else "") + \
               ("" if t.keeps_effective else " (does not keep the effective batch)")
        lines.append(f"  {t.micro_batch:>11} {t.accumulation:>5} {format_bytes(t.peak_bytes):>10}  "
                     f"{'yes' if t.fits else 'no'}{tags}")
    if result.fixes:
        lines += ["", "  even a micro-batch of 1 does not fit; changes (mildest first), each with its saving:"]
        lines += _fix_lines(result.fixes)
    lines.append("")
    if not result.fitted:
        lines.append("  verdict  nothing found that fits: see `ftwatch estimate` for the breakdown")
    elif not diff:
        lines.append(f"  verdict  fits as it is: micro-batch {result.micro_batch} x {result.accumulation}, "
                     f"peak {format_bytes(result.peak_bytes)}")
    else:
        lines.append(f"  verdict  fits with micro-batch {result.micro_batch} x {result.accumulation} "
                     f"accumulation, peak {format_bytes(result.peak_bytes)}")
        lines += ["", "  config diff:"]
        for old, new in diff:
            if old is not None:
                lines.append(f"  - {old}")
            lines.append(f"  + {new}")
    if written is not None and result.fitted:
        lines.append(f"  written to {written}")
    lines += [f"  note: {note}" for note in result.notes]
    return safe("\n".join(lines))
