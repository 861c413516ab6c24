"""Device readings taken by the kit itself, independently of the probe: NVML and the allocator.

On the GPU these are the real ``pynvml`` and ``torch.cuda`` figures; in the dry run NVML is a
fake (marked ``fake: true`` everywhere it appears) and the allocator figures are absent. The raw
readings are also saved as a test fixture: the fields ``tests/training/test_devices.py``'s ``FakeNvml`` and
allocator monkeypatches stand in for, plus what ftwatch's own ``NvmlReader`` made of the same moment.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

GiB = 1024**3
ABSENT_DRY = "absent: dry run on the CPU (no CUDA)"


class FakeNvmlError(Exception):
    """The fake NVML's error type."""


class FakeNvml:
    """A stand-in for ``pynvml`` in the dry run: one 8 GiB GPU where this process holds 1 GiB."""

    NVMLError = FakeNvmlError

    def __init__(self) -> None:
        self.pid = os.getpid()

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        return None

    def nvmlShutdown(self) -> None:  # noqa: N802
        return None

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "fake"

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        if index != 0:
            raise FakeNvmlError("Invalid Argument")
        return "fake0"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return "fake0"

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        return "Fake GPU (dry run)"

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        return "GPU-00000000-fake"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802
        return SimpleNamespace(total=8 * GiB, used=GiB + 300 * 1024**2, free=7 * GiB - 300 * 1024**2)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        return [SimpleNamespace(pid=self.pid, usedGpuMemory=GiB)]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:  # noqa: N802
        return SimpleNamespace(gpu=0, memory=0)


