"""The GPU truth kit (scripts/gpu-check.sh): its dry run on the CPU, and its parts on fake CUDA figures.

The dry run does every stage on tiny shapes, so the kit cannot rot before a GPU machine is at hand;
nothing here needs a GPU. Expected figures are computed here, not read back from the kit's own sums.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from gpu_kit import grid, report, shapes  # noqa: E402
from gpu_kit.readings import Devices, FakeNvml, ReplayNvml  # noqa: E402

GiB, MiB = 1024**3, 1024**2
TENSOR = ("weights", "lora", "grads", "optimizer", "activations")
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


# -- the dry run, once for the module --------------------------------------------------------------

@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``scripts/gpu-check.sh --dry-run`` into a fresh ``$OUT``."""
    out = tmp_path_factory.mktemp("out")
    work = tmp_path_factory.mktemp("work")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_KIT_HARD_LIMIT="300",
               FTWATCH_HOME=str(work / "home"))
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--dry-run", "--work", str(work)],
                            capture_output=True, text=True, timeout=400, env=env, cwd=str(REPO))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return SimpleNamespace(out=out, work=work, stdout=result.stdout,
                           results=json.loads((out / "gpu-check.json").read_text()))


slow = pytest.mark.slow


@slow
def test_dry_run_writes_what_the_device_tool_brings_back(dry):
    files = sorted(p for p in dry.out.rglob("*") if p.is_file())
    names = {str(p.relative_to(dry.out)) for p in files}
    assert names == {"gpu-check.json", "gpu-check.txt", "pytest-gpu.txt", "fixtures.tar.gz", "run-logs.tar.gz",
                     "kit-log.txt"}
    assert len(files) <= 8
    for path in files:
        rel = path.relative_to(dry.out)
        assert len(rel.parts) <= 3 and all(NAME_OK.match(part) for part in rel.parts)
        assert path.stat().st_size <= 16 * MiB
    summary = (dry.out / "gpu-check.txt").read_text()
    assert summary in dry.stdout  # the summary is printed, so the device tool's output tail carries it
    for row in dry.results["grid"]["rows"]:
        assert row["id"] in summary


@slow
def test_dry_run_runs_every_stage_without_an_error(dry):
    stages = dry.results["stages"]
    assert {"devices", "environment", "imports", "pytest_start", "grid_first", "save_model", "oom", "overhead",
            "stop_flag", "grid_second", "finished_run", "pytest_finish", "event_sizes", "outputs"} <= set(stages)
    assert {name: s["status"] for name, s in stages.items() if s["status"] != "ok"} == {}
    assert dry.results["kit"]["dry_run"] is True
    assert dry.results["kit"]["elapsed_s"] < dry.results["kit"]["deadline_s"]
    imports = dry.results["imports"]
    assert imports["ftwatch_file"] == str(REPO / "src" / "ftwatch" / "__init__.py")  # ftwatch from src/
    for name in ("textual", "textual_plotext", "plotext"):  # absent on the GPU image; here blocked by the kit
        assert imports["packages"][name] in (None, "installed, blocked by the kit")
        assert not any(name in imported for step in ("import ftwatch", "ftwatch.Probe", "ftwatch.cli parser")
                       for imported in imports[step])
    assert dry.results["pytest_gpu"]["rc"] == 0  # no GPU here: every gpu test skips, none fails


@slow
def test_each_grid_row_joins_the_probe_with_counts_made_here(dry):
    grid_state = dry.results["grid"]
    rows = grid_state["rows"]
    assert [r["id"] for r in rows] == [r.id for r in shapes.dry_rows()]
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert [s["step"] for s in row["steps"]] == list(range(1, grid_state["steps_per_row"] + 1))
        for step in row["steps"]:
            cats = step["categories"]
            assert set(TENSOR) <= set(cats)
            # on the CPU the probe's weights and adapters are exactly the parameter bytes of the model built
            assert cats["weights"] == row["param_bytes"]["frozen"]
            assert cats["lora"] == row["param_bytes"]["trainable"]
            assert cats["grads"] == row["param_bytes"]["trainable"]  # one gradient per trainable parameter
            assert "absent" in step["allocator"]  # CUDA-only figures are marked, not zero
            assert step["nvml"]["fake"] is True
        est = row["estimate"]["estimate_bytes"]
        assert est["total"] == sum(v for k, v in est.items() if k != "total")
        lora = row["errors"]["categories"]["lora"]
        assert lora["error_pct"] == round(100.0 * (est["lora"] - cats["lora"]) / cats["lora"], 1)
    calibrated = rows[0]["estimate"]["calibrated"]  # the first row is calibrated too (on the CPU here)
    assert calibrated["device"] == "cpu" and [c["layers"] for c in calibrated["copies"]] == [1, 2]
    assert calibrated["estimate_bytes"]["total"] > 0 and "calibrated" not in rows[1]["estimate"]


