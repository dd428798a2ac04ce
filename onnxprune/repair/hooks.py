"""Fine-tuning hooks that run between pruning steps, and the pass that calls them.

A hook is any callable `hook(ctx: HookContext) -> dict[str, np.ndarray] | None`, loaded from a
Python entry point `module:function` or `path/to/file.py:function`. It may train with any
framework. It returns updated tensors by initializer name (prunable weights, and other tensors
such as biases) or None. The pipeline checks names, shapes and dtypes, re-applies the masks to
prunable weights (a pruned weight stays exactly zero), and writes the tensors into the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from onnxprune.core.errors import HookError, OptionError
from onnxprune.pipeline import ANALYSIS_FRESH, Context, Pass, PassResult
from onnxprune.pipeline.masking import PRUNED_ZERO, apply_mask


@dataclass
class HookContext:
    """What a hook sees. `t` is in the hook's own units (training steps): t0 + k * dt.

    Example::

        def finetune(hctx: HookContext):
            print(hctx.step, hctx.steps, hctx.sparsity)
            return {k: w * 1.01 for k, w in hctx.weights.items()}   # masks are re-applied
    """

    step: int
    steps: int
    t: int
    sparsity: float
    weights: dict[str, np.ndarray]  # current masked prunable weights (stored layout, copies)
    masks: dict[str, np.ndarray]  # True = kept
    model: onnx.ModelProto
    data: Any  # the calibration Dataset (iterate data.batches(n) for feed dicts) or None
    calibration: Any = None  # the pipeline's CalibrationState (statistics, dense weights), for built-in hooks


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (the CLI prints errors as one stderr line)."""
    return " ".join(str(e).split())


def load_hook(spec: str | Callable) -> Callable:
    """Resolve `module:function` or `file.py:function` (or pass a callable through)."""
    if callable(spec):
        return spec
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func:
        raise OptionError(f"hook {spec!r}: use module:function or path/to/file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise OptionError(f"hook {spec!r}: file {target} not found")
            mod_spec = importlib.util.spec_from_file_location(f"onnxprune_hook_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:  # like `python -m`: modules in the current folder come first
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(target)
    except OptionError:
        raise
    except Exception as e:
        raise OptionError(f"hook {spec!r}: cannot import {target} ({type(e).__name__}: {_one_line(e)})") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise OptionError(f"hook {spec!r}: {target} has no callable {func!r}")
    return fn


class HookPass(Pass):
    """Run fine-tuning hooks after a pruning step and write back what they return, masked.

    Example::

        def shrink(hctx):  # scales every weight; the masks are re-applied to what it returns
            return {name: w * 0.9 for name, w in hctx.weights.items()}
        Pipeline([PrunePass(0.5), HookPass([shrink])]).run(Context(load_model("m.onnx")))
    """

    name = "hooks"
    ensures = (ANALYSIS_FRESH, PRUNED_ZERO)

    def __init__(self, hooks: list[str | Callable], step: int = 1, steps: int = 1, t: int = 0, sparsity: float = 0.0):
        self.hooks = [h if isinstance(h, str) else getattr(h, "__qualname__", repr(h)) for h in hooks]
        self._fns = [load_hook(h) for h in hooks]
        self.step, self.steps, self.t, self.sparsity = step, steps, t, sparsity

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        result = PassResult(self.name, False)
        by_key = ctx.analysis.by_key()
        for spec, fn in zip(self.hooks, self._fns):
            weights = {k: np.array(model.read(k)) for k in ctx.masks.keys()}
            masks = {k: ctx.masks.get(k) for k in ctx.masks.keys()}
            hctx = HookContext(self.step, self.steps, self.t, self.sparsity, weights, masks, model.proto, ctx.data,
                               ctx.calibration)
            try:
                updates = fn(hctx)
            except Exception as e:
                raise HookError(f"hook {spec} failed at step {self.step}: {type(e).__name__}: {_one_line(e)}") from e
            for name, values in (updates or {}).items():
                changed = self._write(model, ctx, by_key, spec, name, values, result.notes)
                if changed:
                    result.modified = True
                    result.weights.setdefault(name, {"updated_by": []})["updated_by"].append(spec)
        return result

    @staticmethod
    def _write(model, ctx: Context, by_key, spec: str, name: str, values: Any, notes: list[str]) -> bool:
        key = model.key_for(name)
        if key is None:
            raise HookError(f"hook {spec} returned {name!r}, which is no constant tensor of the model")
        current = model.read(key)
        values = np.asarray(values)
        if values.shape != current.shape:
            raise HookError(f"hook {spec} returned {name!r} with shape {values.shape}; the model has {current.shape}")
        if values.dtype != current.dtype:
            if values.dtype.kind != "f" or current.dtype.kind != "f":
                raise HookError(f"hook {spec} returned {name!r} as {values.dtype}; the model stores {current.dtype}")
            notes.append(f"hook {spec} returned {name!r} as {values.dtype}: cast to the model's {current.dtype}")
            values = values.astype(current.dtype)  # e.g. float64 from numpy arithmetic
        if key in ctx.masks and key in by_key:
            values = apply_mask(by_key[key], values, ctx.masks.get(key), model)
        values = np.ascontiguousarray(values)  # hooks may hand back views (transposes, slices)
        if values.tobytes() == np.ascontiguousarray(current).tobytes():
            return False
        model.write(key, values)
        return True

    def stage(self, result: PassResult) -> str:
        names = ", ".join(h.rpartition(":")[2] or h for h in self.hooks)
        return (f"step {self.step}/{self.steps}: sparsity {self.sparsity:.2f}, hook {names} {result.seconds:.1f} s, "
                + (f"{len(result.weights)} tensors updated, masks re-applied" if result.modified else "no change"))
