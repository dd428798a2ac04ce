"""Per-layer sensitivity: prune one layer (a weight, or a channel group) alone at each level and
measure the parity metric against the original on evaluation data.

Every candidate runs the prune job's own passes (`build_pipeline`, handed in by the caller) with
every other layer excluded, or for channel groups `prune_channels` with only that group's ratio set,
so a layer pruned at a level here is bit for bit what `prune` makes of it. Per layer and level:
the metric (the worst output's cosine or top-1 agreement), and what it saves as a fraction of the
model: parameters, MACs, the share of the prunable total (`sparsity`) and, for channel groups, the
latency measured in onnxruntime (the candidate and the original timed alternately on one batch, as
HALP's latency table). Candidates of one layer run together in one worker (they share its dense
activation capture); layers run in a local process pool (`workers`) or on Ray actors. Results are
cached on disk under a key of the model's bytes, the data and every option, so a re-run is instant.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from onnxprune import __version__
from onnxprune.analyze.constants import model_params
from onnxprune.analyze.groups import analyze_groups, model_macs, sample_feed
from onnxprune.analyze.value_shapes import value_shapes
from onnxprune.check.data import Dataset
from onnxprune.check.parity import Thresholds, compare, gate_session
from onnxprune.core.atomic import atomic_write_text
from onnxprune.core.errors import OnnxPruneError, Opt, OptionError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.core.progress import stage_line
from onnxprune.core.runtime import median_latencies, session
from onnxprune.pipeline import Context
from onnxprune.pipeline.calibration import CalibrationState
from onnxprune.prune.allocate import allocate
from onnxprune.prune.allocation_sensitivity import BUDGET_KINDS, Budget, Curve
from onnxprune.prune.allocation_sensitivity import allocate as greedy
from onnxprune.prune.patterns import Pattern
from onnxprune.prune.structured import prune_channels
from onnxprune.repair.structured_repair import lstsq_repair

DEFAULT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
METRICS = {"cosine": "cosine_mean", "top1": "top1_agreement"}  # --metric -> the parity metric read
LATENCY_REPS = 7
CACHE_ENV = "ONNXPRUNE_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "onnxprune") / "sensitivity"


def parse_levels(text: str | Sequence[float]) -> list[float]:
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v < 1 for v in values):
        raise OptionError(f"levels {text!r}: give comma-separated values in (0, 1), e.g. 0.3,0.5,0.7")
    return sorted(set(values))


def parse_executor(text: str) -> tuple[str, str | None]:
    """'local' or 'ray[:ADDRESS]' -> (kind, address); a missing ray is an error before any work."""
    kind, _, address = (text or "local").partition(":")
    if kind not in ("local", "ray") or (kind == "local" and address):
        raise OptionError(f"executor {text!r}: use local or ray[:ADDRESS]")
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise OptionError("--executor ray needs ray: pip install 'onnxprune[ray]'") from e
    return kind, address or None


@dataclasses.dataclass
class Spec:
    """What a worker needs (picklable: it travels to worker processes and Ray actors)."""

    model_path: str
    opts: object  # PruneOptions
    calibration: object  # Dataset or None
    evaluation: object  # Dataset
    levels: list[float]
    metric: str
    build_pipeline: Callable  # PruneOptions -> Pipeline (jobs.prune_job.build_pipeline)
    latency: bool = True
    batch_size: int = 8  # evaluation samples per run (a speed setting: the metric is the same)


def _metric(report, metric: str) -> float:
    """The worst output's metric (cosine where an output has no top-1)."""
    values = []
    for out in report.outputs:
        m = out.metrics
        v = m.get(METRICS[metric], m.get("cosine_mean"))
        if v is not None:
            values.append(float(v))
    if not values:
        raise OnnxPruneError("sensitivity: no float output to measure (cosine or top-1 agreement) on")
    return min(values)


