"""Calibration and evaluation data: an .npz file, a folder of .npz/.npy files, or synthetic inputs.

An array for a model input is read by its rank (its axis 0 always counts samples):
- rank == the input's rank: axis 0 is the model's batch axis, one sample per row (or per chunk of
  the model's fixed batch size); such data can be batched when the model's batch dim is dynamic;
- rank == the input's rank + 1: each entry along axis 0 is one complete feed (fixed batch-1
  inputs, or inputs whose batch axis is not first, such as an RNN state [2, batch, 128]).
Labels (integers, axis 0 = samples) come from `labels=` (.npy) or a "labels" key in the .npz files.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import onnx
import onnx.helper

from onnxprune.core.errors import DataError, Opt, OptionError
from onnxprune.core.shapes import (
    DEFAULT_INT_RANGE,
    Dim,
    FeedShapes,
    InputSpec,
    input_specs,
    parse_shape,
    random_feeds,
    resolve_feed_shapes,
)

__all__ = ["Dataset", "InputSpec", "input_specs", "load_dataset", "parse_shape", "parse_int_range", "dataset_from_options"]

DEFAULT_SAMPLES = 16  # synthetic samples when no count is given
LABELS_KEY = "labels"


def _specs(model_inputs: onnx.ModelProto | Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    return tuple(input_specs(model_inputs) if isinstance(model_inputs, onnx.ModelProto) else model_inputs)


@dataclass(frozen=True)
class _Block:
    """Arrays of one source file, all as [samples, *feed_shape]."""

    arrays: dict[str, np.ndarray]
    n: int
    batchable: bool  # samples may be concatenated along axis 0 into one feed

    def feed(self, local: np.ndarray) -> dict[str, np.ndarray]:
        lo, hi = int(local[0]), int(local[-1]) + 1
        out = {}
        for name, a in self.arrays.items():
            part = a[lo:hi] if hi - lo == len(local) else a[local]  # a view when contiguous
            part = part.reshape((-1,) + a.shape[2:]) if self.batchable else part[0]
            out[name] = np.asarray(part, order="C")  # ascontiguousarray would turn a scalar into [1]
        return out


def _check_dims(where: str, spec: InputSpec, got: tuple[int, ...], want: Sequence[Dim], a: np.ndarray) -> None:
    if any(isinstance(w, int) and g != w for g, w in zip(got, want)):
        raise DataError(
            f"{where}: input '{spec.name}' expects {spec.describe()}, got {a.dtype.name}{list(a.shape)}; "
            "the fixed dims must match (axis 0 counts samples)"
        )


def _as_feeds(where: str, spec: InputSpec, a: np.ndarray) -> tuple[np.ndarray, bool]:
    """The array as [samples, *feed_shape] and whether its samples can share a feed."""
    if a.dtype != spec.dtype:
        raise DataError(
            f"{where}: input '{spec.name}' has dtype {a.dtype.name}, the model expects {spec.describe()}; "
            f"convert it with .astype(np.{spec.dtype.name})"
        )
    if spec.rank is None:
        if a.ndim == 0:
            raise DataError(f"{where}: input '{spec.name}' has no shape in the model; give a leading sample axis")
        return a, False
    if spec.rank == 0 and a.ndim == 0:
        return a.reshape(1), False
    if spec.rank and a.ndim == spec.rank:
        _check_dims(where, spec, a.shape[1:], spec.shape[1:], a)
        unit = spec.shape[0] if isinstance(spec.shape[0], int) else 1
        if unit == 0 or a.shape[0] % unit:
            raise DataError(
                f"{where}: input '{spec.name}' has {a.shape[0]} rows, not a multiple of the model's fixed "
                f"batch {unit} ({spec.describe()})"
            )
        return a.reshape((a.shape[0] // unit, unit) + a.shape[1:]), unit == 1 and spec.batch_dynamic
    if a.ndim == spec.rank + 1:
        _check_dims(where, spec, a.shape[1:], spec.shape, a)
        return a, False
    raise DataError(
        f"{where}: input '{spec.name}' expects {spec.describe()} (rows along the batch axis) or one more "
        f"leading axis of complete feeds; got {a.dtype.name}{list(a.shape)}"
    )


def _block(where: str, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> _Block:
    names = [s.name for s in specs]
    for key in arrays:
        if key not in names:
            raise DataError(f"{where}: '{key}' is not a model input (inputs: {', '.join(names)})")
    for s in specs:
        if s.name not in arrays:
            raise DataError(f"{where}: missing input '{s.name}' ({s.describe()})")
    feeds = {s.name: _as_feeds(where, s, np.asarray(arrays[s.name])) for s in specs}
    counts = {name: a.shape[0] for name, (a, _) in feeds.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataError(f"{where}: inputs have different sample counts ({listed}); give each the same count")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise DataError(f"{where}: no samples")
    return _Block({k: a for k, (a, _) in feeds.items()}, n, all(b for _, b in feeds.values()))


def _read(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise DataError(
                    f"{path}: .npy files only work for single-input models; this one has inputs "
                    f"{', '.join(s.name for s in specs)}: use .npz files keyed by input name"
                )
            return {specs[0].name: np.load(path, mmap_mode="r", allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read it as numpy data ({e})") from e


def _read_labels(path: Path) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read labels; give an .npy file of integers, one per sample ({e})") from e
    if not isinstance(labels, np.ndarray):
        labels.close()
        raise DataError(f"{path}: labels must be an .npy file (one integer array), not an .npz archive")
    return labels


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if not files:
            raise DataError(f"{source}: no .npz or .npy files in this folder")
        return files
    if source.is_file() and source.suffix in (".npz", ".npy"):
        return [source]
    if source.exists():
        raise DataError(f"{source}: unsupported data file; give an .npz file or a folder of .npz/.npy files")
    raise DataError(f"{source}: no such file or folder; give an .npz file or a folder of .npz/.npy files")


def _check_labels(where: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.ndim == 0:
        raise DataError(f"{where}: labels must be an integer array with one entry per sample, got "
                        f"{labels.dtype.name}{list(labels.shape)}")
    if labels.shape[0] != n:
        raise DataError(f"{where}: {labels.shape[0]} labels for {n} samples; give one label entry per sample")
    return labels


class Batch(NamedTuple):
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None  # labels of these samples, axis 0 = samples
    size: int  # samples in this feed


class Dataset:
    """Samples to feed a model, with optional labels; `split`/`subset` share the arrays.

    Example::

        ds = Dataset.from_source("calib.npz", model.proto)          # or a folder of .npz/.npy
        ds = Dataset.from_arrays({"input": x}, model.proto)
        ds = Dataset.synthetic(model.proto, 16, shapes={"x": (1, 3, 224, 224)})
    """

    def __init__(self, specs: Sequence[InputSpec], blocks: Sequence[_Block], *, source: str,
                 labels: np.ndarray | None = None, synthetic: bool = False, seed: int | None = None,
                 index: np.ndarray | None = None, feed_shapes: FeedShapes | None = None):
        self.specs = tuple(specs)
        self.source = source
        self.synthetic = synthetic
        self.seed = seed
        self._blocks = tuple(blocks)
        self._starts = np.cumsum([0] + [b.n for b in self._blocks])
        self._all_labels = labels
        self._index = np.arange(self._starts[-1]) if index is None else index
        self.feed_shapes = feed_shapes or FeedShapes(
            {s.name: tuple(self._blocks[0].arrays[s.name].shape[1:]) for s in self.specs} if self._blocks else {},
            {s.name: "data" for s in self.specs})

    @property
    def shapes_guessed(self) -> bool:
        """True when a synthetic input has a dim no --shape, data or model hint fixed (see onnxprune.core.shapes)."""
        return bool(self.feed_shapes.guessed)

    @classmethod
    def from_source(cls, source: str | os.PathLike, model_inputs: onnx.ModelProto | Sequence[InputSpec],
                    labels: str | os.PathLike | np.ndarray | None = None) -> "Dataset":
        """Read an .npz file or a folder of .npz/.npy files (sorted by name, one block each)."""
        specs = _specs(model_inputs)
        blocks, key_labels = [], []
        for path in _files(Path(source)):
            arrays = _read(path, specs)
            if LABELS_KEY in arrays and LABELS_KEY not in {s.name for s in specs}:
                key_labels.append(np.asarray(arrays.pop(LABELS_KEY)))
            blocks.append(_block(str(path), arrays, specs))
        n = sum(b.n for b in blocks)
        if labels is not None:
            where = "labels" if isinstance(labels, np.ndarray) else str(labels)
            labels = _check_labels(where, labels if isinstance(labels, np.ndarray) else _read_labels(Path(labels)), n)
        elif key_labels:
            if len(key_labels) != len(blocks):
                raise DataError(f"{source}: some files have a '{LABELS_KEY}' array and some do not; "
                                "give labels in every file or none")
            labels = _check_labels(str(source), np.concatenate(key_labels), n)
        return cls(specs, blocks, source=str(source), labels=labels)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], model_inputs: onnx.ModelProto | Sequence[InputSpec],
                    source: str = "arrays") -> "Dataset":
        """Data from numpy arrays keyed by input name (axis 0 = samples; a `labels` array: the labels).

        Example::

            ds = Dataset.from_arrays({"input": x, "labels": y}, load_model("m.onnx").proto)
        """
        specs = _specs(model_inputs)
        arrays = dict(arrays)
        labels = None
        if LABELS_KEY in arrays and LABELS_KEY not in {s.name for s in specs}:
            labels = np.asarray(arrays.pop(LABELS_KEY))
        block = _block(source, arrays, specs)
        return cls(specs, [block], source=source,
                   labels=None if labels is None else _check_labels(source, labels, block.n))

    @classmethod
    def synthetic(cls, model: onnx.ModelProto, n: int = DEFAULT_SAMPLES, *,
                  shapes: Mapping[str, Sequence[int]] | None = None,
                  int_range: tuple[int, int] = DEFAULT_INT_RANGE,
                  int_ranges: Mapping[str, tuple[int, int]] | None = None, seed: int = 0,
                  base_dir: str | os.PathLike | None = None) -> "Dataset":
        """n random feeds from the input spec: floats ~ N(0, 1), integers uniform in LO..HI (inclusive),
        bools fair coin; feed shapes from `shapes` (whole feed shapes by input) or onnxprune.core.shapes, which
        reads the model's hints and tries guessed sizes in it."""
        specs = input_specs(model)
        names = [s.name for s in specs]
        int_ranges = dict(int_ranges or {})
        for key in int_ranges:
            if key not in names:
                raise OptionError(Opt("data.int_ranges"), f" names '{key}', which is not a model input "
                                  f"(inputs: {', '.join(names)})")
        if n < 1:
            raise OptionError(f"synthetic data needs at least 1 sample, got {n}")
        ranges = {s.name: int_ranges.get(s.name, int_range) for s in specs}
        feed_shapes = resolve_feed_shapes(model, shapes, base_dir=base_dir, int_ranges=ranges)
        arrays = random_feeds(specs, feed_shapes.shapes, n, seed, ranges)
        return cls(specs, [_Block(arrays, n, False)], source="synthetic", synthetic=True, seed=seed,
                   feed_shapes=feed_shapes)

    def _derive(self, index: np.ndarray) -> "Dataset":
        return Dataset(self.specs, self._blocks, source=self.source, labels=self._all_labels,
                       synthetic=self.synthetic, seed=self.seed, index=index, feed_shapes=self.feed_shapes)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._all_labels is None else self._all_labels[self._index]

    def subset(self, n: int) -> "Dataset":
        """The first n samples."""
        if n < 1:
            raise OptionError(f"a subset needs at least 1 sample, got {n}")
        return self._derive(self._index[:n])

    def split(self, part: float | int, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Disjoint (calibration, evaluation) sets: a random `part` (fraction in (0, 1) or a count) and the rest."""
        n = len(self)
        k = int(round(part * n)) if isinstance(part, float) else int(part)
        if not 0 < k < n:
            raise DataError(f"cannot split {n} samples {part!r} ways: both parts need at least one sample")
        perm = np.random.default_rng(seed).permutation(n)
        return self._derive(np.sort(self._index[perm[:k]])), self._derive(np.sort(self._index[perm[k:]]))

    def iter_batches(self, batch_size: int = 1) -> Iterator[Batch]:
        """Feeds in sample order: up to batch_size samples concatenated along axis 0 where the data and the
        model's dynamic batch dim allow it, else one feed per sample."""
        if batch_size < 1:
            raise OptionError(f"batch size must be >= 1, got {batch_size}")
        block_of = np.searchsorted(self._starts, self._index, side="right") - 1
        cuts = np.flatnonzero(np.diff(block_of)) + 1
        for pos in np.split(np.arange(len(self._index)), cuts):
            if not len(pos):
                continue
            b = int(block_of[pos[0]])
            block = self._blocks[b]
            step = batch_size if block.batchable else 1
            for j in range(0, len(pos), step):
                glob = self._index[pos[j:j + step]]
                labels = None if self._all_labels is None else self._all_labels[glob]
                yield Batch(block.feed(glob - self._starts[b]), labels, len(glob))

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts only (see iter_batches)."""
        return (b.feed for b in self.iter_batches(batch_size))

    def describe(self) -> dict:
        """For reports: where the data came from and what it feeds."""
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "seed": self.seed if self.synthetic else None,
            "samples": len(self),
            "labels": self._all_labels is not None,
            "inputs": {s.name: s.describe() for s in self.specs},
            **self.feed_shapes.describe(),
        }


def load_dataset(model: onnx.ModelProto, data: str | os.PathLike | None = None, *,
                 labels: str | os.PathLike | None = None, samples: int | None = None,
                 shapes: Mapping[str, Sequence[int]] | None = None, int_range: tuple[int, int] = DEFAULT_INT_RANGE,
                 int_ranges: Mapping[str, tuple[int, int]] | None = None, seed: int = 0,
                 base_dir: str | os.PathLike | None = None) -> Dataset:
    """Data from `data` (the first `samples` of it), or `samples` synthetic feeds when no data is given
    (`base_dir`: where the model's external data lies, for trying guessed shapes)."""
    if data is None:
        if labels is not None:
            raise OptionError("labels need real inputs: give ", Opt("data.calibration", "FILE"), " with ",
                              Opt("data.labels", "FILE"))
        return Dataset.synthetic(model, samples or DEFAULT_SAMPLES, shapes=shapes, int_range=int_range,
                                 int_ranges=int_ranges, seed=seed, base_dir=base_dir)
    ds = Dataset.from_source(data, model, labels=labels)
    return ds.subset(samples) if samples else ds


def parse_int_range(text: str) -> tuple[str | None, tuple[int, int]]:
    """'LO,HI' -> (None, (LO, HI)) for every integer input; 'name=LO,HI' for one input."""
    name, _, span = text.rpartition("=")
    try:
        lo, hi = (int(v) for v in span.split(","))
    except ValueError:
        lo = hi = None
    if lo is None or lo > hi:
        raise OptionError(Opt("data.int_ranges"), f" '{text}': expected [NAME=]LO,HI with LO <= HI, e.g. 0,255 or ids=0,30521")
    return name or None, (lo, hi)


def dataset_from_options(model: onnx.ModelProto, opts: Mapping, base_dir: str | os.PathLike | None = None) -> Dataset:
    """The Dataset that option values describe (the CLI's --data/--labels/--shape/--int-range/--samples/--seed,
    or a recipe's [data] section), for `model`'s inputs (external data in `base_dir`)."""
    int_range, int_ranges = DEFAULT_INT_RANGE, {}
    for name, span in map(parse_int_range, opts.get("int_ranges", ())):
        if name is None:
            int_range = span
        else:
            int_ranges[name] = span
    return load_dataset(model, opts.get("data"), labels=opts.get("labels"), samples=opts.get("samples"),
                        shapes=dict(map(parse_shape, opts.get("shapes", ()))), int_range=int_range,
                        int_ranges=int_ranges, seed=opts.get("seed", 0), base_dir=base_dir)
