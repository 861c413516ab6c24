"""``ftwatch estimate`` wraps its meta models without importing bitsandbytes, and gets the same figures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import sys
skip = sys.argv[1] == "skip"
from ftwatch.analysis.estimate import meta_model
if skip:
    meta_model.skip_bitsandbytes_dispatch()
from ftwatch.analysis.estimate import estimate
from ftwatch.common.config import load_config
result = estimate(load_config(sys.argv[2]), on_gpu=False)
from peft.tuners.lora import model as lora_model
print(result.total, "bitsandbytes" in sys.modules, lora_model.is_bnb_available.__module__)
"""


def _estimate(mode: str) -> tuple[int, bool, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(REPO / "examples" / "tiny-lora.toml")],
                          capture_output=True, text=True, timeout=300, check=True)
    total, imported, module = done.stdout.split()[-3:]
    return int(total), imported == "True", module


def test_the_estimate_process_skips_bitsandbytes_and_its_figures_do_not_change():
    skipped, plain = _estimate("skip"), _estimate("plain")
    assert skipped[0] == plain[0]  # the same peak, to the byte
    assert skipped[1] is False  # bitsandbytes (and torch's compiler stack with it) never imported
    assert skipped[2] == plain[2] == "peft.import_utils"  # peft's own check is back after the wrap
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert plain[1] is True  # what the switch avoids: peft imports it on every LoRA wrap


def test_only_the_commands_that_train_nothing_turn_the_switch_on():
    """The switch changes peft's LoRA module for the time of a meta wrap: a process that wraps a real,
    maybe quantized, model (the worker, the callback, a calibration) must never turn it on."""
    src = REPO / "src" / "ftwatch"
    callers = {str(path.relative_to(src)) for path in src.rglob("*.py")
               if any(line.strip().startswith("skip_bitsandbytes_dispatch()") for line in path.read_text().splitlines())}
    assert callers == {"commands/estimate.py", "commands/fit.py"}
