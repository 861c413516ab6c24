"""``ftwatch fit``: the command's output, its bad input, ``--write``, the TOML rewrite, and the
must-show check: fit's choice run under a ``[monitor] budget`` stays under it while the next larger
micro-batch goes over (CPU, the bundled tiny model).

The measured figure is the CPU true peak (``tensor_peak_bytes.total``: live tensor bytes at the step's
peak), which is what the estimate predicts: it counts ``other`` (the logits and the loss backward's
float32 buffer), which the category total ``peak_bytes`` does not see.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from conftest import run_cli
from ftwatch.commands.fit_toml import edit
from fuzzkit import cli

#: Between the tiny model's estimated peaks at micro-batch 2 (about 2.5 MB) and 4 (about 4.4 MB),
#: 10% headroom included (limit 3.06 MB).
BUDGET = 3_401_000


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    return [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]


def test_picks_the_largest_micro_batch_that_fits_and_shows_what_it_tried(tiny_config) -> None:
    cfg = tiny_config(training={"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
                      monitor={"budget": BUDGET})
    out = cli("fit", str(cfg))
    assert out.code == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1], r[-1]) for r in rows[:2]] == [("4", "1", "no"), ("2", "2", "yes")]
    assert "- [training] per_device_train_batch_size = 4" in out.stdout
    assert "+ [training] per_device_train_batch_size = 2" in out.stdout
    assert "+ [training] gradient_accumulation_steps = 2" in out.stdout
    data = json.loads(cli("fit", str(cfg), "--json").stdout)
    assert (data["micro_batch"], data["gradient_accumulation_steps"]) == (2, 2)
    assert data["limit_bytes"] == int(BUDGET * 0.9)
    assert all((t["peak_bytes"] <= data["limit_bytes"]) == t["fits"] for t in data["trials"])


def test_write_changes_only_those_lines_and_keeps_comments(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(monitor={"budget": BUDGET})
    text = cfg.read_text().replace("per_device_train_batch_size = 4", "per_device_train_batch_size = 4  # tuned")
    cfg.write_text(text)
    out_path = tmp_path / "fitted.toml"
    out = cli("fit", str(cfg), "--write", str(out_path))
    assert out.code == 0, out.stderr
    written = out_path.read_text()
    assert changed_lines(text, written) == [
        ("per_device_train_batch_size = 4  # tuned", "per_device_train_batch_size = 2  # tuned"),
        ("gradient_accumulation_steps = 1", "gradient_accumulation_steps = 2")]
    again = cli("fit", str(cfg), "--write", str(out_path))
    again.assert_one_line_error("--write", "already exists")
    assert out_path.read_text() == written


def test_written_elsewhere_the_relative_paths_still_name_the_same_files(tmp_path: Path) -> None:
    from ftwatch.common.config import load_config

    home = tmp_path / "example"
    assert cli("example", str(home)).code == 0
    cfg = home / "tiny-lora.toml"
    cfg.write_text(cfg.read_text().replace("[monitor]\n", f"[monitor]\nbudget = {BUDGET}\n"))
    (tmp_path / "elsewhere").mkdir()
    out_path = tmp_path / "elsewhere" / "fitted.toml"
    out = cli("fit", str(cfg), "--write", str(out_path))
    assert out.code == 0, out.stderr
    assert "[model] name and [data] path were rewritten" in out.stdout
    written, original = load_config(out_path), load_config(cfg)
    assert written.model.name == original.model.name and written.data.path == original.data.path
    assert 'name = "../example/tiny-llama"' in out_path.read_text()
    assert written.training["per_device_train_batch_size"] == 2


def test_bad_input_is_one_line_before_any_estimate(tmp_path: Path, tiny_config,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import ftwatch.analysis.fit as search

    monkeypatch.setattr(search, "fit", lambda *a, **k: pytest.fail("estimated despite bad input"))
    cfg = tiny_config(monitor={"budget": BUDGET})
    cli("fit", str(cfg), "--headroom", "150%").assert_one_line_error("--headroom", "150%")
    cli("fit", str(cfg), "--headroom", "lots").assert_one_line_error("--headroom")
    cli("fit", str(cfg), "--gpu-memory", "-5GiB").assert_one_line_error("--gpu-memory")
    existing = tmp_path / "taken.toml"
    existing.write_text("keep me")
    cli("fit", str(cfg), "--write", str(existing)).assert_one_line_error("already exists")
    assert existing.read_text() == "keep me"
    cli("fit", str(tmp_path / "missing.toml")).assert_one_line_error("missing.toml")
    cli("run", "--fit", "--", "python", "-c", "pass").assert_one_line_error("--fit", "config")
    cli("fit", str(cfg), "--device", "cpu", "--gpu-memory", "8GiB").assert_one_line_error("--device cpu")
    import ftwatch.commands.estimate as estimate_command

    monkeypatch.setattr(estimate_command, "nvml_free_bytes", lambda: None)  # a GPU target no GPU answers for
    cli("fit", str(tiny_config()), "--device", "cuda").assert_one_line_error("capacity", "--gpu-memory")


def test_toml_edit_adds_keys_and_sections_and_refuses_what_it_cannot_follow() -> None:
    text = '[model]\nname = "m"\n\n[training]\nmax_steps = 3\n\n[data]\npath = "d"\n'
    out, diff = edit(text, [("training", "per_device_train_batch_size", 2), ("lora", "r", 4)])
    assert tomllib.loads(out) == {"model": {"name": "m"}, "data": {"path": "d"}, "lora": {"r": 4},
                                  "training": {"max_steps": 3, "per_device_train_batch_size": 2}}
    assert out.startswith(text.split("\n\n[data]")[0] + "\nper_device_train_batch_size = 2\n")
    assert diff == [(None, "[training] per_device_train_batch_size = 2"), (None, "[lora] r = 4")]
    with pytest.raises(ValueError):
        edit('training.per_device_train_batch_size = 4\n[model]\nname = "m"\n',
             [("training", "per_device_train_batch_size", 2)])


def _true_peak(*args: str) -> int:
    done = run_cli("run", "--headless", "--json", *args, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(json.loads(done.stdout)["tensor_peak_bytes"]["total"])


def test_the_fitted_config_runs_under_the_budget_the_next_larger_goes_over(tmp_path: Path, tiny_config) -> None:
    steps = {"max_steps": 2, "gradient_accumulation_steps": 1}
    peak2 = _true_peak(str(tiny_config(training={"per_device_train_batch_size": 2, **steps})))
    peak4 = _true_peak(str(tiny_config(training={"per_device_train_batch_size": 4, **steps})))
    assert peak2 < peak4
    budget = (peak2 + peak4) // 2
    cfg = tiny_config(training={"per_device_train_batch_size": 4, **steps}, monitor={"budget": budget})
    fitted = tmp_path / "fitted.toml"
    out = cli("fit", str(cfg), "--write", str(fitted), "--json")
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["micro_batch"], data["gradient_accumulation_steps"]) == (2, 2)
    written = tomllib.loads(fitted.read_text())
    assert (written["training"]["per_device_train_batch_size"], written["training"]["gradient_accumulation_steps"]) \
        == (2, 2)
    # `run --fit` runs the fitted config (its copy in the run directory is the written one)
    measured = _true_peak("--fit", str(cfg))
    assert measured <= budget < peak4
    [copy] = (tmp_path / "runs").glob(f"{cfg.stem}-*/config.toml")
    ran = tomllib.loads(copy.read_text())
    for section, key in (("model", "name"), ("data", "path")):  # made absolute (resolved) for the copy
        assert Path(ran[section].pop(key)).resolve() == Path(written[section].pop(key)).resolve()
    assert ran == written


def test_run_fit_refuses_to_start_when_nothing_fits(tiny_config) -> None:
    cfg = tiny_config(monitor={"budget": 600_000})  # under the float32 weights alone
    done = run_cli("run", "--fit", "--headless", str(cfg), timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no config that fits" in done.stderr.strip().splitlines()[-1]
    assert not list((cfg.parent / "runs").glob(f"{cfg.stem}-*"))


def test_when_micro_batch_one_does_not_fit_it_applies_the_mildest_fix(tmp_path: Path, tiny_config) -> None:
    # at micro-batch 1 the tiny model's estimate is about 1.64 MB > 1.5 MB; on the CPU the mildest change
    # advice knows is bfloat16 weights (bitsandbytes' 4-bit/8-bit and 8-bit optimizers are GPU-only there)
    cfg = tiny_config(monitor={"budget": 1_500_000})
    out_path = tmp_path / "fitted.toml"
    data = json.loads(cli("fit", str(cfg), "--headroom", "0", "--json", "--write", str(out_path)).stdout)
    assert data["fits"] and data["peak_bytes"] <= 1_500_000
    assert [(f["section"], f["key"], f["value"]) for f in data["fixes"]] == [("model", "dtype", "bfloat16")]
    one = [t for t in data["trials"] if t["micro_batch"] == 1 and not t["with_fixes"]]
    assert one and not one[0]["fits"]
    assert data["fixes"][0]["saves_bytes"] > 0
    written = tomllib.loads(out_path.read_text())
    assert written["model"]["dtype"] == "bfloat16"
    assert (written["training"]["per_device_train_batch_size"] * written["training"]["gradient_accumulation_steps"]
            == 4)
    text = cli("fit", str(cfg), "--headroom", "0").stdout
    assert "even a micro-batch of 1 does not fit" in text and '+ [model] dtype = "bfloat16"' in text


def test_a_card_smaller_than_the_context_allowance_says_no_change_can_fit(tiny_config) -> None:
    cfg = tiny_config()
    fitted = json.loads(cli("fit", str(cfg), "--gpu-memory", "64MiB", "--json").stdout)
    assert fitted["fits"] is False
    because = "alone are more than the 57.6 MiB it has to fit in: no change to the config can make it fit"
    assert any(because in note for note in fitted["notes"]), fitted["notes"]  # 64 MiB less 10% headroom
    estimated = json.loads(cli("estimate", str(cfg), "--gpu-memory", "64MiB", "--json").stdout)
    assert any("more than the 64.0 MiB" in note for note in estimated["notes"]), estimated["notes"]
    roomy = json.loads(cli("estimate", str(cfg), "--gpu-memory", "1GiB", "--json").stdout)
    assert not any("no change to the config" in note for note in roomy["notes"])
