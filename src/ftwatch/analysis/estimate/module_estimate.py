"""The estimate's module tree: every category of an estimate attributed to the modules of the meta model.

The same ``modules`` payload the probe writes on measured steps (:mod:`ftwatch.runlog.module_tree`),
built from the meta peft model the estimate sized and its activation trace:

- ``weights``/``lora``: each module's own parameters and buffers, by the rules of
  :func:`~ftwatch.analysis.estimate.parameters.count_parameters` (storages once, a tied weight with
  the module that names it first, bitsandbytes' quantized storage); ``grads``: the trainable bytes;
  ``optimizer``: :func:`~ftwatch.analysis.estimate.optimizer.optimizer_state_bytes` of each
  module's trainable shapes. These sum exactly to the estimate's categories.
- ``activations``: what the trace saw each module save (the estimate's category: what autograd holds
  when the forward ends). With gradient checkpointing the estimate's figure maps as it is made
  (:func:`~ftwatch.analysis.estimate.activations.combine_activations`): a checkpointed layer holds
  its input (on the layer itself, part ``other``; nothing when offloaded), a layer that is not
  checkpointed what it saves. The layer recomputed in the backward is live only then: it is in the
  estimate's ``other`` (the step's peak), not here; ``context["recomputed_layer"]`` names the
  checkpointed layer that saves the most of its own. The sum is the estimate's activations.

No tree when the trace could not run (the formula fallback knows layers, not modules): ``None``.
"""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.estimate.activation_trace import ActivationTrace
from ftwatch.analysis.estimate.inputs import EstimateInputs
from ftwatch.analysis.estimate.meta_model import meta_peft_model
from ftwatch.analysis.estimate.model_config import _config_get, _to_pretrained_config
from ftwatch.analysis.estimate.optimizer import optimizer_state_bytes
from ftwatch.analysis.estimate.parameters import _quantized_weight_bytes
from ftwatch.analysis.estimate.trace_extension import cached_trace
from ftwatch.runlog.module_tree import build_modules

ByPath = dict[str, dict[str, int]]


def estimate_modules(result: Any, *, full: bool = False) -> dict[str, Any] | None:
    """The ``modules`` payload of an :class:`~ftwatch.analysis.estimate.result.Estimate` (``full``:
    with ``tree``); ``None`` when its activations came from the formula or the trace fails."""
    inputs = getattr(result, "inputs", None)
    activations = getattr(result, "activations", None)
    if inputs is None or (activations is not None and activations.method != "trace"):
        return None
    return modules_for_inputs(inputs, full=full)


def modules_for_inputs(inputs: EstimateInputs, *, full: bool = False) -> dict[str, Any] | None:
    """The ``modules`` payload for estimate inputs (the model and the trace are the estimate's cached
    ones); ``None`` when the meta trace cannot run this model."""
    model = meta_peft_model(inputs)
    try:
        trace = cached_trace(inputs, model)
    except Exception:  # noqa: BLE001 - an architecture the meta trace cannot run: the estimate used the formula
        return None
    if trace.method != "trace" or not trace.saved_by_path:
        return None
    quantization = "4bit" if inputs.load_in_4bit else "8bit" if inputs.load_in_8bit else None
    by_path = static_by_path(model, quantization, inputs.optim, inputs.training.get("optim_args"))
    options = inputs.checkpointing_options
    activations, recomputed = activations_by_path(trace, inputs.gradient_checkpointing,
                                                  every_n_layers=int(options.get("every_n_layers", 1)),
                                                  offload=bool(options.get("offload", False)))
    for path, nbytes in activations.items():
        if nbytes:
            by_path.setdefault(path, {})["activations"] = nbytes
    order = {name: i for i, (name, _module) in enumerate(model.named_modules())}
    ordered = {path: by_path[path] for path in sorted(by_path, key=lambda p: order.get(p, len(order)))}
    payload = build_modules(ordered, trace.layer_paths, full=full)
    for row in payload["layers"]:
        row["input"] = trace.layer_inputs[row["index"]] if row["index"] < len(trace.layer_inputs) else 0
    config = _to_pretrained_config(inputs.model_config, inputs.trust_remote_code)
    vocab = _config_get(config, "vocab_size")
    payload["context"] = {
        "batch": inputs.batch_size,
        "seq_len": inputs.max_length,
        "checkpointing": inputs.gradient_checkpointing,
        "vocab_size": int(vocab) if vocab else None,
        "dtype": inputs.autocast_dtype or inputs.model_dtype,
        "recomputed_layer": recomputed,
    }
    return payload


def static_by_path(model: Any, quantization: str | None, optim: str, optim_args: str | None = None) -> ByPath:
    """``weights``, ``lora``, ``grads`` and ``optimizer`` bytes by module path (the path that owns a
    parameter or buffer), with :func:`~ftwatch.analysis.estimate.parameters.count_parameters`'s
    rules: a storage once (a tied weight with the module that names it first), frozen parameters at
    bitsandbytes' quantized size, buffers as weights, the trainable ones as LoRA, grads and state."""
    quantized = _quantized_weight_bytes(model, quantization) if quantization else {}
    seen: set[int] = set()
    out: ByPath = {}
    for name, param in model.named_parameters():
        key = param.untyped_storage()._cdata
        if key in seen:
            continue
        seen.add(key)
        values = out.setdefault(name.rpartition(".")[0], {})
        if param.requires_grad:
            nbytes = param.numel() * param.element_size()
            state = optimizer_state_bytes([(tuple(param.shape), param.element_size())], optim, optim_args)
            for category, value in (("lora", nbytes), ("grads", nbytes), ("optimizer", state)):
                values[category] = values.get(category, 0) + value
        else:
            values["weights"] = values.get("weights", 0) + quantized.get(key, param.untyped_storage().nbytes())
    for name, buffer in model.named_buffers():
        key = buffer.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            values = out.setdefault(name.rpartition(".")[0], {})
            values["weights"] = values.get("weights", 0) + buffer.untyped_storage().nbytes()
    return out


def activations_by_path(trace: ActivationTrace, checkpointing: bool, every_n_layers: int = 1,
                        offload: bool = False) -> tuple[dict[str, int], int | None]:
    """Activation bytes by module path, summing to ``combine_activations(trace, ...).saved_forward``
    (what autograd holds when the forward ends), and the index of the checkpointed layer that saves
    the most of its own, the largest recomputed in the backward (``None`` without checkpointing)."""
    saved = dict(trace.saved_by_path)
    if not checkpointing or not trace.layers:
        return saved, None
    every = max(int(every_n_layers), 1)
    checkpointed = [i for i in range(len(trace.layers)) if i % every == 0]
    # the first of the largest checkpointed layers (combine_activations' recompute)
    recomputed = max(checkpointed, key=lambda i: (trace.layers[i], -i))
    out: dict[str, int] = {}
    for path, nbytes in saved.items():
        layer = _layer_of(path, trace.layer_paths)
        if layer is None or layer % every != 0:
            out[path] = out.get(path, 0) + nbytes  # outside the layers, or a layer kept whole
    if not offload:
        for i in checkpointed:
            path = trace.layer_paths[i]
            out[path] = out.get(path, 0) + trace.layer_inputs[i]
    return out, recomputed


def _layer_of(path: str, layer_paths: tuple[str, ...]) -> int | None:
    for i, layer in enumerate(layer_paths):
        if path == layer or path.startswith(layer + "."):
            return i
    return None
