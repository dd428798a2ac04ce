"""The pass contract, the shared context and composing passes into a pipeline.

A pass takes its settings in its constructor and does its work on `ctx.model` in `call(ctx)`,
returning a `PassResult` that says exactly whether it modified the model and what, per weight.
`Pass.__call__` holds every pass to the contract: its declared `requires` (`Condition`s) must hold
before it runs and its `ensures` after it modified the model; `modified` must match what it wrote; a
structural pass's leftovers are swept and the analysis rebuilt; and a failure that is not an
OnnxPruneError becomes a one-line `PassError` naming the pass (and the weight it was at). The CLI,
the Python API and recipe files all build `Pipeline` objects from the same passes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from onnxprune import __version__
from onnxprune.analyze.cleanup import remove_unused, unused_constants
from onnxprune.analyze.weights import Analysis, find_weights
from onnxprune.core.errors import OnnxPruneError, Opt
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.core.progress import stage_line


class PassError(OnnxPruneError):
    """A pass failed, or a condition it requires or ensures does not hold; the message names the pass."""


@dataclass
class PassResult:
    """What one pass did: `modified` (exactly whether it wrote the model), per-weight changes, notes and
    its run time.

    Example::

        return PassResult("my-pass", modified=True, weights={"fc1.weight": {"values_changed": 12}})
    """
    pass_name: str
    modified: bool
    weights: dict[str, dict] = field(default_factory=dict)  # per weight: what changed
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"pass": self.pass_name, "modified": self.modified, "seconds": round(self.seconds, 3),
                "weights": self.weights, "notes": self.notes}


@dataclass
class Context:
    """What passes share: the model and its analysis, the masks, calibration data, results so far.

    Example::

        ctx = Context(load_model("samples/digits_mlp.onnx"), data=Dataset.from_arrays({"input": x}, model.proto))
        Pipeline([PrunePass(0.5)]).run(ctx)
        ctx.masks.save("out/masks.npz")
    """

    model: Model
    masks: MaskSet = field(default_factory=MaskSet)
    data: Any = None  # onnxprune.check.data.Dataset used for calibration, or None
    results: list[PassResult] = field(default_factory=list)
    progress: bool = True
    calibration: Any = None  # pipeline.calibration.CalibrationState, made by the first pass that needs it
    target: Any = None  # pack.passes.TargetState of the target passes (eligibility, packed tensors, manifest)
    channel_report: dict | None = None  # the last channel-pruning pass's report (prune.structured)
    exclude: dict[str, str] = field(default_factory=dict)  # weights left dense -> why (e.g. the target cannot use them)
    skipped: dict[str, str] = field(default_factory=dict)  # weights the pruning passes left dense -> why (latest)
    allocation: dict[str, float] | None = None  # weight key -> final sparsity of a non-uniform allocation (prune.allocation_*)
    epoch: int = 0  # passes that modified the model so far: caches keyed on it expire when it moves
    at: str | None = None  # the weight or node the running pass works on, named in its errors
    edits_before: int = 0  # model.edits when the running pass started: its ensures check what it wrote
    _analysis: Analysis | None = None
    _analysed_at: int = -1  # model.rewrites when the analysis was built

    @property
    def analysis(self) -> Analysis:
        if self._analysis is None:
            self._analysis = find_weights(self.model)
            self._analysed_at = self.model.rewrites
        return self._analysis

    def invalidate(self) -> None:
        """Call after a structural rewrite: the analysis is rebuilt on next use."""
        self._analysis = None


@dataclass(frozen=True)
class Condition:
    """A property of the context that a pass requires before it runs, or ensures after it ran.

    `violation(ctx)` is None when it holds, else the message parts (text, `Opt`s) saying why not."""

    name: str
    violation: Callable[[Context], tuple[str | Opt, ...] | None]


def _stale_analysis(ctx: Context) -> tuple[str, ...] | None:
    if ctx._analysis is not None and ctx._analysed_at != ctx.model.rewrites:
        return ("the graph was rewritten after its weights were analysed (a pass that rewrites it must be structural)",)
    return None


def _unused(ctx: Context) -> tuple[str, ...] | None:
    found = unused_constants(ctx.model.proto)
    if not found:
        return None
    more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
    return (f"constants nothing reads are left: {'; '.join(found[:3])}{more} (a bug in onnxprune: please report it)",)


ANALYSIS_FRESH = Condition("a fresh analysis", _stale_analysis)
NO_UNUSED = Condition("no unused constants", _unused)


class Pass(ABC):
    """One step of a pipeline. Subclasses set `name`, declare conditions and implement `call`.

    Example::

        class ScaleWeights(Pass):
            name = "scale"

            def __init__(self, factor: float = 0.5):
                self.factor = factor

            def call(self, ctx):
                for w in ctx.analysis.weights:
                    ctx.model.write(w.key, ctx.model.read(w.key) * self.factor)
                return PassResult(self.name, modified=bool(ctx.analysis.weights))
    """

    name: str = "pass"
    structural: bool = False  # True if the pass may rewrite the graph (leftovers swept, analysis rebuilt)
    requires: tuple[Condition, ...] = (ANALYSIS_FRESH,)
    ensures: tuple[Condition, ...] = (ANALYSIS_FRESH,)

    @abstractmethod
    def call(self, ctx: Context) -> PassResult: ...

    def __call__(self, ctx: Context) -> PassResult:
        """Run the pass under the contract; its result is appended to `ctx.results`."""
        self._check(ctx, "requires", self.requires)
        model = ctx.model
        edits, rewrites = model.edits, model.rewrites
        ctx.at, ctx.edits_before = None, edits
        start = time.perf_counter()
        try:
            result = self.call(ctx)
        except OnnxPruneError:
            raise
        except Exception as e:
            where = f" at {ctx.at}" if ctx.at else ""
            raise PassError(f"pass {self.name!r} failed{where}: {type(e).__name__}: {e} "
                            "(a bug in onnxprune: please report it with the model)") from e
        result.seconds = time.perf_counter() - start
        wrote = model.edits != edits or model.rewrites != rewrites
        if wrote != result.modified:
            raise PassError(f"pass {self.name!r} reported modified={result.modified} but "
                            f"{'changed' if wrote else 'did not change'} the model (a bug in the pass)")
        if result.modified:
            ctx.epoch += 1
            if self.structural:  # what the rewrite left unread goes; the analysis is rebuilt on next use
                swept = remove_unused(model.proto)
                if swept:
                    model.replace_proto(model.proto)
                    result.notes.append(f"removed {len(swept)} unread constants/nodes")
                ctx.invalidate()
            self._check(ctx, "ensures", self.ensures)  # a pass that changed nothing leaves the model as it found it
        ctx.at = None
        ctx.results.append(result)
        stage_line(self.stage(result), detail=not ctx.progress)
        return result

    def stage(self, result: PassResult) -> str:
        """The pass's one log line once it ran: what it did, in a few words, and its seconds."""
        changed = sum(1 for w in result.weights.values() if not w.get("skipped"))
        done = f"{changed} weights" if changed else "modified" if result.modified else "no change"
        return f"{self.name}: {done}, {result.seconds:.1f} s"

    def __repr__(self) -> str:
        """`PrunePass(sparsity=0.5, pattern='2:4')`: the constructor settings that differ from their defaults."""
        parts = []
        for p in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(self, p.name):
                continue
            value = getattr(self, p.name)
            default = p.default
            if default is p.empty or _differs(value, default):
                shown = f"{value:.6g}" if isinstance(value, float) else repr(value)  # 0.7, not 0.7000000000000001
                parts.append(f"{p.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _check(self, ctx: Context, kind: str, conditions: tuple[Condition, ...]) -> None:
        for c in conditions:
            parts = c.violation(ctx)
            if parts is not None:
                raise PassError(f"pass {self.name!r} {kind} {c.name}: ", *parts)


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default) and not (isinstance(default, (tuple, list)) and list(value) == list(default))
    except Exception:  # arrays and other values without a plain truth value
        return True