@slow
def test_the_dry_run_exercises_the_cli_paths(dry):
    oom = dry.results["oom"]
    assert oom["estimate_cli"]["rc"] == 0 and oom["estimate_cli"]["json"]["estimate_bytes"]["total"] > 0
    assert oom["estimate_in_process"]["agrees_with_cli"] is True
    assert oom["run"]["summary"]["capacity_source"] == "budget"
    assert oom["run"]["summary"]["capacity_bytes"] == int(oom["budget"].removesuffix("MiB")) * MiB
    assert oom["provoked"] is False  # the CPU allocator is not capped by the budget
    explained = oom["explain"]["json"]
    assert explained["format"] == "current"
    assert explained["capacity_bytes"] == int(15.77 * GiB)  # the literal in current_allowed.txt
    assert dry.results["finished_run"]["status"] == "finished"
    sizes = dry.results["event_sizes"]
    assert "absent" in sizes["cuda_sample"]
    assert 50 < sizes["cpu_sample"]["mean"] < 1000 and sizes["step_snapshot"]["count"] > 0
    assert dry.results["stop_flag"]["backend"] == "gloo" and dry.results["stop_flag"]["reps"] == 200
    over = dry.results["overhead"]
    assert len(over["steps_per_s_off"]) == len(over["steps_per_s_on"]) == over["pairs"]


@slow
def test_fixtures_tarball_holds_readings_and_a_replayable_run_log(dry):
    with tarfile.open(dry.out / "fixtures.tar.gz") as tar:
        names = tar.getnames()
        readings = json.loads(tar.extractfile("tests/fixtures/devices/dryrun-readings.json").read())
        log_name = "tests/fixtures/logs/cpu-dryrun-finished/events.jsonl"
        events = [json.loads(line) for line in tar.extractfile(log_name).read().splitlines()]
    assert log_name in names
    assert readings["fake_nvml"] is True and readings["readings"]
    for reading in readings["readings"]:
        raw = reading["nvml"]
        assert reading["ftwatch_nvml_reader"]["total"] == raw["memory_info"]["total"]
        assert reading["ftwatch_nvml_reader"]["process"] == raw["processes"][0]["usedGpuMemory"]
    from ftwatch.training.probe.devices import NvmlReader

    for reading in readings["readings"]:  # the fixture holds all NvmlReader needs: replayed, it reads the same
        replayed = NvmlReader(0, pid=reading["pid"], nvml=ReplayNvml(reading)).read()
        assert replayed == reading["ftwatch_nvml_reader"]
    assert [e["kind"] for e in events[:2]] == ["note", "header"] and events[-1]["kind"] == "exit"  # the starting note
    assert events[-1]["status"] == "finished"
    with tarfile.open(dry.out / "run-logs.tar.gz") as tar:
        logs = tar.getnames()
    assert any(n.startswith("grid/") and n.endswith("events.jsonl") for n in logs)
    assert not any(n.endswith(".safetensors") for n in logs)


# -- parts, without the dry run ----------------------------------------------------------------------

