"""Accuracy parity: run the original and a candidate side by side in onnxruntime and gate on metrics.

Metrics per output are running sums over the batches (memory does not grow with the data):
- float outputs: max_abs, mean_abs, rel_l2 = ||cand - ref|| / ||ref||, cosine_mean and cosine_min
  (cosine of each row along axis 0, flattened), snr_db = 10*log10(sum ref^2 / sum (cand - ref)^2)
  (inf when identical), nonfinite (NaN/Inf in the candidate) and nonfinite_reference. An Inf equal
  in both models counts as a match; any other NaN/Inf fails the output.
- classifier outputs (float, rank >= 2, last dim >= 2): top1_agreement, topk_agreement (the
  reference argmax is among the candidate's k largest; k = min(5, C)); with labels, accuracy of
  both models and accuracy_drop = accuracy_original - accuracy_candidate.
- other outputs (ints, bools, strings): exact_match (fraction of equal elements); max_abs, mean_abs
  when numeric.
- with atol/rtol: allclose_violations, the elements failing |cand - ref| <= atol + rtol*|ref| (the
  numpy.allclose rule), and required_atol, the smallest atol that passes at the given rtol.
A check whose metric does not apply to an output is reported with passed = null and does not count.

JSON report (`to_json`: schema "onnxprune.parity", version report.SCHEMA_VERSION):
  passed            bool, every check of every output holds
  original, candidate   model paths, or "<in-memory original>" / "<in-memory candidate>"
  inputs            Dataset.describe(): source, synthetic, seed, samples, labels, inputs {name: "float32[N,16]"},
                    shapes {name: [1, 16]} (the feed shapes run), shape_sources {name: "given" | "data" |
                    "model" | "batch 1" | "model metadata ..." | "guessed (...)"}, shapes_guessed
  run               providers, threads, batch_size, batches
  thresholds        the global Thresholds (null = not checked) and per_output overrides
  outputs           list of {name, dtype, shape (first batch), kind ("float"|"classifier"|"exact"),
                    rows, metrics {name: value}, checks [{threshold, metric, limit, value, passed}]}
                    where value is the measured metric: the tightest limit that would still pass
  failures          one line per failed check
Non-finite numbers are written as "inf"/"-inf" and NaN as null.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.check.data import Dataset
from onnxprune.core.errors import DataError, ModelLoadError, Opt, OptionError
from onnxprune.core.model import PROTOBUF_LIMIT, Model
from onnxprune.core.progress import progress as track
from onnxprune.core.report import table, to_json, write_json
from onnxprune.core.runtime import first_line, output_array, session

TOPK = 5
# a session made by the caller (`gate_session`) is used as it is: a reference compared with many candidates
ModelSource = str | os.PathLike | onnx.ModelProto | Model | ort.InferenceSession


@dataclass(frozen=True)
class Thresholds:
    """Gate limits; None = not checked. `per_output` maps an output name to overrides whose set
    fields replace these for that output. atol/rtol: pass iff |cand - ref| <= atol + rtol*|ref|
    for every element (numpy.allclose); giving one of them checks it with the other at 0.

    Example::

        th = Thresholds(min_cosine=0.995, max_accuracy_drop=0.01)
    """

    min_cosine: float | None = None
    max_rel_l2: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None
    atol: float | None = None
    rtol: float | None = None
    min_snr_db: float | None = None
    max_abs: float | None = None
    min_exact_match: float | None = None
    per_output: Mapping[str, "Thresholds"] = field(default_factory=dict)

    def __post_init__(self):
        bounds = {"min_cosine": (-1, 1), "min_top1_agreement": (0, 1), "max_accuracy_drop": (-1, 1),
                  "min_exact_match": (0, 1), "atol": (0, math.inf), "rtol": (0, math.inf),
                  "max_abs": (0, math.inf), "max_rel_l2": (0, math.inf)}
        for name, (lo, hi) in bounds.items():
            v = getattr(self, name)
            if v is not None and not lo <= v <= hi:
                raise OptionError(f"threshold {name}={v} is out of range: give a value in [{lo}, {hi}]")

    @staticmethod
    def names() -> list[str]:
        return [f.name for f in fields(Thresholds) if f.name != "per_output"]

    def limits(self) -> dict[str, float | None]:
        return {n: getattr(self, n) for n in self.names()}

    def for_output(self, name: str) -> "Thresholds":
        """These limits with the output's overrides applied."""
        over = self.per_output.get(name)
        merged = self.limits() | ({k: v for k, v in over.limits().items() if v is not None} if over else {})
        return Thresholds(**merged)

    def to_dict(self) -> dict:
        return self.limits() | {"per_output": {k: {n: v for n, v in t.limits().items() if v is not None}
                                               for k, t in self.per_output.items()}}


