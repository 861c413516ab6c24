"""Read a CUDA out-of-memory message and say what it means, with the fixes its numbers support.

PyTorch has printed its out-of-memory error in several shapes over the years. Every one starts
with ``<DEVICE> out of memory. Tried to allocate <size>``; what follows differs:

``current`` (torch >= 2.2)::

    CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of
    which 1.23 GiB is free. [Process 4321 has 3.00 GiB memory in use.] Including non-PyTorch
    memory, this process has 77.91 GiB memory in use. [20.00 GiB allowed; ]Of the allocated
    memory 75.10 GiB is allocated by PyTorch, [with 1.00 GiB allocated in private pools (e.g.,
    CUDA Graphs), ]and 2.30 GiB is reserved by PyTorch but unallocated. If reserved but
    unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True ...

``v2.1``: the same clauses with the typo ``total capacty of`` and ``max_split_size_mb`` advice.

``legacy`` (torch 1.4 to 2.0)::

    CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 22.20 GiB total capacity; 21.50 GiB
    already allocated; 12.06 MiB free; [20.00 GiB allowed; ]21.70 GiB reserved in total by PyTorch)

``legacy_cached`` (torch <= 1.3): the same with ``9.50 GiB cached)``; "cached" was the old name
of what is now "reserved" (allocated plus unallocated cache).

``accelerator_error``: ``CUDA error: out of memory`` (``torch.AcceleratorError`` or
``RuntimeError``), raised by a CUDA call outside the caching allocator (context creation, cuBLAS
or cuDNN workspaces, NCCL, a kernel); ``thc_runtime_error``: the pre-1.0
``cuda runtime error (2) : out of memory``. Neither carries numbers.

Which process is which. Since 2.1 the message lists every process NVML sees on the device, one
clause each: ``Including non-PyTorch memory, this process has X memory in use`` is the process
that raised the error (its PID equals ``getpid()``); each ``Process N has X memory in use`` is
another process. Inside a container NVML reports host PIDs, which differ from ``getpid()``, so the
raising process then shows up as a ``Process N`` clause and no clause says "this process". That
process holds at least what PyTorch reserved (allocated plus reserved-but-unallocated), so when no
clause names this process, the smallest ``Process N`` holding at least that much is taken to be
this process (``self_pid_guess``) and the others stay "other processes".

Sizes are PyTorch's ``format_size``: ``bytes`` up to 1024, then KiB, MiB, GiB (binary, two
decimals). Some PyTorch backends print KB/MB/GB for the same binary units, so every multiple is
read as a power of 1024 here. Figures rounded to two decimals are read as printed: the byte
counts are as exact as the message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ftwatch.common.units import format_bytes, parse_size

#: Short names of the message shapes, newest first.
FORMATS: tuple[str, ...] = (
    "current", "v2.1", "legacy", "legacy_cached", "truncated", "accelerator_error", "thc_runtime_error",
)

#: Which PyTorch versions printed each shape (for people reading the explanation).
FORMAT_VERSIONS: dict[str, str] = {
    "current": "torch 2.2 or newer",
    "v2.1": "torch 2.1",
    "legacy": "torch 1.4 to 2.0",
    "legacy_cached": "torch 0.4.1 to 1.3",
    "truncated": "the message is cut short after the requested size",
    "accelerator_error": "a CUDA error without figures",
    "thc_runtime_error": "torch 0.4.0 or older, without figures",
}

#: Fragmentation (reserved but unallocated) counts as large from this share of the capacity.
FRAGMENTATION_SHARE = 0.10
#: A figure may exceed the capacity by this share (and MiB) before it is implausible: sizes are
#: rounded to two decimals, and NVML and the allocator count at slightly different moments.
PLAUSIBLE_SLACK = 0.01
#: Units PyTorch prints (K/M/G/T multiples; "KB" from some backends means KiB too).
_KNOWN_MULTIPLES = ("K", "M", "G", "T")
#: Digits a printed size, GPU index or PID can have; longer ones are not figures.
_MAX_DIGITS = 24
#: Memory in CUDA-graph private pools is worth a suggestion from this share of the capacity.
PRIVATE_POOL_SHARE = 0.05
#: The non-PyTorch part of this process (CUDA context, workspaces) is worth a note from here.
NON_PYTORCH_SHARE = 0.05

# Any sign, any length and any unit letter are read, so that an impossible figure is reported as
# such (see :func:`check_plausible`) rather than making the message unrecognisable.
_SIZE = r"(-?\d+(?:\.\d+)?)\s*(bytes?|[A-Za-z]i?B|B)\b"
_ANCHOR = re.compile(r"\b([A-Za-z]+) out of memory\.\s*Tried to allocate " + _SIZE)
_ERROR_TYPE = re.compile(r"((?:[\w]+\.)*\w*(?:Error|Exception))\s*:\s*$")
_CURRENT_HEAD = re.compile(
    r"GPU (\d+) has a total (capacity|capacty) of " + _SIZE + r" of which " + _SIZE + r" is free"
)
_SELF_CLAUSE = re.compile(r"Including non-PyTorch memory, this process has " + _SIZE + r" memory in use")
_OTHER_CLAUSE = re.compile(r"Process (\d+) has " + _SIZE + r" memory in use")
_ALLOWED = re.compile(_SIZE + r" allowed;")
_ALLOCATED = re.compile(r"Of the allocated memory " + _SIZE + r" is allocated by PyTorch")
_PRIVATE = re.compile(r"with " + _SIZE + r" allocated in private pools")
_UNALLOCATED = re.compile(_SIZE + r" is reserved by PyTorch but unallocated")
_LEGACY_GROUP = re.compile(r"\(\s*GPU (\d+);([^)]*)\)")
_LEGACY_CLAUSES = {
    "capacity": re.compile(_SIZE + r" total capacity"),
    "allocated": re.compile(_SIZE + r" already allocated"),
    "free": re.compile(_SIZE + r" free"),
    "allowed": re.compile(_SIZE + r" allowed"),
    "reserved": re.compile(_SIZE + r" reserved in total by PyTorch"),
    "cached": re.compile(_SIZE + r" cached"),
}
_ACCELERATOR = re.compile(r"\b([A-Za-z]+) error: out of memory", re.IGNORECASE)
_THC = re.compile(r"\bcuda runtime error \(2\)\s*:\s*out of memory", re.IGNORECASE)
_TRAILER = re.compile(
    r"\.?\s*If reserved (?:but unallocated )?memory is (?:large|>> allocated memory) try setting [^.]*?"
    r"to avoid fragmentation\.(?:\s*See documentation for Memory Management(?: and PYTORCH_CUDA_ALLOC_CONF)?"
    r"(?:\s*\(https?://[^)\s]*\))?)?"
)
_LONG_NUMBER = re.compile(r"\d{" + str(_MAX_DIGITS + 1) + ",}")
# How far past "Tried to allocate" the clauses of one message can reach (8 processes fit easily).
_MESSAGE_SPAN = 2000


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


# --- parsing ------------------------------------------------------------------------------------

def size_to_bytes(number: str, unit: str) -> int:
    """Bytes of one size as PyTorch prints it (``"1.23", "GiB"``); K/M/G/T multiples are binary.

    Raises ``ValueError`` saying why for what no PyTorch prints: a negative figure, a figure of
    more digits than any size has, a unit beyond TiB (``ZiB``), 8 EiB or more.
    """
    unit = unit.strip()
    if number.startswith("-"):
        raise ValueError("is negative")
    if len(number) > _MAX_DIGITS:
        raise ValueError(f"has {len(number)} digits")
    if unit.lower().startswith("byte") or unit == "B":
        return parse_size(number)
    if unit[0].upper() not in _KNOWN_MULTIPLES:
        raise ValueError(f"is in {unit}, a unit PyTorch never prints")
    try:
        return parse_size(f"{number}{unit[0].upper()}iB")
    except ValueError:
        raise ValueError("is 8 EiB or more") from None


def _shown(match: re.Match[str], first: int) -> str:
    number = match.group(first)
    if len(number) > _MAX_DIGITS:
        number = number[:12] + "…"
    return f"{number} {match.group(first + 1)}"


def _size(diag: OomDiagnosis, what: str, match: re.Match[str] | None, first: int = 1) -> int | None:
    """The bytes of one figure; a figure that cannot be a size is recorded in ``diag.problems``."""
    if match is None:
        return None
    try:
        return size_to_bytes(match.group(first), match.group(first + 1))
    except ValueError as exc:
        diag.problems.append(f"{what} {_shown(match, first)} {exc}")
        return None


def _whole(diag: OomDiagnosis, what: str, digits: str) -> int | None:
    """A GPU index or PID; one longer than any is recorded in ``diag.problems``."""
    if len(digits) > 10:
        diag.problems.append(f"{what} {digits[:12]}… has {len(digits)} digits")
        return None
    return int(digits)


def _normalise(text: str) -> str:
    """One line, single spaces: pasted messages arrive wrapped, indented or with ``\\n`` escapes."""
    text = text.replace("\\n", " ")
    return re.sub(r"\s+", " ", text).strip()


def parse_oom_message(text: str) -> OomDiagnosis | None:
    """Parse the last out-of-memory message found in ``text``; ``None`` when there is none.

    ``text`` may be a whole traceback or log: the last ``... out of memory. Tried to allocate``
    message wins (the most recent error); without one, a bare ``CUDA error: out of memory`` is
    recognised as the number-less ``accelerator_error`` format.
    """
    flat = _normalise(text)
    anchors = list(_ANCHOR.finditer(flat))
    if anchors:
        return _parse_allocator_message(flat, anchors[-1])
    bare = list(_ACCELERATOR.finditer(flat))
    if bare:
        last = bare[-1]
        return OomDiagnosis(
            format="accelerator_error", message=_excerpt(flat, last.start(), last.end()),
            error_type=_error_type_before(flat, last.start()), device_kind=last.group(1).upper(),
        )
    thc = list(_THC.finditer(flat))
    if thc:
        last = thc[-1]
        return OomDiagnosis(format="thc_runtime_error", message=_excerpt(flat, last.start(), last.end()),
                            error_type=_error_type_before(flat, last.start()))
    return None


def _excerpt(flat: str, start: int, end: int) -> str:
    line_end = flat.find(" File \"", end)
    stop = len(flat) if line_end < 0 else line_end
    return flat[start:min(stop, end + 200)].strip()


def _error_type_before(flat: str, start: int) -> str | None:
    match = _ERROR_TYPE.search(flat[max(0, start - 80):start])
    return match.group(1) if match else None


def _parse_allocator_message(flat: str, anchor: re.Match[str]) -> OomDiagnosis:
    body = flat[anchor.end():anchor.end() + _MESSAGE_SPAN]
    diag = OomDiagnosis(
        format="truncated", message="", error_type=_error_type_before(flat, anchor.start()),
        device_kind=anchor.group(1).upper(),
    )
    diag.requested_bytes = _size(diag, "the request", anchor, 2)
    head = _CURRENT_HEAD.search(body)
    legacy = _LEGACY_GROUP.match(body.lstrip())
    if head is not None and head.start() < 40:
        end = _parse_current(diag, body, head)
    elif legacy is not None:
        end = _parse_legacy(diag, legacy) + (len(body) - len(body.lstrip()))
    else:
        end = 0
    diag.message = _message_text(flat, anchor, body, end)
    long_number = _LONG_NUMBER.search(body)
    if long_number is not None and not diag.problems:  # a figure too long to be read at all
        diag.problems.append(f"a number of {len(long_number.group())}+ digits follows the request")
    check_plausible(diag)
    return diag


def _message_text(flat: str, anchor: re.Match[str], body: str, end: int) -> str:
    """The message itself, from the device name up to its closing advice sentence."""
    trailer = _TRAILER.match(body, end)
    if trailer is not None:
        end = trailer.end()
    elif body[end:end + 1] in (".", ")"):
        end += 1
    return (flat[anchor.start():anchor.end()] + body[:end]).strip()


def _parse_current(diag: OomDiagnosis, body: str, head: re.Match[str]) -> int:
    diag.format = "current" if head.group(2) == "capacity" else "v2.1"
    diag.device_index = _whole(diag, "the GPU index", head.group(1))
    diag.capacity_bytes = _size(diag, "the capacity", head, 3)
    diag.free_bytes = _size(diag, "the free memory", head, 5)
    end = head.end()
    rest = body[end:]
    stop = _UNALLOCATED.search(rest)
    scope = rest[:stop.end()] if stop else rest[:600]
    diag.allowed_bytes = _size(diag, "the allowed memory", _ALLOWED.search(scope))
    diag.allocated_bytes = _size(diag, "the memory allocated by PyTorch", _ALLOCATED.search(scope))
    diag.private_pools_bytes = _size(diag, "the private pools", _PRIVATE.search(scope))
    diag.reserved_unallocated_bytes = _size(diag, "the reserved but unallocated memory", stop)
    _read_processes(diag, scope)
    return end + (stop.end() if stop else 0)


def _read_processes(diag: OomDiagnosis, scope: str) -> None:
    own = _SELF_CLAUSE.search(scope)
    others = [ProcessUsage(pid=_whole(diag, "a PID", m.group(1)) or 0,
                           bytes=_size(diag, f"process {m.group(1)[:12]}", m, 2) or 0)
              for m in _OTHER_CLAUSE.finditer(scope)]
    diag.processes_listed = own is not None or bool(others)
    if own is not None:
        diag.process_bytes = _size(diag, "this process", own)
    else:
        guess = _guess_self(others, diag.reserved_bytes)
        if guess is not None:
            diag.self_pid_guess = guess.pid
            diag.process_bytes = guess.bytes
            others = [p for p in others if p is not guess]
    diag.other_processes = others


def _guess_self(others: list[ProcessUsage], reserved: int | None) -> ProcessUsage | None:
    """The listed process that is most likely this one when no clause says "this process".

    This process holds at least what PyTorch reserved; of the processes holding that much, the one
    closest to it is the best guess. Without the reserved figure (a cut message) nobody is guessed.
    """
    if reserved is None:
        return None
    candidates = [p for p in others if p.bytes >= reserved]
    return min(candidates, key=lambda p: p.bytes) if candidates else None


def _parse_legacy(diag: OomDiagnosis, group: re.Match[str]) -> int:
    diag.device_index = _whole(diag, "the GPU index", group.group(1))
    clauses = {name: _size(diag, f"the {name} memory", rx.search(group.group(2)))
               for name, rx in _LEGACY_CLAUSES.items()}
    diag.capacity_bytes = clauses["capacity"]
    diag.allocated_bytes = clauses["allocated"]
    diag.free_bytes = clauses["free"]
    diag.allowed_bytes = clauses["allowed"]
    reserved = clauses["reserved"]
    diag.format = "legacy"
    if reserved is None and clauses["cached"] is not None:
        reserved, diag.format = clauses["cached"], "legacy_cached"
    if reserved is not None and diag.allocated_bytes is not None:
        diag.reserved_unallocated_bytes = max(reserved - diag.allocated_bytes, 0)
    return group.end()


# --- can the numbers be true? --------------------------------------------------------------------

#: The messages round each figure (to 0.01 GiB at most): sums may be off by this much.
ROUNDING_SLACK = 32 << 20


def check_plausible(diag: OomDiagnosis) -> None:
    """Add to ``diag.problems`` each figure that cannot be true of one GPU: a zero capacity, or a
    part (free memory, this process, PyTorch's allocations, another process, the allowed cap)
    larger than the whole."""
    cap = diag.capacity_bytes
    if cap is None:
        return
    if cap == 0:
        diag.problems.append("the capacity is 0 bytes")
        return
    limit = cap * (1 + PLAUSIBLE_SLACK) + (1 << 20)
    parts = [("the free memory", diag.free_bytes), ("this process's memory", diag.process_bytes),
             ("the memory allocated by PyTorch", diag.allocated_bytes),
             ("the memory reserved by PyTorch", diag.reserved_bytes), ("the private pools", diag.private_pools_bytes),
             ("the allowed memory", diag.allowed_bytes)]
    parts += [(f"process {p.pid}'s memory", p.bytes) for p in diag.other_processes]
    if diag.other_processes:
        parts.append(("the other processes' memory together", diag.other_processes_bytes))
    for what, value in parts:
        if value is not None and value > limit:
            diag.problems.append(f"{what} ({_fmt(value)}) is more than the GPU's whole capacity ({_fmt(cap)})")
    if diag.problems:
        return
    # Free memory and this process's cannot overlap: together they fit in the card (the listed
    # processes are left out of the sum: the list may name this process too).
    free, mine = diag.free_bytes, diag.process_bytes
    if free is not None and mine is not None and free + mine > limit:
        diag.problems.append(f"the free memory ({_fmt(free)}) and this process's ({_fmt(mine)}) together are "
                             f"more than the GPU's whole capacity ({_fmt(cap)})")
    # What PyTorch reserved is part of what this process holds (the figures are rounded to 0.01 GiB).
    reserved = diag.reserved_bytes if diag.reserved_bytes is not None else diag.allocated_bytes
    if reserved is not None and mine is not None and reserved > mine * (1 + PLAUSIBLE_SLACK) + ROUNDING_SLACK:
        diag.problems.append(f"the memory PyTorch holds ({_fmt(reserved)}) is more than this process has in use "
                             f"({_fmt(mine)})")


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
