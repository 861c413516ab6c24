"""Probe overhead: the bundled tiny fine-tune with the probe off and on, interleaved.

    .venv/bin/python benchmarks/overhead.py [--pairs 7] [--steps 150] [--quick] [--no-peak-meter] [--no-modules]
                                            [--mode both|probe|wrapped]

Each run builds the model, LoRA and Trainer afresh from the bundled example, trains on the CPU, and
times the steps after a warm-up (from the end of step 20 to the end of the last step) with a
timing callback placed after ftwatch's. "on" is the default probe: the Trainer callback, activation
tracking and the 10 Hz device sampler writing a real run log. The tiny model's steps take a few
milliseconds, so this is the worst case for a fixed per-step cost; a real model's steps are
hundreds of times longer. Run it on a quiet machine: other load swamps a few-percent effect.

On CPU the probe's peak meter (``peak_meter.PeakMeter``: a dispatch mode over every op of a measured
step) runs on the measured steps only; the table after the main one gives the median step time of
the measured steps and of the others in the "on" runs, so its cost per measured step and averaged
over all steps can be read. ``--no-peak-meter`` turns the meter off in the "on" runs (the probe as
before it), for a before/after comparison, and ``--no-modules`` the module attribution
(``module_meter``: module hooks and the split by module, also on the measured steps only);
``--larger-step`` times both on a larger model's step; ``--quick`` is 3 pairs of 80 steps.

The wrapped mode (:mod:`overhead_wrapped`, on by default: ``--mode both``) runs a plain Trainer
script (``tests/fixtures/scripts/trainer_script.py``) as is and under ``ftwatch run --headless --``
in fresh processes, interleaved pairs of the same ``--pairs`` and ``--steps``, and compares the
Trainer's own ``train_runtime`` (as steps/s); its rows go in the main table beside the probe's.
``--mode probe`` is the in-process comparison only, ``--mode wrapped`` the wrapped one only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from overhead_wrapped import wrapped_pairs, wrapped_table_rows

REPO = Path(__file__).resolve().parent.parent
WARMUP = 20


class ProbeClock:
    """Times every probe entry point on the training thread (callback methods, forward hooks, the
    pack hook) and reads the CPU time of the probe's own threads (sampler, analysis)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._patched: list[tuple[type, str, object]] = []

    def patch(self) -> None:
        from ftwatch.training.probe.accounting import ActivationMeter
        from ftwatch.training.probe.callback import FtwatchCallback
        from ftwatch.training.probe.probe import Probe

        targets = [(FtwatchCallback, name) for name in ("on_step_begin", "on_pre_optimizer_step",
                                                         "on_optimizer_step", "on_step_end")]
        targets += [(Probe, "_forward_pre"), (Probe, "_forward_post"), (ActivationMeter, "_pack")]
        for cls, name in targets:
            original = getattr(cls, name)
            self._patched.append((cls, name, original))
            setattr(cls, name, self._timed(original))

    def _timed(self, fn):  # noqa: ANN001, ANN202 - a plain wrapper
        clock = self

        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        return wrapper

    def unpatch(self) -> None:
        for cls, name, original in self._patched:
            setattr(cls, name, original)

    @staticmethod
    def thread_cpu(names: tuple[str, ...] = ("ftwatch-sampler", "ftwatch-analysis")) -> float:
        """CPU seconds used so far by the probe's background threads."""
        import threading

        import psutil

        ids = {t.native_id for t in threading.enumerate() if t.name in names}
        return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


def _measured_steps(run_dir: str) -> set[int]:
    """The steps whose snapshot carries the peak meter's ``tensor_peak`` (else whose forward was
    measured: no ``activations_measured: false``)."""
    from ftwatch.runlog.event_reader import read_events

    snaps = [e for e in read_events(run_dir) if e["kind"] == "snapshot" and e.get("step")]
    if any("tensor_peak" in e for e in snaps):
        return {e["step"] for e in snaps if "tensor_peak" in e}
    return {e["step"] for e in snaps if e.get("activations_measured", True)}


