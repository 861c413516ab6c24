"""The activation estimate (trace, else formula; with or without checkpointing) and what the backward
adds at the step's peak ("other")."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.estimate.activation_formula import formula_activations
from ftwatch.analysis.estimate.activation_trace import ActivationTrace, _cached_trace
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import _config_get, _to_pretrained_config
from ftwatch.analysis.estimate.step_trace import cached_step_peak

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation bytes: what the forward pass leaves saved (``saved_forward``, the estimate's
    ``activations``) and what one checkpointed layer saves again when the backward recomputes it
    (``recompute``; live only in the backward, so in ``other`` when it is live at the peak)."""

    saved_forward: int
    recompute: int
    method: str

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
    try:
        trace = _cached_trace(inputs, model)
    except Exception as exc:  # an architecture the meta trace cannot run
        _log.debug("meta trace failed, using the formula: %s", exc)
        trace = formula_activations(inputs, model)
    options = inputs.checkpointing_options
    return combine_activations(trace, inputs.gradient_checkpointing,
                               every_n_layers=int(options.get("every_n_layers", 1)),
                               offload=bool(options.get("offload", False)))


def other_bytes(inputs: EstimateInputs) -> int:
    """The loss backward's two float32 logits-sized buffers: the gradient of the log-probabilities and
    that of the logits (the loss upcasts the logits to float32 whatever the model's dtype). The
    log-probabilities themselves are saved by the forward (``activations``)."""
    vocab = int(_config_get(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code), "vocab_size") or 0)
    return 2 * inputs.batch_size * inputs.max_length * vocab * 4


def backward_peak_bytes(inputs: EstimateInputs, activations: ActivationEstimate, model: Any | None = None) -> int:
    """``other``: what the training step holds at its peak beyond the forward's saved activations
    (``activations.saved_forward``) and the parameters' gradients.

    From a meta training step (:func:`~ftwatch.analysis.estimate.step_trace.cached_step_peak`): its
    peak of live bytes less the gradients live then and less the saved activations, so the sum of
    the categories is the step's peak. Where the peak is the loss backward this is the loss's
    float32 gradients; where it is a checkpointed layer's backward, that layer recomputed and its
    gradients, net of the saved activations the backward has freed by then. When the step cannot
    run on the meta device (the formula stands in for the trace, or checkpoints are offloaded to
    the host, which meta tensors cannot be), the bound :func:`other_bytes` plus the recomputed layer.
    """
    offload = bool(inputs.checkpointing_options.get("offload", False))
    if activations.method == "trace" and not (inputs.gradient_checkpointing and offload):
        model = model if model is not None else meta_peft_model(inputs)
        try:
            step = cached_step_peak(inputs, model)
            return max(step.peak - step.grads - activations.saved_forward, 0)
        except Exception as exc:  # an op without a meta backward, say: the bound below
            _log.debug("meta training step failed, bounding the backward instead: %s", exc)
    return other_bytes(inputs) + activations.recompute
