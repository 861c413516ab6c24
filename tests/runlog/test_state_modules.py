"""The ``modules`` event in the run log: the reader's field checks and the state fold's ``RunState.modules``."""

from __future__ import annotations

import copy
import json

import pytest

from ftwatch.runlog.event_fields import check_event
from ftwatch.runlog.event_reader import EventDecoder
from ftwatch.runlog.events import KINDS, encode
from ftwatch.runlog.state import RunState


def ev(kind: str, t: float, **fields: object) -> dict:
    return {"v": 1, "t": float(t), "kind": kind, **fields}


def modules_fields(step: int, activations: int) -> dict:
    layer = {"weights": 200, "activations": activations}
    return {
        "step": step, "phase": "training",
        "totals": {"weights": 600, "activations": 2 * activations + 5},
        "blocks": [{"name": "model.embed_tokens", "bytes": {"weights": 200}},
                   {"name": "model.layers", "bytes": {"weights": 400, "activations": 2 * activations}},
                   {"name": "loss", "bytes": {"activations": 5}}],
        "layers": [{"index": i, "path": f"model.layers.{i}", "bytes": dict(layer), "input": 64,
                    "parts": {"attention": {"weights": 200}, "mlp": {"activations": activations}}} for i in (0, 1)],
        "context": {"batch": 4, "seq_len": 64, "checkpointing": False, "vocab_size": 512, "dtype": "float32"},
    }


def test_modules_is_a_known_kind_and_a_good_event_passes():
    assert "modules" in KINDS
    assert check_event(ev("modules", 1, **modules_fields(1, 100))) is None
    full = modules_fields(1, 100)
    full["tree"] = [{"path": "", "bytes": {"activations": 5}}]
    assert check_event(ev("modules", 1, **full)) is None


def _broken(change) -> dict:  # noqa: ANN001 - a function that edits the fields in place
    fields = copy.deepcopy(modules_fields(1, 100))
    change(fields)
    return ev("modules", 1, **fields)


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f.pop("totals"), "modules.totals"),
    (lambda f: f.update(totals={"weights": -1}), "modules.totals"),
    (lambda f: f.update(blocks={"name": "x"}), "modules.blocks"),
    (lambda f: f["blocks"][0].pop("name"), "modules.blocks"),
    (lambda f: f["blocks"][0].update(bytes={"weights": "many"}), "modules.blocks"),
    (lambda f: f.pop("layers"), "modules.layers"),
    (lambda f: f["layers"][0].update(index=-1), "modules.layers"),
    (lambda f: f["layers"][0].update(index=True), "modules.layers"),
    (lambda f: f["layers"][0].update(parts=[]), "modules.layers"),
    (lambda f: f["layers"][0]["parts"].update(mlp={"activations": 1.5}), "modules.layers"),
    (lambda f: f["layers"][0].update(input=-3), "modules.layers"),
    (lambda f: f["layers"][1].update(path=None), "modules.layers"),
    (lambda f: f.update(tree=[{"path": 3, "bytes": {}}]), "modules.tree"),
    (lambda f: f.update(step=-1), "modules.step"),
    (lambda f: f["context"].update(batch="4"), "modules.context.batch"),
    (lambda f: f["context"].update(checkpointing="no"), "modules.context.checkpointing"),
])
def test_a_broken_modules_event_names_its_field(change, field):
    assert check_event(_broken(change)) == field


def test_the_reader_skips_a_broken_modules_event_and_keeps_a_good_one():
    good = encode("modules", modules_fields(2, 100), t=2.0)
    bad = json.dumps(_broken(lambda f: f["layers"][0].update(index="zero"))) + "\n"
    decoder = EventDecoder()
    events = decoder.feed(bad + good)
    assert [e["kind"] for e in events] == ["modules"]
    assert events[0]["step"] == 2
    assert decoder.stats.invalid_events == 1


def test_state_keeps_the_last_modules_payload_with_its_step():
    state = RunState()
    assert state.modules is None
    snapshot = {"weights": 600, "activations": 205}
    state.apply_all([ev("snapshot", 1, phase="training", step=1, categories=snapshot),
                     ev("modules", 1.1, **modules_fields(1, 100)),
                     ev("snapshot", 2, phase="training", step=2, categories=snapshot, activations_measured=False),
                     ev("snapshot", 3, phase="training", step=3, categories={**snapshot, "activations": 305}),
                     ev("modules", 3.1, **modules_fields(3, 150))])
    assert state.modules is not None
    assert state.modules["step"] == 3
    assert state.modules["totals"] == {"weights": 600, "activations": 305}
    assert [row["bytes"]["activations"] for row in state.modules["layers"]] == [150, 150]
    assert state.modules["context"]["seq_len"] == 64
    assert not {"v", "t", "kind"} & set(state.modules)
    # nothing else in the fold changes: the step and the breakdown are the snapshots'
    assert state.step == 3 and state.categories == {**snapshot, "activations": 305}
    assert state.snapshots == 3
