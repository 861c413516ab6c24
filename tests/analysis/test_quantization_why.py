"""Why 4-bit/8-bit loading saves less than a user would guess: the reason, its figures, and the note
when it would not help at all."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_DATA, TINY_MODEL, write_config
from ftwatch.analysis import advice as A
from ftwatch.analysis.quantization_why import guessed_saving, why_so_little
from ftwatch.common.config import load_config
from ftwatch.views.dashboard.widgets.alerts import _suggestions

GiB = 1 << 30


def test_the_guess_is_the_weights_at_the_quantized_width() -> None:
    assert guessed_saving("load_in_4bit", 16 * GiB, 2) == 12 * GiB  # 4 of 16 bits kept
    assert guessed_saving("load_in_8bit", 16 * GiB, 2) == 8 * GiB
    assert guessed_saving("load_in_4bit", 16 * GiB, 4) == 14 * GiB
    assert guessed_saving("dtype", 16 * GiB, 2) == 0


def test_a_small_saving_on_16_bit_weights_says_where_the_rest_went() -> None:
    before = {"weights": 16 * GiB, "lora": GiB, "activations": 4 * GiB, "other": GiB}
    after = {"weights": 6 * GiB, "lora": GiB, "activations": 8 * GiB, "other": 2 * GiB}
    why = why_so_little("load_in_4bit", before, after, 2)
    # saved 10 - 4 - 1 = 5 GiB of a guessed 12 GiB
    assert why is not None and why.startswith("why so little:")
    assert "shrink by 10.0 GiB, not 12.0 GiB" in why
    assert "activations +4.0 GiB, other +1.0 GiB" in why  # largest growth first; lora unchanged, not named


def test_no_reason_when_the_saving_is_what_a_user_guesses() -> None:
    before = {"weights": 16 * GiB, "activations": 4 * GiB}
    assert why_so_little("load_in_4bit", before, {"weights": 5 * GiB, "activations": 4 * GiB}, 2) is None
    # float32 weights: nothing is cast up, whatever the saving
    assert why_so_little("load_in_4bit", before, {"weights": 15 * GiB, "activations": 4 * GiB}, 4) is None
    assert why_so_little("checkpointing", before, {"weights": 16 * GiB, "activations": GiB}, 2) is None


def _tiny_bf16(tmp_path: Path, **training: object) -> Path:
    return write_config(tmp_path / "tiny.toml", {
        "model": {"name": str(TINY_MODEL), "dtype": "bfloat16"},
        "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"per_device_train_batch_size": 4, **training},
        "data": {"path": str(TINY_DATA), "max_length": 64}})


def test_a_change_that_adds_to_the_peak_is_no_fix_but_a_note_with_its_reason(tmp_path: Path) -> None:
    # the tiny model's embeddings and LM head are most of its weights: in float32 they outgrow what
    # 4-bit projections save (a CPU run measures it: tests/training/test_quantized_weights.py)
    result = A.estimate_and_advise(load_config(_tiny_bf16(tmp_path)), 64 << 20, on_gpu=True)
    assert not any(s.kind in ("load_in_4bit", "load_in_8bit") for s in result.suggestions)
    notes = [n for n in result.notes if n.startswith("[model] load_in_4bit = true would not help: it adds ")]
    assert len(notes) == 1
    assert "to float32" in notes[0] and "activations +" in notes[0]
    # checkpointing as well is offered when the two together save something. Here they do: with
    # checkpointing each layer keeps only its input, and the layer recomputed in the backward is not
    # live at this model's peak (the loss backward), which benchmarks/estimate_truth.py measures
    from ftwatch.analysis import estimate as E
    from ftwatch.common.units import format_bytes

    inputs = E.inputs_from_config(load_config(_tiny_bf16(tmp_path)), on_gpu=True)
    both = E.estimate_inputs(E.with_changes(inputs, load_in_4bit=True, training={"gradient_checkpointing": True}))
    saving = E.estimate_inputs(inputs).total - both.total
    assert saving > 0
    assert notes[0].endswith(f"with gradient checkpointing as well ([training] gradient_checkpointing = true) it "
                             f"saves {format_bytes(saving)}")


def test_the_dashboard_shows_the_reason_under_the_fix() -> None:
    from rich.text import Text

    out = Text()
    _suggestions([{"change": "load the base model in 4-bit", "config": "[model] load_in_4bit = true",
                   "saves_bytes": GiB, "why": "why so little: the hidden states are float32"}], out)
    lines = out.plain.splitlines()
    assert lines[-2:] == ["    [model] load_in_4bit = true", "    why so little: the hidden states are float32"]
