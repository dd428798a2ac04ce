"""The pass contract, the shared context and composing passes into a pipeline.

A pass takes its settings in its constructor and does its work in `call(model, ctx)`, returning
a `PassResult` that says exactly whether it modified the model and what, per weight. The CLI,
the Python API and recipe files all build `Pipeline` objects from the same passes.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from onnxprune import __version__
from onnxprune.analyze.cleanup import check_no_unused, remove_unused
from onnxprune.analyze.weights import Analysis, find_weights
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model


@dataclass
class PassResult:
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
    """What passes share: the model's analysis, the masks, calibration data, results so far."""

    model: Model
    masks: MaskSet = field(default_factory=MaskSet)
    data: Any = None  # onnxprune.check.data.Dataset used for calibration, or None
    results: list[PassResult] = field(default_factory=list)
    progress: bool = True
    state: dict[str, Any] = field(default_factory=dict)  # per-family pass state, e.g. "target"
    calibration: Any = None  # pipeline.calibration.CalibrationState, made by the first pass that needs it
    exclude: dict[str, str] = field(default_factory=dict)  # weights left dense -> why (e.g. the target cannot use them)
    _analysis: Analysis | None = None

    @property
    def analysis(self) -> Analysis:
        if self._analysis is None:
            self._analysis = find_weights(self.model)
        return self._analysis

    def invalidate(self) -> None:
        """Call after a structural rewrite: the analysis is rebuilt on next use."""
        self._analysis = None


class Pass(ABC):
    """One step of a pipeline. Subclasses set `name` and implement `call`."""

    name: str = "pass"
    structural: bool = False  # True if the pass may rewrite the graph (the analysis is rebuilt)

    @abstractmethod
    def call(self, model: Model, ctx: Context) -> PassResult: ...

    def __call__(self, model: Model, ctx: Context) -> PassResult:
        start = time.perf_counter()
        result = self.call(model, ctx)
        result.seconds = time.perf_counter() - start
        ctx.results.append(result)
        return result


def _stable(value: Any) -> str:
    """JSON fallback without memory addresses: callables (hooks passed from Python) by module:qualname."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return str(value)


def options_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=_stable).encode()).hexdigest()


class Pipeline:
    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def run(self, model: Model, ctx: Context | None = None, on_step=None) -> Context:
        """Run every pass in order; `on_step(ctx, result)` is called after each one."""
        ctx = ctx or Context(model)
        for p in self.passes:
            result = p(model, ctx)
            if p.structural and result.modified:
                # what the rewrite left unread goes; then nothing unread may remain (postcondition)
                swept = remove_unused(model.proto)
                if swept:
                    model.replace_proto(model.proto)
                    result.notes.append(f"removed {len(swept)} unread constants/nodes")
                check_no_unused(model.proto, f"pass {p.name!r}")
                ctx.invalidate()
            if on_step:
                on_step(ctx, result)
        return ctx


def stamp(model: Model, settings: Any, extra: dict[str, str] | None = None) -> None:
    """Record the tool version, a hash of the options (and `extra`) in the model's metadata_props."""
    props = {"onnxprune.version": __version__, "onnxprune.options_sha256": options_hash(settings), **(extra or {})}
    model.set_metadata(props)
