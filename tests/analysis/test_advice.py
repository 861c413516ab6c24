"""Quantified fixes: each saving re-derived by applying the printed config line, ranking, measured mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomllib

from conftest import FIXTURES_ROOT, TINY_DATA, TINY_MODEL, write_config
from ftwatch.analysis import advice as A
from ftwatch.analysis import estimate as E
from ftwatch.common.config import load_config
from ftwatch.common.units import parse_size

FIXTURES = FIXTURES_ROOT / "configs"
DEEPSEEK = FIXTURES / "deepseek-llm-7b-base-dims"
CAPACITY = parse_size("22.3GB")


def sections_7b(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "model": {"name": str(DEEPSEEK), "dtype": "float32"},
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
        "training": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8},
        "data": {"path": str(TINY_DATA), "max_length": 512},
    }
    for section, table in overrides.items():
        sections.setdefault(section, {}).update(table)
    return sections


def apply_config_line(sections: dict[str, dict[str, Any]], line: str) -> dict[str, dict[str, Any]]:
    """Apply ``[section] key = value; ...`` the way a user would edit the TOML file."""
    out = {name: dict(table) for name, table in sections.items()}
    for part in line.split("; "):
        header, _, assignment = part.partition("] ")
        out.setdefault(header.lstrip("["), {}).update(tomllib.loads(assignment))
    return out


def estimate_total(tmp_path: Path, sections: dict[str, dict[str, Any]], name: str, capacity: int | None) -> Any:
    return E.estimate(load_config(write_config(tmp_path / f"{name}.toml", sections)), capacity)


# --- pricing by re-estimating -----------------------------------------------------------------------

def test_each_saving_equals_the_estimate_with_its_config_line_applied(tmp_path: Path) -> None:
    sections = sections_7b(training={"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
                           model={"dtype": "bfloat16"}, lora={"target_modules": "all-linear", "r": 32})
    before = A.estimate_and_advise(load_config(write_config(tmp_path / "before.toml", sections)), CAPACITY)
    assert before.verdict == "does_not_fit" and before.fails_at == "training"
    kinds = {s.kind for s in before.suggestions}
    assert {"checkpointing", "batch", "load_in_4bit", "rank", "targets", "max_length"} <= kinds
    for n, suggestion in enumerate(before.suggestions):
        after = estimate_total(tmp_path, apply_config_line(sections, suggestion.config), f"after-{n}", CAPACITY)
        assert suggestion.saves_bytes == before.total - after.total, suggestion.config
        assert suggestion.fits_after == (after.verdict != "does_not_fit"), suggestion.config


def test_motivating_case_ranking(tmp_path: Path) -> None:
    before = A.estimate_and_advise(load_config(write_config(tmp_path / "ds.toml", sections_7b())), CAPACITY)
    assert (before.verdict, before.fails_at) == ("does_not_fit", "loading_model")
    configs = [s.config for s in before.suggestions]
    assert configs[0] == '[model] dtype = "bfloat16"'
    fitting = [s for s in before.suggestions if s.fits_after]
    assert before.suggestions[:len(fitting)] == fitting  # every fix that alone fits comes first
    assert [s.tier for s in fitting] == sorted(s.tier for s in fitting)  # least intrusive first
    rest = before.suggestions[len(fitting):]
    assert all(s.fails_at_after == "loading_model" for s in rest)  # nothing else gets past loading
    assert [s.saves_bytes for s in rest] == sorted((s.saves_bytes for s in rest), reverse=True)
    gc = next(s for s in before.suggestions if s.kind == "checkpointing")
    assert gc.config == "[training] gradient_checkpointing = true" and gc.fits_after is False
    assert not any(s.kind == "batch" for s in before.suggestions)  # batch is already 1


def test_json_shape() -> None:
    s = A.Suggestion(kind="dtype", change="x", settings=(("model", "dtype", "bfloat16"),), saves_bytes=5,
                     fits_after=True)
    assert s.to_json() == {"change": "x", "config": '[model] dtype = "bfloat16"', "saves_bytes": 5,
                           "fits_after": True, "fails_at_after": None}


def test_changes_already_applied_are_not_suggested(tmp_path: Path) -> None:
    sections = sections_7b(model={"dtype": "bfloat16", "load_in_4bit": True},
                           training={"gradient_checkpointing": True, "optim": "paged_adamw_8bit"},
                           lora={"r": 8})
    result = A.estimate_and_advise(load_config(write_config(tmp_path / "done.toml", sections)), CAPACITY)
    kinds = {s.kind for s in result.suggestions}
    assert not kinds & {"dtype", "load_in_4bit", "load_in_8bit", "checkpointing", "optimizer", "rank", "targets"}


def test_batch_suggestion_is_the_largest_micro_batch_that_fits(tmp_path: Path) -> None:
    sections = sections_7b(model={"dtype": "bfloat16"},
                           training={"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2})
    result = A.estimate_and_advise(load_config(write_config(tmp_path / "b16.toml", sections)), CAPACITY)
    assert result.fails_at == "training"
    batch = next(s for s in result.suggestions if s.kind == "batch")
    chosen = dict(((k, v) for _, k, v in batch.settings))
    micro, steps = chosen["per_device_train_batch_size"], chosen["gradient_accumulation_steps"]
    assert micro * steps == 16 * 2  # same effective batch
    fits = {}
    for b in (micro, micro * 2):
        est = estimate_total(tmp_path, sections_7b(model={"dtype": "bfloat16"},
                                                   training={"per_device_train_batch_size": b}), f"b{b}", CAPACITY)
        fits[b] = est.verdict in ("fits", "tight")
    assert batch.fits_after and fits[micro] and not fits[micro * 2]


def test_tight_run_gets_the_least_intrusive_fix_first(tmp_path: Path) -> None:
    sections = sections_7b(model={"dtype": "bfloat16"}, training={"per_device_train_batch_size": 2})
    total = estimate_total(tmp_path, sections, "probe", None).total
    capacity = int(total / 0.95)
    result = A.estimate_and_advise(load_config(write_config(tmp_path / "tight.toml", sections)), capacity)
    assert result.verdict == "tight"
    resolving = [s for s in result.suggestions if s.resolves]
    assert resolving and result.suggestions[0] is resolving[0]
    assert resolving[0].kind == "checkpointing"  # recomputation beats quantizing or shorter sequences
    assert [s.tier for s in resolving] == sorted(s.tier for s in resolving)


def test_cpu_target_gets_no_gpu_only_fixes(tmp_path: Path) -> None:
    sections = {"model": {"name": str(TINY_MODEL), "dtype": "float32"},
                "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {"per_device_train_batch_size": 8, "use_cpu": True},
                "data": {"path": str(TINY_DATA), "max_length": 128}}
    result = A.estimate_and_advise(load_config(write_config(tmp_path / "cpu.toml", sections)), None)
    kinds = {s.kind for s in result.suggestions}
    assert kinds and not kinds & {"load_in_4bit", "load_in_8bit", "optimizer"}
    assert all(s.fits_after is None for s in result.suggestions)  # no capacity, no verdict
    savings = [s.saves_bytes for s in result.suggestions]
    assert savings == sorted(savings, reverse=True)  # nothing to resolve: by savings


# --- measured breakdowns -------------------------------------------------------------------------------

def tiny_inputs(**training: Any) -> E.EstimateInputs:
    return E.EstimateInputs(model_config=E.load_model_config(str(TINY_MODEL)), dtype="float32",
                            lora={"r": 8, "target_modules": ["q_proj", "v_proj"]},
                            training={"per_device_train_batch_size": 4, **training}, max_length=64)


def test_scaled_savings() -> None:
    measured = {"weights": 1000, "activations": 400, "cache": 50, "free": 10}
    before = {"weights": 100, "activations": 200}
    after = {"weights": 50, "activations": 50}
    assert A.scaled_savings(measured, before, after) == 1000 // 2 + 400 * 3 // 4


def test_measured_breakdown_scales_the_affected_categories() -> None:
    inputs = tiny_inputs()
    base = E.estimate_inputs(inputs)
    gc = E.estimate_inputs(E.with_changes(inputs, training={"gradient_checkpointing": True}))
    measured = {"weights": 700_000, "lora": 16_384, "grads": 16_384, "optimizer": 32_800,
                "activations": 3_000_000, "other": 900_000, "cache": 0, "free": 5_000_000}
    out = A.suggest_for_measured(inputs, measured, 20_000_000, alloc_conf="")
    suggestion = next(s for s in out if s.kind == "checkpointing")
    # checkpointing changes the activations and what the backward adds at the peak (`other`: the
    # recomputed layer when the peak is in a layer's backward); nothing else
    assert {k for k in base.categories if gc.categories[k] != base.categories[k]} <= {"activations", "other"}
    ratio = gc.categories["activations"] / base.categories["activations"]
    other_ratio = gc.categories["other"] / base.categories["other"]
    assert suggestion.saves_bytes == round(3_000_000 * (1 - ratio) + 900_000 * (1 - other_ratio))


def test_allocator_cache_and_other_processes() -> None:
    inputs = tiny_inputs(gradient_checkpointing=True)
    gib = 2**30
    measured = {"weights": 10 * gib, "activations": 6 * gib, "cache": 3 * gib, "other_processes": 5 * gib,
                "free": 0}
    out = A.suggest_for_measured(inputs, measured, 24 * gib, other_processes=[(4242, 5 * gib), (7, 0)],
                                 alloc_conf="")
    env = next(s for s in out if s.kind == "env")
    assert env.config == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" and env.saves_bytes == 3 * gib
    process = next(s for s in out if s.kind == "process")
    assert process.config == "kill 4242" and "4242" in process.change and process.saves_bytes == 5 * gib
    assert process.fits_after is True and process.resolves  # 24 GiB used of 24: 19 after
    assert len([s for s in out if s.kind == "process"]) == 1  # a process holding nothing is not named
    assert out[0].tier == 0
    already = A.suggest_for_measured(inputs, measured, 24 * gib, alloc_conf="expandable_segments:True")
    assert not any(s.kind == "env" for s in already)
    small_cache = dict(measured, cache=100 * 2**20)
    assert not any(s.kind == "env" for s in A.suggest_for_measured(inputs, small_cache, 24 * gib, alloc_conf=""))


def test_rank_orders_resolving_fixes_by_tier_then_the_rest_by_savings() -> None:
    def s(kind: str, saves: int, resolves: bool, fails_at: str | None = "training") -> A.Suggestion:
        return A.Suggestion(kind=kind, change=kind, settings=(), saves_bytes=saves, fits_after=resolves,
                            fails_at_after=None if resolves else fails_at, resolves=resolves)

    ranked = A.rank([s("load_in_4bit", 900, True), s("dtype", 500, True), s("max_length", 300, False),
                     s("rank", 50, False, "loading_model"), s("checkpointing", 100, False), s("optimizer", 0, False)],
                    "does_not_fit")
    assert [x.kind for x in ranked] == ["dtype", "load_in_4bit", "max_length", "checkpointing", "rank"]


@pytest.mark.parametrize("verdict", ["fits", None])
def test_rank_by_savings_when_nothing_needs_fixing(verdict: str | None) -> None:
    items = [A.Suggestion(kind=k, change=k, settings=(), saves_bytes=v) for k, v in
             (("dtype", 10), ("batch", 30), ("checkpointing", 20), ("optimizer", 0))]
    assert [x.kind for x in A.rank(items, verdict)] == ["batch", "checkpointing", "dtype"]


def test_when_no_single_fix_fits_a_combination_that_fits_comes_first(tmp_path: Path) -> None:
    sections = sections_7b(training={"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2})
    before = A.estimate_and_advise(load_config(write_config(tmp_path / "b.toml", sections)), CAPACITY)
    assert before.verdict == "does_not_fit"
    singles = [s for s in before.suggestions if s.kind != "combined"]
    assert not any(s.fits_after for s in singles)  # the premise: nothing alone is enough
    combined = before.suggestions[0]
    assert combined.kind == "combined" and combined.fits_after
    assert combined.change.startswith("together: ")
    # the milder precision change is preferred over 4-bit loading when both save a lot
    assert '[model] dtype = "bfloat16"' in combined.config and "load_in_4bit" not in combined.config
    # applied to the config file, the combination really fits, and saves what it says
    after = estimate_total(tmp_path, apply_config_line(sections, combined.config), "after", CAPACITY)
    assert after.verdict != "does_not_fit"
    assert combined.saves_bytes == before.total - after.total