def _stable(value: Any) -> str:
    """JSON fallback without memory addresses: callables (hooks passed from Python) by module:qualname."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return str(value)


def options_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=_stable).encode()).hexdigest()


class Pipeline:
    """Passes run in order on one context; prints as the list of its passes.

    Example::

        ctx = Pipeline([PrunePass(0.5), HookPass(["samples/finetune_hook.py:finetune"])]).run(
            Context(load_model("samples/digits_mlp.onnx"), data=Dataset.from_source("samples/digits_calib.npz", ...)))
        print(Pipeline([PrunePass(0.5)]))   # Pipeline([PrunePass(sparsity=0.5)])
    """

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def __repr__(self) -> str:
        return "Pipeline([\n" + "".join(f"    {p!r},\n" for p in self.passes) + "])"

    def run(self, ctx: Context, on_step=None) -> Context:
        """Run every pass in order on `ctx.model`; `on_step(ctx, result)` is called after each one."""
        for p in self.passes:
            result = p(ctx)
            if on_step:
                on_step(ctx, result)
        return ctx


def stamp(model: Model, settings: Any, extra: dict[str, str] | None = None) -> None:
    """Record the tool version, a hash of the options (and `extra`) in the model's metadata_props."""
    props = {"onnxprune.version": __version__, "onnxprune.options_sha256": options_hash(settings), **(extra or {})}
    model.set_metadata(props)