class Worker:
    """Measures layers of one model: loaded once per process (or Ray actor)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.original = Model.load(spec.model_path)
        self.opts = spec.opts
        self.channel = spec.opts.pattern == "channel"
        self.thresholds = Thresholds()
        self.stats: dict = {}  # weight key -> its dense LayerStats (shared by that layer's levels)
        self.feed = self.analysis = None
        self._dense_session = self._weights = self._reference = None
        if self.channel:
            self.feed, _ = sample_feed(self.original.proto, spec.calibration or spec.evaluation,
                                       str(self.original.base_dir))
            self.analysis = analyze_groups(self.original.proto, self.feed, base_dir=str(self.original.base_dir),
                                           prefer=spec.opts.channel_factor)

    def measure(self, layer: str) -> dict:
        rows = [self._channel(layer, lv) if self.channel else self._weight(layer, lv) for lv in self.spec.levels]
        return {"layer": layer, "points": rows}

    def _parity(self, candidate) -> float:
        if self._reference is None:  # made once: the original is compared with every candidate
            self._reference = gate_session(self.original, "original")
        report = compare(self._reference, candidate, self.spec.evaluation, self.thresholds,
                         batch_size=self.spec.batch_size, allow_guessed_shapes=True)
        return _metric(report, self.spec.metric)

    # ----------------------------------------------------------------------------- unstructured
    def _weight(self, key: str, level: float) -> dict:
        opts = dataclasses.replace(self.opts, sparsity=level, allocation="uniform", budget=None, overrides=[])
        model = self.original.copy()  # the validated original, not loaded and checked again
        others = {w.key: "sensitivity: another layer" for w in self.original_weights() if w.key != key}
        ctx = Context(model, MaskSet(), self.spec.calibration, progress=False, exclude=others)
        if self.spec.calibration is not None and self.opts.criterion != "magnitude":
            ctx.calibration = self._shared_state(ctx, key)
        self.spec.build_pipeline(opts).run(ctx)
        keep = ctx.masks.get(key) if key in ctx.masks else None
        achieved = 0.0 if keep is None else float(1 - keep.mean())
        return {"level": level, "achieved": achieved, "metric": self._parity(model)}

    def original_weights(self):
        if self._weights is None:
            self._weights = Context(self.original).analysis.weights
        return self._weights

    def _shared_state(self, ctx: Context, key: str) -> CalibrationState:
        """A calibration state holding the layer's dense statistics, captured once per layer exactly
        as the pruning pass would capture them (the one weight, Gram matrices for SparseGPT)."""
        state = CalibrationState(ctx, samples=self.opts.calib_samples)
        if key not in self.stats:
            dense_ctx = Context(self.original, data=self.spec.calibration)  # the state holds it weakly
            dense = CalibrationState(dense_ctx, samples=self.opts.calib_samples)
            dense.capture([x for x in self.original_weights() if x.key == key], gram=self.opts.criterion == "sparsegpt")
            self.stats[key] = (dense.stats.get(key), dense.skipped.get(key), dense.gram_keys)
        stats, skipped, gram_keys = self.stats[key]
        if stats is not None:
            state.stats[key] = stats
            state.gram_keys |= gram_keys & {key}
            state.dense_mean[key] = stats.mean.copy()
        if skipped is not None:
            state.skipped[key] = skipped
        return state

    # ----------------------------------------------------------------------------------- channels
    def _channel(self, group: str, level: float) -> dict:
        o = self.opts
        res = prune_channels(self.original, 0.0, round_to=o.round_to, criterion={"magnitude": "l2"}.get(o.criterion, "activation"),
                             data=self.spec.calibration, repair=o.repair, calib_samples=o.calib_samples or 32,
                             refit=lstsq_repair if o.repair == "lstsq" else None, feed=self.feed,
                             prefer=o.channel_factor, group_sparsity={group: level}, analysis=self.analysis)
        r = res.report
        row = next(g for g in r["groups"] if g["name"] == group)
        removable = row["channels_before"] - row["frozen_channels"]
        point = {"level": level, "achieved": (row["channels_before"] - row["channels_after"]) / max(removable, 1),
                 "metric": self._parity(res.proto),
                 "params_saved": 1 - r["params_ratio"], "macs_saved": 1 - r["macs_ratio"]}
        if self.spec.latency:
            point["latency_saved"] = 1 - self._latency_ratio(res.proto.SerializeToString())
        return point

    def _latency_ratio(self, candidate: bytes) -> float:
        """Candidate / original latency on one evaluation batch: 1 thread, the two timed alternately."""
        if self._dense_session is None:
            self._dense_session = session(self.original.proto.SerializeToString(), label="original", threads=1,
                                          base_dir=self.original.base_dir)
        cand = session(candidate, label="candidate", threads=1, base_dir=self.original.base_dir)
        feed = next(iter(self.spec.evaluation.batches(self.spec.batch_size)))
        dense, candidate = median_latencies([self._dense_session, cand], feed, LATENCY_REPS, warmup=1)
        return candidate / dense


def layers_of(model: Model, opts, feed_data=None) -> list[dict]:
    """The layers a sensitivity run measures, with their size: prunable weights the options select
    (unstructured, N:M, blocks) or the prunable, unskipped channel groups."""
    if opts.pattern == "channel":
        feed, _ = sample_feed(model.proto, feed_data, str(model.base_dir))
        an = analyze_groups(model.proto, feed, base_dir=str(model.base_dir), prefer=opts.channel_factor)
        return [{"name": g.name(), "channels": int(g.channels - g.frozen.sum())} for g in an.groups
                if g.prunable and not g.frozen.all()
                and not any(fnmatch.fnmatch(p, pat) for p in g.producers for pat in opts.skip)]
    weights = Context(model).analysis.weights
    alloc = allocate(weights, 0.5, Pattern.parse(opts.pattern), "layer", (), opts.skip, opts.min_params,
                     opts.nm_remainder)
    return [{"name": w.key, "params": w.params, "node": w.uses[0].node if w.uses else ""}
            for w in weights if w.key in alloc.targets]


def _weight_macs(model: Model, feed: dict) -> dict[str, int]:
    """MACs per prunable weight (summed over the nodes that use it) at `feed`'s shapes."""
    shapes, _ = value_shapes(model.proto, feed, str(model.base_dir), keep_values=0)
    per_node = model_macs(model.proto, shapes)
    out = {}
    for w in Context(model).analysis.weights:
        out[w.key] = sum(per_node.get(u.node, 0) for u in w.uses)
    return out


