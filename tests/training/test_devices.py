"""Device readers against fake NVML / allocator readings (no GPU here), and the sampler's failure rules."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftwatch.training.probe import devices
from ftwatch.training.probe.devices import DeviceSampler, NvmlReader, ReaderUnavailable, SystemReader

GiB = 1024**3


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """A stand-in for the pynvml module with one 80 GiB GPU and three processes."""

    NVMLError = FakeNvmlError

    def __init__(self, my_pid: int, container: bool = False) -> None:
        self.procs = [SimpleNamespace(pid=my_pid if not container else 999_999, usedGpuMemory=30 * GiB),
                      SimpleNamespace(pid=4242, usedGpuMemory=6 * GiB),
                      SimpleNamespace(pid=4343, usedGpuMemory=None)]

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802 - NVML's names
        if index != 0:
            raise FakeNvmlError("Invalid Argument")
        return "h0"

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        return "h0"

    def nvmlDeviceGetName(self, handle):  # noqa: N802
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        return SimpleNamespace(total=80 * GiB, used=37 * GiB, free=43 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        return self.procs

    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        raise FakeNvmlError("Not Supported")


def test_nvml_reader_splits_this_process_from_the_others():
    reader = NvmlReader(0, pid=1234, nvml=FakeNvml(1234))
    assert reader.device_name() == "NVIDIA H100 80GB HBM3"
    assert reader.read() == {"total": 80 * GiB, "used": 37 * GiB, "free": 43 * GiB, "process": 30 * GiB,
                             "others": [[4242, 6 * GiB], [4343, None]], "util": None}


def test_nvml_in_a_container_does_not_guess_which_process_is_ours():
    reading = NvmlReader(0, pid=1234, nvml=FakeNvml(1234, container=True)).read()
    assert reading["process"] is None and reading["others"] is None
    assert reading["used"] == 37 * GiB


def test_nvml_bad_device_is_unavailable_not_a_crash():
    with pytest.raises(ReaderUnavailable, match="cannot open GPU 3"):
        NvmlReader(3, nvml=FakeNvml(1))


def test_no_nvml_on_this_machine_is_reported_as_unavailable(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    with pytest.raises(ReaderUnavailable, match="NVML is not available"):
        devices.load_nvml()


def test_system_reader_reports_rss_and_ram():
    reading = SystemReader().read()
    assert 0 < reading["rss"] < reading["sys_total"]
    assert 0 < reading["sys_used"] <= reading["sys_total"]


MiB = 1024**2


def test_system_reader_agrees_with_psutil():
    """The kept /proc descriptors give psutil's own figures (read back to back)."""
    import psutil

    reader = SystemReader()
    reading = reader.read()
    vm = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    assert reading["sys_total"] == vm.total
    assert abs(reading["sys_used"] - (vm.total - vm.available)) < 512 * MiB  # others allocate meanwhile
    assert abs(reading["rss"] - rss) < 4 * MiB
    if Path("/proc/meminfo").exists():
        assert reader._statm is not None and reader._meminfo is not None  # the fast path was the one read


def test_system_reader_cpu_share_is_this_process_cpu_time_over_wall_time():
    import time

    reader = SystemReader()
    reader.read()
    start = time.process_time()
    while time.process_time() - start < 0.2:  # burn 0.2 s of CPU, however long the machine takes
        sum(range(1000))
    share = reader.read()["cpu_percent"]
    assert 5.0 < share <= 100.0 * (devices.os.cpu_count() or 1) + 5.0


def test_system_reader_falls_back_to_psutil_when_proc_cannot_be_read():
    import psutil

    reader = SystemReader()
    reader.close()
    reader._statm, reader._meminfo = 10**6, 10**6  # descriptors that do not exist: the reads fail
    reading = reader.read()
    assert reader._statm is None and reader._meminfo is None
    assert reading["sys_total"] == psutil.virtual_memory().total
    assert abs(reading["rss"] - psutil.Process().memory_info().rss) < 4 * MiB


def test_meminfo_needs_both_lines():
    head = b"MemTotal:       24683772 kB\nMemFree:        22050964 kB\nMemAvailable:   23558616 kB\nBuffers: 1 kB\n"
    assert devices._meminfo_total_available(head) == (24683772 * 1024, 23558616 * 1024)
    with pytest.raises(ValueError):
        devices._meminfo_total_available(b"MemTotal:       24683772 kB\nMemFree:        22050964 kB\n")


def test_system_reader_of_another_process_reads_its_rss():
    import subprocess
    import sys

    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        reader = SystemReader(child.pid)
        reading = reader.read()
        assert abs(reading["rss"] - psutil.Process(child.pid).memory_info().rss) < 4 * MiB
        assert reading["rss"] < psutil.Process().memory_info().rss  # the child's, not ours
    finally:
        child.communicate(b"")


def test_cuda_allocator_reader_uses_allocator_counters(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda i: {"num_alloc_retries": 3, "num_ooms": 1})
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 5 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 7 * GiB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 6 * GiB)
    assert devices.CudaAllocatorReader(0).read() == {"allocated": 5 * GiB, "reserved": 7 * GiB,
                                                     "max_allocated": 6 * GiB, "alloc_retries": 3, "ooms": 1}


def test_cuda_reader_without_cuda_is_unavailable():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ReaderUnavailable):
        devices.CudaAllocatorReader(0)


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def read(self):
        self.calls += 1
        raise RuntimeError("driver went away")


def test_a_failing_reader_is_reported_once_and_dropped():
    samples, notes = [], []
    broken = Broken()
    sampler = DeviceSampler(lambda kind, **f: samples.append(f), lambda code, msg: notes.append((code, msg)),
                            hz=100, phase=lambda: "training", system=SystemReader(), nvml=broken)
    for _ in range(3):
        sampler.sample_once()
    assert broken.calls == 1
    assert notes == [("nvml_reader_failed", "nvml readings stopped: driver went away")]
    assert len(samples) == 3 and all("rss" in s and "nvml" not in s for s in samples)
    assert samples[0]["phase"] == "training"


def test_sampler_thread_samples_in_the_background_and_stops():
    got = threading.Event()
    count = []

    def emit(kind, **fields):
        count.append(fields)
        if len(count) >= 3:
            got.set()

    sampler = DeviceSampler(emit, lambda c, m: None, hz=50, phase=lambda: None, system=SystemReader())
    sampler.start()
    assert got.wait(5)
    sampler.stop()
    n = len(count)
    threading.Event().wait(0.1)
    assert len(count) == n  # stopped: no more samples
