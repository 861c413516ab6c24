"""Where inside the model: the ``modules`` payload, built from bytes per module path.

The probe (measured steps) and the estimate (the meta trace) both attribute each category's bytes
to the module that owns a parameter or was running when autograd saved a tensor. This module turns
that flat ``{module path: {category: bytes}}`` into the one shape every consumer reads:

- ``blocks``: the model's top-level blocks in module order (``model.embed_tokens``, ``model.layers``
  summed over the decoder layers, ``model.norm``, ``lm_head``, ...) and ``loss``: what the top of
  the model saves outside any submodule (the loss over the logits);
- ``layers``: one row per decoder layer, its bytes and its ``parts`` (``attention``, ``mlp``,
  ``norms``, ``lora``: the adapters inside the layer, ``other``);
- ``tree`` (when asked): every module path with bytes of its own.

Blocks sum to the totals, a layer's parts sum to the layer, the layers sum to their block.
Byte dicts omit zero categories (absent means 0). Pure logic on strings: no torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The categories attributed to modules, in drawing order.
MODULE_CATEGORIES = ("weights", "lora", "grads", "optimizer", "activations")
#: The parts of a decoder layer.
LAYER_PARTS = ("attention", "mlp", "norms", "lora", "other")
#: The block of what the model's top saves outside its submodules (the loss over the logits).
LOSS_BLOCK = "loss"

_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "moe", "expert", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h",
              "c_fc", "gate_proj", "up_proj", "down_proj")


def normalize_path(path: str) -> str:
    """A module path without the wrappers' prefixes (peft's ``base_model.model.``, ``torch.compile``'s
    ``_orig_mod.``, DDP's ``module.``): ``model.layers.0.self_attn`` for every wrapping."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if path.startswith(prefix):
                path, changed = path[len(prefix):], True
        for whole in ("base_model.model", "_orig_mod", "module", "base_model"):
            if path == whole:
                path, changed = "", True
    return path


def layer_part(rest: str) -> str:
    """The part of a decoder layer a path inside it belongs to (``rest``: the path below the layer;
    ``""``: the layer's own code): ``lora`` for an adapter anywhere below, else by the first name."""
    names = [n for n in rest.split(".") if n]
    if any(n.startswith("lora_") or n == "lora" for n in names):
        return "lora"
    if not names:
        return "other"
    first = names[0].lower()
    if "norm" in first or first.startswith("ln"):  # before attention: post_attention_layernorm, ln_attn
        return "norms"
    if "attn" in first or "attention" in first:
        return "attention"
    if any(key in first for key in _MLP_NAMES):
        return "mlp"
    return "other"


def _add(into: dict[str, int], values: Mapping[str, int]) -> None:
    for category, nbytes in values.items():
        if nbytes:
            into[category] = into.get(category, 0) + int(nbytes)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + ".") if parent else True


def _block_of(path: str, container: str | None) -> str:
    if not path:
        return LOSS_BLOCK
    if container is None:
        return path.split(".", 1)[0]
    ancestors = [""]
    parts = container.split(".")
    ancestors += [".".join(parts[:i]) for i in range(1, len(parts))]
    if path in ancestors:  # the code of a model between the top and the layers (an embedding scale, say)
        return path
    parent = max((a for a in ancestors if _inside(path, a)), key=len)
    rest = path[len(parent) + 1:] if parent else path
    return (parent + "." if parent else "") + rest.split(".", 1)[0]


def build_modules(by_path: Mapping[str, Mapping[str, int]], layer_paths: Sequence[str], *,
                  full: bool = False) -> dict[str, Any]:
    """The ``modules`` payload from bytes per (normalized) module path.

    ``layer_paths``: the decoder layers' paths in order (what gradient checkpointing wraps); a path
    inside one goes to that layer's row and part. ``full`` adds ``tree``. Also returns ``totals``
    (the sum over every module: the category totals the probe or the estimate reports)."""
    layers = [normalize_path(p) for p in layer_paths]
    container = layers[0].rsplit(".", 1)[0] if layers and "." in layers[0] else None
    rows: list[dict[str, Any]] = [{"index": i, "path": p, "bytes": {}, "parts": {}} for i, p in enumerate(layers)]
    blocks: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    tree: list[dict[str, Any]] = []
    for raw, values in by_path.items():
        path = normalize_path(raw)
        own = {c: int(v) for c, v in values.items() if v}
        if not own:
            continue
        _add(totals, own)
        if full:
            tree.append({"path": path, "bytes": own})
        row = next((r for r in rows if _inside(path, r["path"])), None) if container is not None else None
        if row is not None:
            block = container
            _add(row["bytes"], own)
            part = layer_part(path[len(row["path"]) + 1:])
            _add(row["parts"].setdefault(part, {}), own)
        else:
            block = _block_of(path, container)
        _add(blocks.setdefault(block or LOSS_BLOCK, {}), own)
    ordered = [name for name in blocks if name != LOSS_BLOCK] + ([LOSS_BLOCK] if LOSS_BLOCK in blocks else [])
    payload: dict[str, Any] = {
        "totals": totals,
        "blocks": [{"name": name, "bytes": blocks[name]} for name in ordered],
        "layers": rows,
    }
    if full:
        payload["tree"] = tree
    return payload


def bytes_of(values: Mapping[str, Any] | None, categories: Iterable[str] = MODULE_CATEGORIES) -> int:
    """The sum of ``values`` over ``categories`` (absent counts 0)."""
    if not values:
        return 0
    return sum(int(values.get(c) or 0) for c in categories)
