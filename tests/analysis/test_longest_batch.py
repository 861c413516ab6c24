"""The data's longest batch, before training: a data set with one long sample on the tiny model.

The lengths are counted here with the tokenizer itself, the order is read from the real Trainer's
dataloader, and the step the long sample comes at is worked out from that order by hand.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conftest import TINY_MODEL, tiny_sections, write_config
from ftwatch.analysis.estimate import estimate_inputs, with_changes
from ftwatch.common.config import load_config
from fuzzkit import cli

LONG_LINE = 23  # 1-based line of the long sample in the file
SHORT = 40
BATCH = 4
ACCUMULATION = 2


def _texts() -> list[str]:
    texts = [f"note {i}: the memory grows." for i in range(SHORT)]
    texts.insert(LONG_LINE - 1, " ".join(f"word{i % 37}" for i in range(45)))
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_MODEL))


@pytest.fixture(scope="module")
def hand_lengths(tokenizer) -> list[int]:
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in _texts()]


@pytest.fixture(scope="module")
def trainer_order(tmp_path_factory) -> list[int]:
    """The first epoch's order as the real Trainer's dataloader draws it (seed 0)."""
    return _trainer_order(tmp_path_factory.mktemp("order"), SHORT + 1, seed=0)


def _trainer_order(tmp: Path, count: int, seed: int, data_seed: int | None = None,
                   lengths: list[int] | None = None, **arguments: object) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    class Indices(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return count

        def __getitem__(self, i: int) -> dict[str, object]:
            return {"idx": i, "input_ids": [0] * (lengths[i] if lengths else 1)}

    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=BATCH, seed=seed,
                             data_seed=data_seed, use_cpu=True, remove_unused_columns=False, report_to=[],
                             **arguments)
    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL))
    trainer = Trainer(model=model, args=args, train_dataset=Indices(),
                      data_collator=lambda f: {"idx": torch.tensor([x["idx"] for x in f])})
    return [int(i) for batch in trainer.get_train_dataloader() for i in batch["idx"]]


def _config(tmp_path: Path, **overrides: dict) -> Path:
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts()))
    sections = tiny_sections(tmp_path, data={"path": str(data), "max_length": 256, "packing": False},
                             training={"per_device_train_batch_size": BATCH,
                                       "gradient_accumulation_steps": ACCUMULATION, "max_steps": 20})
    for section, table in overrides.items():
        sections.setdefault(section, {}).update(table)
    return write_config(tmp_path / "long.toml", sections)


def _peaks(config: Path, longest: int, typical: int) -> tuple[int, int]:
    from ftwatch.analysis.estimate import inputs_from_config

    inputs = inputs_from_config(load_config(config), on_gpu=False)
    return tuple(estimate_inputs(with_changes(inputs, max_length=n)).total for n in (longest, typical))


def _typical(order: list[int], lengths: list[int]) -> int:
    batches = sorted(max(lengths[i] for i in order[k:k + BATCH]) for k in range(0, len(order), BATCH))
    return batches[(len(batches) - 1) // 2]


def test_scan_counts_the_tokens_the_tokenizer_gives(tmp_path, hand_lengths):
    from ftwatch.training.data_lengths import scan_lengths

    scan = scan_lengths(load_config(_config(tmp_path)), progress=io.StringIO())
    assert scan.lengths == hand_lengths
    assert scan.where[LONG_LINE - 1] == f"line {LONG_LINE}"
    assert 256 > max(hand_lengths) == hand_lengths[LONG_LINE - 1] > 3 * max(hand_lengths[:LONG_LINE - 1])


def test_a_slow_scan_shows_its_progress_on_stderr(tmp_path):
    from ftwatch.training.data_lengths import scan_lengths

    ticks = iter(range(0, 1000, 5))  # every reading of the clock is 5 s later
    out = io.StringIO()
    scan_lengths(load_config(_config(tmp_path)), progress=out, clock=lambda: next(ticks))
    assert f"scanning notes.jsonl: {SHORT + 1} texts" in out.getvalue()


@pytest.mark.parametrize(("seed", "data_seed"), [(0, None), (3, 11)])
def test_the_order_is_the_trainers(tmp_path, seed, data_seed):
    from ftwatch.training.data_lengths import sample_order

    training = {"seed": seed} if data_seed is None else {"seed": seed, "data_seed": data_seed}
    order, how = sample_order(load_config(_config(tmp_path, training=training)), SHORT + 1)
    assert order == _trainer_order(tmp_path / "t", SHORT + 1, seed=seed, data_seed=data_seed)
    assert "seeded sampler" in how


def test_a_grouped_order_is_not_guessed(tmp_path):
    from ftwatch.training.data_lengths import sample_order

    cfg = load_config(_config(tmp_path, training={"train_sampling_strategy": "group_by_length"}))
    assert sample_order(cfg, SHORT + 1)[0] is None


def test_grouped_by_length_the_long_sample_comes_at_step_1(tmp_path, hand_lengths):
    from ftwatch.training.longest_batch import check_longest_batch

    order = _trainer_order(tmp_path / "t", SHORT + 1, seed=0, lengths=hand_lengths,
                           train_sampling_strategy="group_by_length")
    assert LONG_LINE - 1 in order[:BATCH]  # the real sampler: the longest in the first batch
    from ftwatch.training.data_lengths import scan_lengths

    config = _config(tmp_path, training={"train_sampling_strategy": "group_by_length"},
                     monitor={"budget": 2 * 1024**2})
    cfg = load_config(config)
    from ftwatch.analysis.estimate import estimate

    result = check_longest_batch(cfg, scan_lengths(cfg, progress=io.StringIO()),
                                 estimate(cfg, 2 * 1024**2, on_gpu=False))
    assert result.warn and result.fixes
    assert result.step == 1 and "grouped by length" in result.order
    assert not any("group_by_length" in f["config"] for f in result.fixes)  # already on


def test_the_preflight_warning_names_the_long_sample(tmp_path, hand_lengths, trainer_order):
    from ftwatch.training.preflight import preflight

    longest, typical = hand_lengths[LONG_LINE - 1], _typical(trainer_order, hand_lengths)
    high, low = _peaks(_config(tmp_path), longest, typical)
    assert high > 1.3 * low  # the long sample's batch costs much more than a typical one
    budget = (high + low) // 2
    cfg = load_config(_config(tmp_path, monitor={"budget": budget}))
    events: list[tuple[str, dict]] = []
    preflight(cfg, {"type": "cpu", "capacity": budget, "capacity_source": "budget"},
              lambda kind, **fields: events.append((kind, fields)))
    warnings = [f for kind, f in events if kind == "warning" and f["code"] == "longest_batch_will_not_fit"]
    assert len(warnings) == 1, events
    warning = warnings[0]
    step = trainer_order.index(LONG_LINE - 1) // (BATCH * ACCUMULATION) + 1
    assert warning["sample"] == {"index": LONG_LINE - 1, "where": f"line {LONG_LINE}", "tokens": longest}
    assert warning["at_step"] == step
    assert f"line {LONG_LINE}" in warning["message"] and f"at step {step}" in warning["message"]
    configs = [f["config"] for f in warning["suggestions"]]
    assert any(c.startswith("[data] max_length = ") for c in configs)
    assert any("per_device_train_batch_size" in c for c in configs)
    assert any("group_by_length" in c for c in configs)
    # the max_length offered is the largest that fits, checked by pricing it and one more token
    cut = int(next(c for c in configs if c.startswith("[data] max_length")).rsplit("=", 1)[1])
    fit, over = _peaks(_config(tmp_path), cut, cut + 1)
    assert fit <= budget < over


def test_estimate_shows_the_longest_batch_text_and_json(tmp_path, hand_lengths, trainer_order):
    longest, typical = hand_lengths[LONG_LINE - 1], _typical(trainer_order, hand_lengths)
    high, low = _peaks(_config(tmp_path), longest, typical)
    config = _config(tmp_path, monitor={"budget": (high + low) // 2})
    text = cli("estimate", str(config), "--device", "cpu")
    assert text.code == 0, text.stderr
    step = trainer_order.index(LONG_LINE - 1) // (BATCH * ACCUMULATION) + 1
    assert f"line {LONG_LINE} of the data file (example {LONG_LINE - 1}, {longest} tokens)" in text.stdout
    assert f"at step {step}" in text.stdout and "[data] max_length = " in text.stdout
    data = json.loads(cli("estimate", str(config), "--device", "cpu", "--json").stdout)["longest_batch"]
    assert data["warning"] is True
    assert (data["longest_tokens"], data["typical_tokens"]) == (longest, typical)
    assert (data["longest_bytes"], data["typical_bytes"]) == (high, low)
    assert data["sample"]["where"] == f"line {LONG_LINE}" and data["step"] == step


def test_a_run_that_stops_before_the_long_sample_never_sees_it(tmp_path, hand_lengths, trainer_order):
    longest, typical = hand_lengths[LONG_LINE - 1], _typical(trainer_order, hand_lengths)
    high, low = _peaks(_config(tmp_path), longest, typical)
    step = trainer_order.index(LONG_LINE - 1) // (BATCH * ACCUMULATION) + 1
    assert step > 1, "the test needs the long sample after the first step"
    config = _config(tmp_path, monitor={"budget": (high + low) // 2}, training={"max_steps": step - 1})
    data = json.loads(cli("estimate", str(config), "--device", "cpu", "--json").stdout)["longest_batch"]
    drawn = trainer_order[: (step - 1) * BATCH * ACCUMULATION]
    assert data["warning"] is False
    assert data["longest_tokens"] == max(hand_lengths[i] for i in drawn)
    assert data["sample"]["index"] in drawn and f"max_steps = {step - 1}" in data["order"]


def test_no_warning_when_the_longest_batch_fits(tmp_path):
    config = _config(tmp_path)  # no budget: judged against the RAM
    data = json.loads(cli("estimate", str(config), "--device", "cpu", "--json").stdout)["longest_batch"]
    assert data["warning"] is False and data["fixes"] == []


def test_with_packing_every_batch_is_the_longest(tiny_config):
    outcome = cli("estimate", str(tiny_config()), "--device", "cpu")
    assert "every batch is 4 x 64 tokens, so the longest batch is every batch" in outcome.stdout


@pytest.mark.slow
def test_a_run_warns_before_loading(tmp_path, hand_lengths, trainer_order):
    from conftest import run_cli
    from ftwatch.runlog.event_reader import read_events

    longest, typical = hand_lengths[LONG_LINE - 1], _typical(trainer_order, hand_lengths)
    high, low = _peaks(_config(tmp_path), longest, typical)
    step = trainer_order.index(LONG_LINE - 1) // (BATCH * ACCUMULATION) + 1
    config = _config(tmp_path, monitor={"budget": (high + low) // 2}, training={"max_steps": step})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    events = list(read_events(next((tmp_path / "runs").iterdir())))
    kinds = [e["kind"] for e in events]
    warning = next(e for e in events if e["kind"] == "warning" and e["code"] == "longest_batch_will_not_fit")
    assert events.index(warning) < kinds.index("phase")  # before anything is loaded
    assert warning["sample"]["where"] == f"line {LONG_LINE}"
    assert warning["at_step"] == step