def train_once(with_probe: bool, steps: int, track_activations: bool = True,
               peak_meter: bool = True, modules: str = "summary") -> tuple[float, float]:
    """Steps per second of one fresh run (after the warm-up steps), by the wall clock and by the
    process's CPU time (every thread: training, sampler, analysis)."""
    import torch
    from transformers import Trainer, TrainerCallback

    from ftwatch.common.config import load_config
    from ftwatch.training.data import build_dataset, data_collator
    from ftwatch.training.library_config import build_lora_config, build_training_arguments

    cfg = load_config(REPO / "examples" / "tiny-lora.toml")
    cfg.training.update(max_steps=steps, use_cpu=True, logging_steps=10_000)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float32),
                           build_lora_config(cfg))
    marks: dict[int, tuple[float, float]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's signature
            marks[state.global_step] = (time.perf_counter(), time.process_time())
            if state.global_step in (WARMUP, steps):
                probe_marks[state.global_step] = (PROBE_CLOCK.seconds, PROBE_CLOCK.thread_cpu())

    probe_marks: dict[int, tuple[float, float]] = {}

    callbacks = []
    tmp = tempfile.mkdtemp(prefix="ftwatch-bench-")
    probe = None
    if with_probe:
        from ftwatch.training.probe.callback import FtwatchCallback
        from ftwatch.training.probe.probe import Probe

        probe = Probe(tmp, name="bench", device="cpu", sample_hz=cfg.monitor.sample_hz,
                      track_activations=track_activations, modules=modules)
        probe.start()
        probe.attach_model(model)
        if not peak_meter:  # the probe as it was before the CPU peak meter
            probe._peak_meter = None
            probe.meter.on_saved = None
        callbacks.append(FtwatchCallback(probe=probe))
    callbacks.append(Clock())
    trainer = Trainer(model=model, args=build_training_arguments(cfg, output_dir=tmp),
                      train_dataset=build_dataset(tokenizer, cfg.data, cfg.path),
                      data_collator=data_collator(tokenizer, cfg.data), callbacks=callbacks)
    trainer.train()
    if probe is not None:
        probe.finish("finished", step=steps)
    n = steps - WARMUP
    wall = marks[steps][0] - marks[WARMUP][0]
    if with_probe:
        inline = probe_marks[steps][0] - probe_marks[WARMUP][0]
        threads = probe_marks[steps][1] - probe_marks[WARMUP][1]
        PROBE_SHARES.append((inline / wall, threads / wall, 1000 * inline / n))
        measured = _measured_steps(tmp)
        times = {s: marks[s][0] - marks[s - 1][0] for s in range(WARMUP + 1, steps + 1)}
        on_measured = [t for s, t in times.items() if s in measured]
        others = [t for s, t in times.items() if s not in measured]
        if on_measured and others:
            MEASURED.append((statistics.median(on_measured), statistics.median(others),
                             len(on_measured) / len(times)))
    return n / wall, n / (marks[steps][1] - marks[WARMUP][1])


def meter_on_a_larger_step(layers: int = 8, hidden: int = 1024, seq: int = 512, reps: int = 3) -> None:
    """The peak meter's cost on a step nearer a real one: a randomly initialised Llama of
    ``layers`` x ``hidden`` (vocabulary 32,000, LoRA r=8 on q/v) at batch 1 x ``seq`` on the CPU.

    The meter's cost is per op (the dispatch mode's call and a look-up per output), not per byte,
    so it is timed where the ops are cheap (the same model at 16 tokens: the same ops, interleaved
    with and without the meter, 15 times) and set against the step at ``seq`` (median of ``reps``),
    whose own noise would hide it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftwatch.training.probe.peak_meter import PeakMeter

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=32000)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    meter = PeakMeter()

    def step(ids: torch.Tensor, metered: bool = False) -> float:
        start = time.perf_counter()
        if metered:
            meter.start()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if metered:
            meter.stop()
        return time.perf_counter() - start

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    short, long = torch.randint(0, 32000, (1, 16)), torch.randint(0, 32000, (1, seq))
    step(short)
    with Count():
        step(short)
    pairs = [(step(short), step(short, metered=True)) for _ in range(15)]
    extra = statistics.median(on - off for off, on in pairs)
    base = statistics.median(step(long) for _ in range(reps))
    print()
    print(f"Peak meter on a larger step ({layers} layers x {hidden}, batch 1 x {seq}):")
    print("| ops per step | meter per measured step | per op | the step | share of a measured step "
          "| averaged, every 10th step measured |")
    print("|---|---|---|---|---|---|")
    print(f"| {Count.ops} | {1000 * extra:.1f} ms | {1e6 * extra / Count.ops:.1f} us | {1000 * base:.0f} ms "
          f"| {100 * extra / base:.2f}% | {10 * extra / base:.3f}% |")


def modules_on_a_larger_step(layers: int = 8, hidden: int = 1024, seq: int = 512, reps: int = 3) -> None:
    """The module attribution's cost (``module_meter.ModuleMeter``: global module hooks for one
    forward, the module noted with each saved tensor, the split of grads and optimizer state, the
    payload and its JSON) on the model of :func:`meter_on_a_larger_step`.

    Like the peak meter's, its cost is per module call and per saved tensor, not per byte: it is
    timed at 16 tokens, interleaved against the probe's measurement without it (the activation
    meter, grads and optimizer bytes) 15 times, and set against the step at ``seq``."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftwatch.training.probe import accounting
    from ftwatch.training.probe.module_meter import ModuleMeter

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=32000)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    meter = accounting.ActivationMeter()
    meter.exclude(model.parameters())
    modules = ModuleMeter(model)
    modules.refresh()
    fixed = accounting.model_bytes(model)
    written: list[int] = []

    def step(ids: torch.Tensor, mode: str | None = None) -> float:
        start = time.perf_counter()
        attribute = mode == "modules"
        if mode:
            meter.reset_step()
            meter.start(attribute=attribute)
            if attribute:
                modules.reset_step()
                modules.begin_forward(meter, ids)
        loss = model(input_ids=ids, labels=ids).loss
        if mode:
            meter.stop()
            if attribute:
                modules.end_forward(meter)
        loss.backward()
        if mode:
            grads = accounting.grad_bytes(trainable)
            if attribute:
                modules.measure_grads(trainable)
        opt.step()
        if mode:
            state = accounting.optimizer_state_bytes(opt)
            if attribute:
                modules.measure_optimizer(opt)
                payload = modules.payload({**fixed, "grads": grads, "optimizer": state,
                                           "activations": meter.step_peak})
                written.append(len(json.dumps(payload)) if payload is not None else -1)
        opt.zero_grad()
        return time.perf_counter() - start

    short, long = torch.randint(0, 32000, (1, 16)), torch.randint(0, 32000, (1, seq))
    step(short, "modules")
    pairs = [(step(short, "meter"), step(short, "modules")) for _ in range(15)]
    extra = statistics.median(on - off for off, on in pairs)
    base = statistics.median(step(long) for _ in range(reps))
    exact = all(n > 0 for n in written)
    print()
    print(f"Module attribution on a larger step ({layers} layers x {hidden}, batch 1 x {seq}; "
          f"payload {statistics.median(written)} bytes of JSON, sums exact: {exact}):")
    print("| modules | attribution per measured step | the step | share of a measured step "
          "| averaged, every 10th step measured |")
    print("|---|---|---|---|---|")
    print(f"| {len(modules.paths)} | {1000 * extra:.2f} ms | {1000 * base:.0f} ms "
          f"| {100 * extra / base:.2f}% | {10 * extra / base:.3f}% |")


