"""Why 4-bit or 8-bit loading saves less than a user would guess, or nothing at all.

A user expects ``load_in_4bit`` to save three quarters of 16-bit weights (``load_in_8bit`` half).
For training, peft's ``prepare_model_for_kbit_training`` (QLoRA's recipe, which ftwatch's worker
runs) casts every parameter bitsandbytes leaves unquantized (embeddings, norms, the LM head) to
float32, and the hidden states that flow between the quantized layers are float32 with them: on a
bfloat16 model the activations double. :func:`why_so_little` says so, with the figures, when the
saving on the peak is under :data:`SURPRISE_SHARE` of that guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from ftwatch.common.units import format_bytes

#: Below this share of the saving a user would guess, a quantization change gets its reason said.
SURPRISE_SHARE = 0.6
#: Bits per weight value each change stores (besides its small quantization state).
QUANTIZATION_BITS = {"load_in_4bit": 4, "load_in_8bit": 8}


def guessed_saving(kind: str, weights: int, dtype_bytes: int) -> int:
    """What a user would guess ``kind`` saves on ``weights`` bytes of ``dtype_bytes``-byte values:
    the weights at the quantized width instead (4-bit beside bfloat16: three quarters)."""
    bits = QUANTIZATION_BITS.get(kind)
    if bits is None or dtype_bytes * 8 <= bits:
        return 0
    return int(weights * (1 - bits / (dtype_bytes * 8)))


def why_so_little(kind: str, before: Mapping[str, int], after: Mapping[str, int], dtype_bytes: int) -> str | None:
    """The reason a quantization change (``kind`` ``load_in_4bit``/``load_in_8bit``) saves much less
    than a user would guess (:func:`guessed_saving`), from the categories of the estimates before and
    after it on a model of ``dtype_bytes``-byte weights; ``None`` for other changes and for savings
    that are no surprise."""
    guess = guessed_saving(kind, int(before.get("weights", 0)), dtype_bytes)
    if guess <= 0 or dtype_bytes != 2:  # float32 weights: nothing is cast up, the guess is no surprise
        return None
    shrink = int(before.get("weights", 0)) - int(after.get("weights", 0))
    grown = {name: int(after.get(name, 0)) - int(before.get(name, 0)) for name in after if name != "weights"}
    grown = {name: delta for name, delta in grown.items() if delta > 0}
    saved = shrink - sum(grown.values())
    if saved >= SURPRISE_SHARE * guess:
        return None
    parts = [f"the weights shrink by {format_bytes(shrink)}, not {format_bytes(guess)}"]
    if grown:
        growth = ", ".join(f"{name} +{format_bytes(delta)}" for name, delta in sorted(grown.items(), key=lambda kv: -kv[1]))
        parts.append(f"the hidden states between layers are float32 too ({growth})")
    return ("why so little: prepare_model_for_kbit_training (the QLoRA recipe) casts what bitsandbytes leaves "
            "unquantized (embeddings, norms, LM head) to float32, so " + ", and ".join(parts))
