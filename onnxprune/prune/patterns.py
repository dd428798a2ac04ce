"""Turn scores into masks on a weight's matrix view: unstructured, N:M and r x c blocks.

Every function takes `scores` (rows x cols, float, higher = more important) and the current
`keep` mask of the same shape (False = already pruned; such weights stay pruned), and returns
the new keep mask. Ties are broken by a fixed rule: among equal scores the lower flat index
(row-major on the matrix view) is pruned first, so results are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune.core.errors import OptionError


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
    """Prune the `n_prune` lowest-scored entries among those still kept (flat, tie: lower index).

    Works elementwise in whatever memory layout the matrix view has (often a transposed view of
    the stored weight), so nothing is copied into row-major order; only ties at the boundary value
    are ordered by their row-major index."""
    n_alive = int(np.count_nonzero(keep))
    n_prune = int(min(max(n_prune, 0), n_alive))
    if n_prune == 0:
        return keep.copy(order="K")
    if n_prune == n_alive:
        return np.zeros_like(keep)
    # the k-th smallest value does not depend on the order the values are visited in
    values = np.ravel(scores, order="K") if n_alive == keep.size else scores[keep]
    kth = np.partition(values, n_prune - 1)[n_prune - 1]
    below = (scores < kth) & keep
    ties = (scores == kth) & keep
    need = n_prune - int(np.count_nonzero(below))
    new = keep & ~below
    if int(np.count_nonzero(ties)) == need:
        new &= ~ties
    else:
        first = tuple(ix[:need] for ix in np.nonzero(ties))  # np.nonzero walks row-major: lower index first
        new[first] = False
    return new


def unstructured(scores: np.ndarray, keep: np.ndarray, sparsity: float) -> np.ndarray:
    target = int(round(sparsity * scores.size))
    return _prune_lowest(scores, keep, target - int((~keep).sum()))


def per_row_unstructured(scores: np.ndarray, keep: np.ndarray, sparsity: float) -> np.ndarray:
    """Each row prunes its lowest-scored entries until it reaches the sparsity (rows get
    floor/ceil counts summing to round(sparsity * size)); pruned entries stay pruned."""
    rows, cols = scores.shape
    total = int(round(sparsity * rows * cols))
    cum = np.round(np.arange(rows + 1) * (total / rows)).astype(np.int64)
    per_row = np.diff(cum)
    s = np.where(keep, scores.astype(np.float64, copy=False), -np.inf)
    order = np.argsort(s, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(cols), (rows, cols)), axis=1)
    return keep & (rank >= per_row[:, None])


def nm_groups(matrix: np.ndarray, group_axis_len: int, m: int, fill) -> np.ndarray:
    """View as (-1, M) groups along the group axis (the innermost `group_axis_len` columns),
    padding each run of `group_axis_len` to a multiple of M with `fill`."""
    runs = matrix.reshape(-1, group_axis_len)
    pad = (-group_axis_len) % m
    if pad:
        runs = np.concatenate([runs, np.full((runs.shape[0], pad), fill, dtype=runs.dtype)], axis=1)
    return runs.reshape(-1, m)


def _ascending_rank(groups: np.ndarray) -> np.ndarray:
    """Rank of each entry within its row (0 = lowest); among equal values the lower position ranks lower."""
    g, m = groups.shape
    order = np.argsort(groups, axis=1, kind="stable")
    rank = np.empty((g, m), dtype=np.int64)
    rank[np.arange(g)[:, None], order] = np.arange(m)
    return rank


_NM_CHUNK = 1 << 17  # elements per block of the strided kernel: its temporaries stay in the CPU cache


def _nm_candidates_strided(s: np.ndarray, keep: np.ndarray | None, n: int, m: int,
                           score_of: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Candidates when every run is a whole number of groups and M is small: group position j of
    every group is the strided column view s[:, j::M], so nothing is copied into a group layout (the
    matrix view is often a transposed view of the stored weight) and the rank of each position
    comes from M*(M-1) vectorised comparisons (ties: the lower position ranks lower). The matrix is
    worked through in blocks of whole groups along its outer axis in memory, so the temporaries of
    each block stay in the cache (and take the block's memory layout: no strided copies).
    With `score_of`, `s` holds values and each block is scored as it comes (see `nm`); `keep`
    None: nothing pruned yet (no mask operand in every step)."""
    candidate = np.empty_like(s, dtype=bool)  # the scores' memory layout
    by_cols = abs(s.strides[1]) > abs(s.strides[0])  # columns are the outer axis in memory (a transposed view)
    axis_len, other = (s.shape[1], s.shape[0]) if by_cols else s.shape
    step = max(1, _NM_CHUNK // max(other, 1))
    if by_cols:
        step = max(m, step - step % m)  # whole groups: a block starts at a group boundary
    for start in range(0, axis_len, step):
        block = (slice(None), slice(start, start + step)) if by_cols else slice(start, start + step)
        sb, kb, out = s[block], None if keep is None else keep[block], candidate[block]
        if score_of is not None:
            sb = score_of(sb)
            sb = sb.astype(np.result_type(sb.dtype, np.float32), copy=False)
        cols = [sb[:, j::m] for j in range(m)]
        for i in range(m):
            rank = None  # int8 sums of the comparisons' bool bytes (views: no casting loop)
            for j in (j for j in range(m) if j != i):
                below = (np.less_equal if j < i else np.less)(cols[j], cols[i]).view(np.int8)
                rank = below if rank is None else np.add(rank, below, out=rank)
            if kb is None:
                np.less(rank, m - n, out=out[:, i::m])
            else:
                np.logical_and(kb[:, i::m], rank < m - n, out=out[:, i::m])
    return candidate


def nm(scores: np.ndarray, keep: np.ndarray, n: int, m: int, group_axis_len: int, sparsity: float | None = None,
       score_of: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """At most N kept in each group of M consecutive entries along the group axis.

    Padding (when group_axis_len % M != 0) counts as already-pruned positions. With
    `sparsity` below 1 - N/M (a gradual step), only part of the final N:M candidates are
    pruned: the lowest-scored ones in the whole tensor (ties: lower flat index first).

    `score_of`: an entry-by-entry function (|w| for magnitude); `scores` are then the values it
    scores. The strided kernel applies it block by block, so a one-shot mask of a weight with
    nothing pruned yet needs no full-size scores; elsewhere the scores are made whole first."""
    gradual = sparsity is not None and sparsity < 1 - n / m
    strided = group_axis_len % m == 0 and m <= 8
    all_kept = bool(keep.all())
    if score_of is not None and (gradual or not strided or not all_kept):
        scores, score_of = score_of(scores), None
    if score_of is not None:  # nothing pruned yet, one shot: scored block by block
        candidate = _nm_candidates_strided(scores, None, n, m, score_of)
    else:
        ftype = np.result_type(scores.dtype, np.float32)  # float32 scores stay float32 (half the memory of float64)
        s = scores.astype(ftype, copy=False)
        if not all_kept:
            s = np.where(keep, s, ftype.type(-np.inf))
        if strided:
            candidate = _nm_candidates_strided(s, None if all_kept else keep, n, m)
        else:
            pad = (-group_axis_len) % m
            g = nm_groups(s, group_axis_len, m, -np.inf)
            k = nm_groups(keep, group_axis_len, m, False)
            # kept now, but outside the N best of its group (ascending rank; ties: the lower position is pruned)
            cand = k & (_ascending_rank(g) < m - n)
            candidate = cand.reshape(-1, group_axis_len + pad)[:, :group_axis_len].reshape(keep.shape)
        if gradual:
            target = int(round(sparsity * keep.size)) - int((~keep).sum())
            cand_idx = np.flatnonzero(candidate)  # row-major on the matrix view
            if target < cand_idx.size:
                cs = s[candidate]  # boolean indexing walks in the same row-major order
                chosen = cand_idx[np.argsort(cs, kind="stable")[: max(target, 0)]]
                pruned = np.zeros(keep.shape, dtype=bool)
                pruned.reshape(-1)[chosen] = True
                return keep & ~pruned
    new_keep = np.logical_not(candidate, out=candidate)  # in place: no second full-size mask
    if not all_kept:
        new_keep &= keep
    return new_keep


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


GRANULARITIES = ("auto", "row", "layer")  # auto: what each criterion measured best with (see PrunePass)


def apply(pattern: Pattern, scores: np.ndarray, keep: np.ndarray, sparsity: float, group_axis_len: int,
          granularity: str = "layer", score_of: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The new keep mask in `pattern`; unstructured compares scores within each output row ("row") or over
    the whole matrix ("layer"); with `score_of`, `scores` are the values it scores entry by entry."""
    if pattern.kind == "nm":
        return nm(scores, keep, pattern.a, pattern.b, group_axis_len, sparsity, score_of)
    if score_of is not None:
        scores = score_of(scores)
    if pattern.kind == "unstructured":
        return (per_row_unstructured if granularity == "row" else unstructured)(scores, keep, sparsity)
    return blocks(scores, keep, pattern.a, pattern.b, sparsity)
