"""Say what a CUDA out-of-memory message means, with the fixes its numbers support.

:class:`OomDiagnosis` holds the figures of one message in bytes (read by
:func:`ftwatch.analysis.oom_parse.parse_oom_message`, checked by
:mod:`ftwatch.analysis.oom_plausible`); :func:`findings` words what they say and
:func:`suggest_from_oom` ranks the fixes they size. The record, its findings and its suggestions
share this module because ``OomDiagnosis.to_json`` reports both while both read the record, so
apart they would import one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ftwatch.common.units import format_bytes

#: Fragmentation (reserved but unallocated) counts as large from this share of the capacity.
FRAGMENTATION_SHARE = 0.10
#: Memory in CUDA-graph private pools is worth a suggestion from this share of the capacity.
PRIVATE_POOL_SHARE = 0.05
#: The non-PyTorch part of this process (CUDA context, workspaces) is worth a note from here.
NON_PYTORCH_SHARE = 0.05


@dataclass
class ProcessUsage:
    """One process NVML listed on the device and what it holds there."""

    pid: int
    bytes: int


@dataclass
class OomDiagnosis:
    """What one out-of-memory message says, in bytes. A figure the message lacks is ``None``."""

    format: str
    message: str
    error_type: str | None = None
    device_kind: str = "CUDA"
    device_index: int | None = None
    requested_bytes: int | None = None
    capacity_bytes: int | None = None
    free_bytes: int | None = None
    allowed_bytes: int | None = None
    process_bytes: int | None = None
    allocated_bytes: int | None = None
    reserved_unallocated_bytes: int | None = None
    private_pools_bytes: int | None = None
    other_processes: list[ProcessUsage] = field(default_factory=list)
    processes_listed: bool = False
    self_pid_guess: int | None = None
    #: Why the figures cannot be true (each names the figure): when any, nothing is concluded.
    problems: list[str] = field(default_factory=list)

    @property
    def has_numbers(self) -> bool:
        """False for the bare ``CUDA error: out of memory`` kinds."""
        return self.requested_bytes is not None

    @property
    def reserved_bytes(self) -> int | None:
        """Everything PyTorch's caching allocator holds: allocated plus reserved-but-unallocated."""
        if self.allocated_bytes is None or self.reserved_unallocated_bytes is None:
            return None
        return self.allocated_bytes + self.reserved_unallocated_bytes

    @property
    def non_pytorch_bytes(self) -> int | None:
        """This process's memory outside the allocator (CUDA context, cuBLAS/cuDNN, NCCL)."""
        reserved = self.reserved_bytes
        if self.process_bytes is None or reserved is None:
            return None
        return max(self.process_bytes - reserved, 0)

    @property
    def other_processes_bytes(self) -> int:
        """What the other listed processes hold together (0 when none are listed)."""
        return sum(p.bytes for p in self.other_processes)

    @property
    def limit_bytes(self) -> int | None:
        """What this process may use: the per-process fraction when one is set, else the capacity."""
        return self.allowed_bytes if self.allowed_bytes is not None else self.capacity_bytes

    @property
    def shortfall_bytes(self) -> int | None:
        """How much more than the free memory the failed allocation needed (0 when it was not more)."""
        if self.requested_bytes is None or self.free_bytes is None:
            return None
        return max(self.requested_bytes - self.free_bytes, 0)

    def to_json(self, suggestions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``ftwatch explain --json`` object; ``suggestions`` default to :func:`suggest_from_oom`."""
        return {
            "format": self.format,
            "error_type": self.error_type,
            "device": self.device_index,
            "requested_bytes": self.requested_bytes,
            "capacity_bytes": self.capacity_bytes,
            "free_bytes": self.free_bytes,
            "allowed_bytes": self.allowed_bytes,
            "process_bytes": self.process_bytes,
            "allocated_bytes": self.allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "reserved_unallocated_bytes": self.reserved_unallocated_bytes,
            "private_pools_bytes": self.private_pools_bytes,
            "non_pytorch_bytes": self.non_pytorch_bytes,
            "shortfall_bytes": self.shortfall_bytes,
            "other_processes": [{"pid": p.pid, "bytes": p.bytes} for p in self.other_processes],
            "processes_listed": self.processes_listed,
            "self_pid_guess": self.self_pid_guess,
            "implausible": list(self.problems),
            "findings": findings(self),
            "suggestions": suggest_from_oom(self) if suggestions is None else suggestions,
            "message": self.message,
        }


def implausible_text(diag: OomDiagnosis) -> str:
    """One sentence: which figures are impossible and why (empty when none is)."""
    return "; ".join(diag.problems)


# --- what the numbers say -----------------------------------------------------------------------

def _fmt(n: int | None) -> str:
    """Sizes with two decimals, as PyTorch prints them."""
    return format_bytes(n, 2)


def _pct(part: int, whole: int | None) -> str:
    return f" ({100 * part / whole:.0f}% of the GPU)" if whole else ""


def findings(diag: OomDiagnosis) -> list[str]:
    """Plain statements that follow from the message's numbers, most telling first."""
    if not diag.has_numbers:
        return [
            "The message carries no numbers: a CUDA call outside PyTorch's caching allocator (CUDA "
            "context creation, cuBLAS/cuDNN workspaces, NCCL buffers, a kernel) found the GPU full.",
            "CUDA errors are reported asynchronously: the line in the traceback may not be the one "
            "that failed (CUDA_LAUNCH_BLOCKING=1 pins it down, slowly).",
        ]
    if diag.problems:
        return [f"The message's figures cannot be true ({implausible_text(diag)}): nothing is concluded "
                "from them."]
    out: list[str] = []
    out += _request_findings(diag)
    out += _allocator_findings(diag)
    out += _process_findings(diag)
    return out


def _request_findings(diag: OomDiagnosis) -> list[str]:
    req, free, cap, allowed = diag.requested_bytes or 0, diag.free_bytes, diag.capacity_bytes, diag.allowed_bytes
    if cap is not None and req > cap:
        return [f"The single allocation ({_fmt(req)}) is larger than the whole GPU ({_fmt(cap)}): "
                "freeing memory cannot help, the tensor itself must get smaller (batch, sequence length)."]
    if allowed is not None and req > allowed:
        return [f"The single allocation ({_fmt(req)}) is larger than this process's cap "
                f"({_fmt(allowed)}, torch.cuda.set_per_process_memory_fraction)."]
    if free is None:
        return [f"It tried to allocate {_fmt(req)}; the message does not say how much was free."]
    if req > free:
        return [f"It tried to allocate {_fmt(req)} with {_fmt(free)} free on the GPU: "
                f"{_fmt(req - free)} short."]
    if diag.allowed_bytes is not None:
        return [f"{_fmt(free)} was free, more than the {_fmt(req)} requested, but this process "
                f"is capped at {_fmt(diag.allowed_bytes)} (torch.cuda.set_per_process_memory_fraction)."]
    return [f"{_fmt(free)} was free, more than the {_fmt(req)} requested: the free memory is "
            "split into pieces too small for it, or another process took it at the same moment."]


def _allocator_findings(diag: OomDiagnosis) -> list[str]:
    out: list[str] = []
    cap = diag.capacity_bytes
    if diag.allocated_bytes is not None:
        out.append(f"PyTorch tensors hold {_fmt(diag.allocated_bytes)}{_pct(diag.allocated_bytes, cap)}.")
    frag = diag.reserved_unallocated_bytes
    if frag is not None and frag > 0:
        verdict = ("large: enough to have served the request if it were one piece" if diag.requested_bytes
                   and frag >= diag.requested_bytes else "cached by the allocator but not in use")
        out.append(f"{_fmt(frag)} is reserved by PyTorch but unallocated{_pct(frag, cap)}, {verdict} "
                   "(fragmentation: empty_cache() cannot return it, it sits in partly used blocks).")
    pools = diag.private_pools_bytes
    if pools:
        out.append(f"{_fmt(pools)} sits in private pools (CUDA Graphs, e.g. torch.compile "
                   "mode=\"reduce-overhead\"): reserved for the graphs, unusable by anything else.")
    non_pt = diag.non_pytorch_bytes
    if non_pt is not None and cap and non_pt >= NON_PYTORCH_SHARE * cap:
        out.append(f"{_fmt(non_pt)} of this process is outside PyTorch's allocator (CUDA context, "
                   "cuBLAS/cuDNN workspaces, NCCL buffers).")
    return out


def _process_findings(diag: OomDiagnosis) -> list[str]:
    out: list[str] = []
    if diag.process_bytes is not None:
        who = (f"PID {diag.self_pid_guess}, taken to be this process (no clause names it; inside a "
               "container NVML reports host PIDs)" if diag.self_pid_guess is not None else "This process")
        share = _pct(diag.process_bytes, diag.capacity_bytes)
        out.append(f"{who} holds {_fmt(diag.process_bytes)} in all{share}.")
    if diag.other_processes:
        listing = ", ".join(f"PID {p.pid} {_fmt(p.bytes)}" for p in diag.other_processes)
        out.append(f"Other processes hold {_fmt(diag.other_processes_bytes)} on this GPU: {listing}.")
    elif diag.processes_listed:
        out.append("No other process holds memory on this GPU.")
    elif diag.format in ("current", "v2.1"):
        out.append("The message lists no processes (NVML was not available to PyTorch).")
    return out


# --- suggestions ------------------------------------------------------------------------------------

def _suggestion(change: str, config: str | None, saves: int | None) -> dict[str, Any]:
    return {"change": change, "config": config, "saves_bytes": saves}


def _fragmentation_suggestion(diag: OomDiagnosis) -> dict[str, Any] | None:
    frag, req, cap = diag.reserved_unallocated_bytes, diag.requested_bytes, diag.capacity_bytes
    if not frag or (req is None or frag < req) and (not cap or frag < FRAGMENTATION_SHARE * cap):
        return None
    if diag.format in ("legacy", "legacy_cached"):
        return _suggestion("cap the allocator's block splitting to reduce fragmentation (this PyTorch "
                           "predates expandable segments)", "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128", frag)
    return _suggestion("let the allocator grow segments instead of splitting blocks (fragmentation)",
                       "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", frag)


def _process_suggestions(diag: OomDiagnosis) -> list[dict[str, Any]]:
    return [_suggestion(f"free the GPU memory held by PID {p.pid} (another process on this GPU)", None, p.bytes)
            for p in diag.other_processes if p.bytes > 0]


def _private_pool_suggestion(diag: OomDiagnosis) -> dict[str, Any] | None:
    pools, cap = diag.private_pools_bytes, diag.capacity_bytes
    if not pools or (cap and pools < PRIVATE_POOL_SHARE * cap):
        return None
    return _suggestion("stop capturing CUDA graphs (their private pools hold memory nothing else can use)",
                       "[training] torch_compile = false", pools)


def _cap_suggestion(diag: OomDiagnosis) -> dict[str, Any] | None:
    allowed, cap = diag.allowed_bytes, diag.capacity_bytes
    if allowed is None or cap is None or allowed >= cap:
        return None
    return _suggestion("raise or remove this process's memory cap (torch.cuda.set_per_process_memory_fraction)",
                       None, cap - allowed)


def _training_levers(current: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The usual ways to make a LoRA step smaller, none of which the message alone can size.

    Returns two lists: the levers that shrink the step's tensors (batch, sequence length), which
    are what helps when one tensor is too big, and the rest (checkpointing, base-model precision).
    """
    step: list[dict[str, Any]] = []
    model: list[dict[str, Any]] = []
    if not current.get("gradient_checkpointing"):
        model.append(_suggestion("recompute activations in backward instead of keeping them "
                                 "(gradient checkpointing)", "[training] gradient_checkpointing = true", None))
    batch = current.get("per_device_train_batch_size")
    if batch is None or batch > 1:
        accum = current.get("gradient_accumulation_steps") or 1
        new_batch = max(int(batch) // 2, 1) if batch else 1
        detail = f"; gradient_accumulation_steps = {int(accum) * int(batch) // new_batch}" if batch else ""
        step.append(_suggestion("a smaller micro-batch with more gradient accumulation (same effective batch)",
                                f"[training] per_device_train_batch_size = {new_batch}{detail}", None))
    max_length = current.get("max_length")
    if max_length is None or max_length > 64:
        value = str(max(int(max_length) // 2, 64)) if max_length else "<half the current value>"
        step.append(_suggestion("shorter sequences (activations grow with the sequence length)",
                                f"[data] max_length = {value}", None))
    if not current.get("load_in_4bit"):
        model.append(_suggestion("load the frozen base model in 4 bits (QLoRA)",
                                 "[model] load_in_4bit = true", None))
    if current.get("dtype") not in ("bfloat16", "float16") and not current.get("load_in_4bit"):
        model.append(_suggestion("load the base model in bfloat16 instead of float32",
                                 '[model] dtype = "bfloat16"', None))
    return step, model


def _rank(items: list[dict[str, Any]], shortfall: int | None) -> list[dict[str, Any]]:
    """Quantified fixes that alone cover the shortfall first, then by bytes saved."""
    def key(item: dict[str, Any]) -> tuple[int, int]:
        saves = item["saves_bytes"] or 0
        covers = shortfall is not None and saves >= shortfall
        return (0 if covers else 1, -saves)
    return sorted(items, key=key)


def suggest_from_oom(diag: OomDiagnosis, current: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Suggested fixes (``{change, config, saves_bytes}``), ranked by what the message's numbers support.

    Fixes the numbers size come first (fragmentation, other processes, CUDA-graph pools, a memory
    cap), those that alone cover the shortfall ahead of the rest; then the training levers, whose
    ``saves_bytes`` is ``None`` because the message cannot size them. When the request alone
    exceeds the GPU only the levers that shrink tensors lead. ``config`` is the exact config or
    environment line, ``None`` for an action outside the config (stopping another process).

    ``current`` optionally carries the run's settings (``per_device_train_batch_size``,
    ``gradient_accumulation_steps``, ``max_length``, ``gradient_checkpointing``, ``load_in_4bit``,
    ``dtype``): levers already in use are left out and the config lines get exact values.
    """
    step_levers, model_levers = _training_levers(current or {})
    if diag.problems:  # figures that cannot be true size nothing
        return model_levers[:1] + step_levers + model_levers[1:]
    if not diag.has_numbers:
        return model_levers[:1] + step_levers + model_levers[1:] + [
            _suggestion("see what else holds this GPU (nvidia-smi) and stop it", None, None)]
    if diag.capacity_bytes is not None and (diag.requested_bytes or 0) > diag.capacity_bytes:
        return step_levers + model_levers
    sized = (_fragmentation_suggestion(diag), _private_pool_suggestion(diag), _cap_suggestion(diag))
    quantified = [s for s in sized if s is not None]
    quantified += _process_suggestions(diag)
    return _rank(quantified, diag.shortfall_bytes) + model_levers[:1] + step_levers + model_levers[1:]
