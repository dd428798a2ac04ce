"""A whole pruning job as one options object: the same for the CLI, the Python API and recipes.

`PruneOptions` -> `build_pipeline` (fold, then for each schedule step: prune, then the
fine-tuning hooks) -> `prune_model` runs it and returns the report.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Literal, Mapping

import numpy as np

from onnxprune.analyze.cleanup import check_params_not_increased
from onnxprune.analyze.weights import find_weights, zero_value
from onnxprune.check.data import Dataset, load_dataset
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.jobs.sensitivity import glob_escape, sensitivity_allocation
from onnxprune.pipeline import Context, Pass, Pipeline, options_hash, stamp
from onnxprune.pipeline.calibration import CalibrationPass
from onnxprune.prune.allocate import DEFAULT_MIN_PARAMS, parse_override
from onnxprune.prune.allocation_owl import DEFAULT_LAMBDA, DEFAULT_M, OwlAllocationPass
from onnxprune.prune.allocation_sensitivity import Budget
from onnxprune.prune.calibrated import CALIBRATED_CRITERIA, CalibratedPrunePass
from onnxprune.prune.criteria import CRITERIA
from onnxprune.prune.fold import FoldConstantsPass
from onnxprune.prune.patterns import GRANULARITIES, Pattern
from onnxprune.prune.prune_pass import PrunePass
from onnxprune.prune.schedule import ScheduleStep, cubic_sparsity, schedule
from onnxprune.prune.structured import (
    DEFAULT_ROUND_TO,
    ChannelPrunePass,
    prune_channels,
)
from onnxprune.quantize.quantizer import QUANTIZE_MODES, check_mode, needs_calibration
from onnxprune.repair.hooks import HookPass
from onnxprune.repair.reconstruct import REPAIR_METHODS, RepairPass
from onnxprune.repair.structured_repair import lstsq_repair

# Options added after the first release that change nothing at their default: left out of the options
# hash and the recipe while at it, so models pruned without them stay byte-identical.
QUIET_DEFAULTS = {"quantize": None, "quantize_skip": [], "channel_unit": "channel", "granularity": "auto",
                  "allocation": "uniform", "owl_lambda": DEFAULT_LAMBDA, "owl_m": DEFAULT_M, "budget": None,
                  "sensitivity": None}

CHANNEL_CRITERIA = {"magnitude": "l2", "wanda": "activation"}  # prune option -> channel importance
ALLOCATIONS = ("uniform", "owl", "sensitivity")  # how per-layer levels are chosen (--allocation)
CHANNEL_UNITS = {"channel": "inner", "head": "outer"}  # --channel-unit -> the factor a heads x head_dim Reshape follows


def _option(default: Any = None, *, help: str, factory: Callable | None = None, choices: tuple = (),
            flag: str | None = None, metavar: str | None = None, min: int | None = None,
            cli_default: Any = MISSING) -> Any:
    """A PruneOptions field: its default and `help`, from which the CLI flag and the recipe key are made.

    `flag`: the flag where it is not "--" + the name with "-" for "_"; `min`: an integer's least value;
    `cli_default`: the flag's default where the CLI resolves it later (pattern: the target's)."""
    meta = {"help": help, "choices": tuple(choices), "flag": flag, "metavar": metavar, "min": min,
            "cli_default": cli_default}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class PruneOptions:
    """Every pruning option, declared once: the recipe's [prune] keys and the `prune` / `sweep` flags
    are generated from these fields (`option_fields`); choices are Literals. Invalid values raise
    OptionError at construction, naming the parameter.

    Example::

        opts = PruneOptions(sparsity=0.5, pattern="2:4", criterion="sparsegpt", repair="lstsq")
        opts = PruneOptions(sparsity=0.8, steps=4, hooks=["samples/finetune_hook.py:finetune"])
    """

    sparsity: float | None = _option(help="Final sparsity (default: 1-N/M for N:M, else 0.5).")
    pattern: str = _option("unstructured", cli_default=None, help=(
        "unstructured (default), N:M (e.g. 2:4), RxC blocks (e.g. 4x4), or channel (remove whole channels: "
        "smaller, faster); with --target, the target's pattern."))
    scope: Literal["layer", "global"] = _option("layer", choices=("layer", "global"), help=(
        "layer: every weight reaches the sparsity; global: one ranking over all selected weights."))
    criterion: Literal["magnitude", "wanda", "sparsegpt"] = _option("magnitude", choices=tuple(CRITERIA), help=(
        "Weight importance: magnitude, or calibration-aware wanda / sparsegpt (need --data)."))
    overrides: list[str] = _option(factory=list, flag="--override", metavar="GLOB=S",
                                   help="Per-name sparsity, e.g. 'conv1*=0.3'. Repeatable.")
    skip: list[str] = _option(factory=list, metavar="GLOB",
                              help="Leave weights (or their nodes) matching GLOB dense. Repeatable.")
    min_params: int = _option(DEFAULT_MIN_PARAMS, help="Weights smaller than this stay dense.")
    nm_remainder: Literal["skip", "pad"] = _option("skip", choices=("skip", "pad"), help=(
        "N:M on a reduction length that is not a multiple of M: leave dense, or pad the last group."))
    steps: int = _option(1, help="Gradual pruning steps (1 = one-shot).")
    initial_sparsity: float = _option(0.0, help="s_i of the cubic schedule.")
    t0: int = _option(0, help="First pruning step t0, in the hook's units.")
    dt: int = _option(1, flag="--delta-t", help="Steps between pruning events, in the hook's units.")
    hooks: list[str] = _option(factory=list, flag="--hook", metavar="MODULE:FN", help=(
        "Fine-tuning hook run after each step (module:function or file.py:function)."))
    fold_constants: bool = _option(False, help=(
        "Fold constant subexpressions first so weights assembled from constants become prunable."))
    calib_samples: int | None = _option(min=1, help="Calibration samples to use from --data (default: all).")
    sequential: bool = _option(False, help=(
        "Recapture calibration statistics layer by layer from the partly pruned model."))
    repair: Literal["none", "lstsq", "bias", "lstsq+bias"] = _option("none", choices=REPAIR_METHODS, help=(
        "Built-in repair after each pruning step from calibration data: masked least squares and/or bias "
        "correction."))
    round_to: int = _option(DEFAULT_ROUND_TO, min=1, help=(
        "--pattern channel: kept channels are a multiple of this (16 suits onnxruntime's AVX-512 convolutions, "
        "as in the cpu-channels recipe)."))
    reinit: bool = _option(False, help=(
        "--pattern channel: emit the pruned architecture freshly initialised, for training from scratch."))
    quantize: str | None = _option(choices=QUANTIZE_MODES, help=(
        "After pruning and repair, quantize with onnxruntime's tool: int8 (static QDQ, per-channel symmetric "
        "weights, calibrated on --data), int8-dynamic (MatMulInteger, for transformers) or fp16; zeros stay exact."))
    quantize_skip: list[str] = _option(factory=list, metavar="GLOB", help=(
        "--quantize: keep nodes (or the nodes of weights) matching GLOB in float, e.g. a layer whose int8 "
        "error fails the gate. Repeatable."))
    channel_unit: str = _option("channel", choices=CHANNEL_UNITS, help=(
        "--pattern channel, attention: remove head_dim channels inside every head (channel) or whole heads (head: "
        "the Reshape's head count shrinks)."))
    granularity: str = _option("auto", choices=GRANULARITIES, help=(
        "Unstructured, layer scope: compare scores within each output row (row) or over the whole weight (layer); "
        "auto: layer for magnitude, row for wanda (SparseGPT: row = each row its share of every column block)."))
    allocation: str = _option("uniform", choices=ALLOCATIONS, help=(
        "Per-layer sparsity: uniform (every layer at --sparsity); owl (outlier-weighted, from calibration "
        "activations: layers with more outliers pruned less, same overall sparsity; N:M: the layers with most "
        "outliers stay dense; needs --data); or sensitivity (from measured per-layer curves, to --budget; needs "
        "--data, or --sensitivity R.json)."))
    owl_lambda: float = _option(DEFAULT_LAMBDA, help=(
        "--allocation owl: layer sparsities span target +/- lambda (N:M: overall sparsity may drop by lambda)."))
    owl_m: float = _option(DEFAULT_M, help="--allocation owl: a score is an outlier above M x its layer's mean.")
    budget: str | None = _option(metavar="KIND=VALUE", help=(
        "--allocation sensitivity: sparsity=0.5 (share pruned), or params / macs / latency = the fraction kept "
        "(macs=0.6). Default: sparsity=--sparsity (channel: macs of uniform pruning is not assumed)."))
    sensitivity: str | None = _option(metavar="R.json", help=(
        "--allocation sensitivity: curves from this `onnxprune sensitivity --report` (else measured now on the "
        "calibration data, or read from the cache)."))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option (raises OptionError) without touching a model or importing hooks, so
        a bad option fails before a large model is loaded."""
        if self.scope not in ("layer", "global"):
            raise OptionError(Opt("prune.scope"), f" {self.scope!r}: use layer or global")
        if self.criterion not in CRITERIA:
            raise OptionError(Opt("prune.criterion"), f" {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.nm_remainder not in ("skip", "pad"):
            raise OptionError(Opt("prune.nm_remainder"), f" {self.nm_remainder!r}: use skip or pad")
        if self.repair not in REPAIR_METHODS:
            raise OptionError(Opt("prune.repair"), f" {self.repair!r}: use one of {', '.join(REPAIR_METHODS)}")
        check_mode(self.quantize)
        if self.quantize_skip and not self.quantize:
            raise OptionError(Opt("prune.quantize_skip"), " applies to ", Opt("prune.quantize", "int8"))
        self._validate_allocation()
        if self.channel_unit not in CHANNEL_UNITS:
            raise OptionError(Opt("prune.channel_unit"), f" {self.channel_unit!r}: use channel or head")
        if self.pattern == "channel":
            if self.allocation == "owl":
                raise OptionError(Opt("prune.allocation"), " owl applies to unstructured, N:M and block patterns, not "
                                  "to channel pruning (use sensitivity)")
            self._validate_channel()
            return
        if self.channel_unit != "channel":
            raise OptionError(Opt("prune.channel_unit"), " applies to ", Opt("prune.pattern", "channel"))
        self._validate_nm()
        PrunePass(self.sparsity, self.pattern, self.scope, self.criterion, self.overrides, self.skip,
                  self.min_params, self.nm_remainder, granularity=self.granularity)  # pattern, criterion, N:M sparsity
        if self.allocation == "owl":
            if self.scope != "layer":
                raise OptionError(Opt("prune.allocation"), " owl sets one sparsity per layer: use it with ",
                                  Opt("prune.scope", "layer"))
            OwlAllocationPass(self.final_sparsity(), self.pattern, self.owl_lambda, self.owl_m)
        schedule(self.final_sparsity(), self.steps, self.initial_sparsity, self.t0, self.dt)

    def _validate_allocation(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise OptionError(Opt("prune.allocation"), f" {self.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
        if self.allocation != "sensitivity":
            if self.budget is not None or self.sensitivity is not None:
                raise OptionError(Opt("prune.budget"), " and ", Opt("prune.sensitivity"), " need ",
                                  Opt("prune.allocation", "sensitivity"))
            return
        if self.budget is not None:
            Budget.parse(self.budget)
        if self.steps != 1 or self.hooks or self.overrides or self.scope != "layer" or self.fold_constants:
            raise OptionError(Opt("prune.allocation", "sensitivity"), " sets every layer's level itself, one-shot: "
                              "it does not combine with ", Opt("prune.steps"), ", ", Opt("prune.hooks"), ", ",
                              Opt("prune.overrides"), ", ", Opt("prune.scope", "global"), " or ",
                              Opt("prune.fold_constants"))
        if Pattern.parse(self.pattern).fixed_sparsity is not None if self.pattern != "channel" else False:
            raise OptionError(Opt("prune.allocation", "sensitivity"), f" with N:M pattern {self.pattern}: N:M has "
                              "one level; allocate unstructured or channel pruning")

    def budget_value(self) -> Budget:
        """The budget of a sensitivity allocation (default: the sparsity reached = --sparsity)."""
        return Budget.parse(self.budget) if self.budget else Budget("sparsity", self.final_sparsity())

    def _validate_nm(self) -> None:
        """N:M fixes the sparsity at 1 - N/M: any other final sparsity (or override, except 0 = dense)
        would leave weights off the pattern."""
        pattern = Pattern.parse(self.pattern)
        fixed = pattern.fixed_sparsity
        if fixed is None:
            return
        if self.sparsity is not None and not math.isclose(self.sparsity, fixed, abs_tol=1e-9):
            k = self.sparsity * pattern.b
            other = (f"{pattern.b - round(k)}:{pattern.b}" if 0 < round(k) < pattern.b and math.isclose(k, round(k))
                     else "unstructured")
            raise OptionError(f"sparsity {self.sparsity:g} with pattern {pattern}: N:M fixes the sparsity at "
                              f"1 - N/M = {fixed:g}; leave ", Opt("prune.sparsity"), " out, or prune at "
                              f"{self.sparsity:g} with ", Opt("prune.pattern", other))
        for text in self.overrides:
            glob, s = parse_override(text)
            if s != 0 and not math.isclose(s, fixed, abs_tol=1e-9):
                raise OptionError(f"override {text!r} with pattern {pattern}: N:M fixes the sparsity at {fixed:g}; "
                                  "an override can only leave a layer dense (", Opt("prune.overrides", [f"{glob}=0"]),
                                  " or ", Opt("prune.skip", [glob]), ")")

    def _validate_channel(self) -> None:
        if self.criterion not in CHANNEL_CRITERIA:
            raise OptionError(f"criterion {self.criterion!r} for channel pruning: use "
                              f"{' or '.join(CHANNEL_CRITERIA)}")
        if self.repair not in ("none", "lstsq"):
            raise OptionError(f"repair {self.repair!r} for channel pruning: use none or lstsq (biases are refitted with it)")
        if self.steps != 1 or self.hooks or self.overrides:
            raise OptionError("channel pruning is one-shot: ", Opt("prune.steps"), ", ", Opt("prune.hooks"), " and ",
                              Opt("prune.overrides"), " do not apply to it")
        if self.reinit and self.repair != "none":
            raise OptionError(Opt("prune.reinit"), " emits fresh weights; it cannot be combined with ",
                              Opt("prune.repair"))
        self.channel_pass()  # sparsity, round_to, scope

    @property
    def channel_factor(self) -> str:
        """Which factor of a heads x head_dim Reshape carries the channels (`analyze_groups`' prefer)."""
        return CHANNEL_UNITS[self.channel_unit]

    def final_sparsity(self) -> float:
        if self.pattern == "channel":
            return self.sparsity if self.sparsity is not None else 0.5
        fixed = Pattern.parse(self.pattern).fixed_sparsity
        return self.sparsity if self.sparsity is not None else (fixed if fixed is not None else 0.5)

    def channel_pass(self, group_sparsity: dict[str, float] | None = None) -> ChannelPrunePass:
        return ChannelPrunePass(self.final_sparsity(), self.round_to, self.scope, CHANNEL_CRITERIA[self.criterion],
                                self.repair, self.reinit, skip=self.skip, calib_samples=self.calib_samples or 32,
                                prefer=self.channel_factor, refit=lstsq_repair if self.repair == "lstsq" else None,
                                group_sparsity=group_sparsity)

    def needs_data(self) -> bool:
        """Do the criterion, the allocation, the repair or the quantization read calibration inputs?"""
        return (self.criterion != "magnitude" or self.repair != "none" or self.allocation == "owl"
                or needs_calibration(self.quantize))

    def no_data_error(self) -> OptionError:
        what = ([f"criterion {self.criterion}"] * (self.criterion != "magnitude")
                + [f"allocation {self.allocation}"] * (self.allocation == "owl")
                + [f"repair {self.repair}"] * (self.repair != "none")
                + [f"quantize {self.quantize}"] * needs_calibration(self.quantize))
        return OptionError(f"{' and '.join(what)} {'read' if len(what) > 1 else 'reads'} calibration inputs: give ",
                           Opt("data.calibration", "FILE"))

    def uses_calibration(self) -> bool:
        """Does the job read the data (pruning, or int8 calibration), so evaluation data must be kept apart?"""
        return self.needs_data() or bool(self.hooks)

    def to_dict(self) -> dict:
        """The options, less those of QUIET_DEFAULTS at their default (so earlier jobs hash as before)."""
        return {k: v for k, v in asdict(self).items() if k not in QUIET_DEFAULTS or v != QUIET_DEFAULTS[k]}

    @classmethod
    def from_flags(cls, values: dict) -> PruneOptions:
        """Options from parsed flags: pops every field's value out of `values` (lists from tuples);
        fields without a value (flags the command does not take) keep their default."""
        kinds = option_fields()
        given = {name: values.pop(name) for name in kinds if name in values}
        return cls(**{k: list(v) if kinds[k] is list else v for k, v in given.items()})

    def sha256(self) -> str:
        return options_hash(self.to_dict())


def option_fields() -> dict[str, type]:
    """PruneOptions' fields (in order) -> the type of value each takes: float, int, str, bool or list (of str)."""
    hints = typing.get_type_hints(PruneOptions)
    out = {}
    for f in fields(PruneOptions):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is Literal:
            out[f.name] = type(args[0])  # the choices' type (str)
        else:
            out[f.name] = list if typing.get_origin(hint) is list else (args[0] if args else hint)
    return out


def build_pipeline(opts: PruneOptions, group_sparsity: dict[str, float] | None = None) -> Pipeline:
    """The passes of a pruning job, in order (what `prune_model` runs); print it to see them.
    `group_sparsity`: channel group name -> its ratio (a sensitivity allocation).

    Example::

        >>> build_pipeline(PruneOptions(sparsity=0.5, criterion="wanda", repair="lstsq"))
        Pipeline([
            CalibrationPass(),
            CalibratedPrunePass(sparsity=0.5, min_params=1024),
            RepairPass(),
        ])
    """
    passes: list[Pass] = [FoldConstantsPass()] if opts.fold_constants else []
    if opts.pattern == "channel":  # structured: one rewrite of the graph
        return Pipeline(passes + [opts.channel_pass(group_sparsity)])
    plan = schedule(opts.final_sparsity(), opts.steps, opts.initial_sparsity, opts.t0, opts.dt)
    calibrated = calibration_passes(opts)
    passes += calibrated
    final = opts.final_sparsity()
    if opts.allocation == "owl":
        passes.append(OwlAllocationPass(final, opts.pattern, opts.owl_lambda, opts.owl_m, opts.overrides, opts.skip,
                                        opts.min_params, opts.nm_remainder))
    for st in plan:
        if calibrated and opts.criterion in CALIBRATED_CRITERIA:
            passes.append(CalibratedPrunePass(st.sparsity, opts.pattern, opts.scope, opts.criterion, ramped(opts, st),
                                              opts.skip, opts.min_params, opts.nm_remainder, step=st.index,
                                              sequential=opts.sequential, granularity=opts.granularity, final=final))
        else:
            passes.append(PrunePass(st.sparsity, opts.pattern, opts.scope, opts.criterion, ramped(opts, st), opts.skip,
                                    opts.min_params, opts.nm_remainder, step=st.index, granularity=opts.granularity,
                                    final=final))
        if opts.repair != "none":
            passes.append(RepairPass(opts.repair, sequential=opts.sequential))
        if opts.hooks:
            passes.append(HookPass(opts.hooks, st.index, len(plan), st.t, st.sparsity))
    return Pipeline(passes)


def ramped(opts: PruneOptions, step: ScheduleStep) -> list[str]:
    """The per-name overrides at one schedule step: each follows its own cubic schedule from the
    initial sparsity (or its own value, if lower) to its value, on the same steps as the rest."""
    if opts.steps == 1:
        return list(opts.overrides)
    out = []
    for text in opts.overrides:
        glob, final = parse_override(text)
        s = cubic_sparsity(step.t, min(opts.initial_sparsity, final), final, opts.steps, opts.t0, opts.dt)
        out.append(f"{glob}={s!r}")
    return out


def calibration_passes(opts: PruneOptions) -> list[Pass]:
    """[CalibrationPass] when the job uses calibration data (criterion, repair or a built-in repair
    hook), else []; it copies the dense weights before the first pruning step."""
    if opts.repair not in REPAIR_METHODS:
        raise OptionError(f"repair {opts.repair!r}: use one of {', '.join(REPAIR_METHODS)}")
    builtin_hook = any(isinstance(h, str) and h.startswith("onnxprune.repair.reconstruct:") for h in opts.hooks)
    if opts.criterion not in CALIBRATED_CRITERIA and opts.repair == "none" and not builtin_hook \
            and opts.allocation == "uniform":
        return []
    return [CalibrationPass(opts.calib_samples)]


def prune_model(model: Model | str | os.PathLike, opts: PruneOptions, data=None, masks: MaskSet | None = None,
                progress: bool = True, on_step=None, exclude: dict[str, str] | None = None) -> tuple[Context, dict]:
    """Run the pruning job on `model` in place; returns the context and the report.

    `model`: a Model, or the path of one (loaded; the file is never written: save `ctx.model`).
    `data`: calibration inputs: a Dataset, a dict of numpy arrays keyed by input name (axis 0 =
    samples), or the path of an .npz or folder.
    `progress`: bars and stage lines through the `onnxprune` logger (False: stage lines at DEBUG).
    `on_step(ctx, result)` is called after each pass (e.g. to evaluate accuracy per step).
    `exclude`: weight key -> why the job leaves it dense (reported as its skip reason).

    Example::

        ctx, report = prune_model("samples/digits_mlp.onnx", PruneOptions(sparsity=0.5, criterion="wanda"),
                                  data={"input": x})          # or data="calib.npz"
        ctx.model.save("out/mlp_50.onnx")
    """
    if isinstance(model, (str, os.PathLike)):
        model = Model.load(model)
    elif not isinstance(model, Model):
        raise OptionError(f"model: give a Model or the path of an .onnx file, not a {type(model).__name__}")
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(model.proto, data)
    elif isinstance(data, Mapping):
        data = Dataset.from_arrays(data, model.proto, source="data (arrays)")
    elif data is not None and not isinstance(data, Dataset):
        raise OptionError(f"data: give a Dataset, a dict of numpy arrays keyed by input name or the path of an "
                          f".npz or folder, not a {type(data).__name__}")
    if data is None and opts.needs_data():
        raise opts.no_data_error()
    run_opts, group_sparsity, allocation = opts, None, None
    exclude = dict(exclude or {})
    if opts.allocation == "sensitivity":
        run_opts, group_sparsity, allocation = _allocated(model, opts, data, exclude)
    ctx = Context(model, masks or MaskSet(), data, progress=progress, exclude=exclude)
    counted = {"before": stored_params(model)}

    def step(ctx: Context, result) -> None:
        if result.pass_name == FoldConstantsPass.name:  # folding materialises weights: count from there
            counted["before"] = stored_params(model)
        if on_step:
            on_step(ctx, result)

    pipeline = build_pipeline(run_opts) if group_sparsity is None else build_pipeline(run_opts, group_sparsity)
    pipeline.run(ctx, step)
    check_params_not_increased(counted["before"], stored_params(model), "pruning")  # postcondition
    stamp(model, opts.to_dict())
    summary = summarize(ctx, opts)
    if allocation is not None:
        summary["allocation"] = allocation
        if "totals" in summary and opts.budget_value().kind == "sparsity":
            summary["totals"]["requested_sparsity"] = opts.budget_value().value
    return ctx, summary


def _allocated(model: Model, opts: PruneOptions, data, exclude: dict[str, str]):
    """(options to run, channel group ratios, the allocation report) for `--allocation sensitivity`:
    unstructured levels become exact per-name overrides (layers left at 0 are excluded, with the
    reason), channel groups get their own ratios."""
    base = dataclasses.replace(opts, allocation="uniform", budget=None, sensitivity=None)
    probe = None
    budget = opts.budget_value()
    if opts.pattern == "channel" and budget.kind != "latency":
        def probe(levels: dict[str, float]) -> float:
            r = prune_channels(model, 0.0, round_to=opts.round_to, criterion=CHANNEL_CRITERIA[opts.criterion],
                               data=data, calib_samples=opts.calib_samples or 32, skip=opts.skip,
                               prefer=opts.channel_factor, group_sparsity=levels).report
            if budget.kind == "sparsity":
                free = [g for g in r["groups"] if not g["frozen"]]
                removable = sum(g["channels_before"] - g["frozen_channels"] for g in free)
                return sum(g["channels_before"] - g["channels_after"] for g in free) / max(removable, 1)
            return 1 - r[f"{budget.kind}_ratio"]
    allocation = sensitivity_allocation(model, opts, data, build_pipeline, probe=probe)
    allocation["budget"] = str(budget)
    levels = allocation["levels"]
    if opts.pattern == "channel":
        return dataclasses.replace(base, sparsity=0.0), levels, allocation
    for key, level in levels.items():
        if level == 0:
            exclude.setdefault(key, "sensitivity allocation: left dense")
    for w in find_weights(model).weights:
        if w.key not in levels:
            exclude.setdefault(w.key, "sensitivity allocation: not measured")
    overrides = [f"{glob_escape(k)}={v!r}" for k, v in levels.items() if v > 0]
    return dataclasses.replace(base, overrides=overrides), None, allocation


def stored_params(model: Model) -> int:
    """Elements of every constant tensor (initializers and Constant values, subgraphs included)."""
    return int(sum(int(np.prod(tuple(r.proto.dims), dtype=np.int64)) for r in model.tensors()))


def _zeros(w, stored: np.ndarray, model: Model) -> int:
    """Entries equal to the pruned value: 0, or the zero point of a quantized weight."""
    if w.quant is None and stored.dtype.kind in "biuf" and stored.dtype.isbuiltin:  # == 0 is "not nonzero"
        return stored.size - int(np.count_nonzero(stored))
    return int(np.count_nonzero(stored == zero_value(w, model)))


def summarize(ctx: Context, opts: PruneOptions) -> dict:
    """Per-weight and overall achieved sparsity over all prunable weights (channel pruning: the
    groups, channels, parameters and MACs before and after)."""
    if opts.pattern == "channel":
        return {"options": opts.to_dict(), "options_sha256": opts.sha256(),
                "structured": ctx.channel_report or {}, "passes": [r.to_dict() for r in ctx.results],
                "speed_note": "Channel pruning removes whole channels: the model is smaller and dense, and faster "
                              "on any runtime, roughly in proportion to the MACs removed."}
    rows = []
    total = pruned = 0
    for w in ctx.analysis.weights:
        sparsity = ctx.masks.sparsity(w.key) if w.key in ctx.masks else 0.0
        skipped = ctx.skipped.get(w.key)
        zeros = _zeros(w, ctx.model.read(w.key), ctx.model)
        rows.append({"name": w.key, "op": w.op, "params": w.params, "sparsity": sparsity,
                     "zeros": zeros, "skipped": skipped})
        total += w.params
        pruned += int(round(sparsity * w.params))
    selected = [r for r in rows if not r["skipped"]]
    sel_total = sum(r["params"] for r in selected)
    sel_pruned = sum(int(round(r["sparsity"] * r["params"])) for r in selected)
    return {
        "options": opts.to_dict(),
        "options_sha256": opts.sha256(),
        "weights": rows,
        "totals": {
            "prunable_params": total,
            "pruned_params": pruned,
            "sparsity_of_prunable": pruned / total if total else 0.0,
            "selected_params": sel_total,
            "sparsity_of_selected": sel_pruned / sel_total if sel_total else 0.0,
            "requested_sparsity": opts.final_sparsity(),
        },
        "passes": [r.to_dict() for r in ctx.results],
        "speed_note": ("Unstructured and N:M zeros inside dense weights buy size (after packing or compression) "
                       "and sparse-accelerator eligibility, not CPU speed: a dense runtime does the same work. "
                       "Only structured pruning (fewer channels) is faster on a plain CPU."),
    }