def _dataset_digest(ds) -> str:
    if ds is None:
        return "none"
    about = {k: v for k, v in ds.describe().items() if k != "source"}  # the values count, not where they came from
    h = hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode())
    for batch in ds.iter_batches(64):
        for k in sorted(batch.feed):
            h.update(k.encode())
            h.update(np.ascontiguousarray(batch.feed[k]).tobytes())
        if batch.labels is not None:
            h.update(np.ascontiguousarray(batch.labels).tobytes())
    return h.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    model = Model.load(path)
    h = hashlib.sha256(Path(path).read_bytes())
    for f in sorted(model.external_files()):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def cache_key(spec: Spec) -> str:
    o = spec.opts
    options = {k: getattr(o, k) for k in ("pattern", "criterion", "repair", "skip", "min_params", "nm_remainder",
                                          "calib_samples", "sequential", "round_to", "fold_constants", "channel_unit",
                                          "granularity")}
    settings = {"version": __version__, "model": model_digest(spec.model_path), "options": options,
                "levels": spec.levels, "metric": spec.metric, "latency": spec.latency, "batch_size": spec.batch_size,
                "calibration": _dataset_digest(spec.calibration), "evaluation": _dataset_digest(spec.evaluation)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


# -------------------------------------------------------------------------------------- executors

_WORKER: Worker | None = None


def _init_worker(spec: Spec) -> None:
    global _WORKER
    _WORKER = Worker(spec)


def _measure_in_worker(layer: str) -> dict:
    return _WORKER.measure(layer)


def _run_local(spec: Spec, layers: list[str], workers: int, on_layer) -> list[dict]:
    if workers <= 1:
        w = Worker(spec)
        out = []
        for name in layers:
            out.append(w.measure(name))
            on_layer(out[-1])
        return out
    out = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(spec,)) as pool:
        for r in pool.map(_measure_in_worker, layers):
            out.append(r)
            on_layer(r)
    return out


def _run_ray(spec: Spec, layers: list[str], workers: int, address: str | None, on_layer) -> list[dict]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(Worker)
        actors = [actor.remote(spec) for _ in range(max(1, workers))]
        refs = [actors[i % len(actors)].measure.remote(name) for i, name in enumerate(layers)]
        out = []
        for ref in refs:
            out.append(ray.get(ref))
            on_layer(out[-1])
        return out
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------- job