PROBE_CLOCK = ProbeClock()
PROBE_SHARES: list[tuple[float, float, float]] = []
#: Per "on" run: median seconds of a measured step, of another step, and the measured share.
MEASURED: list[tuple[float, float, float]] = []


def main() -> None:
    """Print the table of steps/s with the probe off and on (in process, as the worker runs it) and
    of the Trainer script plain and wrapped (``ftwatch run --``), and the median ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--no-activations", action="store_true", help="probe on without activation tracking")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: no OpenMP spinning in the CPU-time figures)")
    parser.add_argument("--quick", action="store_true", help="3 pairs of 80 steps")
    parser.add_argument("--no-peak-meter", action="store_true", help="probe on without the CPU peak meter")
    parser.add_argument("--no-modules", action="store_true", help="probe on without the module attribution")
    parser.add_argument("--larger-step", action="store_true",
                        help="also time the peak meter and the module attribution on a larger randomly initialised model's step")
    parser.add_argument("--mode", choices=("both", "probe", "wrapped"), default="both",
                        help="the in-process probe pairs, the wrapped (ftwatch run --) pairs, or both")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.steps = 3, 80
    import torch

    torch.set_num_threads(args.threads)
    rows = probe_pairs(args) if args.mode != "wrapped" else []
    wrapped = wrapped_pairs(args.pairs, args.steps, args.threads) if args.mode != "probe" else []
    print()
    print("| measure | pairs | steps | median off | median on | median on/off | overhead |")
    print("|---|---|---|---|---|---|---|")
    if rows:
        wall = statistics.median(on[0] / off[0] for off, on in rows)
        cpu = statistics.median(on[1] / off[1] for off, on in rows)
        for name, i, ratio in (("worker probe: steps/s (wall)", 0, wall),
                               ("worker probe: steps per CPU-second", 1, cpu)):
            print(f"| {name} | {len(rows)} | {args.steps} | {statistics.median(r[0][i] for r in rows):.1f} | "
                  f"{statistics.median(r[1][i] for r in rows):.1f} | {ratio:.3f} | {100 * (1 - ratio):.1f}% |")
    for line in wrapped_table_rows(wrapped, args.steps) if wrapped else ():
        print(line)
    if rows:
        probe_details(args)
    if args.larger_step:
        meter_on_a_larger_step()
        modules_on_a_larger_step()


def probe_pairs(args: argparse.Namespace) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The in-process pairs (probe off, probe on), each printed as it ends."""
    PROBE_CLOCK.patch()
    train_once(False, WARMUP + 5)  # load libraries and warm caches before timing anything
    rows = []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        result = {flag: train_once(flag, args.steps, not args.no_activations, not args.no_peak_meter,
                                   "off" if args.no_modules else "summary")
                  for flag in order}
        rows.append((result[False], result[True]))
        (off_wall, off_cpu), (on_wall, on_cpu) = result[False], result[True]
        print(f"pair {pair + 1}: wall off {off_wall:6.1f} on {on_wall:6.1f} steps/s (on/off {on_wall / off_wall:.3f})"
              f"   cpu off {off_cpu:6.1f} on {on_cpu:6.1f} steps/cpu-s (on/off {on_cpu / off_cpu:.3f})", flush=True)
    return rows


