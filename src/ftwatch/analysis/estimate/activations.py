"""The activation estimate (trace, else formula; with or without checkpointing) and what the backward
adds at the step's peak ("other")."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.estimate.activation_formula import formula_activations
from ftwatch.analysis.estimate.activation_trace import ActivationTrace
from ftwatch.analysis.estimate.fallbacks import Fallback, first_line
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import _config_get, _to_pretrained_config
from ftwatch.analysis.estimate.step_trace import cached_step_peak
from ftwatch.analysis.estimate.trace_extension import cached_trace
from ftwatch.analysis.estimate.truncate import layer_count, truncate_config, unrepresented_kinds

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation bytes: what the forward pass leaves saved (``saved_forward``, the estimate's
    ``activations``) and what one checkpointed layer saves again when the backward recomputes it
    (``recompute``; live only in the backward, so in ``other`` when it is live at the peak).
    ``fallback_reason``: why the trace could not run, when ``method`` is ``formula``."""

    saved_forward: int
    recompute: int
    method: str
    fallback_reason: str = ""

    @property
    def total(self) -> int:
        """Saved bytes plus the recompute of one checkpointed layer (a bound on the activations'
        part of the backward; the estimate's categories use the meta step's peak instead)."""
        return self.saved_forward + self.recompute


def combine_activations(trace: ActivationTrace, checkpointing: bool, every_n_layers: int = 1,
                        offload: bool = False) -> ActivationEstimate:
    """Activation bytes with or without gradient checkpointing.

    Checkpointed layers keep only their input (on the host with ``offload``); in the backward pass
    one of them is recomputed at a time, so the largest layer is added once as ``recompute``.
    """
    if not checkpointing or not trace.layers:
        return ActivationEstimate(saved_forward=trace.total, recompute=0, method=trace.method)
    every = max(int(every_n_layers), 1)
    saved, recompute = trace.outside, 0
    for i, own in enumerate(trace.layers):
        if i % every == 0:
            saved += 0 if offload else trace.layer_inputs[i]
            recompute = max(recompute, own)
        else:
            saved += own + trace.inputs_saved[i]
    return ActivationEstimate(saved_forward=saved, recompute=recompute, method=trace.method)


def estimate_activations(inputs: EstimateInputs, model: Any | None = None) -> ActivationEstimate:
    """Activation bytes for these inputs: meta trace, or the formula if the trace fails."""
    model = model if model is not None else meta_peft_model(inputs)
    reason = ""
    try:
        trace = cached_trace(inputs, model)
    except Exception as exc:  # an architecture the meta trace cannot run
        _log.debug("meta trace failed, using the formula: %s", exc)
        trace, reason = formula_activations(inputs, model), first_line(exc)
    options = inputs.checkpointing_options
    result = combine_activations(trace, inputs.gradient_checkpointing,
                                 every_n_layers=int(options.get("every_n_layers", 1)),
                                 offload=bool(options.get("offload", False)))
    return dataclasses.replace(result, fallback_reason=reason) if reason else result


def other_bytes(inputs: EstimateInputs) -> int:
    """The loss backward's two float32 logits-sized buffers: the gradient of the log-probabilities and
    that of the logits (the loss upcasts the logits to float32 whatever the model's dtype). The
    log-probabilities themselves are saved by the forward (``activations``)."""
    vocab = int(_config_get(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code), "vocab_size") or 0)
    return 2 * inputs.batch_size * inputs.max_length * vocab * 4


def backward_peak(inputs: EstimateInputs, activations: ActivationEstimate,
                  model: Any | None = None) -> tuple[int, Fallback | None]:
    """``other``: what the training step holds at its peak beyond the forward's saved activations
    and the parameters' gradients; with the stand-in that sized it when the step could not run.

    From a meta training step (:func:`~ftwatch.analysis.estimate.step_trace.cached_step_peak`): its
    peak of live bytes less the gradients live then and less the saved activations. Where the peak
    is the loss backward this is the loss's float32 gradients; where it is a checkpointed layer's
    backward, that layer recomputed and its gradients, net of the saved activations the backward
    has freed by then. Neither depends on the depth (every layer adds the same saved bytes to both
    sides of the peak), so the step runs on a copy of the model cut to the fewest layers that hold
    every kind of layer and a whole checkpointing pattern (:func:`step_depth`): a 7B model's 30
    layers would cost seconds of meta dispatch per step, two cost a fraction of one. When the step
    cannot run on the meta device (the formula stands in for the trace, or checkpoints are
    offloaded to the host, which meta tensors cannot be), :func:`approximate_backward_bytes`, and
    a :class:`~ftwatch.analysis.estimate.fallbacks.Fallback` that says so (the formula's own, when
    the formula stood in for the trace).
    """
    offload = bool(inputs.checkpointing_options.get("offload", False))
    approximate = approximate_backward_bytes(inputs, activations)
    if activations.method != "trace":
        reason = f"the meta trace could not run this model: {activations.fallback_reason}"
        return approximate, Fallback("formula", reason)
    if inputs.gradient_checkpointing and offload:
        reason = "checkpoints offloaded to the host cannot be followed on the meta device"
        return approximate, Fallback("approximation", reason)
    try:
        step_inputs, saved = inputs, activations.saved_forward
        depth = step_depth(inputs)
        if depth is not None:
            config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
            step_inputs = dataclasses.replace(inputs, model_config=truncate_config(config, depth))
            model = None
        step_model = model if model is not None else meta_peft_model(step_inputs)
        if step_inputs is not inputs:
            saved = estimate_activations(step_inputs, step_model).saved_forward
        step = cached_step_peak(step_inputs, step_model)
        return max(step.peak - step.grads - saved, 0), None
    except Exception as exc:  # an op without a meta backward, say: the approximation
        _log.debug("meta training step failed, approximating the backward instead: %s", exc)
        return approximate, Fallback("approximation", f"the meta training step could not run: {first_line(exc)}")


def approximate_backward_bytes(inputs: EstimateInputs, activations: ActivationEstimate) -> int:
    """``other`` without a meta training step: the larger of the two places a step's backward
    usually peaks, the loss's backward (its two float32 logits-sized buffers, :func:`other_bytes`)
    and a checkpointed layer's (that layer recomputed, ``activations.recompute``). Only one of them
    is live at a time. It leaves out the gradients a layer's backward makes on top of its saved
    tensors, so it is low where the peak is in a layer (a long sequence, a small vocabulary, eager
    attention); :mod:`.fallbacks` holds its measured error."""
    return max(other_bytes(inputs), activations.recompute)


def step_depth(inputs: EstimateInputs) -> int | None:
    """How many layers the meta step's copy of the model keeps: two checkpointing patterns
    (``every_n_layers``), when those first layers hold every kind of layer the model has; ``None``
    to run the full model (it is no deeper, or its later layers differ)."""
    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    try:
        layers = layer_count(config)
    except ValueError:
        return None
    every = max(int(inputs.checkpointing_options.get("every_n_layers", 1)), 1)
    depth = 2 * every
    if depth >= layers or unrepresented_kinds(config, depth):
        return None
    return depth
