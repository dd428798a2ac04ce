"""Per-layer eligibility: will this layer run sparse on the target, and if not, why.

`assess(model, target)` looks at every use of every prunable weight (one row per node) and checks the
target's rules: op, dtype, quantization, Conv shape (kernel, stride, padding, groups), alignment of
the reduction and output lengths, minimum sizes, the sparsity pattern (with an independent
validator, `check_pattern`, not the pruner), the minimum sparsity worth running sparse and whether
the packed weight is smaller than the dense one. Each failing rule is a `Reason` (a code and one
line of text); a layer runs sparse when it has none. MACs per node come from the weight shape and the
node's input and output shapes (`value_shapes`: ONNX shape inference, completed by an onnxruntime
run); where a shape is still unknown the MACs are unknown and the row says so. Totals give the share of prunable weights and of MACs that run sparse.

This module never changes a model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxprune.analyze.value_shapes import value_shapes
from onnxprune.analyze.weights import Analysis, Use, Weight, find_weights
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import walk_graphs
from onnxprune.core.model import Model
from onnxprune.core.report import fill, scaled, table
from onnxprune.core.shapes import input_specs, random_feeds, resolve_feed_shapes
from onnxprune.ops import spec_for
from onnxprune.pack.formats.base import bits_of
from onnxprune.pack.formats.nm import _word
from onnxprune.pack.targets import Target
from onnxprune.prune.patterns import Pattern

MAC_UNITS = (("G", 1e9), ("M", 1e6), ("k", 1e3))  # the table's MACs: 2.16M

BLOCK_STRAY_TOLERANCE = 0.01  # without masks: zeros outside all-zero blocks allowed, as a share of the weight
REASON_CODES = ("op", "dtype", "quantization", "conv", "alignment", "size", "pattern", "sparsity", "not-worth-it")

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


@dataclass(frozen=True)
class Reason:
    code: str  # one of REASON_CODES
    text: str

    def to_dict(self) -> dict:
        return {"code": self.code, "text": self.text}


@dataclass
class PatternCheck:
    """Result of validating a keep/non-zero map against a pattern on the matrix view."""

    ok: bool
    violations: int  # N:M groups with too many non-zeros, or blocks with stray zeros
    detail: str  # where the first violation is, or ""
    structured_sparsity: float  # sparsity the pattern accounts for (block: entries in all-zero blocks)


@dataclass
class WeightStatus:
    key: str
    dtype: str
    params: int
    sparsity: float  # share of zero (all-zero-bit) entries, or of mask-pruned entries
    pattern: PatternCheck
    dense_bytes: int
    packed_bytes: int  # what the target's format would take (exact, see packed_nbytes)
    reasons: list[Reason] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        return not self.reasons


@dataclass
class LayerRow:
    node: str
    op: str
    graph: str
    weight: str
    role: str
    shape: tuple[int, ...]
    matrix: tuple[int, int]
    dtype: str
    params: int
    sparsity: float
    runs_sparse: bool
    packed: bool
    reasons: list[Reason]
    notes: list[str]
    macs: int | None
    macs_note: str = ""

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "graph": self.graph, "weight": self.weight, "role": self.role,
                "shape": list(self.shape), "matrix": list(self.matrix), "dtype": self.dtype, "params": self.params,
                "sparsity": self.sparsity, "runs_sparse": self.runs_sparse, "packed": self.packed,
                "reasons": [r.to_dict() for r in self.reasons], "notes": self.notes,
                "macs": self.macs, "macs_note": self.macs_note}


@dataclass
class EligibilityReport:
    target: str
    accelerates: bool
    rows: list[LayerRow]
    weights: dict[str, WeightStatus]
    totals: dict
    notes: list[str] = field(default_factory=list)

    def packable(self) -> list[str]:
        """Keys of the weights the target's format stores (in graph order)."""
        return [k for k, s in self.weights.items() if s.packed]

    def to_dict(self) -> dict:
        return {"target": self.target, "accelerates": self.accelerates, "totals": self.totals,
                "layers": [r.to_dict() for r in self.rows], "notes": self.notes}

    def render(self, max_rows: int | None = None) -> str:
        return render_eligibility(self.to_dict(), max_rows)