DEFAULT_THRESHOLDS = Thresholds(min_cosine=0.99)

# threshold -> (metric, True when the metric must be >= the limit)
_RULES = {
    "max_abs": ("max_abs", False),
    "max_rel_l2": ("rel_l2", False),
    "min_cosine": ("cosine_mean", True),
    "min_snr_db": ("snr_db", True),
    "min_top1_agreement": ("top1_agreement", True),
    "max_accuracy_drop": ("accuracy_drop", False),
    "min_exact_match": ("exact_match", True),
}


def parse_output_threshold(text: str) -> tuple[str, Thresholds]:
    """'out_name:min_cosine=0.99,max_rel_l2=0.1' -> ('out_name', Thresholds(...)); the name may hold ':'."""
    name, _, spec = text.rpartition(":")
    values = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not name or not eq or key not in Thresholds.names() or number is None:
            raise OptionError(Opt("check.output_thresholds"), f" '{text}': expected OUTPUT:KEY=VALUE[,KEY=VALUE...] "
                              f"with KEY one of {', '.join(Thresholds.names())}")
        values[key] = number
    return name, Thresholds(**values)


def thresholds_from_options(min_cosine: float | None = None, max_rel_l2: float | None = None,
                            min_top1_agreement: float | None = None, max_accuracy_drop: float | None = None,
                            atol: float | None = None, rtol: float | None = None, min_snr_db: float | None = None,
                            max_abs: float | None = None, min_exact_match: float | None = None,
                            output_thresholds: Sequence[str] = ()) -> Thresholds:
    """Thresholds from CLI values. With no global limit given, DEFAULT_THRESHOLDS apply."""
    given = {k: v for k, v in locals().items() if k != "output_thresholds" and v is not None}
    per_output: dict[str, Thresholds] = {}
    for text in output_thresholds:
        name, t = parse_output_threshold(text)
        old = per_output.get(name, Thresholds())
        per_output[name] = Thresholds(**(old.limits() | {k: v for k, v in t.limits().items() if v is not None}))
    base = Thresholds(**given) if given else DEFAULT_THRESHOLDS
    return replace(base, per_output=per_output)


@dataclass
class Check:
    threshold: str
    metric: str
    limit: float | dict | None
    value: float | None  # the measured metric: the tightest limit that would still pass
    passed: bool | None  # None: the metric does not apply to this output

    def describe_failure(self, output: str) -> str:
        if self.threshold == "finite":
            return f"{output}: {self.value:g} NaN/Inf values"
        if self.threshold == "allclose":
            return f"{output}: allclose fails (needs atol >= {self.value:.4g} at rtol {self.limit['rtol']:g})"
        op = "<" if _RULES[self.threshold][1] else ">"
        return f"{output}: {self.metric} {self.value:.6g} {op} {self.limit:g} ({self.threshold})"


@dataclass
class OutputReport:
    name: str
    dtype: str
    shape: list[int]
    kind: str
    rows: int
    metrics: dict[str, float]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)


def _safe_div(a: float, b: float, zero_zero: float) -> float:
    if b == 0:
        return zero_zero if a == 0 else math.inf
    return a / b


