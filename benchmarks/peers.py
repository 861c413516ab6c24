"""ftwatch beside the other in-process memory tools: what each adds to a LoRA fine-tune's step.

    .venv/bin/python benchmarks/peers.py [--quick] [--rounds 10] [--steps 20] [--only realistic|tiny]
                                         [--variants ...] [--malloc tuned|default]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: stormlog); a peer that is not installed is
reported as missing and left out. Everything trains on the CPU, from random weights (the realistic
model is built with transformers' ``from_config``: nothing is downloaded).

Two models, each trained by the Hugging Face ``Trainer`` with LoRA (r 16 on q_proj and v_proj):

- **realistic**: a random-weight Llama of 31.7M parameters (4 layers, hidden 384, vocabulary 32,000;
  the issue's lower bound, the cheapest to train of its range: 80 GFLOP a step), batch 4 x 256
  tokens: a step of about a second on one core;
- **tiny**: the bundled example's 170k-parameter Llama, batch 4 x 64 tokens (its example's), steps
  of milliseconds: the worst case for a fixed per-step cost.

Variants, each in a process of its own that lives for the whole benchmark:

- ``none``: no monitor, the baseline; ``none-2``: a second, identical process (an A/A control: what
  it "costs" is this machine's noise floor, and the interval it gets is the resolution);
- ``ftwatch``: ``FtwatchCallback()`` at its defaults (10 Hz sampler, activation tracking, the CPU
  peak meter and the module tree on every 10th step, a run log);
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
steps, each step timed from one step end to the next (so a monitor's step begin/end work is
inside it); the others wait blocked, so the variants share the machine's load round by round.

Two figures per variant, both against ``none`` in the same rounds:

- **cost**: the robust one. Per variant, the median step time at each position of ftwatch's
  10-step cadence (step number mod 10), averaged over the positions (``step_stats.cadence_time``):
  a cost that comes every 10th step counts at its weight, a step that a machine hiccup slowed
  does not. With a 90% bootstrap interval over the rounds (``step_stats.paired_cost``).
- **steps/s ratio**: each round's steps/s over ``none``'s (every step, hiccups included), median
  and range over the rounds: what the earlier version of this benchmark printed.

For ftwatch, the cost is then split into its ordinary steps and its measured ones (found in its run
log: the snapshots with a true peak).

``--malloc tuned`` (the default) starts every process with glibc's ``M_MMAP_THRESHOLD`` at 32 MiB
and ``M_TRIM_THRESHOLD`` at 64 GiB, so that freed memory is kept for the next step: with glibc's
defaults the realistic step's large buffers (the 131 MB logits) are mapped and faulted in afresh on
some steps and not others, and step times swing by 15-30% from step to step; tuned, a quiet
machine's steps vary by 1-2%. Every variant gets the same setting. ``--malloc default`` runs as a
user's process would.

A full run (10 rounds of 20 steps on the realistic model, 10 of 100 on the tiny one) takes about
40 minutes; ``--quick`` (3 rounds of 10 and 50 steps) about 8.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_stats import cadence_time, paired_cost, position_times  # noqa: E402

#: ftwatch's measuring cadence at its defaults (``[monitor] activations_every``): the positions
#: over which step times are taken (``step_stats.cadence_time``).
CADENCE = 10
#: glibc's allocator told to keep freed memory (``--malloc tuned``); see the module's docstring.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30)}
TINY = REPO / "examples" / "tiny-llama"
VARIANTS = ("none", "none-2", "ftwatch", "ftwatch-nomod", "stormlog", "profiler", "memtracker")
#: What each variant gives the user, for the table.
GIVES = {
    "none": "nothing",
    "none-2": "nothing (a second baseline process: the noise floor)",
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
        """Blocks at the step ends where a round starts or ends, and times each step of a round
        (from the previous step end to its own)."""

        def __init__(self) -> None:
            self.until, self.last = warmup, 0.0
            self.times: list[tuple[int, float]] = []
            self.own = (0.0, 0.0)

        def own_time(self) -> tuple[float, float]:
            return (clock.seconds, clock.thread_cpu()) if clock else (0.0, 0.0)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - Trainer's signature
            now = time.perf_counter()
            if self.last:
                self.times.append((state.global_step, now - self.last))
                self.last = now
            if state.global_step < self.until:
                return control
            if self.last:
                inline, threads = self.own_time()
                say(steps=self.times, own=[inline - self.own[0], threads - self.own[1]])
            else:
                say(ready=True)
            order = sys.stdin.readline().strip()
            if order != "go":
                control.should_training_stop = True
                return control
            self.until, self.times, self.own = state.global_step + steps, [], self.own_time()
            self.last = time.perf_counter()
            return control

    callbacks: list[Any] = []
    clock = None
    if variant.startswith("ftwatch"):
        from overhead import ProbeClock

        from ftwatch.training.probe.callback import FtwatchCallback

        clock = ProbeClock()  # times ftwatch's own code: its callbacks, hooks and threads
        clock.patch()

        modules = "off" if variant == "ftwatch-nomod" else "summary"
        callbacks.append(FtwatchCallback(log_dir=Path(tmp) / "runs" / variant, modules=modules))
    callbacks.append(Rounds())  # after ftwatch's: its step-end work is inside the timed window
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    gave = run_under(variant, trainer, model, tmp)
    say(done=True, gave=gave, measured=measured_steps(Path(tmp) / "runs" / variant))


def measured_steps(log_dir: Path) -> list[int]:
    """The steps whose snapshot in ftwatch's run log carries the true peak (its measured steps)."""
    found = []
    for log in log_dir.glob("*/events.jsonl"):
        for line in log.open():
            event = json.loads(line)
            if event.get("kind") == "snapshot" and event.get("tensor_peak") and event.get("step"):
                found.append(int(event["step"]))
    return sorted(found)


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
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               **(TUNED_MALLOC if options.malloc == "tuned" else {})}
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
    rounds: dict[str, list[list[tuple[int, float]]]] = {v: [] for v in variants}
    own = {v: [0.0, 0.0] for v in variants}  # ftwatch's own seconds: on the training thread, in its threads
    rng = random.Random(options.seed)
    for _ in range(options.rounds):
        order = variants[:]
        rng.shuffle(order)
        for v in order:
            workers[v].order("go")
            message = workers[v].read()
            rounds[v].append([(int(step), float(s)) for step, s in message["steps"]])
            own[v] = [a + b for a, b in zip(own[v], message.get("own") or (0.0, 0.0), strict=True)]
    gave, measured = {}, {}
    for v in variants:
        workers[v].order("stop")
        done = workers[v].read()
        gave[v], measured[v] = done.get("gave", ""), set(done.get("measured") or ())
        workers[v].proc.wait(timeout=300)
        workers[v].err.close()
    batch, seq_len = SHAPES[model_name]
    steps = options.steps_for[model_name]
    base_time = cadence_time([s for r in rounds["none"] for s in r], CADENCE)
    print(f"\n{model_name}: batch {batch} x {seq_len}, LoRA r16 q,v; {options.rounds} rounds of {steps} steps after "
          f"{options.warmup} warm-up; {options.threads} torch thread(s); malloc {options.malloc}; "
          f"no-monitor step {1000 * base_time:.1f} ms; {time.perf_counter() - started:.0f} s")
    print(f"  {'variant':<13} {'cost':>7} {'90% interval':>17}   {'steps/s ratio':>13} {'range':>13}  "
          "gives / collected")
    for v in variants:
        cost = paired_cost(rounds[v], rounds["none"], CADENCE, seed=options.seed)
        ratios = [sum(t for _, t in b) / sum(t for _, t in r) for r, b in zip(rounds[v], rounds["none"], strict=True)]
        print(f"  {v:<13} {cost.point:>+7.2%} {cost.low:>+8.2%} {cost.high:>+8.2%}   "
              f"{statistics.median(ratios):>13.3f} {min(ratios):>6.3f}-{max(ratios):<6.3f}  {GIVES[v]} [{gave[v]}]",
              flush=True)
    for v in missing:
        print(f"  {v:<13} not installed (pip install -e '.[bench]')")
    for v in variants:
        if measured[v]:
            split_measured(v, rounds, measured[v], base_time)
            wall = sum(t for r in rounds[v] for _, t in r)
            n = sum(len(r) for r in rounds[v])
            print(f"  {v}: its own code, timed inside: {1000 * own[v][0] / n:.2f} ms a step on the training thread "
                  f"(callbacks, hooks; not the measured steps' dispatch mode) + {own[v][1] / wall:.2%} of a core "
                  f"in its threads (sampler, analysis) = {(own[v][0] + own[v][1]) / wall:.2%} of the step")


