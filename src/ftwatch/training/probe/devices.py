"""Device samplers: NVML, the CUDA caching allocator and psutil, read in a background thread.

No NVML or no GPU is a normal state: the reader that cannot work is reported once (as a note)
and left out; the sampler itself never raises into the training process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil


class ReaderUnavailable(Exception):
    """A device reader cannot work on this machine (reason in the message)."""


class SystemReader:
    """This process's RSS and CPU share, and the machine's RAM.

    It runs ten times a second beside training, so on Linux it reads ``/proc`` itself through
    descriptors kept open (``/proc/<pid>/statm``, ``/proc/meminfo``) and takes its own CPU time
    from ``time.process_time()``: about a fifth of what psutil's general readers cost per sample
    (0.55 ms a sample, measured from a sampler thread). The figures are psutil's: RSS is the
    resident pages of ``statm``, ``sys_used`` is ``MemTotal - MemAvailable`` (psutil's ``total -
    available``), ``cpu_percent`` is the user and system CPU time of every thread over the wall time
    since the last reading. Elsewhere, or when a read fails, each figure comes from psutil.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.process = psutil.Process(self.pid)
        self._own = self.pid == os.getpid()
        self._statm = _open_proc(f"/proc/{self.pid}/statm")
        self._meminfo = _open_proc("/proc/meminfo")
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._cpu_mark = (time.process_time(), time.monotonic())
        if not self._own:
            self.process.cpu_percent(None)  # prime: the first call always returns 0

    def read(self) -> dict[str, Any]:
        """One reading: ``rss``, ``sys_used``, ``sys_total``, ``cpu_percent``."""
        total, available = self._ram()
        return {"rss": self._rss(), "sys_used": total - available, "sys_total": total,
                "cpu_percent": round(self._cpu_percent(), 1)}

    def _rss(self) -> int:
        if self._statm is not None:
            try:
                return int(os.pread(self._statm, 128, 0).split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                self._statm = _close(self._statm)
        return int(self.process.memory_info().rss)

    def _ram(self) -> tuple[int, int]:
        if self._meminfo is not None:
            try:
                return _meminfo_total_available(os.pread(self._meminfo, 512, 0))
            except (OSError, ValueError):
                self._meminfo = _close(self._meminfo)
        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)

    def _cpu_percent(self) -> float:
        if not self._own:
            return float(self.process.cpu_percent(None))
        cpu, wall = time.process_time(), time.monotonic()
        last_cpu, last_wall = self._cpu_mark
        self._cpu_mark = (cpu, wall)
        return 100.0 * (cpu - last_cpu) / (wall - last_wall) if wall > last_wall else 0.0

    def close(self) -> None:
        """Close the kept descriptors (readings go on through psutil)."""
        self._statm = _close(self._statm)
        self._meminfo = _close(self._meminfo)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _open_proc(path: str) -> int | None:
    """A descriptor kept open on a ``/proc`` file, or ``None`` where there is none (not Linux)."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, AttributeError):
        return None


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _meminfo_total_available(head: bytes) -> tuple[int, int]:
    """``MemTotal`` and ``MemAvailable`` (bytes) from the start of ``/proc/meminfo``; ``ValueError``
    when either is missing (a kernel before 3.14 has no ``MemAvailable``)."""
    found: dict[bytes, int] = {}
    for line in head.split(b"\n"):
        name, _, rest = line.partition(b":")
        if name in (b"MemTotal", b"MemAvailable"):
            found[name] = int(rest.split()[0]) * 1024  # kB
    if len(found) != 2:
        raise ValueError("MemTotal or MemAvailable missing from /proc/meminfo")
    return found[b"MemTotal"], found[b"MemAvailable"]


class CudaAllocatorReader:
    """``torch.cuda`` allocator counters for one device."""

    def __init__(self, device_index: int) -> None:
        import torch

        if not torch.cuda.is_available():
            raise ReaderUnavailable("no CUDA device visible to torch")
        self.torch = torch
        self.index = device_index

    def read(self) -> dict[str, Any]:
        """``allocated``, ``reserved``, ``max_allocated`` and the retry/OOM counters."""
        cuda = self.torch.cuda
        stats = cuda.memory_stats(self.index)
        return {
            "allocated": cuda.memory_allocated(self.index),
            "reserved": cuda.memory_reserved(self.index),
            "max_allocated": cuda.max_memory_allocated(self.index),
            "alloc_retries": stats.get("num_alloc_retries", 0),
            "ooms": stats.get("num_ooms", 0),
        }


def load_nvml() -> Any:
    """Import and initialise NVML; raise :class:`ReaderUnavailable` with the reason if it cannot."""
    try:
        import pynvml
    except ImportError as exc:
        raise ReaderUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise ReaderUnavailable(f"NVML is not available ({exc})") from None
    return pynvml


class NvmlReader:
    """NVML device totals, this process's usage and the other processes on one GPU."""

    def __init__(self, device_index: int = 0, uuid: str | None = None, pid: int | None = None,
                 nvml: Any = None) -> None:
        self.nvml = nvml or load_nvml()
        self.pid = pid or os.getpid()
        try:
            if uuid:
                self.handle = self.nvml.nvmlDeviceGetHandleByUUID(uuid)
            else:
                self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device_index)
        except self.nvml.NVMLError as exc:
            raise ReaderUnavailable(f"NVML cannot open GPU {uuid or device_index} ({exc})") from None

    def device_name(self) -> str:
        """The GPU's marketing name."""
        name = self.nvml.nvmlDeviceGetName(self.handle)
        return name.decode() if isinstance(name, bytes) else str(name)

    def total(self) -> int:
        """Device memory in bytes."""
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).total)

    def read(self) -> dict[str, Any]:
        """``total``, ``used``, ``free``, ``process`` (this pid), ``others`` ([[pid, bytes]]), ``util``."""
        nvml = self.nvml
        info = nvml.nvmlDeviceGetMemoryInfo(self.handle)
        reading: dict[str, Any] = {"total": int(info.total), "used": int(info.used), "free": int(info.free)}
        try:
            procs = list(nvml.nvmlDeviceGetComputeRunningProcesses(self.handle))
        except nvml.NVMLError:
            procs = None
        if procs is None:
            reading["process"] = None
            reading["others"] = None
        else:
            mine = [p for p in procs if p.pid == self.pid]
            reading["process"] = _proc_bytes(mine[0]) if mine else None
            # In a container NVML reports host PIDs: then we cannot tell ours from the others.
            reading["others"] = [[int(p.pid), _proc_bytes(p)] for p in procs if p.pid != self.pid] if mine else None
        try:
            reading["util"] = int(nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except nvml.NVMLError:
            reading["util"] = None
        return reading


def _proc_bytes(proc: Any) -> int | None:
    used = getattr(proc, "usedGpuMemory", None)
    return int(used) if isinstance(used, int) else None


class DeviceSampler:
    """Reads every available reader ``hz`` times a second and hands each sample to ``emit``.

    ``phase`` is called for the current phase name. A reader that raises is dropped after
    reporting once through ``note``; the sampler thread is a daemon and never blocks training.
    Any other failure of a tick ends the sampling: ``on_failure(exc)`` is told (once), nothing is
    raised, not even from :meth:`stop` or :meth:`sample_once`.
    """

    def __init__(self, emit: Callable[..., None], note: Callable[[str, str], None], hz: float,
                 phase: Callable[[], str | None], system: SystemReader,
                 cuda: CudaAllocatorReader | None = None, nvml: NvmlReader | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.emit = emit
        self.note = note
        self.on_failure = on_failure
        #: Set once a tick failed: the sampler has stopped for good.
        self.failed = False
        self.interval = 1.0 / hz
        self.phase = phase
        self.readers: dict[str, Any] = {"system": system}
        if cuda is not None:
            self.readers["cuda"] = cuda
        if nvml is not None:
            self.readers["nvml"] = nvml
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftwatch-sampler", daemon=True)

    def start(self) -> None:
        """Start sampling in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and take one last sample."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.sample_once()

    def sample_once(self) -> None:
        """Take and emit one sample now (nothing once the sampler has failed; never raises)."""
        if self.failed:
            return
        try:
            self._sample()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failed = True
        self._stop.set()
        if self.on_failure is not None:
            with contextlib.suppress(Exception):
                self.on_failure(exc)

    def _sample(self) -> None:
        fields: dict[str, Any] = {"phase": self.phase()}
        for name, reader in list(self.readers.items()):
            try:
                reading = reader.read()
            except Exception as exc:  # a broken reader must never reach the training loop
                del self.readers[name]
                self.note(f"{name}_reader_failed", f"{name} readings stopped: {exc}")
                continue
            if name == "system":
                fields.update(reading)
            else:
                fields[name] = reading
        self.emit("sample", **fields)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.sample_once()
        except Exception as exc:  # (sample_once never raises; this is the thread's last guard)
            self._failed(exc)
