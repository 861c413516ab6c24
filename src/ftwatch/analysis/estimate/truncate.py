"""A model's config cut to a few decoder layers: the calibration's truncated copies, and the model
the estimate's meta training step runs (:mod:`.activations`).

Besides the layer count (``num_hidden_layers``, or the name a config maps it to: ``n_layer`` for
gpt2/bloom, ``num_layers``), some configs carry one entry per layer (``layer_types`` of gemma2/3,
qwen2/3, olmo3...; any list as long as the layer count is taken for such a list and cut too) or a
list of layer indices (``mlp_only_layers`` of the Qwen MoE models: indices beyond the cut are
dropped). :func:`layer_kinds` says how the full model's layers differ, so that the caller can say
when the first one or two layers do not stand for all of them.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

#: Config fields that list layer *indices* (not one entry per layer): cut to the indices kept.
INDEX_LISTS = ("mlp_only_layers",)
#: Config fields that must never be taken for a per-layer list even when their length matches.
NOT_PER_LAYER = ("architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "rope_scaling", "rope_parameters")


def layer_count(config: Any) -> int:
    """The number of decoder layers a config describes (``ValueError`` when it names none)."""
    value = getattr(config, "num_hidden_layers", None)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(config).__name__} names no number of decoder layers (num_hidden_layers)")
    return value


def per_layer_fields(config: Any) -> list[str]:
    """The names of the config's fields that hold one entry per decoder layer."""
    count = layer_count(config)
    names = []
    for name, value in vars(config).items():
        if name.startswith("_") or name in NOT_PER_LAYER or name in INDEX_LISTS:
            continue
        if isinstance(value, (list, tuple)) and len(value) == count and count > 1:
            names.append(name)
    return sorted(names)


def truncate_config(config: Any, layers: int) -> Any:
    """A copy of ``config`` with ``layers`` decoder layers, its per-layer lists cut to match."""
    full = layer_count(config)
    if not 1 <= layers <= full:
        raise ValueError(f"cannot cut a {full}-layer model to {layers} layers")
    cut = copy.deepcopy(config)
    for name in per_layer_fields(config):
        value = getattr(config, name)
        setattr(cut, name, type(value)(value[:layers]))
    for name in INDEX_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            setattr(cut, name, type(value)(i for i in value if isinstance(i, int) and i < layers))
    cut.num_hidden_layers = layers
    return cut


def layer_kinds(config: Any) -> list[str]:
    """One label per decoder layer of the full model, telling apart the layers that differ in what
    the config says about them (their entries of the per-layer lists, whether an ``mlp_only_layers``
    index, whether a sparse-MoE layer under ``decoder_sparse_step``/``first_k_dense_replace``)."""
    count = layer_count(config)
    fields = per_layer_fields(config)
    only_mlp = set(getattr(config, "mlp_only_layers", None) or [])
    sparse_step = getattr(config, "decoder_sparse_step", None)
    first_dense = getattr(config, "first_k_dense_replace", None)
    experts = getattr(config, "num_experts", None) or getattr(config, "n_routed_experts", None)
    kinds = []
    for i in range(count):
        parts = [f"{getattr(config, name)[i]}" for name in fields]
        if i in only_mlp or (experts and _dense_by_schedule(i, sparse_step, first_dense)):
            parts.append("dense mlp")
        kinds.append(", ".join(parts) or "decoder layer")
    return kinds


def unrepresented_kinds(config: Any, layers: int) -> dict[str, int]:
    """The kinds of layer (:func:`layer_kinds`) of the full model that none of its first ``layers``
    layers has, with how many layers of each kind: empty when the cut copies stand for all."""
    kinds = layer_kinds(config)
    kept = set(kinds[:layers])
    return {kind: n for kind, n in Counter(kinds).items() if kind not in kept}


def _dense_by_schedule(index: int, sparse_step: Any, first_dense: Any) -> bool:
    """Whether layer ``index`` of a mixture-of-experts model is a dense one by its schedule: not a
    multiple of ``decoder_sparse_step`` (Qwen MoE), or among the ``first_k_dense_replace`` (DeepSeek)."""
    if isinstance(sparse_step, int) and sparse_step > 1 and (index + 1) % sparse_step != 0:
        return True
    return isinstance(first_dense, int) and index < first_dense
