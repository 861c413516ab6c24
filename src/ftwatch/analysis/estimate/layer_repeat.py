"""Where a model's decoder layers start to repeat: the first layer from which every later one is
alike, in what the config says about it and in what it is made of.

A forward trace (:mod:`.activation_trace`) of such a model need not run every layer: a short copy
that holds the layers before the repetition and two of the repeating ones says what each further
one saves (:mod:`.trace_extension`). Two layers are *alike* when the config gives them the same kind
(:func:`~ftwatch.analysis.estimate.truncate.layer_kinds`: their entries of the per-layer lists,
dense or sparse MoE) and the built layers have the same structure (:func:`layer_signature`: the
same modules of the same classes, the same parameters and buffers, shapes, dtypes and
trainability, the same plain attributes apart from the layer's own index).
"""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.estimate.activation_trace import decoder_layers
from ftwatch.analysis.estimate.truncate import layer_count, layer_kinds

#: Attributes that hold a layer's own index (transformers' name for it): the one plain attribute
#: allowed to differ between alike layers. Any other difference makes the layers differ.
INDEX_ATTRIBUTES = frozenset({"layer_idx"})

_PLAIN = (bool, int, float, str, type(None))
_NOT_PLAIN = object()


def layer_signature(layer: Any) -> tuple[Any, ...]:
    """What a decoder layer is made of, comparable between layers: for each of its modules (by
    relative path) the class, the plain attributes (numbers, strings, flags and tuples of them;
    not :data:`INDEX_ATTRIBUTES`), and each parameter's and buffer's shape and dtype (and whether
    the parameter trains)."""
    out = []
    for name, module in layer.named_modules():
        attributes = tuple(sorted((key, _plain(value)) for key, value in vars(module).items()
                                  if not key.startswith("_") and key not in INDEX_ATTRIBUTES
                                  and _plain(value) is not _NOT_PLAIN))
        params = tuple((key, tuple(p.shape), str(p.dtype), bool(p.requires_grad))
                       for key, p in module.named_parameters(recurse=False))
        buffers = tuple((key, tuple(b.shape), str(b.dtype)) for key, b in module.named_buffers(recurse=False))
        out.append((name, f"{type(module).__module__}.{type(module).__qualname__}", attributes, params, buffers))
    return tuple(out)


def _plain(value: Any) -> Any:
    """``value`` if it is a plain scalar, a tuple of those if it is a list or tuple of them, else
    :data:`_NOT_PLAIN` (tensors, modules, configs and the like are not compared)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value):
        return tuple(value)
    return _NOT_PLAIN


def repeat_start(config: Any, model: Any) -> int | None:
    """The index of the first decoder layer from which every later layer of ``model`` (the full
    model ``config`` describes) is alike; ``None`` when the model's decoder layers cannot be told
    apart (it has none, or not as many as the config says)."""
    try:
        count = layer_count(config)
    except ValueError:
        return None
    layers = decoder_layers(model)
    if len(layers) != count:
        return None
    labels = list(zip(layer_kinds(config), (layer_signature(layer) for layer in layers), strict=True))
    start = count - 1
    while start > 0 and labels[start - 1] == labels[-1]:
        start -= 1
    return start
