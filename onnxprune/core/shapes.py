"""Concrete input shapes: the one source for synthetic feeds, analysis runs and MAC counts.

A model input's dims are fixed, symbolic (a dim_param, or none at all) or written as -1/0 by some
exporters (PaddlePaddle): the last three all mean "dynamic". A feed needs numbers, taken in order from
1. `--shape NAME=D1xD2...` (given), or data (the caller does not ask this module then);
2. the same dim_param elsewhere: a name already resolved (given, or a batch axis) keeps its value;
3. batch axes (axis 0, or a dim_param some input has at axis 0): 1 - metrics are per sample;
4. what the model suggests: metadata (`imgsz`, `input_shape`, or the input's own name) or a Resize
   that reads the input and names its output `sizes`;
5. otherwise a guess: representative sizes (224.. for image planes, 128.. elsewhere), the first that
   onnxruntime runs without error. Such shapes are `guessed`: reports say so and the parity gate
   refuses them unless the caller allows it, since a check on a 1x1 image proves nothing.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxprune.core.errors import DataError, ModelLoadError, Opt, OptionError
from onnxprune.core.runtime import session

Dim = int | str | None  # static size, dim_param name, or unnamed dynamic (also -1 / 0 from some exporters)

# Sizes tried, in order, for a dynamic dim no source fixes (the first that runs in onnxruntime wins).
IMAGE_SIZES = (224, 256, 320, 192, 128, 96, 64, 48, 32, 16, 8, 1)
OTHER_SIZES = (128, 64, 256, 512, 32, 16, 8, 4, 2, 1)
IMAGE_CHANNELS = (1, 3, 4)
METADATA_KEYS = ("input_shape", "input_size", "imgsz", "shape")
SYNTHETIC_LIMIT = 4 << 30  # bytes of synthetic inputs one input may take
DEFAULT_INT_RANGE = (0, 1)  # inclusive; valid for token ids, segment ids, masks and index inputs alike


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (None when the model gives no shape)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def batch_dynamic(self) -> bool:
        """True when axis 0 exists and has no fixed size."""
        return bool(self.shape) and not is_fixed(self.shape[0])

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join(str(d) if is_fixed(d) or isinstance(d, str) else "?"
                                                      for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def is_fixed(d: Dim) -> bool:
    """A static size: exporters write -1 or 0 for dynamic dims too."""
    return isinstance(d, int) and d > 0


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    kind = d.WhichOneof("value")
    if kind == "dim_value":
        return d.dim_value if d.dim_value > 0 else None
    return d.dim_param if kind == "dim_param" and d.dim_param not in ("", "?") else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    specs = []
    for vi in graph.input:
        if vi.name in consts:
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            raise DataError(f"model input '{vi.name}' is not a tensor; onnxprune can only feed tensor inputs")
        tt = vi.type.tensor_type
        shape = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else None
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), shape))
    return specs


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'name=1x3x224x224' -> ('name', (1, 3, 224, 224)); 'name=' is a scalar."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
    except ValueError:
        shape = None
    if not sep or not name or shape is None or any(d < 1 for d in shape):
        raise OptionError(Opt("data.shapes"), f" '{text}': expected NAME=D1xD2... with positive dims, e.g. input=1x3x224x224")
    return name, shape


def random_feed(rng: np.random.Generator, spec: InputSpec, shape: tuple[int, ...], lohi: tuple[int, int]) -> np.ndarray:
    """Random values for `spec`: floats ~ N(0, 1), integers uniform in LO..HI (inclusive), bools a fair coin."""
    kind = spec.dtype.kind
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        lo, hi = lohi
        info = np.iinfo(spec.dtype)
        if not info.min <= lo <= hi <= info.max:
            raise OptionError(Opt("data.int_ranges", [f"{spec.name}={lo},{hi}"]),
                              f" does not fit {spec.dtype.name} ({info.min}..{info.max}); give LO <= HI within it")
        return rng.integers(lo, hi, size=shape, dtype=spec.dtype, endpoint=True)
    if kind in "USO":
        raise DataError(f"input '{spec.name}' ({spec.describe()}) cannot be generated; pass real data with ",
                        Opt("data.calibration", "FILE"))
    return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)


def random_feeds(specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], n: int, seed: int,
                 ranges: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """`n` random samples per input, as arrays [n, *shape] (see random_feed), from one seeded generator."""
    for spec in specs:
        size = n * int(np.prod(shapes[spec.name], dtype=np.float64)) * spec.dtype.itemsize
        if size > SYNTHETIC_LIMIT:
            raise DataError(f"synthetic input '{spec.name}' of shape {'x'.join(map(str, shapes[spec.name]))} would take "
                            f"{size / 2**30:,.1f} GiB for {n} samples; give real inputs with ",
                            Opt("data.calibration", "FILE"), " or fewer samples")
    rng = np.random.default_rng(seed)
    return {s.name: random_feed(rng, s, (n,) + tuple(shapes[s.name]), ranges.get(s.name, DEFAULT_INT_RANGE))
            for s in specs}


@dataclass(frozen=True)
class FeedShapes:
    """One concrete shape per input, where each came from, and which inputs had a dim guessed."""

    shapes: dict[str, tuple[int, ...]]
    sources: dict[str, str]  # input -> "model", "given", "batch 1", "metadata 'imgsz'", "guessed (...)"...
    guessed: tuple[str, ...] = ()

    def template(self, name: str, spec: InputSpec) -> str:
        """A --shape value to edit: fixed and batch dims as numbers, the others as H, W or D<axis>."""
        planes = _image_axes(spec)
        dims = [str(v) if is_fixed(d) or a == 0 else ("HW"[planes.index(a)] if a in planes else f"D{a}")
                for a, (d, v) in enumerate(zip(spec.shape or (), self.shapes[name]))]
        return f"{name}={'x'.join(dims)}"

    def text(self) -> str:
        """'x=1x3x224x224 (guessed), ids=1x128'."""
        return ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" + (" (guessed)" if k in self.guessed else "")
                         for k, v in self.shapes.items())

    def describe(self) -> dict:
        return {"shapes": {k: list(v) for k, v in self.shapes.items()}, "shape_sources": dict(self.sources),
                "shapes_guessed": bool(self.guessed)}


@dataclass
class _Open:
    """The dims of one input still without a size: axis -> role ('image' or 'other')."""

    spec: InputSpec
    dims: list[int | None]
    roles: dict[int, str] = field(default_factory=dict)
    source: str = "model"


def _image_axes(spec: InputSpec) -> tuple[int, ...]:
    """The plane axes of an image-like input (NCHW or NHWC with 1/3/4 fixed channels), else ()."""
    s = spec.shape
    if spec.dtype.kind != "f" or s is None or len(s) != 4:
        return ()
    if s[1] in IMAGE_CHANNELS:
        return (2, 3)
    if s[3] in IMAGE_CHANNELS:
        return (1, 2)
    return ()


def _int_list(text: str) -> list[int] | None:
    try:
        v = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        v = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if isinstance(v, int):
        v = [v]
    try:
        out = [int(x) for x in v]
    except (TypeError, ValueError):
        return None
    return out if out and all(0 < x < 1 << 20 for x in out) else None


def _metadata_hint(model: onnx.ModelProto, o: _Open) -> None:
    """Fill open dims from metadata such as ultralytics' imgsz '[640, 640]' or an 'input_shape' '1,3,48,320'."""
    props = {p.key: p.value for p in model.metadata_props}
    planes = _image_axes(o.spec)
    for key in (o.spec.name, *METADATA_KEYS):
        values = _int_list(props[key]) if key in props else None
        if values is None:
            continue
        if len(values) == len(o.dims):
            axes = list(range(len(o.dims)))
        elif planes and len(values) in (1, 2):
            axes, values = list(planes), (values * 2)[:2]
        else:
            continue
        filled = False
        for a, v in zip(axes, values):
            if o.dims[a] is None:
                o.dims[a], filled = v, True
        if filled:
            o.source = f"model metadata '{key}'"
            return


