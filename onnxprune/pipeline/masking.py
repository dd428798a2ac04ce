"""Writing a mask into a weight: pruned entries become exactly zero (or the zero point of a quantized
weight), in place where the stored array allows it. Pruning, repair and hooks all write through here,
so every pass keeps pruned weights at exactly zero; the passes that write weights ensure `PRUNED_ZERO`."""

from __future__ import annotations

import numpy as np

from onnxprune.analyze.weights import Weight, zero_value
from onnxprune.core.masks import count_ones
from onnxprune.core.quant import bit_view
from onnxprune.pipeline.contract import Condition, Context


def apply_mask(weight: Weight, stored: np.ndarray, keep: np.ndarray, model) -> np.ndarray:
    """Stored values with pruned entries set to zero (or to the zero point when quantized)."""
    if weight.quant is None and stored.itemsize in (1, 2, 4, 8) and stored.dtype.kind != "O":
        # all-zero bits are 0 / +0.0 in every numeric dtype: multiplying the bit patterns by the
        # mask is exact and several times faster than np.where
        bits = bit_view(stored)
        return np.multiply(bits, np.broadcast_to(keep, bits.shape), dtype=bits.dtype).view(stored.dtype)
    return np.where(keep, stored, zero_value(weight, model)).astype(stored.dtype, copy=False)


def write_masked(ctx: Context, weight: Weight, keep: np.ndarray, stored: np.ndarray | None = None) -> int:
    """Write the masked weight into the model; returns how many stored values changed."""
    if stored is None:
        stored = ctx.model.read(weight.key)
    if _maskable_in_place(weight, stored):  # a fresh array read from external data: no second copy
        stored.flags.writeable = True  # before taking the view, which inherits the flag
        bits = bit_view(stored)
        nonzero = np.count_nonzero(bits)
        np.multiply(bits, keep, out=bits)
        changed = int(nonzero - np.count_nonzero(bits))  # masking only ever zeroes values
        if changed:
            ctx.model.write(weight.key, stored, hand_over=True)
        return changed
    masked = apply_mask(weight, stored, keep, ctx.model)
    diff = bit_view(masked) != bit_view(stored)
    changed = int(np.count_nonzero(diff if diff.ndim == stored.ndim else diff.any(axis=-1)))
    if changed:
        ctx.model.write(weight.key, masked, hand_over=True)
    return changed


def _maskable_in_place(weight: Weight, stored: np.ndarray) -> bool:
    return (weight.quant is None and stored.flags.owndata and stored.flags.c_contiguous
            and stored.itemsize in (1, 2, 4, 8) and stored.dtype.kind != "O")


def _pruned_not_zero(ctx: Context) -> tuple[str, ...] | None:
    """The first masked weight the running pass wrote with a pruned entry that is not exactly zero (or the
    zero point). Weights it did not write keep what an earlier check saw; those it wrote are in memory.
    The entries that are not zero are packed to bits and matched against the packed mask (no unpacked
    copy of the mask)."""
    by_key = ctx.analysis.by_key()
    for key, at in ctx.model.edited_at.items():
        w = by_key.get(key)
        if at <= ctx.edits_before or w is None or key not in ctx.masks:
            continue
        stored = ctx.model.read(key)
        if w.quant is None:  # zero is the all-zero bit pattern: no full-size zero array
            diff = bit_view(stored) != 0
        else:
            diff = bit_view(stored) != bit_view(np.broadcast_to(zero_value(w, ctx.model), stored.shape).astype(stored.dtype))
        not_zero = np.packbits((diff if diff.ndim == stored.ndim else diff.any(axis=-1)).reshape(-1))
        bad = count_ones(not_zero & ~ctx.masks.packed(key))
        if bad:
            return (f"weight {key!r} has {bad} pruned entries that are not exactly zero (a bug in the pass)",)
    return None


PRUNED_ZERO = Condition("pruned weights exactly zero", _pruned_not_zero)
