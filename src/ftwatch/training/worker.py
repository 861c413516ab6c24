"""The training subprocess: load the model, apply LoRA, build a Trainer, train; report each phase.

``ftwatch run`` starts it as ``python -m ftwatch.training.worker --config C --run-dir D`` in its own session
(a closed terminal does not reach it) with stdout/stderr going to ``D/worker.log``. It writes its own
run log, so the record is complete whatever happens to the viewer. Exit codes: 0 finished, 1 failed
or out of memory, 2 config error, 130 stopped.

SIGINT/SIGTERM ask for a clean stop: during training at the next step boundary, before training at
once. A second signal stops at once.

Nothing of the monitor stops training: the run log's writer counts what a full disk refuses (the
exit event's ``lost_events``), and the worker's own stdout/stderr (``worker.log``, on that same
disk) are wrapped so that a write that fails is counted and dropped, never raised into the
Trainer, transformers' logging or tqdm (:mod:`ftwatch.training.worker_output`; the stop control is
in :mod:`ftwatch.training.worker_stop`).

Under ``torchrun`` (``[launch]``) every rank runs this module: each writes its own log in
``D/rank<N>/``, trains on ``cuda:<LOCAL_RANK>`` (or the CPU, with gloo), and the ranks agree on a
stop request at each step boundary (one small all-reduce), so they all stop after the same step.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ftwatch.training import worker_output  # main sets the log line's prefix there (the rank)
from ftwatch.training.worker_output import _PROTECTED, _log, protect_output
from ftwatch.training.worker_stop import AgreedStop, StopControl, StopRequested

EXIT_FINISHED, EXIT_FAILED, EXIT_CONFIG, EXIT_STOPPED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    """Run one fine-tune as described by ``--config``, writing its log into ``--run-dir``."""
    parser = argparse.ArgumentParser(prog="ftwatch.training.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--strict", action="store_true", help="refuse to start when the estimate does not fit")
    args = parser.parse_args(argv)
    _PROTECTED[:] = protect_output()
    stop = StopControl()
    stop.install()

    from ftwatch.common.config import load_config
    from ftwatch.common.config_errors import ConfigError
    from ftwatch.runlog.event_writer import EventWriter
    from ftwatch.runlog.events import EVENTS_FILE
    from ftwatch.runlog.paths import distributed_rank, rank_dir
    from ftwatch.training.library_config import validate_library_sections

    run_dir = Path(args.run_dir)
    rank, _, world_size = distributed_rank()
    if world_size > 1:  # torchrun: each rank keeps its own log in the run directory
        worker_output._LOG_PREFIX = f"ftwatch worker [rank {rank}]"
        run_dir = rank_dir(run_dir, rank)
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _say_starting(run_dir / EVENTS_FILE)
    try:
        cfg = load_config(args.config)
        validate_library_sections(cfg)
        training = Training(cfg, run_dir, stop, strict=args.strict)
    except ConfigError as exc:
        stop.end()
        print(f"{worker_output._LOG_PREFIX}: {exc}", file=sys.stderr, flush=True)
        writer = EventWriter(run_dir / EVENTS_FILE)
        writer.emit("exit", status="failed", error_type="ConfigError", message=str(exc), by="worker")
        writer.close()
        return EXIT_CONFIG
    except StopRequested as exc:  # a signal during the imports, before the probe exists
        stop.end()
        print(f"{worker_output._LOG_PREFIX}: stopped ({exc}) while starting", file=sys.stderr, flush=True)
        writer = EventWriter(run_dir / EVENTS_FILE)
        writer.emit("exit", status="stopped", message=f"stopped by {exc} while starting", by="worker")
        writer.close()
        return EXIT_STOPPED
    code = training.run()
    stop.release()  # the exit event is written
    return code


#: The code of the worker's first note, written before its heavy start-up (see docs/events.md).
STARTING = "starting"


def starting_stage() -> str:
    """What the worker does before it can write the header: the imports (unless a process started
    ahead made them: :mod:`ftwatch.training.prestart`), then the device and the probe."""
    if all(name in sys.modules for name in ("torch", "transformers", "peft")):
        return "worker starting: setting up the device and the probe"
    return "worker starting: importing torch, transformers and peft"


def _say_starting(path: Path) -> None:
    """The run log's first event, before the heavy start-up: a ``starting`` note saying what the
    viewer is waiting for (never raises: a log that cannot be written is the probe's to report)."""
    from ftwatch.runlog.event_writer import EventWriter

    try:
        writer = EventWriter(path)
    except OSError:
        return
    writer.emit("note", code=STARTING, message=starting_stage(), pid=os.getpid())
    writer.close()


def check_gpu_for_rank(local_rank: int, gpus: int, config_path: Path, nproc_per_node: int) -> None:
    """One GPU per local rank: a launch asking for more processes than the node has GPUs is a config
    error naming the key (rather than every rank failing on an invalid device ordinal)."""
    if local_rank >= gpus:
        from ftwatch.common.config_errors import ConfigError

        raise ConfigError(config_path, f"[launch].nproc_per_node = {nproc_per_node}, but this node has "
                                       f"{gpus} GPU{'s' if gpus != 1 else ''} visible to torch (one process "
                                       "per GPU; set use_cpu = true in [training] to train on the CPU)")


class Training:
    """One run through the phases, with the probe measuring all along."""

    def __init__(self, cfg: Any, run_dir: Path, stop: StopControl, strict: bool = False) -> None:
        import torch

        from ftwatch.training.probe.probe import Probe

        self.cfg = cfg
        self.strict = strict
        self.run_dir = run_dir
        self.stop = stop
        self.torch = torch
        from ftwatch.runlog.paths import distributed_rank

        use_cpu = bool(cfg.training.get("use_cpu") or cfg.training.get("no_cuda"))
        _, local_rank, self.world_size = distributed_rank()
        self.device = "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
        if self.device == "cuda" and self.world_size > 1:  # one GPU per local rank, as DDP expects
            check_gpu_for_rank(local_rank, torch.cuda.device_count(), cfg.path, cfg.launch.nproc_per_node)
            torch.cuda.set_device(local_rank)
            self.device = f"cuda:{local_rank}"
        max_steps = cfg.training.get("max_steps")
        self.probe = Probe(
            run_dir, name=cfg.name, model_name=cfg.model.name, config_path=str(cfg.path.resolve()),
            sample_hz=cfg.monitor.sample_hz, budget=cfg.monitor.budget, device=self.device,
            max_steps=max_steps if isinstance(max_steps, int) and max_steps > 0 else None,
            track_activations=cfg.monitor.track_activations, activations_every=cfg.monitor.activations_every,
            modules=cfg.monitor.modules, handle_signals=False,  # StopControl is the worker's handler
        )
        from ftwatch.analysis.forecast import Forecaster
        from ftwatch.training.live_analysis import LiveAnalysis

        self.analysis = LiveAnalysis(self.probe.writer, Forecaster(max_length=cfg.data.max_length))
        self.probe.before_finish.append(self.analysis.close)
        self.probe.before_finish.append(self._note_lost_output)
        self.step = 0

    def _note_lost_output(self) -> None:
        """Say in the run log how much of the worker's own output ``worker.log`` could not take."""
        lost = sum(stream.lost for stream in _PROTECTED)
        if lost:
            error = next((s.last_error for s in _PROTECTED if s.last_error is not None), None)
            reason = (getattr(error, "strerror", None) or str(error)) if error is not None else "unknown"
            self.probe.note("output_lost", f"{lost} write{'s' if lost != 1 else ''} of the worker's output "
                                           f"to worker.log failed ({reason}): that output is lost")

    def run(self) -> int:
        """Go through the phases; write the exit event however it ends."""
        from ftwatch.common.config_errors import ConfigError
        from ftwatch.training.preflight import WarningSuggester, preflight

        try:
            self.probe.start()
            device = self.probe.device_info
            self.analysis.suggest = WarningSuggester(self.cfg, device.get("type") == "cuda", device.get("capacity"))
            result = preflight(self.cfg, device, self.probe.writer.emit) if self.cfg.monitor.preflight else None
            if self.strict and result is not None and result.verdict == "does_not_fit":
                message = "refused to start (--strict): the pre-flight estimate says it will not fit"
                _log(message)
                self.probe.finish("failed", step=0, error_type="WillNotFit", message=message,
                                  suggestions=[s.to_json() for s in result.suggestions])
                return EXIT_FAILED
            model, tokenizer = self.load_model()
            model = self.apply_lora(model)
            trainer = self.prepare_trainer(model, tokenizer)
            self.train(trainer)
        except StopRequested as exc:
            self.stop.end()
            _log(f"stopped ({exc})")
            self.probe.finish("stopped", step=self.step, message=f"stopped by {exc}")
            return EXIT_STOPPED
        except ConfigError as exc:  # data problems found while tokenizing
            self.stop.end()
            _log(str(exc))
            self.probe.finish("failed", step=self.step, error_type="ConfigError", message=str(exc))
            return EXIT_CONFIG
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the log
            self.stop.end()  # a signal while the ending is written must not cut it off
            try:
                details, suggestions = self.diagnose(exc)
            except Exception as diag_exc:  # the diagnosis must never cost the exit event
                details, suggestions = None, None
                _log(f"could not diagnose the failure: {diag_exc}")
            status = self.probe.finish_with_exception(exc, step=self.step, oom_details=details,
                                                      suggestions=suggestions)
            _log(f"{status}: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc()
            return EXIT_FAILED
        self.stop.end()
        if self.stop.requested:
            self.probe.finish("stopped", step=self.step, message="stopped at a step boundary on request")
            _log(f"stopped at step {self.step}")
            return EXIT_STOPPED
        self.probe.finish("finished", step=self.step)
        _log(f"finished after {self.step} steps")
        return EXIT_FINISHED

    @property
    def checkpointing(self) -> bool:
        """Whether the config turns on activation (gradient) checkpointing, under either name."""
        from ftwatch.training.adapters import checkpointing_of

        return checkpointing_of(self.cfg)

    def diagnose(self, exc: BaseException) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
        """Figures and fixes for an out-of-memory error (``None``s for any other failure).

        The figures come from the message; the fixes are those the message's numbers support,
        then the config changes priced on the last measured breakdown (duplicates dropped).
        """
        from ftwatch.training.probe.probe import is_out_of_memory

        if not is_out_of_memory(exc):
            return None, None
        from ftwatch.analysis.oom import suggest_from_oom
        from ftwatch.analysis.oom_parse import parse_oom_message

        diag = parse_oom_message(str(exc))
        t = self.cfg.training
        current = {"per_device_train_batch_size": t.get("per_device_train_batch_size", 8),
                   "gradient_accumulation_steps": t.get("gradient_accumulation_steps", 1),
                   "gradient_checkpointing": self.checkpointing,
                   "max_length": self.cfg.data.max_length, "load_in_4bit": self.cfg.model.load_in_4bit,
                   "dtype": self.cfg.model.dtype}
        from_message = suggest_from_oom(diag, current) if diag is not None else []
        measured = []
        if self.analysis.suggest is not None and self.probe.model is not None:
            snapshot = {"categories": self.probe.categories(include_device=True)}
            measured = self.analysis.suggest({}, snapshot, None)
        fixes = [s for s in from_message if s.get("saves_bytes")] + measured
        fixes += [s for s in from_message if not s.get("saves_bytes")]
        unique, seen = [], set()
        for fix in fixes:
            key = fix.get("config") or fix.get("change")
            if key not in seen:
                seen.add(key)
                unique.append(fix)
        if diag is None:
            return None, unique
        details = {k: v for k, v in diag.to_json().items() if k.endswith("_bytes") or k in ("format", "other_processes")}
        return details, unique

    def load_model(self) -> tuple[Any, Any]:
        """Phase ``loading_model``: tokenizer and weights through ``from_pretrained``."""
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        m = self.cfg.model
        self.probe.phase("loading_model")
        _log(f"loading {m.name} (dtype {m.dtype}) on {self.device}")
        tokenizer = AutoTokenizer.from_pretrained(m.name, trust_remote_code=m.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        kwargs: dict[str, Any] = {"trust_remote_code": m.trust_remote_code}
        dtype = "auto" if m.dtype == "auto" else getattr(self.torch, m.dtype)
        dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        kwargs[dtype_key] = dtype
        if m.device_map is not None:
            kwargs["device_map"] = m.device_map
        elif self.device == "cuda":
            kwargs["device_map"] = {"": self.probe.device.index or 0}
        if m.attn_implementation:
            kwargs["attn_implementation"] = m.attn_implementation
        if m.load_in_4bit or m.load_in_8bit:
            kwargs["quantization_config"] = self._quantization_config()
        model = AutoModelForCausalLM.from_pretrained(m.name, **kwargs)
        self.probe.attach_model(model, emit_model_event=False, base_only=True)
        self.probe.snapshot()
        return model, tokenizer

    def _quantization_config(self) -> Any:
        from transformers import BitsAndBytesConfig

        m = self.cfg.model
        if m.load_in_4bit:
            compute = self.torch.bfloat16 if m.dtype in ("auto", "bfloat16") else getattr(self.torch, m.dtype)
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
        return BitsAndBytesConfig(load_in_8bit=True)

    def apply_lora(self, model: Any) -> Any:
        """Phase ``applying_lora``: wrap the model with peft adapters."""
        from ftwatch.training.adapters import add_adapters

        self.probe.phase("applying_lora")
        model = add_adapters(model, self.cfg)
        self.probe.attach_model(model)
        self.probe.snapshot()
        return model

    def prepare_trainer(self, model: Any, tokenizer: Any) -> Any:
        """Phase ``preparing_trainer``: data set, TrainingArguments, Trainer with the callback."""
        import inspect

        from transformers import Trainer

        from ftwatch.training.data import build_dataset, data_collator
        from ftwatch.training.library_config import build_training_arguments
        from ftwatch.training.probe.callback import FtwatchCallback

        self.probe.phase("preparing_trainer")
        dataset = build_dataset(tokenizer, self.cfg.data, self.cfg.path)
        _log(f"{len(dataset)} training examples of up to {self.cfg.data.max_length} tokens")
        overrides = {}
        if self.world_size > 1 and self.device == "cpu":  # DDP over gloo (else every rank would train alone)
            overrides["use_cpu"] = True
        if self.device == "cpu" and "dataloader_pin_memory" not in self.cfg.training:
            overrides["dataloader_pin_memory"] = False  # pinned pages only speed copies to an accelerator
        output_dir = self.run_dir.parent if self.world_size > 1 else self.run_dir
        args = build_training_arguments(self.cfg, output_dir=str(output_dir / "output"), **overrides)
        callback = FtwatchCallback(probe=self.probe, stop_requested=AgreedStop(self.stop))
        kwargs: dict[str, Any] = {"model": model, "args": args, "train_dataset": dataset,
                                  "data_collator": data_collator(tokenizer, self.cfg.data), "callbacks": [callback]}
        if "processing_class" in inspect.signature(Trainer.__init__).parameters:
            kwargs["processing_class"] = tokenizer
        else:
            kwargs["tokenizer"] = tokenizer
        trainer = Trainer(**kwargs)
        self.probe.snapshot()
        return trainer

    def train(self, trainer: Any) -> None:
        """Phase ``training`` (entered by the callback once the optimizer exists)."""
        self.stop.in_training = True
        _log("training")
        try:
            trainer.train()
        finally:
            self.stop.in_training = False
            self.step = trainer.state.global_step


if __name__ == "__main__":
    sys.exit(main())
