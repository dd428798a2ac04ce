"""Calibration state shared by the passes of one pipeline run (`ctx.calibration`).

`CalibrationPass` sets it up before pruning: settings, a copy of the dense weights (the reference
for repair) and optionally dense activation means. `CalibrationState` caches the statistics of
onnxprune.analyze.activations and drops them once a pass modified the model. `StagedStats`
serves passes that rewrite weights in graph order: one capture for all (default), or sequential:
recaptured per stage from the partly pruned model.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from onnxprune.analyze.activations import (
    DEFAULT_BATCH,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COLS,
    Capture,
    LayerStats,
    capture,
    upstream_weights,
)
from onnxprune.analyze.weights import Weight
from onnxprune.core.errors import Opt, OptionError
from onnxprune.pipeline.contract import (
    ANALYSIS_FRESH,
    Condition,
    Context,
    Pass,
    PassResult,
)


class StagedStats:
    """Statistics for a pass that changes weights one by one in graph order.

    Non-sequential: one capture of the model as it is at the first request, for all `weights`.
    Sequential: before a weight is handled its statistics are (re)captured from the model as it is
    now, so the layers before it are already pruned/repaired and errors do not compound. One
    capture serves a whole *stage*: every weight still to be handled whose op input depends on no
    other weight still to be handled (e.g. q, k and v projections of one attention block)."""

    def __init__(self, state: "CalibrationState", weights: Sequence[Weight], gram: bool, sequential: bool):
        self.state = state
        self.order = [w.key for w in weights]
        self.by_key = {w.key: w for w in weights}
        self.gram = gram
        self.sequential = sequential
        self.done: set[str] = set()
        self.stale: set[str] = set()
        self.stages = 0
        self.seconds = 0.0

    def _needs(self, key: str) -> bool:
        s = self.state
        if key in s.skipped:
            return False
        return key not in s.stats or key in self.stale or (self.gram and key not in s.gram_keys)

    def get(self, weight: Weight) -> LayerStats | None:
        s = self.state
        s.expire()
        if self._needs(weight.key):
            todo = [k for k in self.order if k not in self.done and k != weight.key]
            if self.sequential:
                up = s.upstream()
                pending = set(todo) | {weight.key}
                batch = [weight.key] + [k for k in todo if self._needs(k) and not (up.get(k, frozenset()) & (pending - {k}))]
            else:
                batch = [weight.key] + [k for k in todo if self._needs(k)]
            cap = s.capture([self.by_key[k] for k in batch], self.gram)
            self.stale -= set(batch)
            self.stages += 1
            self.seconds += cap.seconds
        self.done.add(weight.key)
        return None if weight.key in s.skipped else s.stats.get(weight.key)

    def modified(self, key: str) -> None:
        """`key` was rewritten: in sequential mode the weights downstream of it need new statistics."""
        self.done.add(key)
        if self.sequential:
            up = self.state.upstream()
            self.stale |= {k for k in self.order if k not in self.done and key in up.get(k, frozenset())}


class CalibrationState:
    """Calibration settings, the dense weights and the cached statistics of one pipeline run.

    Lives on the context as `ctx.calibration` (see `calibration_state`). Statistics are cached per
    capture mode; `stale` weights are recaptured on next use."""

    def __init__(self, ctx: Context, samples: int | None = None, batch_size: int = DEFAULT_BATCH,
                 max_cols: int = DEFAULT_MAX_COLS, max_bytes: int = DEFAULT_MAX_BYTES, threads: int | None = None):
        self._ctx = weakref.ref(ctx)
        self.samples, self.batch_size, self.max_cols, self.max_bytes, self.threads = (
            samples, batch_size, max_cols, max_bytes, threads)
        self.dense: dict[str, np.ndarray] = {}
        self.dense_mean: dict[str, np.ndarray] = {}  # E[X] per weight on the dense model (groups, cols)
        self.stats: dict[str, LayerStats] = {}
        self.gram_keys: set[str] = set()  # keys whose cached stats were captured with Gram matrices wanted
        self.skipped: dict[str, str] = {}
        self.epoch = ctx.epoch  # the context's epoch the cached statistics belong to
        self.captures: list[dict] = []
        self.notes: list[str] = []
        self._upstream: dict[str, frozenset[str]] | None = None

    @property
    def ctx(self) -> Context:
        return self._ctx()

    def snapshot_dense(self) -> None:
        """Keep a copy of every prunable weight as it is now (the dense reference for repair)."""
        ctx = self.ctx
        for w in ctx.analysis.weights:
            if w.key not in self.dense:
                self.dense[w.key] = np.array(ctx.model.read(w.key))

    def upstream(self) -> dict[str, frozenset[str]]:
        if self._upstream is None:
            self._upstream = upstream_weights(self.ctx.model, self.ctx.analysis.weights)
        return self._upstream

    def expire(self) -> None:
        """Drop the cache when a pass modified the model since it was filled."""
        epoch = self.ctx.epoch
        if self.epoch != epoch:
            self.stats.clear()
            self.gram_keys.clear()
        self.epoch = epoch

    def capture(self, weights: Sequence[Weight], gram: bool) -> Capture:
        ctx = self.ctx
        cap = capture(ctx.model, ctx.data, weights, gram=gram, samples=self.samples, batch_size=self.batch_size,
                      max_cols=self.max_cols, max_bytes=self.max_bytes, threads=self.threads)
        self.stats.update(cap.stats)
        if gram:
            self.gram_keys |= set(cap.stats)
        self.skipped.update(cap.skipped)
        dense_model = ctx.epoch == 0 and not ctx.masks.keys()
        if dense_model:
            for k, s in cap.stats.items():
                self.dense_mean.setdefault(k, s.mean.copy())
        self.captures.append(cap.describe())
        return cap

    def get(self, weight: Weight, gram: bool) -> LayerStats | None:
        """Cached statistics for one weight; on a miss, one capture for every analysed weight that
        needs it (non-sequential use: statistics of the model as it is now)."""
        self.expire()
        if weight.key in self.skipped:
            return None
        have = weight.key in self.stats and (not gram or weight.key in self.gram_keys)
        if not have:
            ws = [w for w in self.ctx.analysis.weights
                  if w.key not in self.skipped and (w.key not in self.stats or (gram and w.key not in self.gram_keys))]
            self.capture(ws, gram)
        return self.stats.get(weight.key)


def _no_data(ctx: Context) -> tuple | None:
    if ctx.data is not None:
        return None
    return ("give ", Opt("data.calibration", "FILE"), " (an .npz or a folder of .npz/.npy, rows along axis 0)")


CALIBRATION_DATA = Condition("calibration data", _no_data)


def calibration_state(ctx: Context, create: bool = True, **settings) -> CalibrationState | None:
    """The context's calibration state (`ctx.calibration`), made on first use unless `create` is False."""
    if ctx.calibration is None and create:
        ctx.calibration = CalibrationState(ctx, **settings)
    return ctx.calibration