def _resize_hint(model: onnx.ModelProto, o: _Open) -> None:
    """A Resize that reads the input directly and gives constant output `sizes`: the model's working size."""
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    for n in model.graph.node:
        if n.op_type != "Resize" or not n.input or n.input[0] != o.spec.name or len(n.input) < 4:
            continue
        t = consts.get(n.input[3])
        sizes = onnx.numpy_helper.to_array(t).tolist() if t is not None else None
        if not sizes or len(sizes) != len(o.dims):
            continue
        filled = False
        for a, v in enumerate(sizes):
            if o.dims[a] is None and int(v) > 0:
                o.dims[a], filled = int(v), True
        if filled:
            o.source = f"Resize node '{n.name or n.output[0]}' sizes"
            return


def _probe(model: onnx.ModelProto, base_dir: str | os.PathLike | None, specs: Sequence[InputSpec],
           trials: list[dict[str, tuple[int, ...]]], int_ranges: Mapping[str, tuple[int, int]]) -> int | None:
    """Index of the first trial the model runs on in onnxruntime (None when none does or it cannot load)."""
    try:
        sess = session(model.SerializeToString(), label="model", base_dir=base_dir, threads=1)
    except ModelLoadError:  # the gate reports load errors itself
        return None
    rng = np.random.default_rng(0)
    for i, shapes in enumerate(trials):
        try:
            feed = {s.name: random_feed(rng, s, shapes[s.name], int_ranges.get(s.name, DEFAULT_INT_RANGE))
                    for s in specs}
            sess.run(None, feed)
            return i
        except OptionError:
            raise
        except Exception:  # noqa: BLE001 - this size does not run; try the next
            continue
    return None