def render_eligibility(report: dict, max_rows: int | None = None) -> str:
    """The eligibility table and its summary line, from `EligibilityReport.to_dict()`."""

    accelerates = report["accelerates"]
    label = "sparse" if accelerates else "stored"
    rows = []
    layers = report["layers"]
    footnotes: dict[str, str] = {}
    for r in layers[:max_rows]:
        notes = []
        for n in r["notes"]:
            if n.startswith(f"{r['dtype']}: "):  # dtype conversion notes: printed once below the table
                footnotes[r["dtype"]] = n[len(r["dtype"]) + 2:]
                notes.append(f"{r['dtype']} accepted (note below)")
            else:
                notes.append(n)
        why = "; ".join(x["text"] for x in r["reasons"]) if r["reasons"] else "; ".join(notes)
        state = "yes" if (r["runs_sparse"] or (r["packed"] and not accelerates)) else "no"
        rows.append((r["node"] or "(unnamed)", r["op"], r["weight"], "x".join(map(str, r["matrix"])), r["dtype"],
                     f"{r['sparsity']:.1%}", state, scaled(r["macs"], MAC_UNITS, "{}", sep=""), why))
    lines = [table(["layer", "op", "weight", "matrix", "dtype", "sparsity", label, "MACs", "why / note"], rows,
                   below="why / note")]
    if max_rows is not None and len(layers) > max_rows:
        lines.append(f"... {len(layers) - max_rows} more layers (see the JSON report)")
    lines.append(fill(summary_line(report["totals"], accelerates)))
    lines += [fill(f"note: {dt} weights: {text}") for dt, text in footnotes.items()]
    lines += [fill(n) for n in report["notes"]]
    return "\n".join(lines)


def summary_line(t: dict, accelerates: bool) -> str:
    verb = "run sparse" if accelerates else "are stored sparse (nothing runs sparse: storage-only target)"
    count = t["layers_sparse"] if accelerates else t["layers_packed"]
    share_p = t["share_params_sparse"] if accelerates else t["share_params_packed"]
    share_m = t["share_macs_sparse"] if accelerates else t["share_macs_packed"]
    macs = "MACs unknown" if share_m is None else f"{share_m:.1%} of MACs"
    unknown = t["layers_macs_unknown"]
    extra = f" ({unknown} layer{'s' if unknown != 1 else ''} with unknown MACs)" if unknown and share_m is not None else ""
    reasons = ", ".join(f"{k} {v}" for k, v in t["reasons"].items())
    line = (f"{count} of {t['layers']} layers {verb}: {share_p:.1%} of prunable weights, {macs}{extra}")
    return line + (f"; layers held back by: {reasons}" if reasons else "")


# ------------------------------------------------------------------------------------ primitives

def dtype_name(model: Model, key: str) -> str:
    t = model.ref(key).proto
    return _ONNX_DTYPES.get(t.data_type, onnx.TensorProto.DataType.Name(t.data_type).lower())


def nonzero_map(stored: np.ndarray) -> np.ndarray:
    """True where the stored value has any non-zero bit (what every packed format keeps; -0.0 counts)."""
    return bits_of(stored) != 0