class Devices:
    """The kit's own view of the device: ``torch``, ``cuda`` (bool), NVML (real, fake or none)."""

    def __init__(self, dry_run: bool) -> None:
        import torch

        self.torch = torch
        self.dry_run = dry_run
        self.cuda = (not dry_run) and torch.cuda.is_available()
        self.index = 0
        self.pid = os.getpid()
        self.nvml: Any = None
        self.nvml_fake = False
        self.nvml_error: str | None = None
        self.handle: Any = None
        if dry_run:
            self.nvml, self.nvml_fake = FakeNvml(), True
        else:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
            except Exception as exc:  # noqa: BLE001 - no NVML is a finding
                self.nvml_error = f"{type(exc).__name__}: {exc}"
        if self.nvml is not None:
            try:
                self.handle = self.nvml.nvmlDeviceGetHandleByIndex(self.index)
            except Exception as exc:  # noqa: BLE001
                self.nvml_error, self.nvml = f"{type(exc).__name__}: {exc}", None

    @property
    def device(self) -> str:
        """The torch device string runs use."""
        return f"cuda:{self.index}" if self.cuda else "cpu"

    # -- per step ---------------------------------------------------------------------------------
    def nvml_used(self) -> dict[str, Any]:
        """``used`` (the whole device), ``process`` (this pid) and ``total`` from NVML, or why not."""
        if self.nvml is None:
            return {"absent": self.nvml_error or "no NVML"}
        out: dict[str, Any] = {"fake": True} if self.nvml_fake else {}
        try:
            info = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            out.update(used=int(info.used), total=int(info.total))
        except Exception as exc:  # noqa: BLE001
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["process"] = self._process_bytes()
        return out

    def _process_bytes(self) -> int | None:
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if int(proc.pid) == self.pid:
                    used = getattr(proc, "usedGpuMemory", None)
                    return int(used) if used is not None else None
        except Exception:  # noqa: BLE001
            return None
        return None

    def allocator(self) -> dict[str, Any]:
        """The allocator's figures now (peaks since the last reset), or why they are absent."""
        if not self.cuda:
            return {"absent": ABSENT_DRY if self.dry_run else "no CUDA"}
        cuda = self.torch.cuda
        stats = cuda.memory_stats(self.index)
        return {"allocated": int(cuda.memory_allocated(self.index)), "reserved": int(cuda.memory_reserved(self.index)),
                "max_allocated": int(cuda.max_memory_allocated(self.index)),
                "max_reserved": int(cuda.max_memory_reserved(self.index)),
                "alloc_retries": int(stats.get("num_alloc_retries", 0)), "ooms": int(stats.get("num_ooms", 0))}

    def reset_peaks(self) -> None:
        """Reset the allocator's peak counters (between rows)."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.index)

    def free(self) -> dict[str, Any]:
        """Collect garbage, empty the allocator cache, reset the peaks; what is still held after."""
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize(self.index)
            self.torch.cuda.empty_cache()
            self.reset_peaks()
        return self.allocator()

    def sync(self) -> None:
        """Wait for the GPU (timings)."""
        if self.cuda:
            self.torch.cuda.synchronize(self.index)

    # -- fixtures -----------------------------------------------------------------------------------
    def raw_reading(self, label: str) -> dict[str, Any]:
        """Everything NVML and the allocator say now, raw, for the fixture file."""
        reading: dict[str, Any] = {"label": label, "pid": self.pid, "nvml": self._raw_nvml(),
                                   "allocator": self._raw_allocator(), "ftwatch_nvml_reader": self._ftwatch_reader()}
        return reading

    def _raw_nvml(self) -> dict[str, Any]:
        if self.nvml is None:
            return {"absent": self.nvml_error or "no NVML"}
        nvml, handle = self.nvml, self.handle
        out: dict[str, Any] = {"fake": self.nvml_fake}
        calls = {
            "name": lambda: _text(nvml.nvmlDeviceGetName(handle)),
            "uuid": lambda: _text(nvml.nvmlDeviceGetUUID(handle)),
            "driver": lambda: _text(nvml.nvmlSystemGetDriverVersion()),
            "device_count": lambda: int(nvml.nvmlDeviceGetCount()),
            "memory_info": lambda: _fields(nvml.nvmlDeviceGetMemoryInfo(handle), ("total", "used", "free", "reserved")),
            "processes": lambda: [_fields(p, ("pid", "usedGpuMemory")) for p in
                                  nvml.nvmlDeviceGetComputeRunningProcesses(handle)],
            "utilization": lambda: _fields(nvml.nvmlDeviceGetUtilizationRates(handle), ("gpu", "memory")),
        }
        for key, call in calls.items():
            try:
                out[key] = call()
            except Exception as exc:  # noqa: BLE001 - "Not Supported" is part of the fixture
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def _raw_allocator(self) -> dict[str, Any]:
        if not self.cuda:
            return {"absent": ABSENT_DRY if self.dry_run else "no CUDA"}
        cuda = self.torch.cuda
        stats = cuda.memory_stats(self.index)
        keep = ("num_alloc_retries", "num_ooms", "num_device_alloc", "num_device_free", "allocated_bytes.all.current",
                "allocated_bytes.all.peak", "reserved_bytes.all.current", "reserved_bytes.all.peak",
                "active_bytes.all.current", "inactive_split_bytes.all.current", "segment.all.current")
        props = cuda.get_device_properties(self.index)
        return {"memory_allocated": int(cuda.memory_allocated(self.index)),
                "memory_reserved": int(cuda.memory_reserved(self.index)),
                "max_memory_allocated": int(cuda.max_memory_allocated(self.index)),
                "max_memory_reserved": int(cuda.max_memory_reserved(self.index)),
                "memory_stats": {k: int(stats[k]) for k in keep if k in stats},
                "mem_get_info": [int(x) for x in cuda.mem_get_info(self.index)],
                "device_properties": {"name": props.name, "total_memory": int(props.total_memory),
                                      "major": props.major, "minor": props.minor,
                                      "uuid": str(getattr(props, "uuid", "") or "")}}

    def _ftwatch_reader(self) -> Any:
        """What ftwatch's ``NvmlReader`` reads at the same moment (the fixture's expected output)."""
        if self.nvml is None:
            return None
        try:
            from ftwatch.training.probe.devices import NvmlReader

            return NvmlReader(self.index, pid=self.pid, nvml=self.nvml).read()
        except Exception as exc:  # noqa: BLE001 - a moved module must not stop the kit
            return {"error": f"{type(exc).__name__}: {exc}"}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = getattr(obj, name, None)
        out[name] = int(value) if isinstance(value, int) or hasattr(value, "__index__") else value
    return out


class ReplayNvml:
    """A ``pynvml`` stand-in that answers with one saved reading of the fixture file
    (``tests/fixtures/devices/<card>-readings.json``): how a test replays a real card's NVML."""

    class NVMLError(Exception):
        """What the saved reading recorded as an error of that call."""

    def __init__(self, reading: dict[str, Any]) -> None:
        self.raw = reading["nvml"]

    def _answer(self, key: str) -> Any:
        value = self.raw.get(key)
        if value is None or (isinstance(value, dict) and "error" in value):
            raise self.NVMLError((value or {}).get("error", f"{key} not recorded"))
        return value

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802 - NVML's names
        return "replay0"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return "replay0"

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        return str(self._answer("name"))

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802
        return SimpleNamespace(**self._answer("memory_info"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        return [SimpleNamespace(**p) for p in self._answer("processes")]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:  # noqa: N802
        return SimpleNamespace(**self._answer("utilization"))