def split_measured(variant: str, rounds: dict[str, list[list[tuple[int, float]]]], measured: set[int],
                   base_time: float) -> None:
    """ftwatch's cost on its ordinary steps and on its measured ones (every ``CADENCE``-th)."""
    positions = {step % CADENCE for step in measured}
    timed = [s for r in rounds[variant] for s in r]
    on_measured = position_times(timed, positions, CADENCE)
    ordinary = [s for s in timed if s[0] % CADENCE not in positions]
    if not on_measured or not ordinary:
        return
    ordinary_time = cadence_time(ordinary, CADENCE)
    measured_time = statistics.median(on_measured)
    share = len(positions) / CADENCE
    print(f"  {variant}: an ordinary step {1000 * ordinary_time:.1f} ms ({ordinary_time / base_time - 1:+.2%} over "
          f"none), a measured step (1 in {CADENCE}: the true peak"
          f"{'' if variant == 'ftwatch-nomod' else ', the module tree'}) {1000 * measured_time:.1f} ms "
          f"({measured_time / base_time - 1:+.2%}); averaged: ordinary {(1 - share) * (ordinary_time / base_time - 1):+.2%}"
          f" + measured {share * (measured_time / base_time - 1):+.2%}")


def main() -> None:
    """The driver, or (``--worker``) one variant's training process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 steps (50 on the tiny model)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per round on the realistic model")
    parser.add_argument("--tiny-steps", type=int, default=100, help="steps per round on the tiny model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=tuple(SHAPES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        help="only these (and none, the baseline); default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="glibc's allocator keeping freed memory (tuned, every variant alike) or as it comes")
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
        options.rounds, options.steps, options.tiny_steps, options.warmup = 3, 10, 50, 2
    options.steps_for = {"realistic": options.steps, "tiny": options.tiny_steps}
    print(f"ftwatch beside its peers ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d')})")
    with tempfile.TemporaryDirectory(prefix="ftwatch-peers-") as tmp:
        for model_name in SHAPES:
            if options.only in (None, model_name):
                measure(model_name, options, Path(tmp))


if __name__ == "__main__":
    main()