def run_sensitivity(spec: Spec, *, workers: int = 1, executor: str = "local", cache_dir: str | os.PathLike | None = None,
                    use_cache: bool = True, on_layer: Callable[[dict], None] | None = None) -> dict:
    """The `sensitivity` report section: layers, levels, metric matrix, saved fractions and shares.
    Served from the cache when the same model, data and options were measured before."""
    o = spec.opts
    if o.pattern != "channel" and Pattern.parse(o.pattern).fixed_sparsity is not None:
        spec.levels = [Pattern.parse(o.pattern).fixed_sparsity]  # N:M has one level
    if o.steps != 1 or o.hooks:
        raise OptionError("sensitivity prunes each layer one-shot: ", Opt("prune.steps"), " and ",
                          Opt("prune.hooks"), " do not apply")
    if o.fold_constants:
        raise OptionError("sensitivity runs on the model as it is: fold constants first "
                          "(onnxprune inspect --fold-constants) and give the folded model, without ",
                          Opt("prune.fold_constants"))
    if workers < 1:
        raise OptionError(f"workers {workers}: give at least 1")
    kind, address = parse_executor(executor)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(spec)
    path = cache / f"{key}.json"
    if use_cache and path.is_file():
        try:
            result = json.loads(path.read_text())
            result["cached"] = True
            return result
        except (OSError, ValueError):
            pass  # a damaged cache entry is measured again
    start = time.perf_counter()
    model = Model.load(spec.model_path)
    layers = layers_of(model, o, spec.calibration or spec.evaluation)
    if not layers:
        raise OptionError(f"{spec.model_path}: no layer to measure with pattern {o.pattern} (all skipped, frozen or "
                          "below the minimum size)")
    names = [x["name"] for x in layers]
    run = _run_ray if kind == "ray" else _run_local
    args = (spec, names, workers, address) if kind == "ray" else (spec, names, workers)
    measured = {r["layer"]: r["points"] for r in run(*args, on_layer or (lambda r: None))}
    result = _section(model, spec, layers, measured)
    result.update(seconds=round(time.perf_counter() - start, 2), workers=workers, executor=executor,
                  cache_key=key, cached=False)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, sort_keys=True))
    except OSError:
        pass  # no cache on a read-only home: the result stands
    return result


def _section(model: Model, spec: Spec, layers: list[dict], measured: dict[str, list[dict]]) -> dict:
    channel = spec.opts.pattern == "channel"
    names = [x["name"] for x in layers]
    matrix = [[p["metric"] for p in measured[n]] for n in names]
    achieved = [[p["achieved"] for p in measured[n]] for n in names]
    saved: dict[str, list[list[float]]] = {}
    shares: dict[str, dict[str, float]] = {}
    if channel:
        kinds = ("params", "macs") + (("latency",) if spec.latency else ())
        for kind in kinds:
            saved[kind] = [[p[f"{kind}_saved"] for p in measured[n]] for n in names]
        total = sum(x["channels"] for x in layers)
        saved["sparsity"] = [[a * x["channels"] / total for a in row] for row, x in zip(achieved, layers)]
        for n, row in zip(names, achieved):  # what the group removes per unit of its level, at the top level
            i = len(row) - 1
            shares[n] = {k: (saved[k][names.index(n)][i] / row[i] if row[i] else 0.0) for k in kinds}
    else:
        feed = next(iter((spec.evaluation).batches(1)))
        macs = _weight_macs(model, feed)
        total_macs = sum(macs.values()) or 1
        total_params = model_params(model.proto) or 1
        selected = sum(x["params"] for x in layers)
        for kind, per, total in (("params", None, total_params), ("macs", macs, total_macs),
                                 ("sparsity", None, selected)):
            saved[kind] = [[a * (x["params"] if per is None else per[x["name"]]) / total for a in row]
                           for row, x in zip(achieved, layers)]
        shares = {x["name"]: {"params": x["params"] / total_params, "macs": macs[x["name"]] / total_macs}
                  for x in layers}
    return {"pattern": spec.opts.pattern, "metric": spec.metric, "levels": list(spec.levels), "layers": names,
            "nodes": [x.get("node", "") for x in layers],
            "matrix": matrix, "achieved": achieved, "saved": saved, "shares": shares,
            "options": {k: getattr(spec.opts, k) for k in ("pattern", "criterion", "repair", "round_to")}}


def curves(section: dict) -> dict[str, Curve]:
    """Layer -> Curve from a sensitivity section (a report's `sensitivity`, or run_sensitivity's result)."""
    out = {}
    for i, name in enumerate(section["layers"]):
        out[name] = Curve(list(section["achieved"][i]), list(section["matrix"][i]),
                          {k: list(v[i]) for k, v in section["saved"].items()})
    return out


