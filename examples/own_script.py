"""Your own training script, monitored by ftwatch with one added line (marked below).

    python examples/own_script.py            # writes ftwatch-runs/own_script-<time>/
    ftwatch attach                           # in another terminal, while it runs
    ftwatch replay ftwatch-runs/own_script-* # afterwards

Options (for the tests): --log-dir DIR, --max-steps N, --loop (a hand-written loop with
``ftwatch.Probe`` instead of a Trainer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

HERE = Path(__file__).resolve().parent


def blocks(tokenizer, length: int = 64) -> list[dict[str, list[int]]]:
    """The example texts, tokenized and packed into fixed-length blocks."""
    texts = [json.loads(line)["text"] for line in (HERE / "data" / "field-notes.jsonl").read_text().splitlines()]
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i:i + length], "labels": ids[i:i + length]}
            for i in range(0, len(ids) - length + 1, length)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-dir", default="ftwatch-runs")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--loop", action="store_true", help="a hand-written loop with ftwatch.Probe")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(HERE / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(HERE / "tiny-llama", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    data = blocks(tokenizer)

    if args.loop:
        from ftwatch import Probe

        probe = Probe.for_script("own_loop", log_dir=args.log_dir, device="cpu")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        probe.attach_model(model)
        probe.attach_optimizer(optimizer)
        probe.phase("training", max_steps=args.max_steps)
        step = 0
        for step in range(1, args.max_steps + 1):
            probe.step_begin()
            batch = default_data_collator(data[(step * 4) % (len(data) - 4):][:4])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            probe.step_end(step)
            if probe.should_stop:  # `k` in the dashboard, or Ctrl-C: stop at this step boundary
                break
        probe.finish("stopped" if probe.should_stop else "finished", step=step)
        return

    from ftwatch import FtwatchCallback

    training_args = TrainingArguments(output_dir="/tmp/own_script", max_steps=args.max_steps,
                                      per_device_train_batch_size=4, learning_rate=1e-3, report_to="none",
                                      save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=data, data_collator=default_data_collator,
                      callbacks=[FtwatchCallback(log_dir=args.log_dir)])  # <- the one added line
    trainer.train()


if __name__ == "__main__":
    main()
