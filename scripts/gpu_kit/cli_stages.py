"""Stages that go through ftwatch's command line and pytest, as a user would, in subprocesses:
what ``import ftwatch`` pulls in, ``pytest -m gpu``, a real OOM under ``[monitor] budget``, a
finished CUDA run (the screenshots' log) and ``ftwatch explain``'s parse of the OOM message.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from gpu_kit.common import PYTEST_LOG, Kit, kill_pid, last_json_object, read_jsonl, tail, write_toml
from gpu_kit.shapes import SAVED_MODEL

MiB = 1024**2
UI_PACKAGES = ("textual", "textual_plotext", "plotext")

_IMPORTS = r"""
import importlib.util, json, sys
def top():
    std = getattr(sys, "stdlib_module_names", ())
    return {m.split('.')[0] for m in sys.modules if m.split('.')[0] not in std and not m.startswith("_")}
out = {"python": sys.version.split()[0], "executable": sys.executable}
base = top()
import ftwatch
out["ftwatch_file"] = ftwatch.__file__
try:
    import importlib.metadata as md
    out["ftwatch_installed"] = md.version("ftwatch")
except Exception as exc:
    out["ftwatch_installed"] = None
steps = [("import ftwatch", lambda: None), ("ftwatch.Probe", lambda: ftwatch.Probe),
         ("ftwatch.FtwatchCallback", lambda: ftwatch.FtwatchCallback),
         ("ftwatch.cli parser", lambda: __import__("ftwatch.cli", fromlist=["x"]).build_parser()),
         ("ftwatch.analysis.estimate", lambda: __import__("ftwatch.analysis.estimate", fromlist=["x"]))]
seen = set(base)
for name, fn in steps:
    try:
        fn()
        now = top()
        out[name] = sorted(now - seen)
        seen = now
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
avail = {}
from importlib.machinery import PathFinder
for mod in ("textual", "textual_plotext", "plotext"):  # installed? (the kit's stubs block their import)
    real = PathFinder.find_spec(mod, [p for p in sys.path if not p.endswith("no-ui")])
    avail[mod] = None if real is None else "installed, blocked by the kit"
for mod in ("torch", "transformers", "peft", "pynvml", "psutil", "prometheus_client", "pytest", "pytest_asyncio", "pytest_timeout", "accelerate"):
    try:
        spec = importlib.util.find_spec(mod)
        avail[mod] = None if spec is None else getattr(__import__(mod), "__version__", "present")
    except Exception as exc:
        avail[mod] = f"unimportable: {type(exc).__name__}: {exc}"[:200]
out["packages"] = avail
print(json.dumps(out))
"""


def make_no_ui(kit: Kit) -> Path:
    """Stub packages that refuse to import: the kit proves it needs no textual/plotext (the GPU
    machine's image has neither), in-process and in every subprocess."""
    root = kit.work / "no-ui"
    for name in UI_PACKAGES:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by the GPU kit')\n")
    return root


def start_imports(kit: Kit) -> dict[str, Any]:
    """Start the check of what ``import ftwatch`` (and its entry points) pull in, in the background."""
    return kit.spawn([kit.python, "-c", _IMPORTS], kit.work / "imports.txt")


def finish_imports(kit: Kit, handle: dict[str, Any] | None) -> dict[str, Any]:
    """Collect the import check: third-party modules per entry point, which packages exist here."""
    if not handle:
        raise RuntimeError("the import check was not started")
    result = kit.collect(handle, kit.cap(60.0))
    parsed = last_json_object(result["output"])
    out = {"rc": result["rc"], "seconds": result["seconds"], "timed_out": result["timed_out"]}
    if isinstance(parsed, dict):
        out.update(parsed)
    else:
        out["output"] = tail(result["output"], 2000)
    kit.results["imports"] = out
    return out


def gpu_test_files(kit: Kit) -> list[str]:
    """Test files that hold ``gpu``-marked tests (only these are collected: the others may need textual)."""
    return sorted(str(p.relative_to(kit.repo)) for p in (kit.repo / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text(errors="replace"))


def start_pytest(kit: Kit) -> dict[str, Any]:
    """Start ``pytest -m gpu`` in the background (its output goes to ``pytest-gpu.txt``)."""
    files = gpu_test_files(kit)
    args = [kit.python, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", *files]
    if importlib.util.find_spec("pytest_timeout") is not None:  # on the GPU image: a hung test ends alone
        args[3:3] = ["--timeout", "150"]
    kit.results["pytest_gpu"] = {"files": files, "args": args[1:], "status": "running"}
    return kit.spawn(args, kit.out / PYTEST_LOG)


def finish_pytest(kit: Kit, handle: dict[str, Any] | None, limit_s: float) -> dict[str, Any]:
    """Wait for the background pytest (at most ``limit_s``, killed past that) and read its summary."""
    if not handle:
        raise RuntimeError("pytest was not started")
    result = kit.collect(handle, limit_s)
    lines = [line for line in result["output"].splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if " in " in line and any(
        word in line for word in ("passed", "failed", "skipped", "error", "deselected", "no tests"))), None)
    out = {**kit.results.get("pytest_gpu", {}), "rc": result["rc"], "timed_out": result["timed_out"],
           "seconds": result["seconds"], "summary": summary,
           "results": [line for line in lines if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))][:50],
           "status": "timed_out" if result["timed_out"] else "passed" if result["rc"] == 0 else "failed"}
    kit.results["pytest_gpu"] = out
    return out


