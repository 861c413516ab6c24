"""The printed summary (``gpu-check.txt``) and the packed files (fixtures, run logs) under ``$OUT``.

``$OUT`` rules of the device tool: at most 8 files, 16 MiB each, no deeper than two folders, names
of letters, digits, ``.``, ``_`` and ``-``. The kit writes at most six plain files at its top level.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from gpu_kit.common import FIXTURES_TAR, LOGS_TAR, SUMMARY, Kit, jsonable

MAX_FILE_BYTES = 16 * 1024**2
MAX_FILES = 8
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def mib(value: Any) -> str:
    """Bytes as MiB for the table, ``-`` when unknown."""
    return f"{value / 1024**2:,.0f}" if isinstance(value, (int, float)) else "-"


def pct(error: dict[str, Any] | None) -> str:
    """An error record as a signed percentage, ``-`` when unknown."""
    return f"{error['error_pct']:+.1f}%" if error else "-"


def grid_table(rows: list[dict[str, Any]]) -> list[str]:
    """Estimate (torch part, MiB) against the allocated and reserved peaks, and NVML."""
    head = (f"{'row':52} {'status':6} {'est_torch':>9} {'alloc_pk':>9} {'err':>7} {'resv_pk':>9} {'err':>7} "
            f"{'nvml_proc':>9} {'est_all':>9} {'err':>7} {'non_torch':>9} {'calib_err':>9}")
    lines = [head, "-" * len(head)]
    for row in rows:
        est = ((row.get("estimate") or {}).get("estimate_bytes") or {})
        total = est.get("total")
        torch_part = total - est.get("non_torch", 0) if isinstance(total, int) else None
        peak = row.get("peaks") or {}
        err = row.get("errors") or {}
        lines.append(f"{row['id'][:52]:52} {str(row.get('status'))[:6]:6} {mib(torch_part):>9} "
                     f"{mib(peak.get('max_allocated')):>9} {pct(err.get('allocated')):>7} "
                     f"{mib(peak.get('max_reserved')):>9} {pct(err.get('reserved')):>7} "
                     f"{mib(peak.get('nvml_process')):>9} {mib(total):>9} {pct(err.get('nvml_process')):>7} "
                     f"{mib(peak.get('non_torch_measured')):>9} {pct(err.get('calibrated_vs_allocated')):>9}")
    return lines


def category_table(rows: list[dict[str, Any]]) -> list[str]:
    """Estimate vs probe per category (max over steps), as error percentages."""
    names = ("weights", "lora", "grads", "optimizer", "activations", "other")
    head = f"{'row':52} " + " ".join(f"{n[:11]:>11}" for n in names) + f" {'act_method':>10}"
    lines = [head, "-" * len(head)]
    for row in rows:
        cats = (row.get("errors") or {}).get("categories") or {}
        method = ((row.get("estimate") or {}).get("assumptions") or {}).get("activations_method")
        lines.append(f"{row['id'][:52]:52} " + " ".join(f"{pct(cats.get(n)):>11}" for n in names)
                     + f" {str(method)[:10]:>10}")
    return lines


def summary_text(kit: Kit) -> str:
    """The whole summary: environment, stages, tables, OOM, overhead, event sizes, pytest, files."""
    r = kit.results
    env = r.get("environment") or {}
    lines = [f"ftwatch GPU truth kit{' (DRY RUN, CPU, tiny shapes)' if kit.dry_run else ''}: "
             f"{env.get('device_name', '?')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}; {r['kit'].get('elapsed_s')} s of {kit.deadline_s:.0f}"]
    grid = r.get("grid") or {}
    rows = grid.get("rows") or []
    lines += ["", f"grid: {sum(1 for x in rows if x.get('status') == 'ok')} rows ok of {len(rows)} run, "
              f"{len(grid.get('planned') or [])} planned; skipped: {len(grid.get('skipped') or [])}",
              "estimate (torch part = all but non_torch) vs peaks, MiB; err = (estimate - measured) / measured"]
    if kit.dry_run:
        lines.append("DRY RUN: NVML is a fake (nvml_proc, est_all err) and the allocator columns are absent on the CPU")
    lines.append("")
    lines += grid_table(rows) + ["", "categories: estimate vs probe (max over steps)", ""] + category_table(rows)
    oom = r.get("oom") or {}
    if oom:
        run = oom.get("run") or {}
        post = oom.get("post_mortem") or {}
        ex = (oom.get("explain") or {}).get("json") or {}
        lines += ["", f"OOM: budget {oom.get('budget')} -> status {oom.get('status')} (provoked: {oom.get('provoked')}), "
                      f"rc {run.get('rc')}, {run.get('seconds')} s",
                  f"  phase {post.get('phase')}, requested {mib(post.get('requested_bytes'))} MiB, "
                  f"format {post.get('format')}",
                  f"  message: {str(oom.get('message'))[:300]}",
                  f"  explain ({(oom.get('explain') or {}).get('source')}): format {ex.get('format')}, requested "
                  f"{mib(ex.get('requested_bytes'))} MiB, capacity {mib(ex.get('capacity_bytes'))} MiB, "
                  f"allocated {mib(ex.get('allocated_bytes'))} MiB"]
    fin = r.get("finished_run") or {}
    if fin:
        lines += ["", f"finished run: status {fin.get('status')}, rc {fin.get('rc')}, {fin.get('seconds')} s, "
                      f"{fin.get('events')} events"]
    over = r.get("overhead") or {}
    if over:
        lines += ["", f"probe overhead ({over.get('row')}): off {over.get('median_off')} steps/s, on "
                      f"{over.get('median_on')} steps/s -> {over.get('overhead_pct_median_pair')}% "
                      f"({over.get('ms_per_step_added')} ms/step), {over.get('pairs')} pairs"]
    flag = r.get("stop_flag") or {}
    if flag.get("median_ms") is not None:
        lines += ["", f"stop flag all-reduce ({flag.get('backend')}, one rank): {flag.get('median_ms')} ms median, "
                      f"max {flag.get('max_ms')} ms, init {flag.get('init_s')} s"]
    sizes = r.get("event_sizes") or {}
    if sizes:
        lines += ["", f"event sizes: cuda sample {_size(sizes.get('cuda_sample'))}, cpu sample "
                      f"{_size(sizes.get('cpu_sample'))}, step snapshot {_size(sizes.get('step_snapshot'))}"]
    py = r.get("pytest_gpu") or {}
    if py:
        lines += ["", f"pytest -m gpu: {py.get('status')} rc {py.get('rc')} in {py.get('seconds')} s: {py.get('summary')}"]
    imports = r.get("imports") or {}
    if imports:
        lines += ["", f"import ftwatch: from {imports.get('ftwatch_file')} (installed: {imports.get('ftwatch_installed')}); "
                      f"missing: {sorted(k for k, v in (imports.get('packages') or {}).items() if v is None)}"]
    lines += ["", "stages:"]  # last, so the device tool's output tail always shows them
    for name, stage in r.get("stages", {}).items():
        error = f"  {stage['error'][:150]}" if stage.get("error") else ""
        seconds = "-" if stage.get("seconds") is None else stage["seconds"]
        lines.append(f"  {name:22} {str(stage.get('status') or 'running'):8} {seconds} s{error}")
    if r.get("files"):
        lines += ["", "files: " + ", ".join(f"{f['name']} ({f['bytes']} B)" for f in r["files"])]
    return "\n".join(lines) + "\n"


def _size(value: Any) -> str:
    if not isinstance(value, dict) or "mean" not in value:
        return str((value or {}).get("absent", "-")) if isinstance(value, dict) else "-"
    return f"{value['mean']} B mean ({value['min']}-{value['max']}, n={value['count']})"


def write_tar(path: Path, members: list[tuple[Path, str]], extra: dict[str, bytes] | None = None,
              limit: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """A gzipped tarball of ``(file or directory, name in the archive)``; members that would push it
    past ``limit`` are left out and listed."""
    left_out: list[str] = []
    names: list[str] = []
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            names.append(name)
        for source, name in members:
            files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()
                                                             and "output" not in p.relative_to(source).parts)
            for file in files:
                arc = name if source.is_file() else f"{name}/{file.relative_to(source)}"
                if file.suffix in (".safetensors", ".bin", ".pt"):
                    continue
                if path.stat().st_size + file.stat().st_size > limit * 0.9:
                    left_out.append(arc)
                    continue
                tar.add(str(file), arcname=arc)
                names.append(arc)
    return {"members": names, "left_out": left_out}


def write_outputs(kit: Kit) -> None:
    """The fixture and run-log tarballs, the summary text, then the final JSON (files listed)."""
    readings = kit.results.get("readings") or []
    slug = (kit.results.get("environment") or {}).get("card_slug", "gpu")
    extra = {f"tests/fixtures/devices/{slug}-readings.json":
             json.dumps(jsonable({"source": (kit.results.get("environment") or {}).get("device_name"),
                                  "fake_nvml": kit.dry_run, "readings": readings}), indent=1).encode()}
    try:
        kit.results["fixtures"] = write_tar(kit.out / FIXTURES_TAR, kit.fixture_files, extra)
    except Exception as exc:  # noqa: BLE001
        kit.results["fixtures"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        kit.results["run_logs"] = write_tar(kit.out / LOGS_TAR, kit.log_dirs)
    except Exception as exc:  # noqa: BLE001
        kit.results["run_logs"] = {"error": f"{type(exc).__name__}: {exc}"}
    kit.results["files"] = out_files(kit.out)
    (kit.out / SUMMARY).write_text(summary_text(kit))
    kit.results["files"] = out_files(kit.out)
    kit.save()


def out_files(out: Path) -> list[dict[str, Any]]:
    """What is under ``$OUT`` now, with the device tool's limits checked."""
    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out)
        files.append({"name": str(rel), "bytes": path.stat().st_size,
                      "ok": path.stat().st_size <= MAX_FILE_BYTES and len(rel.parts) <= 3
                      and all(NAME_OK.match(part) for part in rel.parts)})
    return files
