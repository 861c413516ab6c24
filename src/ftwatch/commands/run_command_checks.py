"""The checks of ``ftwatch run -- COMMAND`` before anything starts, and the run's name.

The command must be found (``PATH``, or a path) and be Python: an interpreter (``python``,
``python3.11``, ``pypy3``), or a script whose ``#!`` line names one (the entry points
``accelerate``, ``torchrun``, ``trl``, ``axolotl``, ``llamafactory-cli`` are such scripts).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftwatch.commands.usage import UsageError

#: An interpreter's file name.
_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?(t|d|m)?(\.exe)?$")
#: How much of a script's start is read for its ``#!`` line (pip's long-path form takes two lines).
_SHEBANG_BYTES = 1024


def is_python_name(name: str) -> bool:
    """Whether a file name is a Python interpreter's (``python3``, ``python3.11``, ``pypy3``)."""
    return bool(_PYTHON_NAME.match(os.path.basename(name)))


def shebang_names_python(path: Path) -> bool:
    """Whether the script at ``path`` starts with a ``#!`` line running Python (also pip's
    ``#!/bin/sh`` + ``'''exec' /long/path/python "$0"`` form)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SHEBANG_BYTES)
    except OSError:
        return False
    if not head.startswith(b"#!"):
        return False
    lines = head.decode("utf-8", "replace").splitlines()
    words = lines[0][2:].split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if words and is_python_name(words[0]):
        return True
    if len(lines) > 1 and lines[1].startswith("'''exec'"):
        try:
            exec_words = shlex.split(lines[1])
        except ValueError:
            return False
        return len(exec_words) > 1 and is_python_name(exec_words[1])
    return False


def check_command(command: list[str]) -> str:
    """The full path of the command's executable; :class:`UsageError` (one line) when it is not
    found or not Python."""
    if not command:
        raise UsageError("nothing after --: give the command to run (ftwatch run -- python train.py)")
    first = command[0]
    found = shutil.which(first)
    if found is None:
        hint = f" (did you mean: ftwatch run -- python {first}?)" if first.endswith(".py") else ""
        raise UsageError(f"command not found: {first}{hint}")
    if is_python_name(found) or is_python_name(os.path.realpath(found)) or shebang_names_python(Path(found)):
        return found
    raise UsageError(f"{first} is not a Python program ({found}): ftwatch runs Python training commands "
                     "(python train.py, accelerate launch, torchrun, trl, axolotl, llamafactory-cli)")


def run_name(command: list[str]) -> str:
    """The run's name: the first ``.py`` argument's stem, else ``-m``'s module (a launcher's
    ``-m torch.distributed.run`` passed over), else the program's."""
    for word in command[1:]:
        if word.endswith(".py"):
            return Path(word).stem or "run"
    modules = [command[i + 1] for i in range(1, len(command) - 1) if command[i] == "-m"]
    for module in modules:
        if module not in (*_TORCHRUN_MODULES, "accelerate.commands.launch"):
            return module.rsplit(".", 1)[-1] or "run"
    return Path(command[0]).stem or "run"


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``ftwatch run [OPTIONS] -- COMMAND...``: the arguments before ``--`` and the command after
    (``None`` when this is not ``run`` or there is no ``--``)."""
    words = [w for w in argv if not w.startswith("-")]
    if not words or words[0] != "run" or "--" not in argv:
        return argv, None
    cut = argv.index("--")
    if cut < argv.index("run"):
        return argv, None
    return argv[:cut], argv[cut + 1:]


@dataclass(frozen=True)
class Launch:
    """A launcher's job on this node, as its command line says: ``torchrun`` or ``accelerate launch``."""

    launcher: str
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0

    @property
    def world_size(self) -> int:
        """Every rank of the job, on all nodes."""
        return self.nproc_per_node * self.nnodes


_TORCHRUN_MODULES = ("torch.distributed.run", "torch.distributed.launch")
_OPTIONS = {
    "torchrun": {"nproc": ("--nproc-per-node", "--nproc_per_node"), "nnodes": ("--nnodes",),
                 "node_rank": ("--node-rank", "--node_rank")},
    "accelerate": {"nproc": ("--num_processes", "--num-processes"), "nnodes": ("--num_machines", "--num-machines"),
                   "node_rank": ("--machine_rank", "--machine-rank")},
}


#: ``accelerate launch`` starts several processes (through torchrun) with one of these.
_ACCELERATE_MULTI = ("--multi_gpu", "--multi-gpu", "--use_fsdp", "--use-fsdp", "--use_deepspeed", "--use-deepspeed")


def launch_of(command: list[str]) -> Launch | None:
    """The launcher's job when the command is ``torchrun``/``python -m torch.distributed.run`` or
    ``accelerate launch`` with a process count over one given on its command line; else ``None``
    (one process, or a count only a config file knows: followed as one process)."""
    program = os.path.basename(command[0]) if command else ""
    rest: list[str] | None = None
    kind = ""
    if program == "torchrun":
        kind, rest = "torchrun", command[1:]
    elif program == "accelerate" and command[1:2] == ["launch"]:
        kind, rest = "accelerate", command[2:]
    elif is_python_name(program) and "-m" in command[1:3]:
        at = command.index("-m")
        module = command[at + 1] if at + 1 < len(command) else ""
        if module in _TORCHRUN_MODULES:
            kind, rest = "torchrun", command[at + 2:]
        elif module == "accelerate.commands.launch":
            kind, rest = "accelerate", command[at + 2:]
    if rest is None:
        return None
    values = _launcher_options(rest)
    if kind == "accelerate" and ("--cpu" in values or not any(f in values for f in _ACCELERATE_MULTI)):
        return None  # accelerate's simple launcher: one process (a config file may say otherwise: then seen)
    names = _OPTIONS[kind]
    nproc = _whole(values, names["nproc"])
    if nproc is None or nproc < 2:
        return None
    nnodes_text = next((values[n] for n in names["nnodes"] if n in values), "1")
    nnodes = max(1, _whole({"n": nnodes_text.split(":")[-1]}, ("n",)) or 1)
    if kind == "accelerate":  # its --num_processes counts every machine's
        nproc = max(1, nproc // nnodes)
    return Launch(kind, nproc, nnodes, _whole(values, names["node_rank"]) or 0)


def _launcher_options(words: list[str]) -> dict[str, str]:
    """``--opt value`` and ``--opt=value`` before the script (``x.py``) or ``-m``."""
    values: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-m", "--module"):
            break
        if not word.startswith("-"):
            previous = words[i - 1] if i else ""
            if word.endswith(".py") or not (previous.startswith("--") and "=" not in previous):
                break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if eq:
                values[name] = value
            elif i + 1 < len(words) and not words[i + 1].startswith("-"):
                values[name] = words[i + 1]
            else:
                values[name] = ""
        i += 1
    return values


def _whole(values: dict[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in values:
            try:
                return int(values[name])
            except ValueError:
                return None
    return None
