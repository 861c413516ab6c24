"""The dependency rules of docs/architecture.md, as import-linter contracts (pyproject.toml's
``[tool.importlinter]``): they hold on the tree, and each kind of forbidden import breaks them
when it is added to a copy of the package (so a contract that cannot fail would show here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root/src`` with ``root/pyproject.toml``'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_tree_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("training/probe/accounting.py", "import textual", "never import a terminal UI"),
    ("views/headless/report.py", "import torch", "Views never import torch"),
    ("runlog/state.py", "from ftwatch.views.dashboard import palette", "Layers"),
    ("analysis/oom.py", "from ftwatch.training import data", "Layers"),
    ("views/dashboard/feed.py", "from ftwatch.views.dashboard import multi_feed", "No circles"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, broken: str):
    shutil.copytree(REPO / "src" / "ftwatch", tmp_path / "src" / "ftwatch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "ftwatch" / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    broken_part = " ".join(result.stdout.split("Broken contracts", 1)[-1].split())  # unwrapped
    assert broken in broken_part, result.stdout
    assert Path(module).stem in broken_part, result.stdout  # the report names the offending module