def check_pattern(keep: np.ndarray, pattern: Pattern, group_axis_len: int, tolerance: float = 0.0) -> PatternCheck:
    """Independent validator of a boolean keep map (matrix view, rows x cols) against `pattern`.

    N:M: at most N kept in every group of M consecutive entries along the group axis (the innermost
    `group_axis_len` columns; a run not a multiple of M is padded with pruned entries).
    RxC blocks: every block on the (padded) block grid is all pruned or all kept; a kept block with
    pruned entries is a violation unless those stray entries are at most `tolerance` of the weight
    (natural zeros when no mask is known). Unstructured: always met."""
    rows, cols = keep.shape
    size = keep.size
    zeros = size - int(np.count_nonzero(keep))
    sparsity = zeros / size if size else 0.0
    if pattern.kind == "unstructured":
        return PatternCheck(True, 0, "", sparsity)
    if pattern.kind == "nm":
        n, m = pattern.a, pattern.b
        if group_axis_len <= 0 or cols % group_axis_len:
            return PatternCheck(False, 1, f"group axis length {group_axis_len} does not divide {cols} columns", sparsity)
        runs = keep.reshape(-1, group_axis_len)
        pad = (-group_axis_len) % m
        if pad:
            runs = np.concatenate([runs, np.zeros((runs.shape[0], pad), dtype=bool)], axis=1)
        counts = runs.reshape(runs.shape[0], -1, m).sum(axis=-1)
        bad = counts > n
        nbad = int(np.count_nonzero(bad))
        if not nbad:
            return PatternCheck(True, 0, "", sparsity)
        run, group = (int(x) for x in np.argwhere(bad)[0])
        per_row = cols // group_axis_len
        row, pos = divmod(run, per_row)
        detail = (f"{nbad} groups of {m} hold more than {n} non-zeros (first: row {row}, "
                  f"kernel position {pos}, group {group} has {int(counts[run, group])})")
        return PatternCheck(False, nbad, detail, sparsity)
    r, c = pattern.a, pattern.b
    pr, pc = (-rows) % r, (-cols) % c
    real = np.pad(np.ones_like(keep), ((0, pr), (0, pc)))
    k = np.pad(keep, ((0, pr), (0, pc)))
    br, bc = (rows + pr) // r, (cols + pc) // c
    real_t = real.reshape(br, r, bc, c).swapaxes(1, 2)
    keep_t = k.reshape(br, r, bc, c).swapaxes(1, 2)
    alive = keep_t.any(axis=(2, 3))
    stray_per_block = (real_t & ~keep_t).sum(axis=(2, 3)) * alive
    stray = int(stray_per_block.sum())
    in_dead = int(real_t.sum(axis=(2, 3))[~alive].sum())
    structured = in_dead / size if size else 0.0
    nbad = int(np.count_nonzero(stray_per_block))
    if stray <= tolerance * size:
        return PatternCheck(True, 0 if stray == 0 else nbad, "", structured)
    bi, bj = (int(x) for x in np.argwhere(stray_per_block > 0)[0])
    detail = (f"{nbad} kept {r}x{c} blocks hold {stray} zeros ({stray / size:.1%} of the weight; first: block row "
              f"{bi}, block column {bj})")
    return PatternCheck(False, nbad, detail, structured)


