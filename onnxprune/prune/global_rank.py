"""Global ranking: one exact cut through the scores of all selected weights.

Scores (>= 0) are compared by their float32 bit patterns, which order like the values. A first
read of every weight counts the top 16 bits in one histogram, which locates the bucket where the
cut falls. A second read prunes every entry below that bucket and keeps every entry above it; of
the entries inside it (the band) the `take` lowest go, in the order (score, weight order, flat
index in the stored layout), picked once every weight has been seen and zeroed in place then. When
the band is too large to collect (many equal scores), one extra read narrows it to a single score
value, whose entries are then taken in encounter order as they come.

Blocks rank by their mean score instead (`block_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from onnxprune.prune import patterns

BAND_LIMIT = 1 << 20  # entries a band may hold before it is narrowed (and at least 1/64 of all)
_CHUNK = 1 << 18  # entries per histogram step: 1 << 20 made the step's temporaries miss the cache (3x slower)


def score_bits(scores: np.ndarray) -> np.ndarray:
    """|scores| as float32 bit patterns, flat (in place when `scores` is a float32 array it owns)."""
    s = np.asarray(scores)
    if s.dtype == np.float32 and s.flags.owndata and s.flags.writeable and s.flags.c_contiguous:
        np.abs(s, out=s)
    else:
        s = np.abs(s.astype(np.float32, copy=False))
    return s.reshape(-1).view(np.uint32)


def entrywise_bits(values: np.ndarray, score_of: Callable[[np.ndarray], np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """(flat offset, score bits) of `values` in cache-sized chunks, scored by the entry-by-entry
    function `score_of` (|w|): the same bits as `score_bits` of the whole, without full-size scores."""
    flat = values.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield start, score_bits(score_of(flat[start:start + _CHUNK]))


def _histogram(bits: np.ndarray, shift: int, hist: np.ndarray, select: int | None = None) -> None:
    """Add the counts of `(bits >> shift) & 0xFFFF` (only of entries whose top 16 bits equal
    `select`, when given) to `hist`, in cache-sized chunks."""
    for start in range(0, bits.size, _CHUNK):
        part = bits[start:start + _CHUNK]
        if select is not None:
            part = part[(part >> 16) == select]
        hist += np.bincount((part >> shift) & 0xFFFF, minlength=1 << 16)


@dataclass
class GlobalCut:
    """Prune `need` entries over a sequence of weights: alive entries with bits < `lo` are pruned,
    those >= `hi` kept, and `take` of those in [lo, hi) are pruned by the rule above."""

    lo: int
    hi: int
    take: int
    _band: list[tuple[np.ndarray, int, np.ndarray]] = field(default_factory=list)

    @classmethod
    def plan(cls, alive_bits: Callable[[], Iterable[np.ndarray]], need: int) -> "GlobalCut":
        """`alive_bits()` yields the score bits of every weight's alive entries, in weight order;
        it is called once, or twice when the band must be narrowed."""
        hist = np.zeros(1 << 16, dtype=np.int64)
        for bits in alive_bits():
            _histogram(bits, 16, hist)
        total = int(hist.sum())
        need = min(max(int(need), 0), total)
        if need == 0:
            return cls(0, 0, 0)
        cum = np.cumsum(hist)
        bucket = int(np.searchsorted(cum, need))  # the first bucket where the count reaches `need`
        take = need - (int(cum[bucket - 1]) if bucket else 0)
        if take == hist[bucket]:  # the whole bucket goes
            return cls((bucket + 1) << 16, (bucket + 1) << 16, 0)
        if hist[bucket] <= max(BAND_LIMIT, total // 64):
            return cls(bucket << 16, (bucket + 1) << 16, take)
        low = np.zeros(1 << 16, dtype=np.int64)
        for bits in alive_bits():
            _histogram(bits, 0, low, select=bucket)
        cum = np.cumsum(low)
        value = int(np.searchsorted(cum, take))
        lo = (bucket << 16) | value
        return cls(lo, lo + 1, take - (int(cum[value - 1]) if value else 0))

    def keep(self, owner: int, bits: np.ndarray, alive: np.ndarray | None, offset: int = 0) -> np.ndarray:
        """The flat keep mask of weight number `owner` (called in weight order) from its flat score
        bits and alive mask (or of the part of it from flat index `offset` on, the parts called in
        order); band entries stay kept until `late_picks`, unless the band is one value."""
        keep = bits >= self.lo
        if alive is not None:
            keep &= alive
        if self.take == 0:
            return keep
        band = np.flatnonzero(keep & (bits < self.hi))
        if self.hi == self.lo + 1:  # one value: encounter order is the tie order
            band = band[:self.take]
            keep[band] = False
            self.take -= band.size
        elif band.size:
            self._band.append((bits[band], owner, band + offset))
        return keep

    def keep_chunks(self, owner: int, chunks: Iterable[tuple[int, np.ndarray]], alive: np.ndarray | None,
                    size: int) -> np.ndarray:
        """`keep` of a weight of `size` entries whose score bits come in (offset, bits) chunks."""
        keep = np.empty(size, dtype=bool)
        for start, bits in chunks:
            part = slice(start, start + bits.size)
            keep[part] = self.keep(owner, bits, None if alive is None else alive[part], start)
        return keep

    def late_picks(self) -> dict[int, np.ndarray]:
        """Flat indices to prune now, per weight number (ascending), once every weight was seen."""
        if not self._band or self.take == 0:
            return {}
        values = np.concatenate([b for b, _, _ in self._band])
        owners = np.concatenate([np.full(i.size, o, dtype=np.int64) for _, o, i in self._band])
        index = np.concatenate([i for _, _, i in self._band])
        order = np.lexsort((index, owners, values))[:self.take]
        self._band.clear()
        picks: dict[int, np.ndarray] = {}
        for o in np.unique(owners[order]):
            picks[int(o)] = np.sort(index[order[owners[order] == o]])
        return picks


def counts(weights_bits: Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None]]], need: int) -> list[int]:
    """How many more entries each weight prunes under the global cut (two reads of each weight).
    `weights_bits()` yields (flat score bits, flat alive mask or None) per weight, in order."""
    cut = GlobalCut.plan(lambda: (b if a is None else b[a] for b, a in weights_bits()), need)
    result = []
    for i, (bits, alive) in enumerate(weights_bits()):
        n_alive = bits.size if alive is None else int(np.count_nonzero(alive))
        result.append(n_alive - int(np.count_nonzero(cut.keep(i, bits, alive))))
    for i, index in cut.late_picks().items():
        result[i] += index.size
    return result


def block_counts(block_scores: Iterable[tuple[np.ndarray, np.ndarray]], need: int) -> list[int]:
    """How many entries each weight prunes when whole blocks are ranked by mean score over all
    weights: `block_scores` yields (mean score, entries per block) of each weight's alive blocks;
    the count pruned is the closest reachable to `need`."""
    means, sizes, owners = [], [], []
    for i, (mean, size) in enumerate(block_scores):
        means.append(mean)
        sizes.append(size)
        owners.append(np.full(mean.size, i))
    if not means:
        return []
    mean, size, owner = map(np.concatenate, (means, sizes, owners))
    order = np.argsort(mean, kind="stable")
    cum = np.concatenate([[0], np.cumsum(size[order])])
    n = int(np.argmin(np.abs(cum - need)))
    pruned = np.bincount(owner[order[:n]], weights=size[order[:n]], minlength=len(means))
    return [int(c) for c in pruned]


def alive_block_scores(scores: np.ndarray, keep: np.ndarray, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean score, entries) of the blocks of one matrix view that have nothing pruned yet."""
    mean, size, _ = patterns.block_scores(scores, keep, r, c)
    alive = patterns._block_view(keep, r, c, True).all(axis=(2, 3))
    return mean[alive], size[alive]
