"""The kit's order of stages, each guarded, under one global deadline.

1. environment, NVML/allocator readings at rest, what ``import ftwatch`` pulls in;
2. ``pytest -m gpu`` started in the background;
3. the grid, first part (base, other models, each factor alone): stops early enough for the rest;
4. a real OOM through ``[monitor] budget`` (``ftwatch run``), ``explain`` of its message;
5. probe overhead (interleaved pairs); the ranks' stop-flag all-reduce on NCCL (one rank);
6. the grid, second part (pairs of factors), until the time left is what the end needs;
7. a finished CUDA run rehearsing a 24 GiB card (the screenshots' log);
8. pytest collected, event sizes, fixtures, the summary and the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gpu_kit import cli_stages, grid, measure, report, shapes
from gpu_kit.common import Kit, kill_group
from gpu_kit.readings import Devices

#: Seconds kept for what follows each point (measured on the CPU; generous for the GPU machine).
RESERVE_AFTER_FIRST_GRID = {"oom": 75.0, "overhead": 30.0, "finished": 55.0, "end": 20.0}
RESERVE_AFTER_SECOND_GRID = {"finished": 55.0, "end": 20.0}
#: The same in the dry run (tiny shapes on the CPU; its deadline is 240 s).
DRY_RESERVE_AFTER_FIRST_GRID = {"oom": 30.0, "overhead": 5.0, "finished": 15.0, "end": 5.0}
DRY_RESERVE_AFTER_SECOND_GRID = {"finished": 15.0, "end": 5.0}
FIRST_GRID_ROWS = 10
#: The first rows also get ``estimate --calibrate`` (issue 13: the calibrated estimate is checked on
#: CUDA by this kit): its copies train for seconds each; in the dry run, the first row only.
CALIBRATED_ROWS = 3


def block_ui_imports(kit: Kit) -> None:
    """Make textual/plotext unimportable here and in subprocesses (the GPU image has neither)."""
    kit.no_ui_dir = cli_stages.make_no_ui(kit)
    sys.path.insert(0, str(kit.no_ui_dir))
    for name in cli_stages.UI_PACKAGES:
        sys.modules.pop(name, None)


def environment(kit: Kit, devices: Devices) -> dict[str, Any]:
    """Versions, the device, and a first NVML/allocator reading."""
    import peft
    import torch
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "peft": peft.__version__,
                           "cuda_available": torch.cuda.is_available(), "kit_uses_cuda": devices.cuda,
                           "torch_cuda": getattr(torch.version, "cuda", None), "nvml_error": devices.nvml_error,
                           "host": platform.node()}
    if devices.cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, device_total=int(props.total_memory), device_count=torch.cuda.device_count(),
                   capability=f"{props.major}.{props.minor}")
        torch.zeros(1, device="cuda")  # the CUDA context, so the first reading shows it
    else:
        env["device_name"] = "CPU (dry run)" if kit.dry_run else "CPU (no CUDA)"
    name = str(env["device_name"]).lower()
    found = re.findall(r"(h200|h100|a100|l40s|l4|a10g|a6000|4090|3090|v100|t4)", name)
    env["card_slug"] = "dryrun" if kit.dry_run else (found[0] if found else re.sub(r"[^a-z0-9]+", "-", name)[:20])
    kit.results["environment"] = env
    kit.results.setdefault("readings", []).append(devices.raw_reading("context only (after CUDA init)"))
    return env


def run_grid(kit: Kit, devices: Devices, rows: list[shapes.Row], models: dict[str, dict[str, Any]],
             steps: int, reserve_s: float) -> None:
    """Run rows until the time left reaches ``reserve_s``; a row predicted too long is skipped."""
    state = kit.results.setdefault("grid", {"planned": [], "rows": [], "skipped": [], "steps_per_row": steps})
    state["planned"] += [r.id for r in rows]
    data_file = kit.work / "grid-data.txt"
    if not data_file.exists():
        data_file.write_text("random token blocks are generated in memory; this file satisfies [data].path\n" * 50)
    capacity = (kit.results.get("environment") or {}).get("device_total")
    # a row's time is predicted as fixed (build, estimate, Trainer) + factor x compute; both learnt from rows run
    slow = kit.results.setdefault("_grid_timing", {"fixed": 8.0, "factor": 1.0})
    for row in rows:
        left = kit.remaining() - reserve_s
        config = models[row.model]
        compute = shapes.predicted_seconds(row, _param_guess(config), steps)
        predicted = slow["fixed"] + slow["factor"] * compute
        if left < predicted:
            state["skipped"].append({"id": row.id, "reason": f"deadline: {left:.0f} s left for the grid, "
                                                             f"row predicted {predicted:.0f} s"})
            continue
        model_dir = grid.write_model_dir(kit, row.model, config)
        kit.log(f"row {row.id} (predicted {predicted:.0f} s, {left:.0f} s left)")
        start = time.monotonic()
        calibrate = len(state["rows"]) < (1 if kit.dry_run else CALIBRATED_ROWS)
        try:
            record = grid.run_row(kit, devices, row, config, model_dir, steps, data_file, capacity, calibrate)
        except Exception as exc:  # noqa: BLE001 - run_row records its own failures; this is a last guard
            record = {"id": row.id, "factors": row.factors(), "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        calibrated = ((record.get("estimate") or {}).get("calibrated") or {}).get("seconds")
        took = time.monotonic() - start - (calibrated or 0.0)  # the predictor learns the row without it
        record["predicted_s"], record["took_s"] = round(predicted, 1), round(took, 1)
        state["rows"].append(record)
        train_s = (record.get("seconds") or {}).get("train")
        if train_s and compute >= 1.0:
            slow["factor"] = max(slow["factor"], min(20.0, (train_s - 1.0) / compute))
        slow["fixed"] = min(30.0, max(slow["fixed"], took - slow["factor"] * compute))
        if len(kit.results.get("readings", [])) < 6 and record.get("status") == "ok":
            kit.results["readings"].append(devices.raw_reading(f"after row {row.id} (cache emptied)"))
        kit.log(f"row {row.id}: {record.get('status')} {record.get('error') or ''}"[:300])
        kit.save()


def _param_guess(config: dict[str, Any]) -> int:
    """Parameters of a decoder config, roughly (for the time prediction only)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter = config["intermediate_size"]
    per_layer = 4 * h * h + 3 * h * inter
    return layers * per_layer + vocab * h * (1 if config.get("tie_word_embeddings") else 2)


