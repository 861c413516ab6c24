"""How long ``ftwatch estimate`` of a 7B config takes, against the floor of importing its libraries.

    .venv/bin/python benchmarks/estimate_speed.py [--rounds 5]

The config: the dimensions of deepseek-llm-7b-base (``tests/fixtures/configs/...-dims``, config.json
only: the estimate never reads weights), bfloat16, LoRA r16 on q,v, micro-batch 4 x 1024 tokens,
``--gpu-memory 24GiB`` (it does not fit, so the fixes are priced as well).

Each round runs, as fresh processes and interleaved:

1. the floor: ``python -c "import torch, transformers, peft"``;
2. ``ftwatch estimate CONFIG --gpu-memory 24GiB``;
3. the same estimate in a process that times its parts (this file's ``--parts``): the imports, the
   config checks after them (the tokenizer and model-config reads), the meta-device traces of the
   estimate itself and of the fixes it prices, and the rest.

It prints the medians (wall and CPU), the ratio of the estimate to the floor, and where the time
after the imports goes. Where bitsandbytes is installed, peft imports it (and with it torch's
compiler stack, 1.8 s here) at its first LoRA wrap, not at ``import peft``; ``ftwatch estimate``
wraps only meta models and skips that import (``meta_model.skip_bitsandbytes_dispatch``). The
header says whether the floor's ``import peft`` pulled it in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DIMS = REPO / "tests" / "fixtures" / "configs" / "deepseek-llm-7b-base-dims"
DATA = REPO / "examples" / "data" / "field-notes.jsonl"
FLOOR = "import torch, transformers, peft"


def write_config(directory: Path) -> Path:
    """The 7B config the benchmark estimates."""
    path = directory / "deepseek-7b-lora.toml"
    path.write_text(f"""[model]
name = "{DIMS}"
dtype = "bfloat16"

[lora]
r = 16
lora_alpha = 32
target_modules = ["q_proj", "v_proj"]

[training]
per_device_train_batch_size = 4
gradient_accumulation_steps = 2

[data]
path = "{DATA}"
max_length = 1024
""", encoding="utf-8")
    return path


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of a child process, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def parts(config: str) -> dict[str, float]:
    """Run the estimate in this process, timing its parts (wall seconds); printed as JSON."""
    started = time.perf_counter()
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter()
    from ftwatch.analysis import advice
    from ftwatch.analysis.estimate import activation_trace
    from ftwatch.cli import main
    from ftwatch.training import config_checks

    spent: dict[str, float] = {"checks": 0.0, "traces": 0.0, "fix_traces": 0.0}
    in_advice = [False]

    def clock(name: str, function: Any) -> Any:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = "fix_traces" if name == "traces" and in_advice[0] else name
                spent[key] += time.perf_counter() - start
        return timed_call

    def in_suggest(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            in_advice[0] = True
            try:
                return function(*args, **kwargs)
            finally:
                in_advice[0] = False
        return call

    config_checks.check_config = clock("checks", config_checks.check_config)
    activation_trace.trace_activations = clock("traces", activation_trace.trace_activations)
    advice.suggest = in_suggest(advice.suggest)
    import ftwatch.commands.estimate as estimate_command

    estimate_command.check_config = config_checks.check_config
    with open(os.devnull, "w") as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            main(["estimate", config, "--gpu-memory", "24GiB"])
        finally:
            sys.stdout = stdout
    ended = time.perf_counter()
    after_imports = ended - imported
    return {"imports": imported - started, "after_imports": after_imports, **spent,
            "rest": after_imports - sum(spent.values())}


def main() -> None:
    """Interleaved rounds of the floor and the estimate; the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parts:
        print(json.dumps(parts(args.parts)))
        return
    import importlib.util

    with_bnb = importlib.util.find_spec("bitsandbytes") is not None
    floor_bnb = with_bnb and "True" in subprocess.run(
        [sys.executable, "-c", FLOOR + "; import sys; print('bitsandbytes' in sys.modules)"],
        capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="ftwatch-bench-") as tmp:
        config = str(write_config(Path(tmp)))
        walls: dict[str, list[float]] = {"floor": [], "estimate": []}
        cpus: dict[str, list[float]] = {"floor": [], "estimate": []}
        split: list[dict[str, float]] = []
        for _ in range(args.rounds):
            for name, argv in (("floor", [sys.executable, "-c", FLOOR]),
                               ("estimate", [sys.executable, "-m", "ftwatch", "estimate", config,
                                             "--gpu-memory", "24GiB"])):
                wall, cpu, _ = timed(argv)
                walls[name].append(wall)
                cpus[name].append(cpu)
            split.append(json.loads(timed([sys.executable, __file__, "--parts", config])[2]))
    median = statistics.median
    print(f"ftwatch estimate speed ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} at the end)")
    print("config: the deepseek-llm-7b-base dimensions, bfloat16, LoRA r16 q,v, 4 x 1024, --gpu-memory 24GiB")
    imported = "import peft imports it" if floor_bnb else "import peft does not import it; the estimate skips it"
    print(f"bitsandbytes installed: {f'yes ({imported})' if with_bnb else 'no'}\n")
    rows = [
        (f"floor: {FLOOR} (wall / CPU)", f"{median(walls['floor']):.2f} / {median(cpus['floor']):.2f} s"),
        ("ftwatch estimate (wall / CPU)", f"{median(walls['estimate']):.2f} / {median(cpus['estimate']):.2f} s"),
        ("ratio: estimate / floor (wall, CPU)",
         f"{median(walls['estimate']) / median(walls['floor']):.2f}x, {median(cpus['estimate']) / median(cpus['floor']):.2f}x"),
        ("where it goes (medians of the timed runs, wall):", ""),
    ]
    for key, words in (("imports", "importing torch, transformers, peft"),
                       ("after_imports", "everything after the imports"),
                       ("checks", "  the config checks (model config, tokenizer, library sections)"),
                       ("traces", "  the estimate's meta-device traces"),
                       ("fix_traces", "  the traces of the fixes it prices"),
                       ("rest", "  the rest (parsing, counting, advice, printing)")):
        rows.append((words, f"{median(s[key] for s in split):.2f} s"))
    width = max(len(a) for a, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value:>14}")


if __name__ == "__main__":
    main()