def load_section(path: str | os.PathLike) -> dict:
    """The `sensitivity` section of a report written by `onnxprune sensitivity --report`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise OptionError(Opt("prune.sensitivity"), f" {path}: cannot read a sensitivity report ({e})") from e
    section = data.get("sensitivity", data) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not {"layers", "matrix", "saved", "achieved"} <= set(section):
        raise OptionError(Opt("prune.sensitivity"), f" {path}: not a sensitivity report (no sensitivity.layers, "
                          "matrix, saved); write one with onnxprune sensitivity --report")
    return section


def plot_heatmap(section: dict, path: str | os.PathLike, title: str, plt) -> None:
    """A PNG heatmap (layers x levels) of the metric; `plt`: matplotlib.pyplot (checked before the run)."""
    from onnxprune.core.atomic import atomic_open

    m = np.array(section["matrix"], dtype=float)
    labels = [f"{n} ({node})" if node else n for n, node in zip(section["layers"], section.get("nodes") or [""] * len(m))]
    labels = [n if len(n) <= 60 else "..." + n[-57:] for n in labels]
    width = 2.5 + 0.9 * m.shape[1] + 0.055 * max(len(n) for n in labels)
    fig, ax = plt.subplots(figsize=(max(width, 0.075 * len(title)), 1.2 + 0.32 * m.shape[0]))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=max(0.0, float(np.nanmin(m))), vmax=1.0)
    ax.set_xticks(range(m.shape[1]), [f"{v:g}" for v in section["levels"]])
    ax.set_yticks(range(m.shape[0]), labels, fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] < (np.nanmin(m) + 1) / 2 else "black")
    ax.set_xlabel("level (pruned alone)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=section["metric"])
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ allocation

def glob_escape(name: str) -> str:
    """A glob that matches exactly `name` (fnmatch: [, *, ? bracketed)."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in name)


def allocation_curves(model: Model, opts, data, build_pipeline: Callable, *, cache_dir=None) -> tuple[dict, str]:
    """(the sensitivity section, where it came from) that `--allocation sensitivity` allocates from:
    `opts.sensitivity` (a report), else measured now with `opts` (criterion, repair) on the calibration
    data (synthetic inputs without it), cached."""
    if opts.sensitivity:
        return load_section(opts.sensitivity), str(opts.sensitivity)
    if model.path is None:
        raise OptionError(Opt("prune.allocation", "sensitivity"), " on an in-memory model: give ",
                          Opt("prune.sensitivity", "R.json"), " (onnxprune sensitivity --report)")
    evaluation = data if data is not None else Dataset.synthetic(model.proto, base_dir=model.base_dir)
    base = dataclasses.replace(opts, allocation="uniform", budget=None, sensitivity=None)
    spec = Spec(str(model.path), base, data, evaluation, list(DEFAULT_LEVELS), "cosine", build_pipeline,
                latency=opts.budget_value().kind == "latency")
    start, done = time.perf_counter(), []

    def on_layer(r: dict) -> None:  # a group can take a minute with repair: say how far it got
        done.append(r["layer"])
        stage_line(f"sensitivity {len(done)}: {r['layer']} measured at {len(spec.levels)} levels",
                   time.perf_counter() - start)

    section = run_sensitivity(spec, cache_dir=cache_dir, on_layer=on_layer)
    if section.get("cached"):
        stage_line(f"sensitivity curves of {len(section['layers'])} layers from the cache")
    else:
        stage_line(f"sensitivity curves: {len(section['layers'])} layers x {len(spec.levels)} levels "
                   f"measured (cached for the next run)", section["seconds"])
    return section, "cache" if section.get("cached") else "measured"


def sensitivity_allocation(model: Model, opts, data, build_pipeline: Callable, *, cache_dir=None,
                           probe: Callable[[dict[str, float]], float] | None = None) -> dict:
    """Per-layer levels for `--allocation sensitivity`: curves from `opts.sensitivity` (a report) or
    measured now on the calibration data (synthetic inputs without it; cached), then
    `allocate_from_curves` to the budget. `probe(levels) -> saving`: the exact saving of an allocation
    (channel pruning: params and MACs do not add up over groups that meet in one layer); the budget's
    target is then raised until the exact saving meets it. Returns the `allocation` report section."""

    budget = opts.budget_value()
    section, source = allocation_curves(model, opts, data, build_pipeline, cache_dir=cache_dir)
    if section.get("pattern", opts.pattern) != opts.pattern:
        raise OptionError(Opt("prune.sensitivity"), f" was measured with pattern {section['pattern']}, not "
                          f"{opts.pattern}; measure it with the same --pattern")
    cs = curves(section)
    target = budget
    trace = []
    for _ in range(6):
        alloc = greedy(cs, target)
        exact = probe(alloc.levels) if probe else alloc.saving
        trace.append({"target_saving": round(target.saving, 6), "estimated_saving": alloc.saving,
                      "exact_saving": exact})
        short = budget.saving - exact
        if probe is None or short <= 1e-4 or not alloc.met:
            break
        value = target.saving + short
        if value >= 0.999:
            break
        target = Budget(target.kind, value if BUDGET_KINDS[target.kind] == "reached" else 1 - value)
    return {"method": "sensitivity", "budget": str(budget), "levels": alloc.levels, "met": bool(alloc.met),
            "estimated_metric_drop": alloc.drop, "saving": exact, "required_saving": budget.saving,
            "search": trace, "curves_from": source, "metric": section.get("metric"),
            "sensitivity_seconds": section.get("seconds")}
