"""The light commands never load the model libraries: ``ftwatch --help``, ``ls``, ``explain`` and
``replay --headless`` start in a fraction of a second because torch, transformers and peft (seconds
of import each) stay out of them. Checked the way a user would, with ``python -X importtime``: its
report names every module a process imported, late imports inside functions included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "peft")
LOG = REPO / "tests" / "fixtures" / "logs" / "cpu-finished"
OOM_TEXT = REPO / "tests" / "fixtures" / "oom" / "current.txt"


def imported_roots(*argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run ``python -X importtime ARGV`` and return the top-level packages its report names."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)
    roots = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "package":
                roots.add(name.split(".")[0])
    return roots, result


@pytest.mark.parametrize("args", [
    ("--help",),
    ("ls",),
    ("ls", "--json"),
    ("explain", str(OOM_TEXT)),
    ("explain", "--json", str(OOM_TEXT)),
    ("replay", str(LOG), "--headless"),
    ("replay", str(LOG / "events.jsonl"), "--headless", "--json"),
    ("replay", str(LOG), "--headless", "--csv"),
])
def test_a_light_command_never_imports_the_model_libraries(args: tuple[str, ...], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTWATCH_HOME", str(tmp_path / "home"))
    roots, result = imported_roots("-m", "ftwatch", *args)
    assert "ftwatch" in roots, result.stderr[-2000:]  # the report was read: ftwatch itself is in it
    assert result.returncode == 0, result.stderr[-2000:]
    assert not roots & set(HEAVY), f"{' '.join(args)} imported {sorted(roots & set(HEAVY))}"


def test_the_check_sees_a_heavy_import():
    # The same reading of the report on a process that does import torch (late, in a function, as the
    # commands would): the check above can fail.
    roots, result = imported_roots("-c", "import ftwatch\ndef late():\n    import torch\nlate()")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in roots and "ftwatch" in roots
