"""`auto`: the most compressed model that passes the parity gate, searched up to a budget.

The search runs on one number, the compression *level*: the `sparsity` given to the prune job (the
fraction of weights zeroed for unstructured / N:M / blocks, of channels removed for `channel`).
`AutoSearch._options_at(level)` is the one place a level becomes `PruneOptions`.

The budget `KIND=VALUE` is the most compression to try:
- `macs=V`: at most V x the dense model's multiply-accumulates (channel pattern only: zeros inside
  dense weights remove no MACs);
- `latency=V`: at most V x the dense model's onnxruntime CPU latency (measured side by side, see
  jobs/measure.py; channel pattern only);
- `size=V`: at most V x the dense model's deflated bytes on disk (model + external data after zlib
  level 6: unstructured zeros shrink what is shipped compressed, not the raw file);
- `sparsity=V`: at most V of the weights (channels, for `channel`) removed.
The budget becomes a cap level: V itself for sparsity, else the lowest level whose probe meets the
budget, found by bisection on cheap probes (no repair; SparseGPT probed as magnitude: MACs, latency and
size depend on what is removed, not on the refitted values). Then the search: the cap first (if it
passes, it is the answer), else bisection between dense (level 0, passes by definition) and the cap,
within `max_candidates` checked candidates, down to `resolution`. Every candidate is pruned with its
calibration-aware criterion and repair, stamped as `onnxprune run` stamps its recipe, saved, and checked
on the evaluation data (disjoint from calibration: --eval-data, else the seeded split prune --check
uses). The chosen model is the most compressed candidate that passed and removes something (a level
whose rounding removes nothing is the dense model, not an answer, unless --quantize makes it the
quantized dense model); its recipe reproduces it byte for
byte with `onnxprune run`. Bisection assumes parity falls as the level rises; the trace shows every point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from onnxprune.analyze.groups import model_macs
from onnxprune.analyze.value_shapes import value_shapes
from onnxprune.check.parity import Thresholds, compare, thresholds_from_options
from onnxprune.core.atomic import atomic_write_text, check_writable
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.model import Model
from onnxprune.core.progress import progress
from onnxprune.core.report import is_stdout, make_parent, write_json
from onnxprune.jobs.gate import THRESHOLD_KEYS
from onnxprune.jobs.measure import latency, model_size
from onnxprune.jobs.prune_job import (
    PruneOptions,
    build_pipeline,
    prune_model,
    summarize,
)
from onnxprune.jobs.quantize_job import quantize_step
from onnxprune.jobs.recipe import Recipe
from onnxprune.jobs.run import check_output_paths, job_datasets, stamp_recipe
from onnxprune.jobs.sensitivity import allocation_curves, glob_escape
from onnxprune.jobs.sweep import HEADLINE, achieved_sparsity
from onnxprune.prune.patterns import Pattern
from onnxprune.prune.structured import CPU_ROUND_TO
from onnxprune.quantize.quantizer import (
    DYNAMIC_OPS,
    STATIC_OPS,
    needs_calibration,
    quantize_model,
    weight_nodes,
)

BUDGET_KINDS = {"macs": "kept fraction of the dense MACs", "latency": "kept fraction of the dense CPU latency",
                "size": "kept fraction of the dense deflated bytes", "sparsity": "fraction of weights removed"}
SPEED_KINDS = ("macs", "latency")  # only fewer channels change them
MAX_LEVEL = {"channel": 0.95, "other": 0.99}
# criterion and repair when not given, measured best with calibration data (README, issue 14): SparseGPT +
# least squares for zeros inside weights; for channels, activation importance (--criterion wanda) +
# least-squares refit (uniform 50%: ddddocr cosine 0.953 vs 0.947 with L2, magika 0.846 vs 0.662)
DEFAULTS = {"channel": {"criterion": "wanda", "repair": "lstsq", "round_to": CPU_ROUND_TO},
            "other": {"criterion": "sparsegpt", "repair": "lstsq"}}
EPS = 1e-9


def _family(pattern: str) -> str:
    return "channel" if pattern == "channel" else "other"


@dataclass(frozen=True)
class Budget:
    """The most compression to try: `kind` (macs, latency, size, sparsity) and its value in (0, 1)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, eq, value = str(text).partition("=")
        kind = kind.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not eq or kind not in BUDGET_KINDS or not 0 < number < 1:
            raise OptionError(Opt("auto.budget"), f" {text!r}: give KIND=VALUE with KIND one of "
                              f"{', '.join(BUDGET_KINDS)} and VALUE in (0, 1), e.g. macs=0.6 (at most 0.6x the "
                              "dense MACs) or sparsity=0.5")
        return cls(kind, number)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"

    def met(self, measured: float) -> bool:
        """Does a measured value (the same kind) reach the budget?"""
        return measured >= self.value - EPS if self.kind == "sparsity" else measured <= self.value + EPS


