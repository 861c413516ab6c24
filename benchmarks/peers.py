"""ftwatch beside the other in-process memory tools: steps per second of one LoRA fine-tune under each.

    .venv/bin/python benchmarks/peers.py [--quick] [--rounds 5] [--steps 20] [--only realistic|tiny]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: stormlog); a peer that is not installed is
reported as missing and left out. Everything trains on the CPU, from random weights (the realistic
model is built with transformers' ``from_config``: nothing is downloaded).

Two models, each trained by the Hugging Face ``Trainer`` with LoRA (r 16 on q_proj and v_proj):

- **realistic**: a random-weight Llama of 31.7M parameters (4 layers, hidden 384, vocabulary 32,000;
  the issue's lower bound, the cheapest to train of its range: 80 GFLOP a step), batch 4 x 256
  tokens: a step of about a second on two idle cores, several on a loaded machine;
- **tiny**: the bundled example's 170k-parameter Llama, batch 4 x 64 tokens (its example's), steps
  of milliseconds: the worst case for a fixed per-step cost.

Variants, each in a process of its own that lives for the whole benchmark:

- ``none``: no monitor;
- ``ftwatch``: ``FtwatchCallback()`` at its defaults (10 Hz sampler, activation tracking, the CPU
  peak meter and the module tree on measured steps, a run log);
- ``ftwatch-nomod``: the same with the module tree off (``modules="off"``): its cost is the difference;
- ``stormlog``: stormlog's ``CPUMemoryTracker`` (its default 0.5 s sampling thread) started
  around ``trainer.train()``;
- ``profiler``: ``torch.profiler.profile(profile_memory=True)`` around ``trainer.train()``;
- ``memtracker``: PyTorch's ``torch.distributed._tools.mem_tracker.MemTracker`` around it (as it
  stands it cannot track a LoRA model: it hooks the gradient of every parameter, and torch refuses
  a hook on a frozen one; the benchmark gives frozen parameters a no-op hook. And it refuses a second
  forward unless its module stats are reset: a callback resets them at each step begin).

Interleaved rounds: every process builds its model and trains the warm-up steps, then blocks at a
step end. Each round, in a new random order, the driver lets one process at a time train ``--steps``
steps and times them from that step end to the step end ``--steps`` later (so the monitor's step
begin/end work is inside the window); the others wait blocked, so the variants share the machine's
load round by round instead of one variant meeting a busy minute alone. The table gives each variant's median
steps/s, and the median and range of its per-round ratios (its steps/s in a round over ``none``'s in
the same round; 1.000 = no cost); ``cost`` is the step time that median ratio adds. A full run (5
rounds of 20 steps, both models) takes about 10 minutes on two idle cores, more on a loaded machine;
``--quick`` (3 rounds of 5 steps) about 4.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "tiny-llama"
VARIANTS = ("none", "ftwatch", "ftwatch-nomod", "stormlog", "profiler", "memtracker")
#: What each variant gives the user, for the table.
GIVES = {
    "none": "nothing",
    "ftwatch": "live breakdown: weights, LoRA, grads, optimizer, activations, cache, non-torch; by module; forecast; run log",
    "ftwatch-nomod": "the same without the module tree ([monitor] modules = \"off\")",
    "stormlog": "RSS/system memory timeline (sampled), no breakdown",
    "profiler": "per-operator allocations after the run, no categories, no live view",
    "memtracker": "per-module breakdown (params, grads, acts, optimizer, temp) after the run, no live view",
}
#: model -> (batch, sequence length)
SHAPES = {"realistic": (4, 256), "tiny": (4, 64)}


# -- the worker: one variant, one model -------------------------------------------------------------
def build(model_name: str) -> Any:
    """The LoRA model (r 16 on q, v) of ``model_name``, random weights for the realistic one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    if model_name == "realistic":
        config = LlamaConfig(vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                             tie_word_embeddings=False)
        base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


