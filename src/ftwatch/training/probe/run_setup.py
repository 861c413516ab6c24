"""The probe's start: the run log's header (device, versions, the process's place in a ``torchrun``
job), the device sampler and the registration for ``ftwatch attach``; and the writer that stands
for the log of a run that cannot be recorded.

:class:`RunSetup` is a part of :class:`ftwatch.training.probe.probe.Probe`; its methods use the
state ``Probe.__init__`` sets.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ftwatch.runlog import registry
from ftwatch.runlog.events import make_event
from ftwatch.runlog.paths import distributed_rank
from ftwatch.training.probe.devices import (
    CudaAllocatorReader,
    DeviceSampler,
    NvmlReader,
    ReaderUnavailable,
    SystemReader,
)
from ftwatch.version import __version__


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape memory use."""
    versions: dict[str, str | None] = {"ftwatch": __version__, "python": platform.python_version(),
                                       "torch": torch.__version__}
    for name in ("transformers", "peft"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return versions


class UnrecordedWriter:
    """Stands for the event writer of a run whose log cannot be created: events go to the listeners
    only (the reason was said once on stderr)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.lost_events = 0

    def emit(self, kind: str, **fields: Any) -> None:
        """Hand the event to the listeners; nothing is written."""
        record = make_event(kind, fields)
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                listener(record)

    def close(self) -> None:
        """Nothing to close."""


class RunSetup:
    """The probe's start (a part of :class:`~ftwatch.training.probe.probe.Probe`)."""

    def start(self) -> None:
        """Write the header and start the device sampler (call before the model loads). Never raises:
        what cannot be read is left out and reported."""
        try:
            system: SystemReader | None = SystemReader()
        except Exception as exc:
            system = None
            self.guard.record("system reader", exc, disable=True)
        cuda_reader = None
        pending_notes: list[tuple[str, str]] = []
        try:
            device_info, cuda_reader = self._device_info(system, pending_notes)
        except Exception as exc:
            self.guard.record("device description", exc)
            device_info = {"type": self.device.type, "index": self._cuda_index, "name": None,
                           "capacity": self.budget, "capacity_source": "budget" if self.budget else None}
        self.device_info = device_info
        self.writer.emit(
            "header", run_id=uuid.uuid4().hex[:12], name=self.name, config_path=self.config_path,
            pid=os.getpid(), host=socket.gethostname(), user=_user(), versions=library_versions(),
            model=self.model_name, device=device_info, budget=self.budget, sample_hz=self.sample_hz,
            max_steps=self.max_steps, origin=self.origin, command=self.command,
            modules=getattr(self, "modules_mode", None), **_distributed_fields(),
        )
        for code, message in pending_notes:
            self.note(code, message)
        if self.device.type != "cuda":
            reason = "no CUDA device visible to torch" if not torch.cuda.is_available() else "training on the CPU"
            self.note("no_gpu", f"{reason}: tensor accounting only, within the process's RSS, "
                                f"against {'the budget' if self.budget else 'the RAM'}")
        if system is not None:
            try:
                self._sampler = DeviceSampler(self.writer.emit, self.note, self.sample_hz,
                                              lambda: self.current_phase, system, cuda=cuda_reader,
                                              nvml=self._nvml, on_failure=self._sampler_failed)
                self._sampler.sample_once()
                self._sampler.start()
            except Exception as exc:
                self._sampler = None
                self.guard.record("device sampler", exc, disable=True)
        if isinstance(self.writer, UnrecordedWriter):
            return  # nothing to attach to
        try:
            registry.register(os.getpid(), self.run_dir, self.name)
            self._registered = True
        except Exception as exc:  # an unwritable state dir must not stop training
            self.note("no_registry", f"cannot register this run for `ftwatch attach`: {exc}")

    def _device_info(self, system: SystemReader | None,
                     pending_notes: list[tuple[str, str]]) -> tuple[dict[str, Any], CudaAllocatorReader | None]:
        """The header's ``device`` (and the allocator reader on CUDA); applies the budget on CUDA."""
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._cuda_index = index
            props = torch.cuda.get_device_properties(index)
            device_info = {"type": "cuda", "index": index, "name": props.name,
                           "capacity": int(props.total_memory), "capacity_source": "torch"}
            cuda_reader = CudaAllocatorReader(index)
            try:
                uuid_text = str(getattr(props, "uuid", "") or "")
                self._nvml = NvmlReader(index, uuid=("GPU-" + uuid_text) if uuid_text else None)
                device_info.update(name=self._nvml.device_name(), capacity=self._nvml.total(),
                                   capacity_source="nvml")
            except ReaderUnavailable as exc:
                self._nvml = None
                pending_notes.append(("no_nvml", f"{exc}: no per-process or other-process figures"))
            if self.budget:
                # a smaller card on a bigger one: the allocator refuses past the budget, for real
                fraction = min(1.0, self.budget / int(props.total_memory))
                torch.cuda.set_per_process_memory_fraction(fraction, index)
                device_info.update(capacity=min(self.budget, device_info["capacity"]), capacity_source="budget")
            return device_info, cuda_reader
        ram = system.read()["sys_total"] if system is not None else None
        return {"type": "cpu", "index": None, "name": platform.processor() or platform.machine(),
                "capacity": self.budget or ram, "capacity_source": "budget" if self.budget else "ram"}, None


def _distributed_fields() -> dict[str, Any]:
    """The header's place in a ``torchrun`` job: rank, local rank, world size, node."""
    rank, local_rank, world_size = distributed_rank()
    fields: dict[str, Any] = {"rank": rank, "world_size": world_size}
    if world_size > 1:
        fields.update(local_rank=local_rank, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1),
                      node_rank=int(os.environ.get("GROUP_RANK", 0) or 0))
    return fields


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())