# -- a saved model for the ``ftwatch run`` stages ---------------------------------------------------
def save_model(kit: Kit, devices: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A random-weight model of ``config`` saved with ``save_pretrained``, a tokenizer, a text file."""
    from gpu_kit.grid import build_model

    directory = kit.work / "models" / SAVED_MODEL
    directory.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    model = build_model(devices, config, "bfloat16" if devices.cuda else "float32", "sdpa")
    model.save_pretrained(str(directory))  # safetensors
    del model
    devices.free()
    tiny = kit.repo / "examples" / "tiny-llama"
    shutil.copy(tiny / "tokenizer.json", directory / "tokenizer.json")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    rng = random.Random(0)
    words = [w.strip(".,;:") for w in (kit.repo / "examples" / "data" / "field-notes.jsonl").read_text().split()
             if w.isascii() and w.strip(".,;:").isalpha()] or ["field", "notes", "memory", "model"]
    data = kit.work / "data.txt"
    data.write_text("\n".join(" ".join(rng.choice(words) for _ in range(24)) for _ in range(4000)) + "\n")
    size = sum(p.stat().st_size for p in directory.iterdir())
    return {"dir": str(directory), "data": str(data), "bytes_on_disk": size, "seconds": round(time.monotonic() - start, 1)}


def end_workers(kit: Kit) -> list[int]:
    """End every ``ftwatch run`` worker still alive (the kit is being stopped), by their logged pids."""
    ended = []
    for log in (kit.work / "cli-runs").glob("*/*/events.jsonl"):
        try:
            header = read_jsonl(log)[0]
        except (OSError, IndexError):
            continue
        if header.get("kind") == "header" and kill_pid(header.get("pid")):
            ended.append(header["pid"])
    return ended


def run_config(kit: Kit, name: str, saved: dict[str, Any], *, batch: int, seq: int, steps: int,
               budget: str | None) -> Path:
    """A ``ftwatch run`` config for the saved model (CPU in the dry run)."""
    training: dict[str, Any] = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
                                "max_steps": steps, "learning_rate": 1e-4, "logging_steps": 1, "seed": 0}
    if kit.dry_run:
        training["use_cpu"] = True
    path = kit.work / "configs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_toml(path, {
        "model": {"name": saved["dir"], "dtype": "float32" if kit.dry_run else "bfloat16"},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training": training,
        "data": {"path": saved["data"], "max_length": seq},
        "monitor": {"sample_hz": 10, "log_dir": str(kit.work / "cli-runs" / name), "budget": budget},
    })


def estimate_cli(kit: Kit, config: Path) -> dict[str, Any]:
    """``ftwatch estimate CONFIG --json``."""
    result = kit.ftwatch("estimate", str(config), "--json", timeout=kit.cap(120.0))
    parsed = last_json_object(result["stdout"])
    return {"rc": result["rc"], "seconds": result["seconds"], "json": parsed if isinstance(parsed, dict) else None,
            "stderr": tail(result["stderr"], 1500)}


def ftwatch_run(kit: Kit, config: Path, name: str, timeout: float) -> dict[str, Any]:
    """``ftwatch run CONFIG --headless --json``; its summary, its run log's exit event, its files."""
    result = kit.ftwatch("run", str(config), "--headless", "--json", timeout=timeout)
    summary = last_json_object(result["stdout"])
    out: dict[str, Any] = {"rc": result["rc"], "timed_out": result["timed_out"], "seconds": result["seconds"],
                           "summary": summary if isinstance(summary, dict) else None,
                           "stderr_tail": tail(result["stderr"], 2500), "config_toml": config.read_text()}
    logs = sorted((kit.work / "cli-runs" / name).glob("**/events.jsonl"))
    if logs:
        run_dir = logs[0].parent
        events = read_jsonl(logs[0])
        out["run_dir"] = str(run_dir)
        out["exit"] = next((e for e in reversed(events) if e.get("kind") == "exit"), None)
        out["events"] = len(events)
        out["estimate_event"] = next((e for e in events if e.get("kind") == "estimate"), None)
        kit.log_dirs.append((run_dir, f"cli/{name}"))
        if result["timed_out"]:  # the worker runs in its own session: end it by the pid its log names
            header = next((e for e in events if e.get("kind") == "header"), {})
            out["worker_killed"] = kill_pid(header.get("pid"))
    return out


def oom_stage(kit: Kit, saved: dict[str, Any]) -> dict[str, Any]:
    """A real OOM: a config whose ``[monitor] budget`` (which caps the allocator on CUDA) is below
    what its estimate says training needs, run through ``ftwatch run --headless --json``."""
    batch, seq = (2, 64) if kit.dry_run else (4, 2048)
    probe_cfg = run_config(kit, "oom-estimate", saved, batch=batch, seq=seq, steps=4, budget=None)
    est = estimate_cli(kit, probe_cfg)
    out: dict[str, Any] = {"estimate_cli": est}
    try:  # the same config in-process: the CLI and the library must agree
        from gpu_kit.grid import estimate_row

        here = estimate_row(probe_cfg, None, on_gpu=not kit.dry_run)
        cli_total = ((est.get("json") or {}).get("estimate_bytes") or {}).get("total")
        out["estimate_in_process"] = {"estimate_bytes": here.get("estimate_bytes"),
                                      "agrees_with_cli": here.get("estimate_bytes", {}).get("total") == cli_total}
    except Exception as exc:  # noqa: BLE001
        out["estimate_in_process"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    cats = ((est.get("json") or {}).get("estimate_bytes") or {})
    loading = (est.get("json") or {}).get("loading_bytes")
    if isinstance(cats.get("total"), int) and isinstance(loading, int):
        budget_bytes = loading + (cats["total"] - loading) // 3  # loads, then dies in the first step
        out["budget_rule"] = "loading_bytes + (estimated peak - loading_bytes) / 3"
    else:
        budget_bytes = int(saved["bytes_on_disk"]) + 1024 * MiB
        out["budget_rule"] = "weights on disk + 1 GiB (the estimate failed)"
    budget = f"{max(64, budget_bytes // MiB)}MiB"
    out["budget"] = budget
    config = run_config(kit, "oom", saved, batch=batch, seq=seq, steps=4, budget=budget)
    run = ftwatch_run(kit, config, "oom", timeout=kit.cap(150.0, keep_s=5.0))
    status = (run.get("summary") or {}).get("status") or (run.get("exit") or {}).get("status")
    if status == "finished" and not kit.dry_run and isinstance(loading, int) and kit.remaining() > 120:
        # the estimate was too high for the budget to bite: again, just above what loading needs
        out["first_try"] = {"budget": budget, "status": status, "summary": run.get("summary")}
        budget = f"{(loading + 256 * MiB) // MiB}MiB"
        out["budget"], out["budget_rule"] = budget, "loading_bytes + 256 MiB (the first budget did not bite)"
        config = run_config(kit, "oom2", saved, batch=batch, seq=seq, steps=4, budget=budget)
        run = ftwatch_run(kit, config, "oom2", timeout=kit.cap(150.0, keep_s=5.0))
    out["run"] = run
    exit_event = run.get("exit") or {}
    out["status"] = (run.get("summary") or {}).get("status") or exit_event.get("status")
    out["provoked"] = out["status"] == "oom"
    if kit.dry_run:
        out["note"] = "dry run on the CPU: the budget does not cap the CPU allocator, so no OOM is expected"
    out["message"] = exit_event.get("message")
    out["traceback_tail"] = tail(exit_event.get("traceback"), 2500) if exit_event.get("traceback") else None
    out["post_mortem"] = exit_event.get("oom")
    text = out["traceback_tail"] or out["message"]
    source = "this run"
    if not out["provoked"] or not text:
        text = (kit.repo / "tests" / "fixtures" / "oom" / "current_allowed.txt").read_text()
        source = "tests/fixtures/oom/current_allowed.txt (no real OOM message in this run)"
    out["explain"] = explain(kit, text, source)
    if out["provoked"] and run.get("run_dir"):
        run_dir = Path(run["run_dir"])
        slug = kit.results.get("environment", {}).get("card_slug", "gpu")
        phase = {"loading_model": "loading", "training": "training"}.get(
            str((out["post_mortem"] or {}).get("phase")), "other")
        for name in ("events.jsonl", "worker.log"):
            if (run_dir / name).exists():
                kit.fixture_files.append((run_dir / name, f"tests/fixtures/logs/cuda-{slug}-oom-{phase}/{name}"))
        message_file = kit.work / "oom-message.txt"
        message_file.write_text(text.strip() + "\n")
        kit.fixture_files.append((message_file, f"tests/fixtures/oom/{slug}_budget.txt"))
    kit.results["oom"] = out
    return out


def explain(kit: Kit, text: str, source: str) -> dict[str, Any]:
    """``ftwatch explain FILE --json`` of an OOM message."""
    path = kit.work / "explain-input.txt"
    path.write_text(text)
    result = kit.ftwatch("explain", str(path), "--json", timeout=kit.cap(60.0))
    parsed = last_json_object(result["stdout"])
    return {"source": source, "rc": result["rc"], "json": parsed if isinstance(parsed, dict) else None,
            "stderr": tail(result["stderr"], 1000), "input_tail": tail(text, 600)}


def finished_run_stage(kit: Kit, saved: dict[str, Any]) -> dict[str, Any]:
    """A CUDA run that finishes, rehearsing a 24 GiB card (``[monitor] budget``): the screenshots' log."""
    oom_run = (kit.results.get("oom") or {}).get("run") or {}
    if kit.dry_run and (oom_run.get("summary") or {}).get("status") == "finished":
        # on the CPU the budget caps nothing, so the OOM stage's run already finished: it stands for this one
        run = {**oom_run, "reused_from": "oom (dry run: the CPU run under the budget finished)"}
    else:
        batch, seq, steps = (2, 32, 3) if kit.dry_run else (2, 1024, 60)
        budget = None if kit.dry_run else "24GiB"
        config = run_config(kit, "finished", saved, batch=batch, seq=seq, steps=steps, budget=budget)
        run = ftwatch_run(kit, config, "finished", timeout=kit.cap(150.0, keep_s=5.0))
    run["status"] = (run.get("summary") or {}).get("status") or (run.get("exit") or {}).get("status")
    if run["status"] == "finished" and run.get("run_dir"):
        run_dir = Path(run["run_dir"])
        slug = kit.results.get("environment", {}).get("card_slug", "gpu")
        kind = "cpu" if kit.dry_run else "cuda"
        for name in ("events.jsonl", "worker.log"):
            if (run_dir / name).exists():
                kit.fixture_files.append((run_dir / name, f"tests/fixtures/logs/{kind}-{slug}-finished/{name}"))
    kit.results["finished_run"] = run
    return run