def test_the_shapes_are_the_real_models():
    """Parameter counts of the real shapes, built on the meta device, are the published ones."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    published = {"LLAMA3_8B": 8_030_261_248, "QWEN25_1_5B": 1_543_714_304, "GEMMA3_1B": 999_885_952}
    for name, count in published.items():
        fields = dict(getattr(shapes, name))
        fields.pop("architectures")
        fields.pop("torch_dtype")
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_the_grid_varies_every_factor_alone_against_the_base_early():
    rows = shapes.grid_rows()
    assert rows[0] == shapes.BASE and len({r.id for r in rows}) == len(rows)
    first = rows[:12]
    base = dataclasses.asdict(shapes.BASE)
    alone = set()
    for row in first:
        diff = {k for k, v in dataclasses.asdict(row).items() if v != base[k]}
        if len(diff) == 1:
            alone |= diff
    assert alone >= {"model", "dtype", "batch", "seq", "r", "targets", "checkpointing", "attn"}
    values = {(k, v) for row in rows for k, v in dataclasses.asdict(row).items()}
    for wanted in (("dtype", "float32"), ("dtype", "bfloat16"), ("batch", 1), ("batch", 4), ("seq", 512),
                   ("seq", 2048), ("r", 8), ("r", 64), ("targets", "attention"), ("targets", "all-linear"),
                   ("checkpointing", True), ("checkpointing", False), ("attn", "sdpa"), ("attn", "eager")):
        assert wanted in values
    assert sum(1 for r in rows if sum(dataclasses.asdict(r)[k] != base[k] for k in base) >= 2) >= 8  # pairs


def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Devices:
    """A Devices whose torch.cuda answers with fixed figures (as test_devices.py fakes the allocator)."""
    import torch

    figures = {"memory_allocated": 5 * GiB, "memory_reserved": 7 * GiB, "max_memory_allocated": 6 * GiB,
               "max_memory_reserved": 8 * GiB}
    for name, value in figures.items():
        monkeypatch.setattr(torch.cuda, name, lambda i=None, v=value: v)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda i=None: {"num_alloc_retries": 2, "num_ooms": 1,
                                                                    "segment.all.current": 9})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (10 * GiB, 80 * GiB))
    props = SimpleNamespace(name="NVIDIA H200", total_memory=80 * GiB, major=9, minor=0, uuid="abc")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=None: props)
    devices = Devices(dry_run=True)
    devices.cuda, devices.dry_run = True, False
    return devices


def test_allocator_readings_on_fake_cuda(monkeypatch):
    devices = fake_cuda(monkeypatch)
    assert devices.allocator() == {"allocated": 5 * GiB, "reserved": 7 * GiB, "max_allocated": 6 * GiB,
                                   "max_reserved": 8 * GiB, "alloc_retries": 2, "ooms": 1}
    raw = devices.raw_reading("x")
    assert raw["allocator"]["memory_stats"] == {"num_alloc_retries": 2, "num_ooms": 1, "segment.all.current": 9}
    assert raw["allocator"]["mem_get_info"] == [10 * GiB, 80 * GiB]
    assert raw["allocator"]["device_properties"]["total_memory"] == 80 * GiB
    assert raw["nvml"]["processes"] == [{"pid": devices.pid, "usedGpuMemory": GiB}]


def test_nvml_errors_are_recorded_per_call():
    class Partial(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802 - NVML's name
            raise self.NVMLError("Not Supported")

    devices = Devices(dry_run=True)
    devices.nvml = Partial()
    raw = devices.raw_reading("x")["nvml"]
    assert raw["utilization"] == {"error": "FakeNvmlError: Not Supported"}
    assert raw["memory_info"]["total"] == 8 * GiB


def cuda_step(step: int, max_alloc: int, max_res: int, reserved: int, process: int, cats: dict) -> dict:
    return {"step": step, "allocator": {"max_allocated": max_alloc, "max_reserved": max_res, "reserved": reserved},
            "nvml": {"used": process + GiB, "process": process}, "categories": cats}


def test_peaks_and_errors_against_the_estimate_on_cuda_like_steps():
    steps = [cuda_step(1, 10 * GiB, 12 * GiB, 11 * GiB, 12 * GiB, {"activations": 3 * GiB, "other": GiB}),
             cuda_step(2, 11 * GiB, 12 * GiB, 12 * GiB, 12 * GiB + 600 * MiB, {"activations": 2 * GiB, "other": 2 * GiB})]
    peak = grid.peaks(steps)
    assert peak["max_allocated"] == 11 * GiB and peak["max_reserved"] == 12 * GiB
    assert peak["nvml_process"] == 12 * GiB + 600 * MiB
    assert peak["categories"] == {"activations": 3 * GiB, "other": 2 * GiB}
    assert peak["non_torch_measured"] == GiB  # step 1: 12 GiB NVML - 11 GiB reserved
    estimate = {"estimate_bytes": {"activations": 4 * GiB, "other": GiB, "non_torch": 512 * MiB,
                                   "total": 10 * GiB + 512 * MiB}}
    errors = grid.estimate_errors(estimate, peak)
    assert errors["allocated"]["error_bytes"] == -GiB
    assert errors["allocated"]["error_pct"] == round(-100 / 11, 1)
    assert errors["reserved"]["error_pct"] == round(-200 / 12, 1)
    assert errors["non_torch"]["error_pct"] == -50.0
    assert errors["categories"]["activations"]["error_pct"] == round(100 / 3, 1)
    table = "\n".join(report.grid_table([{"id": "r1", "status": "ok", "estimate": estimate, "peaks": peak,
                                          "errors": errors}]))
    assert f"{-100 / 11:+.1f}%" in table and "11,264" in table  # 11 GiB in MiB
    # a calibrated estimate (estimate --calibrate on the device): its allocated part is every category
    # but the allocator's cache and non_torch (11.5 GiB against 11), its reserved part adds the cache
    calibrated = {"estimate_bytes": {"weights": 8 * GiB, "activations": 3 * GiB, "other": GiB // 2,
                                     "cache": GiB, "non_torch": 600 * MiB, "total": 13 * GiB + 112 * MiB}}
    errors = grid.estimate_errors({**estimate, "calibrated": calibrated}, peak)
    assert errors["calibrated_vs_allocated"]["error_bytes"] == GiB // 2
    assert errors["calibrated_vs_reserved"]["error_bytes"] == GiB // 2  # 12.5 GiB against 12
    assert errors["calibrated_vs_nvml_process"]["error_bytes"] == 13 * GiB + 112 * MiB - (12 * GiB + 600 * MiB)
    failed = grid.estimate_errors({**estimate, "calibrated": {"error": "UsageError: quantized"}}, peak)
    assert "calibrated_vs_allocated" not in failed
    table = "\n".join(report.grid_table([{"id": "r1", "status": "ok", "estimate": estimate, "peaks": peak,
                                          "errors": errors}]))
    assert f"{50 / 11:+.1f}%" in table.splitlines()[-1]  # the calib_err column


def test_tarballs_leave_out_what_would_break_the_size_limit(tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.bin.txt"
    small.write_text("x" * 100)
    big.write_bytes(os.urandom(200_000))
    packed = report.write_tar(tmp_path / "t.tar.gz", [(small, "a/small.txt"), (big, "a/big.txt")], limit=100_000)
    assert packed["members"] == ["a/small.txt"] and packed["left_out"] == ["a/big.txt"]


def test_out_files_flags_what_the_device_tool_would_not_bring_back(tmp_path):
    (tmp_path / "ok.json").write_text("{}")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    flags = {f["name"]: f["ok"] for f in report.out_files(tmp_path)}
    assert flags == {"ok.json": True, "a/b/c/deep.txt": False, "bad name.txt": False}


def test_a_subprocess_limit_is_capped_on_the_gpu_and_takes_what_is_left_in_the_dry_run(tmp_path):
    from gpu_kit.common import Kit

    gpu = Kit(REPO, tmp_path, tmp_path, dry_run=False, deadline_s=400.0)
    dry = Kit(REPO, tmp_path, tmp_path, dry_run=True, deadline_s=400.0)
    for kit in (gpu, dry):
        kit.t0 -= 100.0  # 100 s in: about 300 s left
    assert gpu.cap(40.0, keep_s=30.0) == 40.0
    assert 269.0 < dry.cap(40.0, keep_s=30.0) <= 270.0  # a loaded CPU may take what is left
    assert 199.0 < gpu.cap(1000.0, keep_s=100.0) <= 200.0  # never past the deadline
    gpu.t0 -= 1000.0
    dry.t0 -= 1000.0
    assert gpu.cap(40.0) == dry.cap(40.0) == 5.0  # past it: still a short try, never a negative limit
