"""The bootstrap of ``ftwatch run -- COMMAND``: chained to the environment's own sitecustomize,
never fatal, free until a training library is imported; the post-import hooks themselves."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftwatch.training.wrapped import SITE_DIR
from ftwatch.training.wrapped.bootstrap import PostImportFinder
from ftwatch.training.wrapped.session import _claim

PROBE = ("import sys; from ftwatch.training.wrapped.bootstrap import PostImportFinder; "
         "print('hooked' if any(isinstance(f, PostImportFinder) for f in sys.meta_path) else 'bare'); "
         "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")


def _python(code: str, tmp_path: Path, *path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (SITE_DIR, *path)),
               FTWATCH_RUN_DIR=str(tmp_path / "run"), FTWATCH_WRAPPED="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)


def test_installed_and_free_until_a_training_library_is_imported(tmp_path):
    done = _python(PROBE, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hooked", "[]"]  # nothing heavy imported, no probe, no log
    assert done.stderr == ""
    assert not (tmp_path / "run").exists()


def test_a_torch_import_alone_makes_no_probe(tmp_path):
    done = _python("import torch; print(torch.tensor([1.0]).sum().item())", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1.0"
    assert not (tmp_path / "run").exists()  # the optimizer hooks are registered; no training call was made


def test_chains_to_the_sitecustomize_the_environment_had(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = 'yes'\n")
    done = _python(PROBE + "; import os; print(os.environ.get('THEIRS_RAN'))", tmp_path, theirs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hooked", "[]", "yes"]


def test_a_broken_original_sitecustomize_costs_one_line_and_not_the_bootstrap(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("raise RuntimeError('their site is broken')\n")
    done = _python(PROBE, tmp_path, theirs)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == "hooked"
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "their site is broken" in lines[0]


def test_a_bootstrap_that_cannot_load_leaves_the_command_running_unmonitored(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "ftwatch").mkdir(parents=True)
    (shadow / "ftwatch" / "__init__.py").write_text("raise RuntimeError('ftwatch is broken here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), str(SITE_DIR)]))  # the broken one first
    done = subprocess.run([sys.executable, "-c", "print('the command ran')"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == "the command ran"
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "unmonitored" in lines[0] and "ftwatch is broken here" in lines[0]


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("ftw_fake_lib", "ftw_fake_broken"):
        sys.modules.pop(name, None)


def _finder(hooks: dict) -> PostImportFinder:
    finder = PostImportFinder(hooks)
    sys.meta_path.insert(0, finder)
    return finder


def test_a_hook_runs_once_after_the_module_executed(module_dir):
    (module_dir / "ftw_fake_lib.py").write_text("VALUE = 41\n")
    seen: list[int] = []
    finder = _finder({"ftw_fake_lib": lambda module: seen.append(module.VALUE)})
    try:
        module = importlib.import_module("ftw_fake_lib")
        importlib.reload(module)
        assert seen == [41]
        assert module.__loader__.exec_module.__self__ is module.__loader__  # the loader is left as it was
    finally:
        sys.meta_path.remove(finder)


def test_a_spec_asked_for_and_not_loaded_leaves_the_hook_for_the_import(module_dir):
    """transformers asks ``importlib.util.find_spec("peft")`` whether peft is installed, long before
    the script imports it: the hook must still run at the import."""
    (module_dir / "ftw_fake_lib.py").write_text("VALUE = 42\n")
    seen: list[int] = []
    finder = _finder({"ftw_fake_lib": lambda module: seen.append(module.VALUE)})
    try:
        assert importlib.util.find_spec("ftw_fake_lib") is not None
        assert seen == [] and "ftw_fake_lib" not in sys.modules
        importlib.import_module("ftw_fake_lib")
        assert seen == [42]
    finally:
        sys.meta_path.remove(finder)


def test_a_failing_hook_never_fails_the_import(module_dir, capsys):
    (module_dir / "ftw_fake_broken.py").write_text("VALUE = 1\n")

    def hook(module):
        raise ValueError("our patch broke")

    finder = _finder({"ftw_fake_broken": hook})
    try:
        assert importlib.import_module("ftw_fake_broken").VALUE == 1
    finally:
        sys.meta_path.remove(finder)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "our patch broke" in err[0] and "unmonitored" in err[0]


def test_one_process_claims_a_run_directory(tmp_path):
    assert _claim(tmp_path / "run")
    assert not _claim(tmp_path / "run")  # a helper process started by the script: it stays unmonitored
    assert (tmp_path / "run" / ".wrapped-pid").read_text() == str(os.getpid())