def packed_nbytes(fmt: str, params: dict, keep: np.ndarray, itemsize: int) -> int:
    """Exact payload bytes `formats.encode(fmt, W, **params).nbytes` for a matrix with non-zero map `keep`."""
    rows, cols = keep.shape
    nnz = int(np.count_nonzero(keep))
    if fmt == "bitmask":
        return -(-keep.size // 8) + nnz * itemsize
    if fmt == "coo":
        return nnz * (itemsize + 8)
    if fmt == "bsr":
        r, c = params["r"], params["c"]
        br, bc = -(-rows // r), -(-cols // c)
        k = np.pad(keep, ((0, br * r - rows), (0, bc * c - cols)))
        blocks = int(np.count_nonzero(k.reshape(br, r, bc, c).any(axis=(1, 3))))
        return blocks * r * c * itemsize + 4 * blocks + 4 * (br + 1)
    if fmt == "nm":

        n, m = params["n"], params["m"]
        count = cols // m * n
        values = rows * count * itemsize
        if params.get("compact"):
            nbytes, per_word = _word(math.comb(m, n))
            return values + -(-(rows * cols // m) // per_word) * nbytes
        width = m.bit_length() - 1
        return values + rows * -(-(count * width) // 8)
    raise ValueError(f"unknown format {fmt!r}")


# ------------------------------------------------------------------------------- graph lookups

def _attr(node: onnx.NodeProto | None, name: str, default=None):
    if node is None:
        return default
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def mac_shapes(model: Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[dict, list[str]]:
    """({tensor name: dims} that MAC counting reads, from `value_shapes`), notes.

    Input dims come from onnxprune.core.shapes (`input_shapes` as --shape gives them, batch 1, the model's
    hints, else a guess that the notes name); a shape inference leaves open comes from one onnxruntime
    run on synthetic inputs of those dims."""
    notes: list[str] = []
    proto = model.proto
    feed_shapes = resolve_feed_shapes(proto, input_shapes, base_dir=model.base_dir)
    if feed_shapes.guessed:
        notes.append(f"MACs at guessed input shapes ({feed_shapes.text()}); give --shape for the sizes the model runs at")
    feed = {k: np.asarray(v[0]) for k, v in random_feeds(input_specs(proto), feed_shapes.shapes, 1, 0, {}).items()}
    main = {o for n in proto.graph.node for o in n.output}
    needed = [name for _, g in walk_graphs(proto.graph) for n in g.node
              if (spec := spec_for(n.op_type, n.domain)) is not None for name in spec.macs_reads(n) if name in main]
    try:
        shapes, _ = value_shapes(proto, feed, str(model.base_dir), names=needed, keep_values=0)
    except OnnxPruneError as e:  # the run fails (or cannot load): the shapes inference fixed still count
        cause = str(e.__cause__ or e).splitlines()[0][:160]
        notes.append(f"some MACs stay unknown: onnxruntime failed on synthetic inputs {feed_shapes.text()} ({cause})")
        shapes, _ = value_shapes(proto, feed, str(model.base_dir), names=[], keep_values=0)
    return shapes, notes


def node_macs(w: Weight, use: Use, node: onnx.NodeProto | None, shapes: dict) -> tuple[int | None, str]:
    """Multiply-accumulates of one use of a weight as its op's spec counts them, from the static shapes
    and the weight's own (op layout); (None, why) when unknown."""
    if node is None:
        return None, "node not found"
    weight_input = node.input[use.input_index]
    spec = spec_for(use.op, node.domain)
    macs = spec.macs(node, lambda name: w.op_shape if name == weight_input else shapes.get(name), use.input_index)
    if macs is None:
        return None, spec.macs_unknown.format(node=node.name or use.op, op=use.op)
    return macs, ""


# ----------------------------------------------------------------------------------- the rules

def static_reasons(target: Target, model: Model, w: Weight, use: Use, node: onnx.NodeProto | None,
                   as_dtype: str | None = None) -> tuple[list[Reason], list[str]]:
    """Rules that depend on the layer, not on its values: op, dtype, quantization, Conv shape, alignment, size
    (`as_dtype`: judge float weights in the dtype a later quantization gives them)."""
    e = target.eligibility
    reasons: list[Reason] = []
    notes: list[str] = []
    if use.op not in e.ops:
        reasons.append(Reason("op", f"{use.op} does not run sparse on {target.name} (supported: {', '.join(e.ops)})"))
    dtype = dtype_name(model, w.key)
    if as_dtype and dtype.startswith("float"):
        dtype = as_dtype
    accepted, note = target.dtype_status(dtype)
    if not accepted:
        allowed = ", ".join(list(target.dtypes) + list(target.converts))
        reasons.append(Reason("dtype", f"dtype {dtype} is not supported (supported: {allowed})"))
    elif note:
        notes.append(f"{dtype}: {note}")
    if w.quant is not None and w.quant.zero_point:
        zp = model.read(w.quant.zero_point)
        if np.any(bits_of(np.asarray(zp)) != 0):
            reasons.append(Reason("quantization", "quantized with a non-zero zero point: pruned entries are not zero "
                                                  "bits; requantize symmetrically (zero point 0)"))
    if use.op == "Conv" and use.op in e.ops:
        kernel = tuple(int(k) for k in w.op_shape[2:])
        if e.conv_kernels and kernel not in e.conv_kernels:
            allowed = ", ".join("x".join(map(str, k)) for k in e.conv_kernels)
            reasons.append(Reason("conv", f"kernel {'x'.join(map(str, kernel))} (only {allowed} runs sparse)"))
        strides = _attr(node, "strides", None) or [1] * len(kernel)
        if e.conv_stride_one and any(s != 1 for s in strides):
            reasons.append(Reason("conv", f"stride {'x'.join(map(str, strides))} (only stride 1 runs sparse)"))
        pads = _attr(node, "pads", None) or [0] * (2 * len(kernel))
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if e.conv_no_padding and (any(p != 0 for p in pads) or auto_pad not in ("NOTSET", "VALID")):
            reasons.append(Reason("conv", "padded (only unpadded convolutions run sparse)"))
        group = int(_attr(node, "group", 1) or 1)
        if e.conv_groups_one and group != 1:
            reasons.append(Reason("conv", f"grouped convolution (group {group}) runs dense"))
    red_mult, out_mult = e.multiples(dtype)
    if red_mult > 1 and w.group_axis_len % red_mult:
        reasons.append(Reason("alignment", f"reduction length {w.group_axis_len} is not a multiple of {red_mult}"))
    if out_mult > 1 and w.rows % out_mult:
        reasons.append(Reason("alignment", f"{w.rows} outputs are not a multiple of {out_mult}"))
    if e.block_aligned and target.pattern.kind == "block":
        r, c = target.pattern.a, target.pattern.b
        if w.rows % r or w.cols % c:
            reasons.append(Reason("alignment", f"matrix {w.rows}x{w.cols} is not a multiple of the {r}x{c} block"))
    if target.format == "nm" and target.pattern.kind == "nm" and w.group_axis_len % target.pattern.b:
        if not any(r.code == "alignment" for r in reasons):
            reasons.append(Reason("alignment", f"reduction length {w.group_axis_len} is not a multiple of "
                                               f"M={target.pattern.b} (the N:M format needs whole groups)"))
    if w.group_axis_len < e.min_reduction:
        reasons.append(Reason("size", f"reduction length {w.group_axis_len} < {e.min_reduction}"))
    if w.rows < e.min_outputs:
        reasons.append(Reason("size", f"{w.rows} outputs < {e.min_outputs}"))
    if w.params < e.min_params:
        reasons.append(Reason("size", f"{w.params} params < {e.min_params} (too small to gain)"))
    return reasons, notes


def static_check(target: Target, model: Model, analysis: Analysis | None = None,
                 as_dtype: str | None = None) -> dict[str, list[Reason]]:
    """Weight key -> the static reasons (over all its uses) it cannot be packed for `target` (float weights
    judged as `as_dtype` when the job quantizes them after pruning)."""
    analysis = analysis or find_weights(model)
    out = {}
    for w in analysis.weights:
        reasons: list[Reason] = []
        for use in w.uses:
            node = use.resolve(model.proto.graph)
            for r in static_reasons(target, model, w, use, node, as_dtype)[0]:
                if r not in reasons:
                    reasons.append(r)
        out[w.key] = reasons
    return out


def _weight_status(target: Target, model: Model, w: Weight, masks, static: list[Reason]) -> WeightStatus:
    stored = model.read(w.key)
    nz = nonzero_map(stored)
    exact = masks is not None and w.key in masks
    keep = (masks.get(w.key) & nz) if exact else nz
    keep_m = w.matrix(keep)
    check = check_pattern(keep_m, target.pattern, w.group_axis_len, 0.0 if exact else BLOCK_STRAY_TOLERANCE)
    itemsize = stored.dtype.itemsize
    nz_m = w.matrix(nz)
    est = packed_nbytes(target.format, target.format_params, nz_m, itemsize) if not _format_blocked(target, w) else 0
    status = WeightStatus(w.key, dtype_name(model, w.key), w.params, 1 - float(keep.mean()) if keep.size else 0.0,
                          check, int(stored.nbytes), int(est), list(static), [])
    if len(w.uses) > 1 and w.notes:
        status.notes += [n for n in w.notes if "another layout" in n]
    if static:
        return status
    e = target.eligibility
    if status.sparsity == 0.0:
        status.reasons.append(Reason("sparsity", "not pruned (no zeros)"))
        return status
    if not check.ok:
        status.reasons.append(Reason("pattern", f"pattern {target.pattern} not met: {check.detail}"))
        return status
    if e.min_sparsity_scope == "layer" and check.structured_sparsity < e.min_sparsity:
        what = "block sparsity" if target.pattern.kind == "block" else "sparsity"
        status.reasons.append(Reason("sparsity", f"{what} {check.structured_sparsity:.1%} < {e.min_sparsity:.1%} "
                                                 "needed to gain on this target"))
    if e.require_smaller and est >= stored.nbytes:
        status.reasons.append(Reason("not-worth-it", f"packed {est} B >= dense {stored.nbytes} B at "
                                                     f"{status.sparsity:.1%} sparsity"))
    return status


def _format_blocked(target: Target, w: Weight) -> bool:
    """True when the format cannot even encode the matrix (N:M with a partial group)."""
    return target.format == "nm" and (w.cols % target.format_params["m"] or w.group_axis_len % target.format_params["m"])


def assess(model: Model, target: Target, analysis: Analysis | None = None, masks=None,
           input_shapes: dict[str, tuple[int, ...]] | None = None,
           inferred: tuple[dict, list[str]] | None = None) -> EligibilityReport:
    """Eligibility of every layer with a prunable weight for `target` (see the module docstring).
    `inferred`: what `mac_shapes(model, input_shapes)` returned, when assessing several targets."""
    analysis = analysis or find_weights(model)
    shapes, notes = inferred if inferred is not None else mac_shapes(model, input_shapes)
    notes = list(notes)
    statics: dict[str, list[tuple[Use, onnx.NodeProto | None, list[Reason], list[str]]]] = {}
    for w in analysis.weights:
        per_use = []
        for use in w.uses:
            node = use.resolve(model.proto.graph)
            reasons, unotes = static_reasons(target, model, w, use, node)
            per_use.append((use, node, reasons, unotes))
        statics[w.key] = per_use
    weights: dict[str, WeightStatus] = {}
    for w in analysis.weights:
        union: list[Reason] = []
        for _, _, reasons, _ in statics[w.key]:
            union += [r for r in reasons if r not in union]
        weights[w.key] = _weight_status(target, model, w, masks, union)
    e = target.eligibility
    if e.min_sparsity and e.min_sparsity_scope == "model":
        group = [s for s in weights.values() if s.packed]
        total = sum(s.params for s in group)
        zeros = sum(s.pattern.structured_sparsity * s.params for s in group)
        together = zeros / total if total else 0.0
        if group and together < e.min_sparsity:
            for s in group:
                s.reasons.append(Reason("sparsity", f"eligible layers together are {together:.1%} sparse < "
                                                    f"{e.min_sparsity:.1%} needed for the sparse path"))
        elif group:
            notes.append(f"eligible layers together are {together:.1%} sparse (>= {e.min_sparsity:.1%} needed)")
    rows: list[LayerRow] = []
    for w in analysis.weights:
        s = weights[w.key]
        for use, node, reasons, unotes in statics[w.key]:
            row_reasons = list(reasons) + [r for r in s.reasons if r not in reasons and r.code not in
                                            ("op", "dtype", "quantization", "conv", "alignment", "size")]
            macs, why = node_macs(w, use, node, shapes)
            runs = target.accelerates and not row_reasons and s.packed
            rnotes = list(unotes) + s.notes
            if not row_reasons and s.packed and not target.accelerates:
                rnotes.append("stored sparse; runs dense (storage-only target)")
            if not reasons and s.reasons and any(r.code in ("op", "dtype", "conv", "alignment", "size") for r in s.reasons):
                rnotes.append("weight shared with a layer that cannot run sparse: stays dense")
            rows.append(LayerRow(use.node, use.op, use.graph, w.key, use.role, w.shape, (w.rows, w.cols),
                                 s.dtype, w.params, s.sparsity, runs, s.packed, row_reasons, rnotes, macs, why))
    return EligibilityReport(target.name, target.accelerates, rows, weights, _totals(rows, weights), notes)


def _totals(rows: list[LayerRow], weights: dict[str, WeightStatus]) -> dict:
    params = sum(s.params for s in weights.values())
    params_packed = sum(s.params for s in weights.values() if s.packed)
    sparse_keys = {r.weight for r in rows if r.runs_sparse}
    params_sparse = sum(weights[k].params for k in sparse_keys)
    known = [r for r in rows if r.macs is not None]
    macs = sum(r.macs for r in known)
    macs_sparse = sum(r.macs for r in known if r.runs_sparse)
    macs_packed = sum(r.macs for r in known if r.packed)
    macs_skipped = sum(r.macs * r.sparsity for r in known if r.runs_sparse)
    reasons = Counter()
    for r in rows:
        for code in dict.fromkeys(x.code for x in r.reasons):
            reasons[code] += 1
    return {
        "layers": len(rows),
        "layers_sparse": sum(r.runs_sparse for r in rows),
        "layers_packed": sum(r.packed for r in rows),
        "prunable_params": params,
        "packed_params": params_packed,
        "sparse_params": params_sparse,
        "share_params_packed": params_packed / params if params else 0.0,
        "share_params_sparse": params_sparse / params if params else 0.0,
        "macs_known": macs,
        "macs_sparse": macs_sparse,
        "share_macs_sparse": macs_sparse / macs if macs else None,
        "share_macs_packed": macs_packed / macs if macs else None,
        "ideal_macs_skipped": int(macs_skipped),
        "share_macs_skipped": macs_skipped / macs if macs else None,
        "layers_macs_unknown": len(rows) - len(known),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: REASON_CODES.index(kv[0]))),
    }