def resolve_feed_shapes(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None, *,
                        base_dir: str | os.PathLike | None = None, probe: bool = True,
                        int_ranges: Mapping[str, tuple[int, int]] | None = None) -> FeedShapes:
    """One concrete shape per input of `model` (see the module docstring for the order of sources).

    `given` maps input names to whole feed shapes (--shape). With `probe`, guessed sizes are tried in
    onnxruntime and the first that runs is kept (external data resolves against `base_dir`)."""
    specs = input_specs(model)
    given = {k: tuple(int(d) for d in v) for k, v in (given or {}).items()}
    names = [s.name for s in specs]
    for key in given:
        if key not in names:
            raise OptionError(Opt("data.shapes"), f" names '{key}', which is not a model input (inputs: {', '.join(names)})")
    known: dict[str, int] = {}  # dim_param -> size
    shapes: dict[str, tuple[int, ...]] = {}
    sources: dict[str, str] = {}
    for s in specs:
        if s.name in given:
            shapes[s.name] = _check_given(s, given[s.name])
            sources[s.name] = "given"
            known.update({d: v for d, v in zip(s.shape or (), shapes[s.name]) if isinstance(d, str)})
        elif s.shape is None:
            raise DataError(f"input '{s.name}' has no shape in the model; give one with ",
                            Opt("data.shapes", [f"{s.name}=D1xD2..."]))
    batch = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
    open_: list[_Open] = []
    for s in specs:
        if s.name in given:
            continue
        o = _Open(s, [d if is_fixed(d) else None for d in s.shape])
        derived = False
        for a, d in enumerate(s.shape):
            if o.dims[a] is not None:
                continue
            if isinstance(d, str) and d in known:
                o.dims[a], derived = known[d], True
            elif a == 0 or d in batch:
                o.dims[a], derived = 1, True
            else:
                o.roles[a] = "image" if a in _image_axes(s) else "other"
        if derived:
            o.source = "batch 1" if all(v == 1 for a, v in enumerate(o.dims) if not is_fixed(s.shape[a])) else "derived"
        open_.append(o)
    guessed = []
    for o in open_:
        if o.roles:
            _metadata_hint(model, o)
        if None in o.dims:
            _resize_hint(model, o)
        for a in [a for a in o.roles if o.dims[a] is not None]:
            del o.roles[a]
            if isinstance(o.spec.shape[a], str):
                known.setdefault(o.spec.shape[a], o.dims[a])
    for o in open_:  # a hint for one input fixes the same dim_param of another
        for a in list(o.roles):
            d = o.spec.shape[a]
            if isinstance(d, str) and d in known:
                o.dims[a] = known[d]
                del o.roles[a]
                o.source = "derived"
    pending = [o for o in open_ if o.roles]
    if pending:
        trials = []
        for k in range(max(len(IMAGE_SIZES), len(OTHER_SIZES))):
            trial = dict(shapes)
            for o in open_:
                dims = list(o.dims)
                for a, role in o.roles.items():
                    sizes = IMAGE_SIZES if role == "image" else OTHER_SIZES
                    dims[a] = sizes[min(k, len(sizes) - 1)]
                trial[o.spec.name] = tuple(dims)
            if trial not in trials:
                trials.append(trial)
        pick = _probe(model, base_dir, specs, trials, int_ranges or {}) if probe else None
        chosen = trials[pick or 0]
        how = ("the first size that ran in onnxruntime" if pick is not None
               else "no size tried ran in onnxruntime" if probe else "not tried in onnxruntime")
        for o in pending:
            o.dims = list(chosen[o.spec.name])
            o.source = f"guessed: {how}"
            guessed.append(o.spec.name)
    for o in open_:
        shapes[o.spec.name] = tuple(o.dims)
        sources[o.spec.name] = o.source
    ordered = {n: shapes[n] for n in names}
    return FeedShapes(ordered, {n: sources[n] for n in names}, tuple(n for n in names if n in guessed))


def _check_given(spec: InputSpec, given: tuple[int, ...]) -> tuple[int, ...]:
    if spec.shape is not None and (
        len(given) != len(spec.shape) or any(is_fixed(w) and g != w for g, w in zip(given, spec.shape))
    ):
        raise OptionError(Opt("data.shapes", [f"{spec.name}={'x'.join(map(str, given))}"]),
                          f" does not fit {spec.describe()}; keep the rank and the fixed dims")
    if any(d < 1 for d in given):
        raise OptionError(Opt("data.shapes"), f" for {spec.name}: dims must be >= 1")
    return given