def _row_cosines(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    rr = r.reshape(r.shape[0], -1) if r.ndim else r.reshape(1, -1)
    cc = c.reshape(rr.shape)
    nr, nc = np.linalg.norm(rr, axis=1), np.linalg.norm(cc, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.einsum("ij,ij->i", rr, cc) / (nr * nc)
    cos[(nr == 0) ^ (nc == 0)] = 0.0
    cos[(rr == cc).all(axis=1)] = 1.0  # exact for identical rows (and two zero rows)
    return np.clip(cos, -1.0, 1.0)


class _OutputStats:
    """Running sums for one output."""

    def __init__(self, name: str, limits: Thresholds):
        self.name, self.limits = name, limits
        self.kind: str | None = None
        self.numeric = False
        self.dtype, self.shape = "", []
        self.uses_labels = False
        self.allclose = limits.atol is not None or limits.rtol is not None
        self.atol, self.rtol = limits.atol or 0.0, limits.rtol or 0.0
        self.elements = self.rows = 0
        self.sum_abs = self.sum_sq_diff = self.sum_sq_ref = self.cos_sum = 0.0
        self.max_abs, self.cos_min, self.required_atol = 0.0, 1.0, 0.0
        self.nonfinite = self.nonfinite_ref = self.violations = self.equal = 0
        self.finite_ref = 0  # finite values of the original: with none there is nothing to judge
        self.positions = self.top1 = self.topk = self.labeled = self.correct_ref = self.correct_cand = 0
        self.k = 0

    def _first(self, ref: np.ndarray, labels: np.ndarray | None) -> None:
        is_float = ref.dtype.kind == "f"
        classifier = is_float and ref.ndim >= 2 and ref.shape[-1] >= 2
        self.kind = "classifier" if classifier else ("float" if is_float else "exact")
        self.dtype, self.shape, self.numeric = ref.dtype.name, list(ref.shape), ref.dtype.kind in "biuf"
        self.k = min(TOPK, ref.shape[-1]) if classifier else 0
        self.uses_labels = classifier and labels is not None and labels.size == ref[..., 0].size

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        if self.kind is None:
            self._first(ref, labels)
        if ref.shape != cand.shape or ref.dtype != cand.dtype:
            raise ModelLoadError(f"output '{self.name}': the candidate gives {cand.dtype.name}{list(cand.shape)} "
                                 f"where the original gives {ref.dtype.name}{list(ref.shape)}; they must match")
        if ref.size == 0:
            return
        self.elements += ref.size
        self.rows += ref.shape[0] if ref.ndim else 1
        if self.kind == "exact":
            self.equal += int(np.count_nonzero(ref == cand))
            if self.numeric:
                self._diff(ref.astype(np.float64), cand.astype(np.float64))
            return
        r, c = ref.astype(np.float64), cand.astype(np.float64)
        same = (r == c) | (np.isnan(r) & np.isnan(c))  # NaN where the original has NaN too: the same result
        fin_r, fin_c = np.isfinite(r), np.isfinite(c)
        self.finite_ref += int(np.count_nonzero(fin_r))
        self.nonfinite += int(np.count_nonzero(~fin_c & ~same))
        self.nonfinite_ref += int(np.count_nonzero(~fin_r & ~same))
        matched_inf = same & ~fin_r
        if matched_inf.any():  # equal Infs (or NaNs): a match, kept out of the sums
            r, c = np.where(matched_inf, 0.0, r), np.where(matched_inf, 0.0, c)
        self._diff(r, c)
        self.sum_sq_ref += float(np.einsum("i,i->", r.ravel(), r.ravel()))
        cos = _row_cosines(r, c)
        self.cos_sum += float(cos.sum())
        self.cos_min = float(np.minimum(self.cos_min, cos.min()))
        if self.kind == "classifier":
            self._classes(ref, cand, labels)

    def _diff(self, r: np.ndarray, c: np.ndarray) -> None:
        d = c - r
        ad = np.abs(d)
        self.sum_abs += float(ad.sum())
        self.max_abs = float(np.maximum(self.max_abs, ad.max()))
        self.sum_sq_diff += float(np.einsum("i,i->", d.ravel(), d.ravel()))
        if self.allclose:
            slack = self.rtol * np.abs(r)
            self.violations += int(np.count_nonzero(~(ad <= self.atol + slack)))
            self.required_atol = float(np.maximum(self.required_atol, (ad - slack).max()))

    def _classes(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        ref_top = ref.argmax(-1)
        cand_top = cand.argmax(-1)
        at_ref_top = np.take_along_axis(cand, ref_top[..., None], -1)
        self.positions += ref_top.size
        self.top1 += int(np.count_nonzero(cand_top == ref_top))
        self.topk += int(np.count_nonzero((cand > at_ref_top).sum(-1) < self.k))
        if self.uses_labels:
            if labels is None or labels.size != ref_top.size:
                raise DataError(f"labels: {0 if labels is None else labels.size} values for a batch where output "
                                f"'{self.name}' has {ref_top.size} predictions; give one label per prediction")
            labels = labels.reshape(ref_top.shape)
            self.labeled += labels.size
            self.correct_ref += int(np.count_nonzero(ref_top == labels))
            self.correct_cand += int(np.count_nonzero(cand_top == labels))

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        n = max(self.elements, 1)
        if self.kind == "exact":
            m["exact_match"] = self.equal / n if self.elements else 1.0
        if self.numeric:
            m["max_abs"], m["mean_abs"] = self.max_abs, self.sum_abs / n
        if self.kind in ("float", "classifier"):
            m["rel_l2"] = _safe_div(math.sqrt(self.sum_sq_diff), math.sqrt(self.sum_sq_ref), 0.0)
            m["cosine_mean"] = self.cos_sum / self.rows if self.rows else 1.0
            m["cosine_min"] = self.cos_min
            snr = _safe_div(self.sum_sq_ref, self.sum_sq_diff, math.inf)
            m["snr_db"] = math.inf if snr == math.inf else (10 * math.log10(snr) if snr > 0 else -math.inf)
            m["nonfinite"], m["nonfinite_reference"] = self.nonfinite, self.nonfinite_ref
        if self.kind == "classifier":
            m["top1_agreement"] = self.top1 / max(self.positions, 1)
            m["topk_agreement"], m["k"] = self.topk / max(self.positions, 1), self.k
        if self.uses_labels:
            m["accuracy_original"] = self.correct_ref / max(self.labeled, 1)
            m["accuracy_candidate"] = self.correct_cand / max(self.labeled, 1)
            m["accuracy_drop"] = m["accuracy_original"] - m["accuracy_candidate"]
        if self.allclose and "max_abs" in m:
            m["allclose_violations"], m["required_atol"] = self.violations, self.required_atol
        return m

    def report(self) -> OutputReport:
        m = self.metrics()
        checks = []
        if "nonfinite" in m:
            bad = m["nonfinite"] + m["nonfinite_reference"]
            checks.append(Check("finite", "nonfinite", 0, bad, bad == 0))
        if self.allclose:
            limit = {"atol": self.atol, "rtol": self.rtol}
            applies = "allclose_violations" in m
            checks.append(Check("allclose", "required_atol", limit, m.get("required_atol"),
                                m["allclose_violations"] == 0 if applies else None))
        for name, limit in self.limits.limits().items():
            if name not in _RULES or limit is None:
                continue
            metric, at_least = _RULES[name]
            value = m.get(metric)
            passed = None if value is None else bool(value >= limit if at_least else value <= limit)
            checks.append(Check(name, metric, limit, value, passed))
        return OutputReport(self.name, self.dtype, self.shape, self.kind or "exact", self.rows, m, checks)


@dataclass
class ParityReport:
    original: str
    candidate: str
    inputs: dict
    run: dict
    thresholds: Thresholds
    outputs: list[OutputReport]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def failures(self) -> list[str]:
        return [c.describe_failure(o.name) for o in self.outputs for c in o.checks if c.passed is False]

    def margin(self) -> float:
        """How far the tightest threshold check is from its limit, relative to the limit (negative: it
        fails): (value - limit) / |limit| for a minimum, (limit - value) / |limit| for a maximum. Ranks
        candidates by the gate's own metrics; NaN/Inf or allclose failures count as -inf."""
        worst = math.inf
        for o in self.outputs:
            for c in o.checks:
                if c.passed is None:
                    continue
                if c.threshold not in _RULES or c.value is None or not isinstance(c.limit, (int, float)):
                    worst = worst if c.passed else -math.inf  # finite values, allclose: pass or fail only
                    continue
                gap = (c.value - c.limit) if _RULES[c.threshold][1] else (c.limit - c.value)
                worst = min(worst, gap / max(abs(c.limit), 1e-12))
        return worst

    def to_dict(self) -> dict:
        """The report body; see the module docstring for the schema."""
        return {
            "passed": self.passed,
            "original": self.original,
            "candidate": self.candidate,
            "inputs": self.inputs,
            "run": self.run,
            "thresholds": self.thresholds.to_dict(),
            "outputs": [{**{k: v for k, v in asdict(o).items() if k != "checks"},
                         "checks": [asdict(c) for c in o.checks]} for o in self.outputs],
            "failures": self.failures(),
        }

    def to_json(self) -> str:
        return to_json(self.to_dict(), kind="parity")

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict(), kind="parity")

    def inputs_line(self) -> str:
        i = self.inputs
        shapes = ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'} ({i['shape_sources'][k]})"
                           for k, v in i.get("shapes", {}).items())
        if i["synthetic"]:
            return (f"inputs: synthetic (seed {i['seed']}), {i['samples']} samples of {shapes}; random data, "
                    "so these metrics do not measure accuracy on real inputs")
        return (f"inputs: {i['source']}, {i['samples']} samples of {shapes}"
                + (", with labels" if i["labels"] else ""))

    def verdict(self) -> str:
        checks = [c for o in self.outputs for c in o.checks if c.passed is not None]
        failures = self.failures()
        if not failures:
            guessed = " (on GUESSED input shapes: not proof for real inputs)" if self.inputs.get("shapes_guessed") else ""
            return f"PASS: all {len(checks)} checks hold on {len(self.outputs)} output(s){guessed}"
        return f"FAIL: {len(failures)} of {len(checks)} checks failed: " + "; ".join(failures)

    def render(self) -> str:
        """Terminal table: per output its checks (threshold, value, PASS/FAIL), then its other metrics;
        then the thresholds that applied to no output, the inputs line and the verdict."""
        rows = []
        for o in self.outputs:
            applied = [c for c in o.checks if c.passed is not None]
            rows += [[o.name, c.metric, _limit_text(c), c.value, "PASS" if c.passed else "FAIL"] for c in applied]
            shown = {c.metric for c in applied} | {"k"}
            if not _class_scores(o, applied):  # e.g. a hidden state: agreement of argmaxes means little
                shown |= {"top1_agreement", "topk_agreement"}
            rows += [[o.name, f"top{o.metrics['k']}_agreement" if k == "topk_agreement" else k, "", v, ""]
                     for k, v in o.metrics.items() if k not in shown]
        named = {r[1] for r in rows}
        legend = {k: v for k, v in METRIC_LEGEND.items() if k in named}
        lines = [table(["output", "metric", "threshold", "value", "result"], rows, legend=legend), ""]
        unused = sorted({c.threshold for o in self.outputs for c in o.checks}
                        - {c.threshold for o in self.outputs for c in o.checks if c.passed is not None})
        if unused:
            lines.append(f"not applicable to any output (not checked): {', '.join(unused)}")
        return "\n".join(lines + [self.inputs_line(), self.verdict()])


METRIC_LEGEND = {
    "cosine_mean": "cosine similarity of candidate and original per sample (each entry along axis 0, "
                   "flattened), averaged over the samples; cosine_min: the lowest",
    "rel_l2": "||candidate - original|| / ||original|| over all values",
    "snr_db": "10 log10 of the original's energy over the energy of the difference",
    "top1_agreement": "share of rows whose argmax (last axis) is the same in both models; top5: the "
                      "original's argmax is among the candidate's 5 largest",
    "accuracy_drop": "accuracy of the original minus that of the candidate, against the labels",
}


def _class_scores(o: OutputReport, applied: list[Check]) -> bool:
    """Show top-k agreement for this output? For class scores ([batch, classes]), or when checked or
    measured against labels; not for hidden states and other outputs of rank 3 and more."""
    if o.kind != "classifier":
        return False
    asked = any(c.metric in ("top1_agreement", "accuracy_drop") for c in applied) or "accuracy_drop" in o.metrics
    return asked or len(o.shape) <= 2


def _limit_text(c: Check) -> str:
    if c.threshold == "finite":
        return "== 0"
    if c.threshold == "allclose":
        return f"atol {c.limit['atol']:g} rtol {c.limit['rtol']:g}"
    return f"{'>=' if _RULES[c.threshold][1] else '<='} {c.limit:g}"


def _label(model: ModelSource, role: str) -> str:
    if isinstance(model, (ort.InferenceSession, ReferenceSession)):
        return f"<{role} session>"
    if isinstance(model, Model):
        return str(model.path) if model.path else f"<in-memory {role}>"
    return f"<in-memory {role}>" if isinstance(model, onnx.ModelProto) else os.fspath(model)


def _session(model: ModelSource, label: str, providers: list[str], threads: int) -> ort.InferenceSession:
    if isinstance(model, (ort.InferenceSession, ReferenceSession)):
        return model
    base_dir = None
    if isinstance(model, (Model, onnx.ModelProto)):
        proto = model.proto if isinstance(model, Model) else model
        if proto.ByteSize() > PROTOBUF_LIMIT:
            raise ModelLoadError(f"{label}: over 2 GB in memory; save it with external data and pass the path")
        if isinstance(model, Model):  # its external tensors resolve against its folder
            base_dir = model.base_dir
        source: str | bytes = proto.SerializeToString()
    else:
        source = os.fspath(model)
        try:
            source.encode()
        except UnicodeEncodeError:  # onnxruntime opens UTF-8 paths only: hand it the model's bytes
            return _session(Model.load(source), label, providers, threads)
    return session(source, label=label, base_dir=base_dir, threads=threads, providers=providers, deterministic=True)


class ReferenceSession:
    """A session that remembers its outputs per feed: the original, run once for many candidates."""

    def __init__(self, sess: ort.InferenceSession):
        self.sess = sess
        self._memo: dict = {}

    def get_inputs(self):
        return self.sess.get_inputs()

    def get_outputs(self):
        return self.sess.get_outputs()

    def run(self, names, feed):
        key = (tuple(names), tuple((k, v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).digest())
                                   for k, v in sorted(feed.items())))
        if key not in self._memo:
            self._memo[key] = self.sess.run(names, feed)
        return self._memo[key]