def default_options(values: dict) -> PruneOptions:
    """PruneOptions from option values where criterion, repair and round_to may be None (not given): those
    take the pattern's measured-best defaults (DEFAULTS)."""
    values = dict(values)
    values["pattern"] = values.get("pattern") or "unstructured"
    for key, default in DEFAULTS[_family(values["pattern"])].items():
        if values.get(key) is None:
            values[key] = default
    values = {k: v for k, v in values.items() if v is not None}
    return PruneOptions.from_flags(values)


@dataclass
class AutoResult:
    report: dict
    model: Model | None = None  # the chosen model (None: nothing passed)
    recipe: Recipe | None = None

    @property
    def passed(self) -> bool:
        return self.model is not None


@dataclass
class AutoSearch:
    """One search: the recipe template (every option but the level), the budget and the gate."""

    recipe: Recipe
    budget: Budget
    max_candidates: int = 8
    resolution: float = 0.01
    latency_reps: int = 20
    log: Callable[[str], None] = lambda text: None
    probes: list[dict] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise OptionError(Opt("auto.max_candidates"), f" {self.max_candidates}: give at least 1")
        if not 0 < self.resolution < 1:
            raise OptionError(Opt("auto.resolution"), f" {self.resolution}: give a level step in (0, 1)")
        pattern = self.recipe.prune.pattern
        if self.budget.kind in SPEED_KINDS and pattern != "channel":
            raise OptionError(f"budget {self.budget} with pattern {pattern}: zeros inside dense weights change "
                              "neither MACs nor CPU latency; give ", Opt("prune.pattern", "channel"), " or ",
                              Opt("auto.budget", "size=0.5"), " / ", Opt("auto.budget", "sparsity=0.5"))
        self.fixed = None if pattern == "channel" else Pattern.parse(pattern).fixed_sparsity
        if self.fixed is not None and self.budget.kind == "sparsity" and self.budget.value < self.fixed - EPS:
            raise OptionError(f"budget {self.budget} with pattern {pattern}: N:M fixes the sparsity at "
                              f"{self.fixed:g}; give ", Opt("auto.budget", f"sparsity={self.fixed:g}"),
                              " or an unstructured ", Opt("prune.pattern", "unstructured"))
        if not self.recipe.data.get("calibration"):
            raise OptionError("auto prunes with calibration data and checks every candidate: give ",
                              Opt("data.calibration", "FILE"))
        self.recipe.check = {**self.recipe.check, "enabled": True}
        self.thresholds: Thresholds = thresholds_from_options(
            **{k: self.recipe.check[k] for k in THRESHOLD_KEYS if self.recipe.check.get(k) is not None})
        self._options_at(self.max_level)  # validates the options with a level before any work
        self.model_path = self.recipe.input["model"]
        self.dense = Model.load(self.model_path)
        self.calib, self.evaluation = job_datasets(self.dense, self.recipe)
        self.feed = next(iter(self.evaluation.batches(1)))
        self.dense_size = model_size(self.model_path)
        self.compare_kw = {"batch_size": self.recipe.check.get("batch_size", 1),
                           "providers": [self.recipe.check.get("provider") or "CPUExecutionProvider"],
                           "threads": self.recipe.check.get("threads", 1),
                           "allow_guessed_shapes": bool(self.recipe.check.get("allow_guessed_shapes"))}
        self._best: tuple[float, Model, dict, Path] | None = None
        self.mixed: dict | None = None  # the mixed-precision step's findings (with --quantize)
        self._seen: dict[str, dict] = {}  # model sha256 -> its point (rounding makes plateaus)

    @property
    def max_level(self) -> float:
        return self.fixed if self.fixed is not None else MAX_LEVEL[_family(self.recipe.prune.pattern)]

    def _options_at(self, level: float) -> PruneOptions:
        """The one map from a search level to the prune job's options (allocation and quantization plug in
        here: a budget per level, a quantize mode)."""
        opts = dataclasses.replace(self.recipe.prune, sparsity=level)
        if opts.allocation == "sensitivity":  # per-layer levels from the measured curves, to this level overall
            opts = dataclasses.replace(opts, budget=f"sparsity={level:g}")
        return opts

    def recipe_at(self, level: float) -> Recipe:
        return dataclasses.replace(self.recipe, prune=self._options_at(level))

    # -- measuring ------------------------------------------------------------------------------
    def _prune(self, opts: PruneOptions, folder: Path, recipe: Recipe | None = None) -> tuple[Model, dict, Path]:
        model = self.dense.copy()  # validated once: a candidate does not load and check the file again
        ctx, summary = prune_model(model, opts, self.calib, progress=False)
        if opts.quantize:  # the candidate is the artifact deployed: pruned, repaired, then quantized (as `run`)
            quantize_step(ctx, opts.quantize, self.calib, skip=opts.quantize_skip)
            summary = summarize(ctx, opts)
        if recipe is not None:
            stamp_recipe(model, recipe)  # the bytes `onnxprune run` writes for this recipe
        path = folder / "candidate.onnx"
        model.save(path, external_data=True if self.recipe.output.get("external_data") else None)
        return model, summary, path

    def _measure(self, kind: str, summary: dict, path: Path) -> dict:
        if kind == "sparsity":
            return {"sparsity": achieved_sparsity(summary)}
        if kind == "macs":
            return {"macs": summary["structured"]["macs_ratio"] if "structured" in summary else 1.0}
        if kind == "size":
            size = model_size(path)
            return {"size": size["deflated"] / self.dense_size["deflated"], "bytes": size["bytes"],
                    "deflated_bytes": size["deflated"]}
        lat = latency(self.model_path, path, self.feed, self.latency_reps)
        return {"latency": lat["ratio"], "latency_ms": lat["candidate_ms"], "dense_latency_ms": lat["dense_ms"]}

    def _probe(self, level: float, tmp: Path) -> dict:
        """A budget probe: the level pruned cheaply (no repair), only the budget's measure."""
        t0 = time.perf_counter()
        opts = self._options_at(level)
        if opts.allocation == "sensitivity" and not opts.sensitivity:  # the candidates' curves, not repair-free ones
            opts = dataclasses.replace(opts, sensitivity=str(self._curves(tmp)))
        opts = dataclasses.replace(opts, repair="none",
                                   criterion="magnitude" if opts.criterion == "sparsegpt" else opts.criterion)
        folder = Path(tempfile.mkdtemp(dir=tmp))
        _, summary, path = self._prune(opts, folder)
        point = {"level": level, **self._measure(self.budget.kind, summary, path)}
        shutil.rmtree(folder)
        point["meets_budget"] = self.budget.met(point[self.budget.kind])
        point["time_s"] = time.perf_counter() - t0
        self.probes.append(point)
        self.log(f"  budget probe level {level:.4f}: {self.budget.kind} {point[self.budget.kind]:.3f}"
                 f"{'' if point['meets_budget'] else ' (over the budget)'}")
        return point

    def _curves(self, tmp: Path) -> Path:
        """The sensitivity curves the candidates allocate from (measured with their criterion and repair,
        cached), in a file under `tmp`: probes prune without repair but allocate as the candidates do."""
        path = tmp / "allocation-curves.json"
        if not path.exists():
            section, _ = allocation_curves(self.dense, self._options_at(self.max_level), self.calib, build_pipeline)
            path.write_text(json.dumps(section))
        return path

    def _quantized_dense(self, skip: list[str], tmp: Path) -> tuple[bool, float]:
        """(passes the gate, the gate's margin: `ParityReport.margin`) of the dense model quantized with
        `skip` kept float."""
        opts = self.recipe.prune
        model = self.dense.copy()
        quantize_model(model, opts.quantize, self.calib.batches() if needs_calibration(opts.quantize) else None,
                       skip=skip)
        folder = Path(tempfile.mkdtemp(dir=tmp))
        model.save(folder / "quantized.onnx")
        report = compare(self.model_path, folder / "quantized.onnx", self.evaluation, self.thresholds, **self.compare_kw)
        shutil.rmtree(folder)
        return report.passed, report.margin()

    def _mixed_precision(self, tmp: Path) -> None:
        """With --quantize and no --quantize-skip: when the dense model quantized fails the gate already, no
        pruned candidate can pass. Then each quantizable node is measured quantized alone: its harm is the
        gate margin it costs (`ParityReport.margin` of the dense model against itself, less its own), and
        nodes are kept float in order of harm per MAC (the speed int8 would bring, as HALP weighs a choice
        by its latency), the fewest that let the quantized dense model pass (bisection on their number);
        every candidate and the recipe (`prune.quantize_skip`) keep them float."""
        opts = self.recipe.prune
        if not opts.quantize or opts.quantize_skip:
            return
        t0 = time.perf_counter()
        passed, margin = self._quantized_dense([], tmp)
        self.mixed = {"quantized_dense": {"passed": passed, "margin": margin}}
        if passed:
            return
        nodes = weight_nodes(self.dense, STATIC_OPS if opts.quantize != "int8-dynamic" else DYNAMIC_OPS + ("Gemm",))
        if not nodes:
            self.notes.append("the dense model quantized fails the gate, and its nodes have no names to keep "
                              "float by: every candidate will fail")
            return
        self.log(f"  {opts.quantize} of the dense model fails the gate (margin {margin:+.4f}): measuring "
                 f"{len(nodes)} nodes quantized alone")
        exact = compare(self.model_path, self.model_path, self.evaluation, self.thresholds, **self.compare_kw).margin()
        shapes, _ = value_shapes(self.dense.proto, self.feed, str(self.dense.base_dir), keep_values=0)
        macs = model_macs(self.dense.proto, shapes)
        harm = {}
        for node in progress(nodes, "mixed precision: nodes quantized alone", unit="node"):
            alone = self._quantized_dense([glob_escape(n) for n in nodes if n != node], tmp)[1]
            harm[node] = max(min(exact, 1e6) - alone, 0.0)
        order = sorted(nodes, key=lambda n: (-(harm[n] + 1e-9) / max(macs.get(n, 0), 1), n))  # most harm per MAC first
        lo, hi = 0, len(order)  # keeping `hi` float passes (all float: the dense model itself)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._quantized_dense([glob_escape(n) for n in order[:mid]], tmp)[0]:
                hi = mid
            else:
                lo = mid
        kept = order[:hi]
        self.mixed.update(nodes={n: {"margin_lost": round(harm[n], 6), "macs": int(macs.get(n, 0))} for n in order},
                          kept_float=kept,
                          time_s=time.perf_counter() - t0)
        if hi == len(order):
            self.notes.append(f"{opts.quantize} fails the gate on every node: candidates are not quantized")
        self.recipe.prune = dataclasses.replace(opts, quantize_skip=[glob_escape(n) for n in kept])
        self.log(f"  mixed precision: {len(kept)} of {len(order)} nodes kept float ({', '.join(kept[:4])}"
                 f"{', ...' if len(kept) > 4 else ''}), {time.perf_counter() - t0:.1f} s")

    def cap(self, tmp: Path) -> float:
        """The strongest level to try: the lowest that meets the budget (or the highest possible)."""
        if self.fixed is not None:
            return self.fixed
        if self.budget.kind == "sparsity":
            return min(round(self.budget.value, 4), self.max_level)
        top = self.max_level
        if not self._probe(top, tmp)["meets_budget"]:
            self.notes.append(f"budget {self.budget} is out of reach of this pattern: searched up to level {top}")
            return top
        lo, hi = 0.0, top
        while hi - lo > self.resolution:
            mid = round((lo + hi) / 2, 4)
            if self._probe(mid, tmp)["meets_budget"]:
                hi = mid
            else:
                lo = mid
        return hi

    def candidate(self, level: float, tmp: Path) -> dict:
        """Prune at `level` as the recipe would, measure everything, run the gate."""
        t0 = time.perf_counter()
        folder = Path(tempfile.mkdtemp(dir=tmp))
        model, summary, path = self._prune(self._options_at(level), folder, self.recipe_at(level))
        sha = hashlib.sha256(model.proto.graph.SerializeToString()).hexdigest()  # not the stamp, which names the level
        if sha in self._seen:  # the same model as a level already checked (rounding of kept counts)
            point = {**self._seen[sha], "level": level, "same_as_level": self._seen[sha]["level"],
                     "time_s": time.perf_counter() - t0}
        else:
            report = compare(self.model_path, path, self.evaluation, self.thresholds, **self.compare_kw)
            point = {"level": level}
            for kind in BUDGET_KINDS:
                point.update(self._measure(kind, summary, path))
            outputs = report.to_dict()["outputs"]
            point.update(passed=report.passed, failures=report.failures(),
                         parity={o["name"]: {k: o["metrics"][k] for k in HEADLINE if k in o["metrics"]}
                                 for o in outputs},
                         time_s=time.perf_counter() - t0)
            self._seen[sha] = point
        # rounding can leave a low level with nothing removed: the dense model, or with --quantize the quantized one
        point["compressed"] = point["sparsity"] > 0 or bool(self.recipe.prune.quantize)
        self.trace.append(point)
        self.log(f"  candidate level {level:.4f}: {'PASS' if point['passed'] else 'FAIL'}  {headline(point)}  "
                 f"({point['time_s']:.1f} s){'' if point['sparsity'] > 0 else ', removes nothing'}"
                 f"{' (quantized only)' if point['sparsity'] == 0 and point['compressed'] else ''}")
        if point["passed"] and point["compressed"] and (self._best is None or level > self._best[0]):
            if self._best is not None:
                shutil.rmtree(self._best[3])
            self._best = (level, model, summary, folder)
        else:
            shutil.rmtree(folder)
        return point

    # -- the search -----------------------------------------------------------------------------
    def run(self, tmp: Path) -> AutoResult:
        """The search, with candidates saved under `tmp` (the chosen model may read its external data
        there: save it before `tmp` goes)."""
        t0 = time.perf_counter()
        opts = self.recipe.prune
        self.log(f"onnxprune auto: {self.model_path}, pattern {opts.pattern}, criterion {opts.criterion}, repair "
                 f"{opts.repair}, budget {self.budget} ({BUDGET_KINDS[self.budget.kind]})")
        self._mixed_precision(tmp)
        cap = self.cap(tmp)
        self.log(f"cap for budget {self.budget}: level {cap:.4f}")
        lo, hi = 0.0, cap
        checked = 1
        if not self.candidate(cap, tmp)["passed"]:
            while checked < self.max_candidates and hi - lo > self.resolution:
                mid = round((lo + hi) / 2, 4)
                point = self.candidate(mid, tmp)
                checked += "same_as_level" not in point  # a repeated model costs no check
                lo, hi = (mid, hi) if point["passed"] else (lo, mid)
        return self._result(cap, time.perf_counter() - t0)

    def _result(self, cap: float, seconds: float) -> AutoResult:
        report = {
            "model": self.model_path, "budget": {"kind": self.budget.kind, "value": self.budget.value,
                                                 "meaning": BUDGET_KINDS[self.budget.kind]},
            "pattern": self.recipe.prune.pattern, "options": self.recipe.prune.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "inputs": {"calibration": self.calib.describe(), "evaluation": self.evaluation.describe()},
            "dense": {"bytes": self.dense_size["bytes"], "deflated_bytes": self.dense_size["deflated"]},
            "search": {"cap_level": cap, "max_candidates": self.max_candidates, "resolution": self.resolution,
                       "latency_reps": self.latency_reps, "budget_probes": self.probes},
            "trace": sorted(self.trace, key=lambda p: p["level"]),
            "notes": self.notes, "time_s": seconds,
        }
        if self.mixed is not None:
            report["mixed_precision"] = self.mixed
        if self._best is None:
            report.update(passed=False, chosen=None)
            return AutoResult(report)
        level, model, summary, _ = self._best
        point = next(p for p in self.trace if p["level"] == level)
        layers = ([{k: r[k] for k in ("group", "name", "channels_before", "channels_after", "frozen")}
                   for r in summary["structured"]["groups"]] if "structured" in summary
                  else [{k: r[k] for k in ("name", "op", "params", "sparsity", "skipped")} for r in summary["weights"]])
        report.update(passed=True, chosen={**point, "options": self._options_at(level).to_dict(), "layers": layers})
        recipe = self.recipe_at(level)
        recipe.job = {"description": f"onnxprune auto --budget {self.budget}: level {level:g}, the most compressed "
                                     f"of {len(self.trace)} candidates that passed the gate"}
        return AutoResult(report, model, recipe)