class RandomTokens:
    """An endless-enough dataset of random token rows (input ids and labels)."""

    def __init__(self, vocab: int, seq_len: int, rows: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, vocab, (rows, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def worker(variant: str, model_name: str, warmup: int, rounds: int, steps: int, tmp: str, threads: int) -> None:
    """Train under ``variant``; after the warm-up, block at a step end until the driver says ``go``
    (train ``steps`` steps, report the seconds) or ``stop``. Protocol lines on stdout start with ``@``."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(threads)
    model = build(model_name)
    batch, seq_len = SHAPES[model_name]
    total_steps = warmup + rounds * steps + 1
    data = RandomTokens(model.config.vocab_size, seq_len, batch * total_steps)
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=total_steps,
                             learning_rate=1e-4, logging_steps=10**9, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)

    def say(**fields: Any) -> None:
        print("@" + json.dumps(fields), flush=True)

    class Rounds(TrainerCallback):
        """Blocks at the step ends where a round starts or ends, and times the rounds."""

        def __init__(self) -> None:
            self.until, self.start = warmup, 0.0

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - Trainer's signature
            if state.global_step < self.until:
                return control
            if self.start:
                say(seconds=time.perf_counter() - self.start, steps=steps)
            else:
                say(ready=True)
            order = sys.stdin.readline().strip()
            if order != "go":
                control.should_training_stop = True
                return control
            self.until, self.start = state.global_step + steps, time.perf_counter()
            return control

    callbacks: list[Any] = []
    if variant.startswith("ftwatch"):
        from ftwatch.training.probe.callback import FtwatchCallback

        modules = "off" if variant == "ftwatch-nomod" else "summary"
        callbacks.append(FtwatchCallback(log_dir=Path(tmp) / "runs" / variant, modules=modules))
    callbacks.append(Rounds())  # after ftwatch's: its step-end work is inside the timed window
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    gave = run_under(variant, trainer, model, tmp)
    say(done=True, gave=gave)


def run_under(variant: str, trainer: Any, model: Any, tmp: str) -> str:
    """``trainer.train()`` under the variant's tool; returns a line on what the tool collected."""
    if variant == "stormlog":
        from stormlog import CPUMemoryTracker

        tracker = CPUMemoryTracker()
        tracker.start_tracking()
        try:
            trainer.train()
        finally:
            tracker.stop_tracking()
        return f"{len(tracker.get_events())} tracking events"
    if variant == "profiler":
        import torch.profiler

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.train()
        return f"{len(prof.events())} profiler events"
    if variant == "memtracker":
        from torch.distributed._tools.mem_tracker import MemTracker

        _let_frozen_parameters_pass()
        tracker = MemTracker()
        tracker.track_external(model)
        trainer.add_callback(_reset_each_step(tracker))
        with tracker:
            trainer.train()
        peak = tracker.get_tracker_snapshot("peak")
        total = sum(v.get("Total", 0) for v in peak.values()) if isinstance(peak, dict) else 0
        return f"peak {total / 2**20:.0f} MiB, by category and module"
    trainer.train()
    if variant.startswith("ftwatch"):
        logs = list((Path(tmp) / "runs" / variant).glob("*/events.jsonl"))
        events = sum(1 for log in logs for _ in log.open())
        return f"{events} events in its run log"
    return "-"


def _reset_each_step(tracker: Any) -> Any:
    """A Trainer callback clearing MemTracker's module stats at each step begin: it refuses a second
    forward of a module otherwise (\"does not support memory tracking for multiple iterative calls\")."""
    from transformers import TrainerCallback

    class ResetEachStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - Trainer's signature
            tracker.reset_mod_stats()
            return control

    return ResetEachStep()


def _let_frozen_parameters_pass() -> None:
    """MemTracker hooks every parameter's gradient, and torch refuses a hook on a frozen one (LoRA's
    base weights): ``RuntimeError: cannot register a hook on a tensor that doesn't require
    gradient``. For the benchmark, a frozen parameter's hook is a no-op handle (it never fires)."""
    import torch

    class NoHook:
        def remove(self) -> None:
            pass

    for name in ("register_hook", "register_post_accumulate_grad_hook"):
        original = getattr(torch.Tensor, name)

        def patched(self, hook, _original=original):  # noqa: ANN001, ANN202
            return _original(self, hook) if self.requires_grad else NoHook()

        setattr(torch.Tensor, name, patched)


# -- the driver ------------------------------------------------------------------------------------
class Worker:
    """One variant's process and its protocol pipe."""

    def __init__(self, variant: str, model_name: str, options: argparse.Namespace, tmp: Path) -> None:
        self.variant = variant
        self.dir = tmp / f"{model_name}-{variant}"
        self.dir.mkdir()
        self.err = (self.dir / "stderr.txt").open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "FTWATCH_HOME": str(self.dir / "home"),
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", variant, "--model", model_name, "--warmup", str(options.warmup),
             "--rounds", str(options.rounds), "--threads", str(options.threads), "--steps", str(options.steps_for[model_name]), "--tmp", str(self.dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env, cwd=self.dir)

    def read(self) -> dict[str, Any]:
        """The worker's next protocol message (its other output is skipped)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@"):
                return json.loads(line[1:])
        self.err.flush()
        tail = (self.dir / "stderr.txt").read_text()[-3000:]
        raise RuntimeError(f"the {self.variant} worker ended early:\n{tail}")

    def order(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()


def available(variant: str) -> bool:
    """Whether a peer's package is installed here."""
    if variant == "stormlog":
        try:
            import stormlog  # noqa: F401
        except ImportError:
            return False
    return True


def measure(model_name: str, options: argparse.Namespace, tmp: Path) -> None:
    """Start the variants, run the interleaved rounds, print the table."""
    wanted = [v for v in VARIANTS if not options.variants or v in options.variants or v == "none"]
    variants = [v for v in wanted if available(v)]
    missing = [v for v in wanted if v not in variants]
    started = time.perf_counter()
    workers = {}
    for v in variants:  # one at a time: building a model is itself CPU work that would skew the others
        workers[v] = Worker(v, model_name, options, tmp)
        workers[v].read()  # ready: built and warmed up
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    rng = random.Random(options.seed)
    steps = options.steps_for[model_name]
    for _ in range(options.rounds):
        order = variants[:]
        rng.shuffle(order)
        for v in order:
            workers[v].order("go")
            seconds[v].append(workers[v].read()["seconds"])
    gave = {}
    for v in variants:
        workers[v].order("stop")
        gave[v] = workers[v].read().get("gave", "")
        workers[v].proc.wait(timeout=300)
        workers[v].err.close()
    batch, seq_len = SHAPES[model_name]
    base = [steps / s for s in seconds["none"]]
    step_ms = 1000 / statistics.median(base)
    print(f"\n{model_name}: batch {batch} x {seq_len}, LoRA r16 q,v; {options.rounds} rounds of {steps} steps after "
          f"{options.warmup} warm-up; {options.threads} torch thread(s); no-monitor step {step_ms:.0f} ms; {time.perf_counter() - started:.0f} s")
    print(f"  {'variant':<13} {'steps/s':>8} {'ratio':>7} {'range':>15} {'cost':>7}  gives / collected")
    for v in variants:
        rates = [steps / s for s in seconds[v]]
        ratios = [r / b for r, b in zip(rates, base, strict=True)]
        ratio = statistics.median(ratios)  # paired round by round: a busy minute hits both sides
        print(f"  {v:<13} {statistics.median(rates):>8.3f} {ratio:>7.3f} "
              f"{min(ratios):>7.3f}-{max(ratios):<7.3f} {100 * (1 / ratio - 1):>+6.1f}%  {GIVES[v]} [{gave[v]}]",
              flush=True)
    for v in missing:
        print(f"  {v:<13} not installed (pip install -e '.[bench]')")


def main() -> None:
    """The driver, or (``--worker``) one variant's training process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 steps (20 on the tiny model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per round on the realistic model")
    parser.add_argument("--tiny-steps", type=int, default=100, help="steps per round on the tiny model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=tuple(SHAPES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        help="only these (and none, the baseline); default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1: a shared machine's load cannot stall a thread barrier)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=tuple(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker, options.model, options.warmup, options.rounds, options.steps, options.tmp,
               options.threads)
        return
    if options.quick:
        options.rounds, options.steps, options.tiny_steps, options.warmup = 3, 5, 20, 2
    options.steps_for = {"realistic": options.steps, "tiny": options.tiny_steps}
    print(f"ftwatch beside its peers ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d')})")
    with tempfile.TemporaryDirectory(prefix="ftwatch-peers-") as tmp:
        for model_name in SHAPES:
            if options.only in (None, model_name):
                measure(model_name, options, Path(tmp))


if __name__ == "__main__":
    main()
