"""The forward trace of a deep model from short copies of it, carried to the full depth.

A 7B model's 30 decoder layers cost a meta forward of a quarter of a second, and ``ftwatch
estimate`` traces one model for the estimate and one for nearly every fix it prices. When the
layers repeat (:func:`~ftwatch.analysis.estimate.layer_repeat.repeat_start`), each repeating layer
from the third on saves what the one before it saved, under its own path, and nothing outside the
layers depends on how many there are: the full model's trace is then that of a copy cut to the
layers before the repetition and two repeating ones, its last layer repeated under each further
layer's path (:func:`extend_trace`). The first repeating layer cannot stand for the others: it may
be the first to save what later layers share (a mask, the rotary tables), and as layer 0 its input
(the embeddings' output) does not require grad, so it saves less.

On every model (:func:`extended_trace`), what the copies cannot show is read from the full model:
its layers from the repetition on must be alike in config and structure; and what they can show is
checked: that copy carried one layer on must give the trace of the copy one layer longer exactly
(the longer one is then carried to the full depth). Otherwise, and whenever a copy cannot be built
or traced, the full model is traced (:func:`cached_trace`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from ftwatch.analysis.estimate.activation_trace import ActivationTrace, _cached_trace, decoder_layer_paths
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.layer_repeat import repeat_start
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import _to_pretrained_config
from ftwatch.analysis.estimate.truncate import layer_count, truncate_config

_log = logging.getLogger(__name__)

PathBytes = tuple[tuple[str, int], ...]


def cached_trace(inputs: EstimateInputs, model: Any) -> ActivationTrace:
    """The forward trace of these inputs (``model``: their full meta model), cached: from short
    copies carried to the full depth where that gives the full trace exactly, else the full model's."""
    return _cached_trace(inputs, model, lambda: extended_trace(inputs, model))


def extended_trace(inputs: EstimateInputs, model: Any) -> ActivationTrace | None:
    """The full model's trace from two short copies (:func:`extend_trace`); ``None`` when the layers
    do not repeat, the model is too shallow to gain, or the copies do not show the repetition."""
    try:
        config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
        start = repeat_start(config, model)
        if start is None:
            return None
        short = start + 2  # the layers before the repetition, its first layer and one more
        if layer_count(config) <= short + 1:
            return None
        shorter, longer = (_copy_trace(inputs, config, depth) for depth in (short, short + 1))
        paths = decoder_layer_paths(model)
        if longer.layer_paths != paths[:short + 1] or extend_trace(shorter, longer.layer_paths) != longer:
            _log.debug("the short copies' traces do not repeat; tracing the full model")
            return None
        return extend_trace(longer, paths)
    except Exception as exc:  # a copy that cannot be built or traced: the full model says why, if it fails
        _log.debug("short copies failed, tracing the full model: %s", exc)
        return None


def _copy_trace(inputs: EstimateInputs, config: Any, depth: int) -> ActivationTrace:
    """The trace of a copy of the model cut to ``depth`` layers (cached, as is its meta model: the
    meta training step's copy is one of them)."""
    copy = dataclasses.replace(inputs, model_config=truncate_config(config, depth))
    return _cached_trace(copy, meta_peft_model(copy))


def extend_trace(trace: ActivationTrace, layer_paths: Sequence[str]) -> ActivationTrace:
    """``trace`` carried to ``len(layer_paths)`` decoder layers (``layer_paths``: their module paths,
    the trace's own first) by repeating its last layer: its bytes, its input, the part of its input
    it saves, and its entries by module path under each further layer's path, right after its own.

    Raises ``ValueError`` when ``layer_paths`` do not start with the trace's, or the last layer's
    entries by path are not one run (something saved between them, outside that layer)."""
    count, n = len(trace.layers), len(layer_paths)
    if not count or n < count or tuple(layer_paths[:count]) != trace.layer_paths:
        raise ValueError(f"cannot carry a trace of {count} layers to {n} with these paths")
    added = n - count
    last = trace.layer_paths[-1]
    return dataclasses.replace(
        trace,
        layers=trace.layers + (trace.layers[-1],) * added,
        layer_inputs=trace.layer_inputs + (trace.layer_inputs[-1],) * added,
        inputs_saved=trace.inputs_saved + (trace.inputs_saved[-1],) * added,
        saved_by_path=_repeat_entries(trace.saved_by_path, last, layer_paths[count:]),
        inputs_by_path=_repeat_entries(trace.inputs_by_path, last, layer_paths[count:]),
        layer_paths=tuple(layer_paths),
    )


def _repeat_entries(entries: PathBytes, last: str, further: Sequence[str]) -> PathBytes:
    """``entries`` with those of the layer at path ``last`` repeated under each of ``further``,
    in order, right after them."""
    inside = [i for i, (path, _) in enumerate(entries) if path == last or path.startswith(last + ".")]
    if not inside:
        return entries
    first, end = inside[0], inside[-1] + 1
    if len(inside) != end - first:
        raise ValueError(f"the entries of {last} are not one run")
    block = entries[first:end]
    copies = tuple((layer + path[len(last):], nbytes) for layer in further for path, nbytes in block)
    return entries[:end] + copies + entries[end:]