def probe_details(args: argparse.Namespace) -> None:
    """Where the in-process probe's time goes, and the measured steps' table."""
    inline = statistics.median(s[0] for s in PROBE_SHARES)
    threads = statistics.median(s[1] for s in PROBE_SHARES)
    per_step = statistics.median(s[2] for s in PROBE_SHARES)
    print()
    print("Where the probe's time goes (measured inside the 'on' runs, median over runs):")
    print("| probe work on the training thread, per step | share of step time | background threads' CPU "
          "(sampler, analysis) / wall | total |")
    print("|---|---|---|---|")
    print(f"| {per_step:.3f} ms | {100 * inline:.2f}% | {100 * threads:.2f}% | {100 * (inline + threads):.2f}% |")
    if MEASURED:
        measured = statistics.median(m[0] for m in MEASURED)
        other = statistics.median(m[1] for m in MEASURED)
        share = statistics.median(m[2] for m in MEASURED)
        extra = measured - other
        meter = "off" if args.no_peak_meter else "on"
        modules = "off" if args.no_modules else "on"
        print()
        print(f"Measured steps (peak meter {meter}, module attribution {modules}), the 'on' runs, median over runs:")
        print("| measured share of steps | measured step | other step | extra per measured step "
              "| extra averaged over all steps |")
        print("|---|---|---|---|---|")
        print(f"| {100 * share:.1f}% | {1000 * measured:.2f} ms | {1000 * other:.2f} ms | {1000 * extra:.2f} ms "
              f"({100 * extra / other:.0f}%) | {1000 * extra * share:.3f} ms ({100 * extra * share / other:.2f}%) |")


if __name__ == "__main__":
    main()
