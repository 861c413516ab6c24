"""Advice from the module tree: which decoder layers to checkpoint, and when the logits/loss dominates.

A pure function of a ``modules`` payload (:mod:`ftwatch.runlog.module_tree`): its ``layers`` rows
(``bytes``, ``parts``, ``input``: the bytes of the layer's hidden-state input), its ``blocks`` and its
``context``. Every figure is the payload's activations, never a re-estimate:

- Checkpointing the layers ``0, k, 2k, ...``: each checkpointed layer keeps only its input instead
  of its activations, so the saving when the forward ends is, over those layers, activations minus
  input. Bytes a row marks ``shared`` (saved by several decoder layers, counted in the first: the
  rotary tables) stay saved unless every layer is checkpointed. The backward then recomputes one
  checkpointed layer at a time: its activations live again while it runs (``recompute_bytes``, the
  largest checkpointed layer's), so the saving at the step's peak is at least the difference.
- Only the attention or only the MLP inside every layer: that part's activations minus the one
  hidden-state tensor (``input`` bytes) its checkpoint keeps.
- The logits/loss: when ``loss`` plus the output head's activations are the largest block or over
  a third of the activations, chunked cross-entropy (the loss block minus one chunk) and half the
  micro-batch (every activation halves) are priced.

Nothing here raises on a malformed payload: what cannot be read counts as absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftwatch.common.units import format_bytes

#: Blocks that hold the output head (the logits' projection), by model family.
HEAD_BLOCKS = ("lm_head", "embed_out", "output", "score")
#: The loss block's name in the payload (``module_tree.LOSS_BLOCK``).
LOSS = "loss"
#: The every-k-th plans listed when no saving is asked for.
LISTED_EVERY = (1, 2, 4)
#: The chunk count offered for chunked cross-entropy when no saving is asked for.
DEFAULT_CHUNKS = 8
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModuleAdvice:
    """One piece of advice from the module tree.

    ``saving_bytes``: activations saved when the forward ends; ``recompute_bytes``: what the
    backward brings back for a while (checkpointing's recomputed piece); ``reaches``: with a
    wanted saving, whether ``saving_bytes - recompute_bytes`` covers it (``None`` without one)."""

    title: str
    saving_bytes: int
    detail: str
    kind: str
    code: str | None = None
    recompute_bytes: int = 0
    layers: tuple[int, ...] = ()
    reaches: bool | None = None


def _num(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def _acts(values: Any) -> int:
    return _num(values.get("activations")) if isinstance(values, Mapping) else 0


@dataclass(frozen=True)
class _Row:
    index: int
    acts: int
    input: int
    shared: int
    attention: int
    mlp: int


def _rows(payload: Mapping[str, Any]) -> list[_Row]:
    rows = payload.get("layers")
    out: list[_Row] = []
    for position, row in enumerate(rows if isinstance(rows, Sequence) else ()):
        if not isinstance(row, Mapping):
            continue
        parts = row.get("parts") if isinstance(row.get("parts"), Mapping) else {}
        index = row.get("index")
        out.append(_Row(index=index if isinstance(index, int) and not isinstance(index, bool) else position,
                        acts=_acts(row.get("bytes")), input=_num(row.get("input")),
                        shared=_num(row.get("shared")), attention=_acts(parts.get("attention")),
                        mlp=_acts(parts.get("mlp"))))
    return out


def _context(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    context = payload.get("context")
    return context if isinstance(context, Mapping) else {}


def _reaches(saving: int, recompute: int, needed: int | None) -> bool | None:
    return None if needed is None else saving - recompute >= needed


@dataclass(frozen=True)
class LayerPlan:
    """Checkpointing the decoder layers ``0, every, 2*every, ...``: its figures."""

    every: int
    layers: tuple[int, ...]
    saving_bytes: int
    recompute_bytes: int
    recomputed_layer: int | None


def layer_plan(rows: Sequence[_Row], every: int) -> LayerPlan:
    """The plan checkpointing every ``every``-th layer (from layer 0), priced from the rows."""
    chosen = [row for position, row in enumerate(rows) if position % every == 0]
    everything = len(chosen) == len(rows)
    saving = sum(row.acts - row.input - (0 if everything else row.shared) for row in chosen)
    largest = max(chosen, key=lambda row: row.acts, default=None)
    return LayerPlan(every, tuple(row.index for row in chosen), saving,
                     largest.acts if largest else 0, largest.index if largest else None)


def _layers_snippet(every: int) -> str:
    python_kwargs = ('{"use_reentrant": False}' if every == 1
                     else f'{{"use_reentrant": False, "every_n_layers": {every}}}')
    toml_kwargs = ("{ use_reentrant = false }" if every == 1
                   else f"{{ use_reentrant = false, every_n_layers = {every} }}")
    return "\n".join((
        f"# transformers 5.x (installed): checkpoint the decoder layers whose index % {every} == 0",
        f'model.activation_checkpointing_enable(activation_checkpointing_kwargs={{"use_reentrant": False}}, '
        f"every_n_layers={every})",
        f"# or the Trainer: TrainingArguments(activation_checkpointing=True, "
        f"activation_checkpointing_kwargs={python_kwargs})",
        f"# ftwatch config: [training] gradient_checkpointing = true; gradient_checkpointing_kwargs = {toml_kwargs}",
        "# older transformers (no every_n_layers): gradient_checkpointing_enable(), then on each decoder layer",
        f"#   for i, layer in enumerate(decoder_layers): layer.gradient_checkpointing = i % {every} == 0",
    ))


def _savings(saving: int, recompute: int) -> str:
    """The title's figures: the saved activations, and the least of it left at the peak once the
    backward has brought the recomputed piece back (a bound: where the step's peak falls outside the
    recomputation, in the loss's backward say, all of it comes off, as the estimate's own advice,
    which traces the step, prices it)."""
    net = saving - recompute
    at_peak = f"at least {format_bytes(net)} off the peak" if net > 0 else "no saving at the peak for certain"
    return f"saves {format_bytes(saving)} of activations, {at_peak} (the recomputed piece returns in the backward)"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _part_snippet(attribute: str) -> str:
    return "\n".join((
        "import functools",
        "from torch.utils.checkpoint import checkpoint",
        "from transformers.modeling_layers import GradientCheckpointingLayer",
        "for layer in [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]:",
        f"    part = layer.{attribute}",
        "    part.forward = functools.partial(checkpoint, part.forward, use_reentrant=False)",
    ))


def _plan_advice(plan: LayerPlan, total_layers: int, needed: int | None) -> ModuleAdvice:
    count = len(plan.layers)
    which = "every layer" if count == total_layers else (
        "layer 0 only" if count == 1 else f"every {_ordinal(plan.every)} layer ({', '.join(map(str, plan.layers))})")
    title = f"checkpoint {which}: {_savings(plan.saving_bytes, plan.recompute_bytes)}"
    named = f"layer {plan.layers[0]}" if count == 1 else f"layers {', '.join(map(str, plan.layers))}"
    detail = (f"Priced from the tree: the activations of {named} minus the input each keeps"
              f"{'' if count == total_layers else ', bytes shared with other layers staying saved'}; the backward "
              f"recomputes one layer at a time, so up to {format_bytes(plan.recompute_bytes)} "
              f"(layer {plan.recomputed_layer}'s activations) live again while it runs, at the cost of about "
              f"one more forward of {count} of {total_layers} layers.")
    return ModuleAdvice(title, plan.saving_bytes, detail, "checkpoint_layers", _layers_snippet(plan.every),
                        plan.recompute_bytes, plan.layers, _reaches(plan.saving_bytes, plan.recompute_bytes, needed))


def _chosen_plans(rows: Sequence[_Row], needed: int | None) -> tuple[list[LayerPlan], str | None]:
    n = len(rows)
    plans: dict[tuple[int, ...], LayerPlan] = {}
    for every in range(1, n + 1):
        plan = layer_plan(rows, every)
        plans.setdefault(plan.layers, plan)
    if needed is None:
        listed = [layer_plan(rows, every) for every in LISTED_EVERY if every <= max(n, 1)]
        unique = {plan.layers: plan for plan in reversed(listed)}
        return sorted(unique.values(), key=lambda plan: plan.every), None
    reaching = [p for p in plans.values() if p.saving_bytes - p.recompute_bytes >= needed]
    if reaching:
        mildest = min(reaching, key=lambda p: (len(p.layers), -p.saving_bytes))
        return [mildest], (f"the mildest plan that saves {format_bytes(needed)} after its recompute: "
                           f"{len(mildest.layers)} of {n} layers")
    return [layer_plan(rows, 1)], f"no layer plan saves {format_bytes(needed)} after its recompute; all layers is the most"


def _part_advice(rows: Sequence[_Row], part: str, attribute: str, needed: int | None) -> ModuleAdvice | None:
    terms = [(getattr(row, part), row.input) for row in rows]
    saving = sum(acts - kept for acts, kept in terms)
    recompute = max((acts for acts, _ in terms), default=0)
    if saving <= 0:
        return None
    label = "attention" if part == "attention" else "MLP"
    detail = (f"Priced from the layers' {label} parts: their activations minus the one hidden-state tensor "
              f"(the layer's input bytes) each checkpoint keeps; the backward recomputes one {label} at a time "
              f"(up to {format_bytes(recompute)}); LoRA adapters inside are not counted in the saving.")
    return ModuleAdvice(f"checkpoint only the {label} in every layer: {_savings(saving, recompute)}", saving, detail,
                        f"checkpoint_{part}", _part_snippet(attribute), recompute,
                        tuple(row.index for row in rows), _reaches(saving, recompute, needed))


def checkpoint_advice(payload: Mapping[str, Any], needed_bytes: int | None = None) -> list[ModuleAdvice]:
    """The checkpointing advice alone (see :func:`module_advice`)."""
    rows = _rows(payload)
    if not rows:
        return []
    if _context(payload).get("checkpointing") is True:
        return [ModuleAdvice("gradient checkpointing is already on", 0,
                             "The layers are already checkpointed: the tree holds what is left, nothing to price.",
                             "checkpointing_on")]
    plans, verdict = _chosen_plans(rows, needed_bytes)
    out = []
    for plan in plans:
        advice = _plan_advice(plan, len(rows), needed_bytes)
        if verdict is not None:
            advice = ModuleAdvice(advice.title, advice.saving_bytes, f"{advice.detail} {verdict[0].upper()}"
                                  f"{verdict[1:]}.", advice.kind, advice.code, advice.recompute_bytes,
                                  advice.layers, advice.reaches)
        if advice.saving_bytes > 0:
            out.append(advice)
    for part, attribute in (("attention", "self_attn"), ("mlp", "mlp")):
        piece = _part_advice(rows, part, attribute, needed_bytes)
        if piece is not None:
            out.append(piece)
    return out


def _blocks(payload: Mapping[str, Any]) -> dict[str, int]:
    blocks = payload.get("blocks")
    out: dict[str, int] = {}
    for block in blocks if isinstance(blocks, Sequence) else ():
        if isinstance(block, Mapping) and isinstance(block.get("name"), str):
            out[block["name"]] = out.get(block["name"], 0) + _acts(block.get("bytes"))
    return out


def chunk_bytes(loss_bytes: int, chunks: int, seq_len: int | None) -> int:
    """One chunk's share of the loss block: its tokens (``ceil(seq_len / chunks)``) of ``seq_len``."""
    if seq_len and seq_len > 0:
        tokens = -(-seq_len // chunks)
        return -(-loss_bytes * tokens // seq_len)
    return -(-loss_bytes // chunks)


def _chunk_count(loss_bytes: int, seq_len: int | None, needed: int | None) -> int:
    most = max(2, min(seq_len or 1024, 1024))
    if needed is None:
        return min(DEFAULT_CHUNKS, most)
    chunks = 2
    while chunks < most and loss_bytes - chunk_bytes(loss_bytes, chunks, seq_len) < needed:
        chunks *= 2
    return min(chunks, most)


_CHUNKED_CODE = """import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

def chunked_causal_lm_loss(hidden, lm_head, labels, chunks={chunks}, ignore_index=-100):
    # hidden: the decoder's last hidden state (model.model(...).last_hidden_state); labels as for the model
    h, y = hidden[:, :-1], labels[:, 1:]
    def piece(hc, yc):
        return F.cross_entropy(lm_head(hc).float().flatten(0, 1), yc.flatten(),
                               ignore_index=ignore_index, reduction="sum")
    total = sum(checkpoint(piece, hc, yc, use_reentrant=False)
                for hc, yc in zip(h.chunk(chunks, dim=1), y.chunk(chunks, dim=1)))
    return total / (y != ignore_index).sum()"""


def logits_advice(payload: Mapping[str, Any], needed_bytes: int | None = None) -> list[ModuleAdvice]:
    """When the logits/loss dominates the activations: chunked cross-entropy and half the micro-batch."""
    blocks = _blocks(payload)
    loss = blocks.get(LOSS, 0)
    head = sum(blocks.get(name, 0) for name in HEAD_BLOCKS)
    logits = loss + head
    totals = payload.get("totals")
    total = _acts(totals) if isinstance(totals, Mapping) and _acts(totals) else sum(blocks.values())
    others = max((b for name, b in blocks.items() if name != LOSS and name not in HEAD_BLOCKS), default=0)
    if logits <= 0 or not (logits > others or 3 * logits > total):
        return []
    context = _context(payload)
    batch, seq, vocab = (_num(context.get(key)) or None for key in ("batch", "seq_len", "vocab_size"))
    shape = (f"batch {batch} x seq {seq} x vocab {vocab} = {batch * seq * vocab} logits"
             if batch and seq and vocab else "batch x seq x vocab logits")
    itemsize = _ITEMSIZE.get(str(context.get("dtype")))
    size = f" ({format_bytes(batch * seq * vocab * itemsize)} in {context.get('dtype')})" if (
        batch and seq and vocab and itemsize) else ""
    share = f"{100 * logits / total:.0f}%" if total else "most"
    out: list[ModuleAdvice] = []
    if loss > 0:
        chunks = _chunk_count(loss, seq, needed_bytes)
        saving = loss - chunk_bytes(loss, chunks, seq)
        detail = (f"The logits dominate: the loss and output head hold {format_bytes(logits)} ({share} of the "
                  f"activations), from {shape}{size}. Priced as the loss block ({format_bytes(loss)}) minus one "
                  f"chunk of {chunks} along the sequence, which its backward recomputes.")
        out.append(ModuleAdvice(f"chunked cross-entropy ({chunks} chunks): saves {format_bytes(saving)}", saving,
                                detail, "chunked_loss", _CHUNKED_CODE.format(chunks=chunks),
                                reaches=_reaches(saving, 0, needed_bytes)))
    if batch and batch >= 2:
        saving = total // 2
        detail = (f"The logits dominate ({share} of the activations, {shape}); priced as half of the measured "
                  f"activations ({format_bytes(total)}), every one of which scales with the micro-batch.")
        code = (f"# [training] per_device_train_batch_size = {batch // 2}, and twice the "
                "gradient_accumulation_steps (the same effective batch)")
        out.append(ModuleAdvice(f"halve the micro-batch ({batch} -> {batch // 2}, gradient accumulation x2): "
                                f"saves {format_bytes(saving)}", saving, detail, "halve_batch", code,
                                reaches=_reaches(saving, 0, needed_bytes)))
    return out


def module_advice(payload: dict[str, Any], needed_bytes: int | None = None) -> list[ModuleAdvice]:
    """Advice priced from a ``modules`` payload: checkpointing plans (every k-th layer, only attention,
    only MLP; nothing priced when checkpointing is on), then the logits/loss when it dominates.

    ``needed_bytes``: a wanted saving; the layer plans shrink to the mildest (fewest layers) whose
    saving net of its recompute reaches it, and every piece says whether it ``reaches`` it."""
    if not isinstance(payload, Mapping):
        return []
    needed = needed_bytes if isinstance(needed_bytes, int) and needed_bytes > 0 else None
    return checkpoint_advice(payload, needed) + logits_advice(payload, needed)
