"""Predict the memory of a LoRA fine-tune before a single weight is loaded.

The model is built from its ``config.json`` on the ``meta`` device (shapes and dtypes, no storage),
peft's real ``get_peft_model`` is applied to it, and every category is sized from that model:

- ``weights``: frozen parameters and buffers, with bitsandbytes' 8-bit/4-bit storage for the Linear
  layers it quantizes (the rest in float32, as ``prepare_model_for_kbit_training`` leaves them);
  ``lora``: the trainable parameters (peft keeps adapters in float32); ``grads``: one gradient per
  trainable parameter; ``optimizer``: the state the chosen optimizer keeps.
- ``activations``: a forward pass of the meta model with ``saved_tensors_hooks`` (the probe's own
  method: what autograd saves, parameters excluded, storages once; only what is still saved when
  the forward ends). Fused attention kernels (SDPA, flash) are stood in for by a function that
  saves what they save; mixed precision (``bf16``/``fp16`` in ``[training]``) is emulated op by op.
  Gradient checkpointing keeps each layer's input. If the trace cannot run, a per-layer formula for
  Llama-style decoders is used, as a last resort that says so (:mod:`.fallbacks`).
- ``other``: what the step holds at its peak beyond those saved activations and the gradients, from
  a whole training step run on the meta device (:mod:`.step_trace`: forward, loss, backward, the
  checkpointed recomputation): at a loss-backward peak the loss's two float32 logits-sized
  gradients; at a peak inside a layer's backward that layer recomputed and its gradients, net of
  the saved activations freed by then. So the categories sum to the step's peak. When that step
  cannot run, an approximation: the larger of the two float32 loss buffers and the largest
  recomputed layer. Either
  stand-in is listed in :attr:`Estimate.fallbacks` with why and its expected error, and noted.
- ``non_torch``: the CUDA context and library workspaces (GPU targets only), a fixed allowance.

:func:`estimate` works on a loaded :class:`~ftwatch.common.config.Config`; :func:`estimate_from_model_config`
is the lower-level entry point for callers that already hold the model config.

The package, one concern a module (everything public is re-exported here):

- :mod:`.model_config`: reading config.json, its fields, the weights' dtype (``DTYPE_BYTES``).
- :mod:`.inputs`: :class:`EstimateInputs`, gathered from a config file or varied (:func:`with_changes`).
- :mod:`.meta_model`: the peft model on the ``meta`` device, cached.
- :mod:`.parameters`: parameter counts and weight bytes (bitsandbytes' quantized storage).
- :mod:`.optimizer`: optimizer state bytes by ``optim`` name.
- :mod:`.fused_attention`, :mod:`.autocast_emulation`: what the meta trace stands in for fused
  attention kernels and CUDA autocast; :mod:`.meta_kernels`: for ops whose meta kernel refuses
  what the device kernels run (``torch._grouped_mm`` in float32, in mixture-of-experts layers);
  :mod:`.meta_masks`: the one value transformers' mask creation reads, answered without data.
- :mod:`.activation_trace`: the meta trace (``saved_tensors_hooks``) and its cache.
- :mod:`.layer_repeat`, :mod:`.trace_extension`: where a model's layers start to repeat, and its trace
  from short copies carried to the full depth (exact, else the full model's).
- :mod:`.activation_formula`: the per-layer formula the trace falls back to.
- :mod:`.activations`: trace or formula, with or without checkpointing; ``other`` from the step's peak.
- :mod:`.fallbacks`: the formula and the approximation as last resorts: why, and their expected error.
- :mod:`.step_trace`: a training step on the meta device and its peak of live bytes.
- :mod:`.result`: :class:`Estimate` and the verdict (:func:`judge`).
- :mod:`.core`: :func:`estimate`, :func:`estimate_inputs`, :func:`estimate_from_model_config`.
- :mod:`.quiet`: silencing transformers/peft while they work.
"""

from __future__ import annotations

from ftwatch.analysis.estimate.activation_formula import formula_activations
from ftwatch.analysis.estimate.activation_trace import _TRACE_CACHE as _TRACE_CACHE  # tests reset it
from ftwatch.analysis.estimate.activation_trace import ActivationTrace, decoder_layers, trace_activations
from ftwatch.analysis.estimate.activations import (
    ActivationEstimate,
    combine_activations,
    estimate_activations,
    other_bytes,
)
from ftwatch.analysis.estimate.core import (
    NON_TORCH_BYTES,
    MiB,
    estimate,
    estimate_from_model_config,
    estimate_inputs,
    quantization_of,
)
from ftwatch.analysis.estimate.fallbacks import Fallback
from ftwatch.analysis.estimate.fused_attention import FUSED_ATTENTION
from ftwatch.analysis.estimate.inputs import EstimateInputs, inputs_from_config, with_changes
from ftwatch.analysis.estimate.meta_model import (
    _build_meta_peft_model as _build_meta_peft_model,  # tests time it
)
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import DTYPE_BYTES, load_model_config, resolve_dtype
from ftwatch.analysis.estimate.optimizer import (
    BNB_MIN_8BIT_SIZE,
    BNB_OPTIM_BLOCK,
    BNB_QMAP_BYTES,
    OPTIMIZERS,
    optimizer_state_bytes,
)
from ftwatch.analysis.estimate.parameters import NF4_BLOCK, NF4_CODE_BYTES, ParamCounts, count_parameters
from ftwatch.analysis.estimate.result import TIGHT_HEADROOM, VERDICTS, Estimate, judge

__all__ = [
    "BNB_MIN_8BIT_SIZE",
    "BNB_OPTIM_BLOCK",
    "BNB_QMAP_BYTES",
    "DTYPE_BYTES",
    "FUSED_ATTENTION",
    "NF4_BLOCK",
    "NF4_CODE_BYTES",
    "NON_TORCH_BYTES",
    "OPTIMIZERS",
    "TIGHT_HEADROOM",
    "VERDICTS",
    "ActivationEstimate",
    "ActivationTrace",
    "Estimate",
    "EstimateInputs",
    "Fallback",
    "MiB",
    "ParamCounts",
    "combine_activations",
    "count_parameters",
    "decoder_layers",
    "estimate",
    "estimate_activations",
    "estimate_from_model_config",
    "estimate_inputs",
    "formula_activations",
    "inputs_from_config",
    "judge",
    "load_model_config",
    "meta_peft_model",
    "optimizer_state_bytes",
    "other_bytes",
    "quantization_of",
    "resolve_dtype",
    "trace_activations",
    "with_changes",
]
