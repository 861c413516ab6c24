"""Read the figures of a CUDA out-of-memory message into an :class:`~ftwatch.analysis.oom.OomDiagnosis`.

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

What the figures mean is worded in :mod:`ftwatch.analysis.oom`; whether they can be true is
checked by :mod:`ftwatch.analysis.oom_plausible`, which every parse runs.
"""

from __future__ import annotations

import re

from ftwatch.analysis.oom import OomDiagnosis, ProcessUsage
from ftwatch.analysis.oom_plausible import check_plausible
from ftwatch.common.units import parse_size

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

#: Units PyTorch prints (K/M/G/T multiples; "KB" from some backends means KiB too).
_KNOWN_MULTIPLES = ("K", "M", "G", "T")
#: Digits a printed size, GPU index or PID can have; longer ones are not figures.
_MAX_DIGITS = 24

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
