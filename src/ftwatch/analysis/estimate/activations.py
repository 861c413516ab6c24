"""The activation estimate (trace, else formula; with or without checkpointing) and the logits ("other")."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ftwatch.analysis.estimate.activation_formula import formula_activations
from ftwatch.analysis.estimate.activation_trace import ActivationTrace, _cached_trace
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import DTYPE_BYTES, _config_get, _to_pretrained_config

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation bytes: what the forward pass leaves saved, plus a checkpointed layer's recompute."""

    saved_forward: int
    recompute: int
    method: str

    @property
    def total(self) -> int:
        """The peak: saved bytes plus the recompute of one checkpointed layer."""
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
    """The logits the model returns (alive until backward ends) plus one float32 buffer of that size."""
    vocab = int(_config_get(_to_pretrained_config(inputs.model_config, inputs.trust_remote_code), "vocab_size") or 0)
    d = DTYPE_BYTES[inputs.autocast_dtype or inputs.model_dtype]
    return inputs.batch_size * inputs.max_length * vocab * (d + 4)
