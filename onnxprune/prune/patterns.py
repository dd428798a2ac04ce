"""Turn scores into masks on a weight's matrix view: unstructured, N:M and r x c blocks.

Every function takes `scores` (rows x cols, float, higher = more important) and the current
`keep` mask of the same shape (False = already pruned; such weights stay pruned), and returns
the new keep mask. Ties are broken by a fixed rule: among equal scores the lower flat index
(row-major on the matrix view) is pruned first, so results are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import OptionError


@dataclass(frozen=True)
class Pattern:
    """A pruning granularity: "unstructured", ("nm", N, M) or ("block", r, c)."""

    kind: str
    a: int = 0
    b: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        t = text.strip().lower()
        if t == "unstructured":
            return cls("unstructured")
        if m := re.fullmatch(r"(\d+):(\d+)", t):
            n, mm = int(m[1]), int(m[2])
            if not 0 < n < mm:
                raise OptionError(f"pattern {text!r}: N:M needs 0 < N < M, e.g. 2:4")
            return cls("nm", n, mm)
        if m := re.fullmatch(r"(\d+)x(\d+)", t):
            r, c = int(m[1]), int(m[2])
            if r < 1 or c < 1:
                raise OptionError(f"pattern {text!r}: block sides must be >= 1, e.g. 4x4")
            return cls("block", r, c)
        raise OptionError(f"pattern {text!r}: use unstructured, N:M (e.g. 2:4) or RxC blocks (e.g. 4x4)")

    def __str__(self) -> str:
        return {"unstructured": "unstructured", "nm": f"{self.a}:{self.b}", "block": f"{self.a}x{self.b}"}[self.kind]

    @property
    def fixed_sparsity(self) -> float | None:
        return 1 - self.a / self.b if self.kind == "nm" else None


def _prune_lowest(scores: np.ndarray, keep: np.ndarray, n_prune: int) -> np.ndarray:
    """Prune the `n_prune` lowest-scored entries among those still kept (flat, tie: lower index)."""
    keep = keep.copy()
    flat_keep = keep.reshape(-1)
    alive = np.flatnonzero(flat_keep)
    n_prune = int(min(max(n_prune, 0), alive.size))
    if n_prune == 0:
        return keep
    s = scores.reshape(-1)[alive]
    if n_prune == alive.size:
        flat_keep[alive] = False
        return keep
    kth = np.partition(s, n_prune - 1)[n_prune - 1]
    below = s < kth
    ties = np.flatnonzero(s == kth)[: n_prune - int(below.sum())]
    flat_keep[alive[below]] = False
    flat_keep[alive[ties]] = False
    return keep


def unstructured(scores: np.ndarray, keep: np.ndarray, sparsity: float) -> np.ndarray:
    target = int(round(sparsity * scores.size))
    return _prune_lowest(scores, keep, target - int((~keep).sum()))


def nm_groups(matrix: np.ndarray, group_axis_len: int, m: int, fill) -> np.ndarray:
    """View as (-1, M) groups along the group axis (the innermost `group_axis_len` columns),
    padding each run of `group_axis_len` to a multiple of M with `fill`."""
    runs = matrix.reshape(-1, group_axis_len)
    pad = (-group_axis_len) % m
    if pad:
        runs = np.concatenate([runs, np.full((runs.shape[0], pad), fill, dtype=runs.dtype)], axis=1)
    return runs.reshape(-1, m)


def nm(scores: np.ndarray, keep: np.ndarray, n: int, m: int, group_axis_len: int, sparsity: float | None = None) -> np.ndarray:
    """At most N kept in each group of M consecutive entries along the group axis.

    Padding (when group_axis_len % M != 0) counts as already-pruned positions. With
    `sparsity` below 1 - N/M (a gradual step), only part of the final N:M candidates are
    pruned: the lowest-scored ones in the whole tensor."""
    pad = (-group_axis_len) % m
    s = nm_groups(np.where(keep, scores.astype(np.float64, copy=False), -np.inf), group_axis_len, m, -np.inf)
    k = nm_groups(keep, group_axis_len, m, False)
    order = np.argsort(s, axis=1, kind="stable")  # ascending score; on ties the lower position first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m)[None, :].repeat(len(order), 0), axis=1)
    candidate = k & (rank < m - n)  # kept now, but outside the N best of its group (ties: lower index pruned)
    new_keep = k & ~candidate
    if sparsity is not None and sparsity < 1 - n / m:
        target = int(round(sparsity * keep.size)) - int((~keep).sum())
        cand_idx = np.flatnonzero(candidate)
        if target < cand_idx.size:
            cs = s.reshape(-1)[cand_idx]
            chosen = cand_idx[np.argsort(cs, kind="stable")[: max(target, 0)]]
            new_keep = k.copy()
            new_keep.reshape(-1)[chosen] = False
    runs = new_keep.reshape(-1, group_axis_len + pad)[:, :group_axis_len]
    return runs.reshape(keep.shape)


def _block_view(a: np.ndarray, r: int, c: int, fill) -> np.ndarray:
    rows, cols = a.shape
    pr, pc = (-rows) % r, (-cols) % c
    if pr or pc:
        a = np.pad(a, ((0, pr), (0, pc)), constant_values=fill)
    return a.reshape((rows + pr) // r, r, (cols + pc) // c, c).swapaxes(1, 2)


def block_scores(scores: np.ndarray, keep: np.ndarray, r: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean score of each block over its real entries, entries per block, block alive) on the block grid."""
    real = _block_view(np.ones(scores.shape, dtype=bool), r, c, False)
    s = _block_view(np.where(keep, scores.astype(np.float64, copy=False), 0.0), r, c, 0.0)
    size = real.sum(axis=(2, 3))
    alive = _block_view(keep, r, c, False).any(axis=(2, 3))
    return s.sum(axis=(2, 3)) / size, size, alive


def expand_blocks(block_keep: np.ndarray, shape: tuple[int, int], r: int, c: int) -> np.ndarray:
    return np.repeat(np.repeat(block_keep, r, axis=0), c, axis=1)[: shape[0], : shape[1]]


def blocks(scores: np.ndarray, keep: np.ndarray, r: int, c: int, sparsity: float) -> np.ndarray:
    """Whole r x c blocks kept or pruned (edge blocks are smaller); the pruned element count
    is the closest reachable to `sparsity`. A block with any pruned entry is pruned whole."""
    mean, size, alive = block_scores(scores, keep, r, c)
    block_keep = np.ascontiguousarray(alive & _block_view(keep, r, c, True).all(axis=(2, 3)))
    target = int(round(sparsity * scores.size))
    already = int(size[~block_keep].sum())
    idx = np.flatnonzero(block_keep)
    order = idx[np.argsort(mean.reshape(-1)[idx], kind="stable")]
    cum = already + np.concatenate([[0], np.cumsum(size.reshape(-1)[order])])
    n_blocks = int(np.argmin(np.abs(cum - target)))
    block_keep.reshape(-1)[order[:n_blocks]] = False  # a view: block_keep is contiguous
    return expand_blocks(block_keep, scores.shape, r, c) & keep


def apply(pattern: Pattern, scores: np.ndarray, keep: np.ndarray, sparsity: float, group_axis_len: int) -> np.ndarray:
    if pattern.kind == "unstructured":
        return unstructured(scores, keep, sparsity)
    if pattern.kind == "nm":
        return nm(scores, keep, pattern.a, pattern.b, group_axis_len, sparsity)
    return blocks(scores, keep, pattern.a, pattern.b, sparsity)