class CalibrationPass(Pass):
    """Set up calibration before pruning: settings, a copy of the dense weights (the reference for
    repair) and, with `means`, E[X] of every op input on the dense model (for bias correction).

    Example::

        Pipeline([CalibrationPass(samples=128), CalibratedPrunePass(0.5), RepairPass("lstsq")]).run(ctx)
    """

    name = "calibrate"
    requires = (ANALYSIS_FRESH, CALIBRATION_DATA)

    def __init__(self, samples: int | None = None, batch_size: int = DEFAULT_BATCH, max_cols: int = DEFAULT_MAX_COLS,
                 means: bool = False, threads: int | None = None):
        self.samples = samples
        self.batch_size = int(batch_size)
        self.max_cols = int(max_cols)
        self.means = bool(means)
        self.threads = threads
        if self.batch_size < 1:
            raise OptionError(f"calibration batch size must be >= 1, got {batch_size}")
        if samples is not None and samples < 1:
            raise OptionError(Opt("prune.calib_samples"), f" must be >= 1, got {samples}")

    def call(self, ctx: Context) -> PassResult:
        state = calibration_state(ctx, samples=self.samples, batch_size=self.batch_size, max_cols=self.max_cols,
                                  threads=self.threads)
        state.samples, state.batch_size, state.max_cols, state.threads = (
            self.samples, self.batch_size, self.max_cols, self.threads)
        state.snapshot_dense()
        result = PassResult(self.name, False)
        n = min(self.samples or len(ctx.data), len(ctx.data))
        result.notes.append(f"calibration data: {n} samples from {ctx.data.source}"
                            + (" (synthetic inputs: statistics are only as good as the data)" if ctx.data.synthetic else ""))
        if self.means:
            cap = state.capture(ctx.analysis.weights, gram=False)
            result.notes.append(f"dense activation means captured in {cap.seconds:.2f} s")
        return result

    def stage(self, result: PassResult) -> str:
        return f"{result.notes[0]}, {result.seconds:.1f} s"
