"""Watching a process ftwatch did not start and does not instrument, from the outside.

NVML's per-process figures for that PID, the device totals and the other processes, and psutil's
RSS/CPU for it, written as an ordinary run log (header, notes, samples, exit) that the dashboard
follows like any other. There is no category breakdown: only the probe inside the process can
measure tensors, and the note says the one line that adds it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ftwatch.runlog.event_writer import EventWriter
from ftwatch.runlog.events import EVENTS_FILE
from ftwatch.runlog.paths import private_dir
from ftwatch.training.probe.devices import (
    DeviceSampler,
    NvmlReader,
    ReaderUnavailable,
    SystemReader,
    load_nvml,
)
from ftwatch.version import __version__

NO_BREAKDOWN = ("PID {pid} is not instrumented by ftwatch: no category breakdown, only what NVML and psutil "
                "see from outside. Add `callbacks=[FtwatchCallback()]` (from ftwatch import FtwatchCallback) "
                "to its Trainer to get one.")


def _find_gpu(pid: int) -> tuple[Any, int | None]:
    """NVML and the index of the first GPU where ``pid`` holds memory (else GPU 0, else none)."""
    try:
        nvml = load_nvml()
    except ReaderUnavailable:
        return None, None
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError:
        return nvml, None
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if any(p.pid == pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)):
                return nvml, index
        except nvml.NVMLError:
            continue
    return nvml, 0 if count else None


class ExternalWatcher:
    """Samples another process into ``run_dir/events.jsonl`` until it exits or :meth:`stop`."""

    def __init__(self, pid: int, run_dir: Path, sample_hz: float = 10.0) -> None:
        self.pid = pid
        self.run_dir = Path(run_dir)
        private_dir(self.run_dir, "run directory")
        self.process = psutil.Process(pid)
        self.writer = EventWriter(self.run_dir / EVENTS_FILE)
        self.sample_hz = sample_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ftwatch-external", daemon=True)
        self.sampler: DeviceSampler | None = None

    @property
    def log_path(self) -> Path:
        """The log the dashboard follows."""
        return self.run_dir / EVENTS_FILE

    def start(self) -> None:
        """Write the header and start sampling."""
        system = SystemReader(self.pid)
        nvml_module, index = _find_gpu(self.pid)
        nvml = None
        notes = []
        if nvml_module is not None and index is not None:
            try:
                nvml = NvmlReader(index, pid=self.pid, nvml=nvml_module)
            except ReaderUnavailable as exc:
                notes.append(("no_nvml", str(exc)))
        else:
            notes.append(("no_gpu", "no NVIDIA GPU visible through NVML: process memory (RSS) only"))
        if nvml is not None:
            device = {"type": "cuda", "index": index, "name": nvml.device_name(), "capacity": nvml.total(),
                      "capacity_source": "nvml"}
        else:
            ram = psutil.virtual_memory().total
            device = {"type": "cpu", "index": None, "name": "RAM", "capacity": ram, "capacity_source": "ram"}
        try:
            cmdline = " ".join(self.process.cmdline())[:200]
        except psutil.Error:
            cmdline = ""
        self.writer.emit("header", run_id=f"external-{self.pid}", name=f"pid {self.pid}", config_path=None,
                         pid=self.pid, host=os.uname().nodename, user=_owner(self.process),
                         versions={"ftwatch": __version__}, model=cmdline or None, device=device, budget=None,
                         sample_hz=self.sample_hz, max_steps=None, rank=0, world_size=1, external=True)
        self.writer.emit("note", code="no_breakdown", message=NO_BREAKDOWN.format(pid=self.pid))
        for code, message in notes:
            self.writer.emit("note", code=code, message=message)
        self.sampler = DeviceSampler(self.writer.emit, lambda c, m: self.writer.emit("note", code=c, message=m),
                                     self.sample_hz, lambda: None, system, nvml=nvml)
        self._thread.start()

    def _watch(self) -> None:
        interval = 1.0 / self.sample_hz
        while not self._stop.wait(interval):
            if not _running(self.process):
                self.writer.emit("exit", status="finished", step=None, by="monitor",
                                 message=f"process {self.pid} exited (its exit status is not visible from outside)")
                self.writer.close()
                return
            if self.sampler is not None:
                try:
                    self.sampler.sample_once()
                except psutil.Error:
                    continue

    def stop(self) -> None:
        """Stop watching (the process itself is never touched); the log says the viewer left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if _running(self.process):  # a later replay should not read the end as a crash
            self.writer.emit("exit", status="stopped", step=None, by="monitor",
                             message=f"stopped watching; process {self.pid} was still running")
        self.writer.close()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _owner(process: psutil.Process) -> str | None:
    try:
        return process.username()
    except psutil.Error:
        return None


def external_run_dir(state: Path, pid: int) -> Path:
    """Where the outside view of ``pid`` keeps its log."""
    return state / "external" / f"{pid}-{time.strftime('%Y%m%d-%H%M%S')}"