def gate_session(model: ModelSource, role: str = "original", providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int = 1) -> ReferenceSession:
    """The session `compare` would make for `model` (deterministic settings), remembering its outputs,
    to pass as the original to many compares."""
    return ReferenceSession(_session(model, _label(model, role), list(providers), threads))


def _dims(shape: Sequence) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _check_signatures(a: ort.InferenceSession, b: ort.InferenceSession, a_label: str, b_label: str) -> None:
    for what, xs, ys in (("inputs", a.get_inputs(), b.get_inputs()), ("outputs", a.get_outputs(), b.get_outputs())):
        left = {x.name: x for x in xs}
        right = {y.name: y for y in ys}
        if set(left) != set(right):
            raise ModelLoadError(f"{b_label}: its {what} ({', '.join(right)}) differ from those of {a_label} "
                                 f"({', '.join(left)}); compare models with the same signature")
        for name, x in left.items():
            y = right[name]
            static = what == "outputs" or (
                len(x.shape) == len(y.shape)
                and all(p == q or not (isinstance(p, int) or isinstance(q, int)) for p, q in zip(x.shape, y.shape)))
            if x.type != y.type or not static:
                raise ModelLoadError(f"{b_label}: {what[:-1]} '{name}' is {y.type}{_dims(y.shape)}, but "
                                     f"{x.type}{_dims(x.shape)} in {a_label}; compare models with the same signature")


