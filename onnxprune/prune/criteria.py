"""Scoring functions: higher score = more important weight. A criterion is one function.

`criterion(weight, stored, ctx) -> scores` gets the Weight (analysis), its stored values and the
pipeline context, and returns float scores in the stored layout. Weights behind
DequantizeLinear are scored in real units: |q - zero_point| * scale. Wanda and SparseGPT's OBS
saliency read calibration statistics (`ctx.calibration`); SparseGPT's weight updates run in
prune/calibrated.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxprune.analyze.activations import LayerStats
from onnxprune.analyze.weights import Weight, dequant_params
from onnxprune.core.errors import Opt, OptionError
from onnxprune.pipeline.calibration import calibration_state
from onnxprune.pipeline.contract import Context

DEFAULT_PERCDAMP = 0.01


def magnitude(weight: Weight, stored: np.ndarray, ctx) -> np.ndarray:
    if weight.quant is not None:
        scale, zp = dequant_params(weight, ctx.model)
        return np.abs(stored.astype(np.float32) - zp.astype(np.float32)) * scale
    return np.abs(stored.astype(np.float32, copy=False))


def _note(ctx: Context, text: str) -> None:
    state = calibration_state(ctx)
    if text not in state.notes:
        state.notes.append(text)


def _stats(ctx: Context, weight: Weight, gram: bool) -> LayerStats | None:
    if ctx.data is None:
        raise OptionError("criteria wanda and sparsegpt need calibration inputs: give ",
                          Opt("data.calibration", "FILE"))
    return calibration_state(ctx).get(weight, gram)


def effective_damp(percdamp: float, st: LayerStats, auto: bool = True) -> float:
    """percdamp, raised to cols / rows-of-X when the calibration gave few activation rows per column:
    such an H is (nearly) rank-deficient and a reconstruction from it overfits the calibration set."""
    return max(percdamp, st.cols / max(st.count, 1)) if auto else percdamp


def wanda_matrix(weight: Weight, stored: np.ndarray, ctx: Context, st: LayerStats | None) -> np.ndarray:
    """|W| * ||X_j|| on the matrix view (magnitude where there are no statistics)."""
    mag = weight.matrix(magnitude(weight, stored, ctx)).astype(np.float64)
    if st is None:
        return mag
    return mag * st.per_row(st.norms, weight.rows)


def wanda(weight: Weight, stored: np.ndarray, ctx: Context) -> np.ndarray:
    """Wanda score in the stored layout (criterion contract)."""
    st = _stats(ctx, weight, gram=False)
    if st is None:
        _note(ctx, f"{weight.key}: no calibration statistics ({calibration_state(ctx).skipped.get(weight.key)}); "
                   "scored by magnitude")
    return weight.unmatrix(wanda_matrix(weight, stored, ctx, st).astype(np.float32))


def hinv_upper(h: np.ndarray, percdamp: float = DEFAULT_PERCDAMP) -> tuple[np.ndarray, np.ndarray]:
    """(U, dead): upper Cholesky factor of (H + damp I)^-1 (H^-1 = U^T U) and the columns never
    activated (their diagonal is set to 1, as SparseGPT does). Damping grows x10 until it factors."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * float(np.mean(np.diag(h)))
    eye = np.eye(len(h))
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h + damp * eye)
            linv = np.linalg.solve(lower, eye)
            return np.linalg.cholesky(linv.T @ linv).T, dead
        except np.linalg.LinAlgError:
            damp = max(damp * 10, 1e-8)
    raise np.linalg.LinAlgError("the calibration Hessian does not factor even with strong damping")


def obs_saliency(wm: np.ndarray, st: LayerStats, percdamp: float = DEFAULT_PERCDAMP) -> np.ndarray:
    """w^2 / [H^-1]_jj^2 per entry of the matrix view (the OBS loss of pruning it alone)."""
    out = np.empty(wm.shape, dtype=np.float64)
    for g, sl in enumerate(st.row_slices(wm.shape[0])):
        u, _ = hinv_upper(st.gram[g], percdamp)
        d = np.diag(u)
        out[sl] = wm[sl].astype(np.float64) ** 2 / d**2
    return out


def sparsegpt_score(weight: Weight, stored: np.ndarray, ctx: Context) -> np.ndarray:
    """OBS saliency in the stored layout (criterion contract); Wanda without a Gram matrix."""
    st = _stats(ctx, weight, gram=True)
    if st is None or st.gram is None or weight.quant is not None:
        return wanda(weight, stored, ctx)
    wm = weight.matrix(stored.astype(np.float32))
    return weight.unmatrix(obs_saliency(wm, st, effective_damp(DEFAULT_PERCDAMP, st)).astype(np.float32))

CRITERIA: dict[str, Callable] = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt_score}


def get(name: str) -> Callable:
    try:
        return CRITERIA[name]
    except KeyError:
        raise OptionError(f"criterion {name!r} is unknown; choose one of {', '.join(sorted(CRITERIA))}") from None


def entrywise(name: str, weight: Weight) -> Callable[[np.ndarray], np.ndarray] | None:
    """The criterion as a function of each stored value alone, where it is one (magnitude of a
    weight that is not quantized): a kernel may then score any block of the values by itself."""
    if name == "magnitude" and weight.quant is None:
        return lambda values: magnitude(weight, values, None)
    return None