def install_stop_handler(kit: Kit) -> None:
    """On SIGTERM (the wrapper's hard limit): end our subprocesses by id, write what we have, exit."""
    def stop(signum: int, frame: Any) -> None:
        for proc in list(kit.children.values()):
            kill_group(proc)
        kit.results["stopped"] = {"signal": signum, "at_s": round(kit.elapsed(), 1),
                                  "workers_ended": cli_stages.end_workers(kit)}
        try:
            report.write_outputs(kit)
        finally:
            os._exit(124)

    signal.signal(signal.SIGTERM, stop)


def main(repo: Path, out: Path, work: Path, dry_run: bool, deadline_s: float) -> int:
    """Run every stage; return 0 when the kit itself ran to its end (stage errors are results)."""
    kit = Kit(repo, out, work, dry_run, deadline_s)
    kit.log(f"{'dry run' if dry_run else 'GPU run'}: out {out}, work {work}, deadline {deadline_s:.0f} s")
    install_stop_handler(kit)
    block_ui_imports(kit)
    devices = kit.stage("devices", Devices, dry_run)
    if devices is not None and not dry_run and not devices.cuda:
        kit.results["stages"]["devices"].update(status="error", error="no CUDA device visible to torch: "
                                                "the real shapes need a GPU (use --dry-run on a CPU)")
        devices = None
    if devices is None:
        kit.stage("outputs", report.write_outputs, kit)
        print((out / report.SUMMARY).read_text() if (out / report.SUMMARY).exists() else "", flush=True)
        return 1
    kit.stage("environment", environment, kit, devices)
    imports = kit.stage("imports_start", cli_stages.start_imports, kit)
    pytest_state = kit.stage("pytest_start", cli_stages.start_pytest, kit)
    models = shapes.model_configs(tiny=dry_run)
    rows = shapes.dry_rows() if dry_run else shapes.grid_rows()
    steps = 2 if dry_run else 4
    first, second = rows[:FIRST_GRID_ROWS], rows[FIRST_GRID_ROWS:]
    reserve_first = DRY_RESERVE_AFTER_FIRST_GRID if dry_run else RESERVE_AFTER_FIRST_GRID
    reserve_second = DRY_RESERVE_AFTER_SECOND_GRID if dry_run else RESERVE_AFTER_SECOND_GRID
    kit.stage("grid_first", run_grid, kit, devices, first, models, steps, sum(reserve_first.values()))
    kit.stage("imports", cli_stages.finish_imports, kit, imports)
    saved = kit.stage("save_model", cli_stages.save_model, kit, devices, shapes.saved_model_config(tiny=dry_run),
                      need_s=60.0)
    if saved:
        kit.stage("oom", cli_stages.oom_stage, kit, saved, need_s=40.0)
    pairs, seg = (2, 3) if dry_run else (4, 10)
    kit.stage("overhead", measure.overhead_stage, kit, devices, models[shapes.BASE.model],
              shapes.replace_seq(shapes.BASE, dry_run), pairs, seg, need_s=25.0)
    kit.stage("stop_flag", measure.stop_flag_stage, kit, devices, need_s=20.0)
    kit.stage("grid_second", run_grid, kit, devices, second, models, steps, sum(reserve_second.values()))
    if saved:
        kit.stage("finished_run", cli_stages.finished_run_stage, kit, saved, need_s=40.0)
    kit.stage("pytest_finish", cli_stages.finish_pytest, kit, pytest_state, max(5.0, kit.remaining() - 12.0))
    kit.stage("event_sizes", measure.event_sizes_stage, kit, kit.log_dirs)
    kit.results.setdefault("readings", []).append(devices.raw_reading("at the end"))
    kit.results.pop("_grid_timing", None)
    kit.stage("outputs", report.write_outputs, kit)
    text = (out / report.SUMMARY).read_text() if (out / report.SUMMARY).exists() else "(no summary)"
    print(text, flush=True)
    kit.log(f"done in {kit.elapsed():.0f} s; files: {json.dumps([f['name'] for f in kit.results.get('files', [])])}")
    return 0