def _run(sess: ort.InferenceSession, names: list[str], feed: dict, label: str) -> list[np.ndarray]:
    try:
        return sess.run(names, feed)
    except Exception as e:  # onnxruntime's own exception types
        raise DataError(f"{label}: onnxruntime failed on the given inputs: {first_line(e)}; check the data "
                        "(for synthetic inputs: ", Opt("data.shapes"), ", ", Opt("data.int_ranges"), ")") from e


def refuse_guessed_shapes(dataset: Dataset) -> None:
    """DataError when the dataset's synthetic shapes were guessed: a gate on them proves little."""
    if not dataset.shapes_guessed:
        return
    name = dataset.feed_shapes.guessed[0]
    spec = next(s for s in dataset.specs if s.name == name)
    raise DataError(f"input '{name}' ({spec.describe()}) has dynamic dims that no data, shape or model hint fixes, "
                    f"so the gate would run on guessed shapes ({dataset.feed_shapes.text()}); give ",
                    Opt("data.calibration", "FILE"), ", ", Opt("data.shapes", [dataset.feed_shapes.template(name, spec)]),
                    " with real sizes, or ", Opt("check.allow_guessed_shapes", True), " to accept the guess")


def compare(original: ModelSource, candidate: ModelSource, dataset: Dataset, thresholds: Thresholds | None = None, *,
            batch_size: int = 1, providers: Sequence[str] | None = None, threads: int = 1,
            progress: Callable[[int], None] | None = None, allow_guessed_shapes: bool = False) -> ParityReport:
    """Run both models on every batch of `dataset` and gate on `thresholds` (default DEFAULT_THRESHOLDS).

    Models are paths, ModelProtos or onnxprune Models (in-memory ones must be under 2 GB).
    `progress(n)` is called with the number of samples done after each batch. A synthetic dataset
    whose shapes were guessed (`dataset.shapes_guessed`) is refused unless `allow_guessed_shapes`.

    Example::

        report = compare("model.onnx", "out/model.onnx", Dataset.from_source("eval.npz", model.proto),
                         Thresholds(min_cosine=0.99))
        print(report.render()); assert report.passed
    """
    if not allow_guessed_shapes:
        refuse_guessed_shapes(dataset)
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    for p in providers:
        if p not in available:
            raise OptionError(f"provider {p} is not available in this onnxruntime (available: {', '.join(available)})")
    if threads < 1:
        raise OptionError(f"threads must be >= 1, got {threads}")
    o_label, c_label = _label(original, "original"), _label(candidate, "candidate")
    ref_sess = _session(original, o_label, providers, threads)
    cand_sess = _session(candidate, c_label, providers, threads)
    _check_signatures(ref_sess, cand_sess, o_label, c_label)
    fed = sorted(s.name for s in dataset.specs)
    wanted = sorted(i.name for i in ref_sess.get_inputs())
    if fed != wanted:
        raise DataError(f"the data feeds inputs ({', '.join(fed)}) but {o_label} takes ({', '.join(wanted)})")
    names = [o.name for o in ref_sess.get_outputs()]
    unknown = sorted(set(thresholds.per_output) - set(names))
    if unknown:
        raise OptionError(f"per-output threshold for '{unknown[0]}', which is not an output "
                          f"(outputs: {', '.join(names)})")
    if len(dataset) == 0:
        raise DataError(f"{dataset.source}: no samples to compare on")
    stats = [_OutputStats(n, thresholds.for_output(n)) for n in names]
    batches = 0
    for batch in track(dataset.iter_batches(batch_size), "parity", total=-(-len(dataset) // max(batch_size, 1)),
                       unit="batch", name=lambda b: f"{b.size} samples"):
        refs = _run(ref_sess, names, batch.feed, o_label)
        cands = _run(cand_sess, names, batch.feed, c_label)
        for s, r, c in zip(stats, refs, cands):
            s.update(output_array(r, s.name, o_label), output_array(c, s.name, c_label), batch.labels)
        if batches == 0 and batch.labels is not None and not any(s.uses_labels for s in stats):
            shapes = ", ".join(f"{s.name}{s.shape}" for s in stats)
            per = list(batch.labels.shape[1:]) or "one integer"
            raise DataError(f"labels ({per} per sample, {len(dataset)} samples) match no classifier output "
                            f"(first batch of {batch.size}: {shapes}); give one integer class per prediction")
        batches += 1
        if progress:
            progress(batch.size)
    for s in stats:
        if s.kind in ("float", "classifier") and s.elements and not s.finite_ref:
            raise DataError(f"output '{s.name}': {o_label} gives only NaN/Inf on {dataset.source} "
                            f"({s.elements} values), so parity cannot be judged; check its weights and the data")
    run = {"providers": providers, "threads": threads, "batch_size": batch_size, "batches": batches}
    return ParityReport(o_label, c_label, dataset.describe(), run, thresholds, [s.report() for s in stats])