def headline(point: dict) -> str:
    """One line of a candidate's numbers: its parity metrics, then MACs, latency, size and sparsity."""
    parts = []
    shown = {name: ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and k != "rel_l2")
             for name, metrics in point.get("parity", {}).items()}
    shown = {name: text for name, text in shown.items() if text}  # outputs compared exactly have no headline
    for name, text in shown.items():
        parts.append(f"{name}: {text}" if len(shown) > 1 else text)
    parts.append(f"MACs {point['macs']:.3f}x, latency {point['latency']:.3f}x, size {point['size']:.3f}x, "
                 f"sparsity {point['sparsity']:.3f}")
    return "; ".join(parts)


def default_recipe_path(output: str) -> str:
    out = Path(output)
    return str(out.with_name((out.stem if out.suffix == ".onnx" else out.name) + ".recipe.toml"))


def run_auto(recipe: Recipe, budget: Budget | str, *, max_candidates: int = 8, resolution: float = 0.01,
             latency_reps: int = 20, recipe_path: str | None = None, report_path: str | None = None,
             log: Callable[[str], None] = lambda text: None) -> AutoResult:
    """Search, then write the chosen model (recipe.output.model), its recipe (`recipe_path`, default
    OUT.recipe.toml) and the report (`report_path`, "-": stdout). Nothing is written as the model or the
    recipe when no candidate passes (the report still is)."""
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    output = recipe.output.get("model")
    if not output:
        raise OptionError("no output path; give ", Opt("output.model", "OUT"))
    recipe_path = recipe_path or default_recipe_path(output)
    recipe.output = {**recipe.output, "report": report_path}
    check_output_paths(recipe, recipe.input.get("model") or "", output)
    check_writable(recipe_path, "recipe")
    others = [output] + ([report_path] if report_path and not is_stdout(report_path) else [])
    if Path(recipe_path).resolve() in {Path(p).resolve() for p in others}:
        raise OptionError(f"{recipe_path}: used for the recipe and another output; choose distinct paths")
    search = AutoSearch(recipe, budget, max_candidates, resolution, latency_reps, log)
    with tempfile.TemporaryDirectory(prefix="onnxprune-auto-") as tmp:
        result = search.run(Path(tmp))
        result.report["output"] = output if result.passed else None
        if result.passed:
            result.recipe.output = {k: v for k, v in recipe.output.items() if k in ("model", "external_data")}
            make_parent(output)
            result.model.save(output, external_data=True if recipe.output.get("external_data") else None)
            make_parent(recipe_path)
            atomic_write_text(recipe_path, result.recipe.dumps())
            result.report.update(recipe=str(recipe_path), recipe_sha256=result.recipe.sha256())
    if report_path:
        make_parent(report_path)
        write_json(report_path, result.report, "auto")
    return result

