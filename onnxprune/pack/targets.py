"""Accelerator targets: reading and validating `targets/*.toml`.

A target is data: the sparsity pattern an accelerator can use, the dtypes it runs, the packed format
it consumes, how the artifact is emitted and which layers are eligible. `load_target(name_or_path)`
returns a validated `Target`; any problem in a file is a one-line `TargetError` naming the file, the
key and what is allowed. The eligibility rules are applied by `onnxprune.pack.eligibility`.

Schema (version 1), every key checked, unknown keys rejected:

    schema_version = 1                       # required
    name = "nvidia-2to4"                     # required, equals the file name without .toml
    description = "one line"                 # required, one line (what `onnxprune targets` lists)
    details = "..."                          # optional, free text (`onnxprune targets show`)
    runtime = "who consumes the artifact"    # required
    accelerates = true                       # required: true = eligible layers run sparse; false = storage only
    pattern = "2:4" | "RxC" | "unstructured" # required, the pattern the hardware uses (Pattern.parse)
    dtypes = ["float16", ...]                # required, the dtypes it runs natively
    references = ["doc name", ...]           # optional
    [converts]   dtype = "note"              # optional: other dtypes accepted, converted by the runtime (noted)
    [block]      choices = ["1x1", "4x1"] | ["any"]   # optional: --block RxC allowed (block patterns only)
    [format]     name = "nm" | "bsr" | "bitmask" | "coo";  params = {...}  # params checked per format
    [emit]       modes = ["dense", "sparse-initializer", "portable"];  default = one of modes
    [eligibility]
      ops = ["Conv", "MatMul", ...]          # required: ops whose weights can run sparse
      conv_kernels = ["1x1"]                 # Conv kernel shapes allowed (default: any)
      conv_stride_one, conv_no_padding, conv_groups_one = bool   (default false)
      reduction_multiple, output_multiple = int >= 1             (default 1)
      block_aligned = bool                   # matrix rows/cols multiples of the block (default false)
      [eligibility.alignment.DTYPE] reduction = int, outputs = int   # per-dtype multiples
      min_reduction, min_outputs, min_params = int >= 0           (default 0)
      min_sparsity = float in [0, 1)         # below it a layer is not worth running sparse (default 0)
      min_sparsity_scope = "layer" | "model" # model: the eligible layers' sparsity together
      require_smaller = bool                 # the packed weight must be smaller than the dense one
    [quantize]   modes = ["int8", "fp16"]    # optional: the --quantize modes whose result the hardware runs
                 qdq = "onnxruntime" | "tensorrt"   # the QDQ layout its compiler reads (default onnxruntime)
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxprune.core.bundled import data_dir, toml_files
from onnxprune.core.errors import Opt, OptionError, TargetError
from onnxprune.ops import all_specs
from onnxprune.prune.patterns import Pattern
from onnxprune.quantize.quantizer import QDQ_LAYOUTS, QUANTIZE_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
DTYPES = ("float64", "float32", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32", "int64")
EMIT_MODES = ("dense", "sparse-initializer", "portable")
FORMAT_PARAMS = {"nm": {"n": int, "m": int, "compact": bool}, "bsr": {"r": int, "c": int}, "bitmask": {}, "coo": {}}


@dataclass(frozen=True)
class Eligibility:
    """Per-layer rules: which layers of a model can run sparse on the target."""

    ops: tuple[str, ...]
    conv_kernels: tuple[tuple[int, ...], ...] = ()
    conv_stride_one: bool = False
    conv_no_padding: bool = False
    conv_groups_one: bool = False
    reduction_multiple: int = 1
    output_multiple: int = 1
    block_aligned: bool = False
    alignment: dict[str, dict[str, int]] = field(default_factory=dict)
    min_reduction: int = 0
    min_outputs: int = 0
    min_params: int = 0
    min_sparsity: float = 0.0
    min_sparsity_scope: str = "layer"
    require_smaller: bool = False

    def multiples(self, dtype: str) -> tuple[int, int]:
        """(reduction multiple, output multiple) for weights of `dtype`."""
        a = self.alignment.get(dtype, {})
        red = _lcm(self.reduction_multiple, a.get("reduction", 1))
        out = _lcm(self.output_multiple, a.get("outputs", 1))
        return red, out

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["ops"] = list(self.ops)
        d["conv_kernels"] = ["x".join(map(str, k)) for k in self.conv_kernels]
        return d


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    accelerates: bool
    pattern: Pattern
    dtypes: tuple[str, ...]
    format: str
    format_params: dict
    emit_modes: tuple[str, ...]
    default_emit: str
    eligibility: Eligibility
    details: str = ""
    references: tuple[str, ...] = ()
    converts: dict[str, str] = field(default_factory=dict)

    def prune_defaults(self) -> dict:
        """The [prune] options a job for this target takes where the user gives none: the target's
        pattern, and a sparsity that reaches its minimum sparsity (the global 0.5 default would leave
        every layer dense on a target that runs sparse only from 2/3 zeros)."""
        out: dict = {"pattern": str(self.pattern)}
        if self.pattern.fixed_sparsity is None and self.eligibility.min_sparsity > 0.5:
            out["sparsity"] = math.ceil(self.eligibility.min_sparsity * 100) / 100
        return out
    block_choices: tuple[str, ...] | None = None  # None: --block not accepted; ("any",): any RxC
    source: str = ""
    quantize_modes: tuple[str, ...] = ()  # --quantize modes the hardware runs (empty: not declared)
    qdq_layout: str = "onnxruntime"  # the QDQ layout its compiler reads

    # -- options -------------------------------------------------------------------------------
    def with_block(self, block: str | None) -> "Target":
        """This target with another block shape (the `--block RxC` option / the recipe key `block`)."""
        if block is None:
            return self
        if self.block_choices is None:
            raise TargetError(f"target {self.name}: ", Opt("target.block"), f" is not configurable (its pattern is "
                              f"{self.pattern}); leave ", Opt("target.block"),
                              " out or choose a block target (bsr-generic, xnnpack-bsr)")
        try:
            p = Pattern.parse(block)
        except OptionError:
            p = None
        if p is None or p.kind != "block":
            raise TargetError(f"target {self.name}: ", Opt("target.block"),
                              f" {block!r} is not a block; use RxC, e.g. 4x4 or 8x1")
        if "any" not in self.block_choices and str(p) not in self.block_choices:
            raise TargetError(f"target {self.name}: block {p} is not supported; use one of {', '.join(self.block_choices)}")
        params = dict(self.format_params)
        if self.format == "bsr":
            params.update(r=p.a, c=p.b)
        return replace(self, pattern=p, format_params=params)

    def with_options(self, options: dict | None) -> "Target":
        """Apply target options from a recipe: {"block": "8x1"}; other keys are rejected."""
        options = dict(options or {})
        unknown = sorted(set(options) - {"block"})
        if unknown:
            raise TargetError(f"target {self.name}: unknown target option {unknown[0]!r}; the only option is 'block'")
        return self.with_block(options.get("block"))

    # -- dtypes ----------------------------------------------------------------------------------
    def dtype_status(self, dtype: str) -> tuple[bool, str]:
        """(accepted, note): native dtypes have no note, converted ones say how the runtime handles them."""
        if dtype in self.dtypes:
            return True, ""
        if dtype in self.converts:
            return True, self.converts[dtype]
        return False, ""

    @property
    def pattern_text(self) -> str:
        return str(self.pattern)

    def describe(self) -> dict:
        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            "accelerates": self.accelerates, "pattern": str(self.pattern), "dtypes": list(self.dtypes),
            "converts": dict(self.converts), "format": self.format, "format_params": dict(self.format_params),
            "emit_modes": list(self.emit_modes), "default_emit": self.default_emit,
            "block_choices": list(self.block_choices) if self.block_choices is not None else None,
            "eligibility": self.eligibility.describe(), "references": list(self.references),
            "details": self.details.strip(), "source": self.source,
        }

    def render(self) -> str:
        """The full description, for `onnxprune targets show`."""
        e = self.eligibility
        params = ", ".join(f"{k}={v}" for k, v in self.format_params.items())
        lines = [f"{self.name}: {self.description}", "",
                 f"  runtime      {self.runtime}",
                 f"  runs sparse  {'yes (eligible layers)' if self.accelerates else 'no: storage only'}",
                 f"  pattern      {self.pattern}" + (f"  (--block: {', '.join(self.block_choices)})" if self.block_choices else ""),
                 f"  dtypes       {', '.join(self.dtypes)}"]
        for dt, note in self.converts.items():
            lines.append(f"  also {dt:<8}{note}")
        if self.quantize_modes:
            lines.append(f"  quantize     {', '.join(self.quantize_modes)} (QDQ layout {self.qdq_layout})")
        lines += [f"  format       {self.format}" + (f" ({params})" if params else ""),
                  f"  emit         {', '.join(self.emit_modes)} (default {self.default_emit})",
                  "  eligibility"]
        lines.append(f"    ops              {', '.join(e.ops)}")
        if e.conv_kernels:
            lines.append(f"    conv kernels     {', '.join('x'.join(map(str, k)) for k in e.conv_kernels)}")
        conv = [t for t, on in (("stride 1", e.conv_stride_one), ("no padding", e.conv_no_padding),
                                ("group 1", e.conv_groups_one)) if on]
        if conv:
            lines.append(f"    conv             {', '.join(conv)}")
        if e.reduction_multiple > 1 or e.output_multiple > 1:
            lines.append(f"    multiples        reduction {e.reduction_multiple}, outputs {e.output_multiple}")
        for dt, a in e.alignment.items():
            lines.append(f"    {dt:<16} reduction multiple of {a.get('reduction', 1)}, outputs multiple of {a.get('outputs', 1)}")
        if e.block_aligned:
            lines.append("    block aligned    matrix rows and columns multiples of the block")
        for k in ("min_reduction", "min_outputs", "min_params"):
            if getattr(e, k):
                lines.append(f"    {k.replace('_', ' '):<16} {getattr(e, k)}")
        if e.min_sparsity:
            scope = "all eligible layers together" if e.min_sparsity_scope == "model" else "each layer"
            lines.append(f"    min sparsity     {e.min_sparsity:.1%} ({scope})")
        if e.require_smaller:
            lines.append("    worth it         only where the packed weight is smaller than the dense one")
        if self.details.strip():
            lines += ["", *("  " + ln if ln else "" for ln in self.details.strip().splitlines())]
        if self.references:
            lines += ["", "  references"] + [f"    - {r}" for r in self.references]
        lines += ["", f"  file: {self.source}"]
        return "\n".join(lines)


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


# ---------------------------------------------------------------------------------------- reading

class _Table:
    """Typed access to one TOML table; every read key is recorded so unknown keys can be reported."""

    def __init__(self, file: str, data: dict, prefix: str = ""):
        self.file, self.data, self.prefix = file, data, prefix
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, problem: str) -> TargetError:
        return TargetError(f"{self.file}: key '{self.key(k)}' {problem}")

    def get(self, k: str, kind, default=None, required: bool = False):
        self.used.add(k)
        if k not in self.data:
            if required:
                raise TargetError(f"{self.file}: missing required key '{self.key(k)}' ({_KIND_TEXT.get(kind, kind)})")
            return default
        v = self.data[k]
        if kind is bool:
            ok = isinstance(v, bool)
        elif kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif kind is list:
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        else:
            ok = isinstance(v, kind)
        if not ok:
            raise self.fail(k, f"must be {_KIND_TEXT[kind]}, got {_show(v)}")
        return float(v) if kind is float else v

    def table(self, k: str, required: bool = False) -> "_Table | None":
        v = self.get(k, dict, None, required)
        return None if v is None else _Table(self.file, v, f"{self.key(k)}.")

    def choice(self, k: str, allowed, default=None, required: bool = False):
        v = self.get(k, str, default, required)
        if v is not None and v not in allowed:
            raise self.fail(k, f"is {v!r}; allowed: {', '.join(allowed)}")
        return v

    def choices(self, k: str, allowed, default=(), required: bool = False, nonempty: bool = True) -> tuple[str, ...]:
        v = self.get(k, list, None, required)
        if v is None:
            return tuple(default)
        if nonempty and not v:
            raise self.fail(k, f"is empty; give at least one of {', '.join(allowed)}")
        for x in v:
            if x not in allowed:
                raise self.fail(k, f"has {x!r}; allowed: {', '.join(allowed)}")
        return tuple(v)

    def int_at_least(self, k: str, low: int, default: int) -> int:
        v = self.get(k, int, default)
        if v < low:
            raise self.fail(k, f"must be an integer >= {low}, got {v}")
        return v

    def finish(self, allowed: tuple[str, ...] | None = None) -> None:
        extra = [k for k in self.data if k not in self.used]
        if extra:
            allowed = allowed or tuple(sorted(self.used))
            raise TargetError(f"{self.file}: unknown key '{self.key(extra[0])}'; allowed keys here: {', '.join(allowed)}")


_KIND_TEXT = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              list: "a list of strings", dict: "a table"}


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_TOP_KEYS = ("schema_version", "name", "description", "details", "runtime", "accelerates", "pattern", "dtypes",
             "references", "converts", "block", "format", "emit", "eligibility", "quantize")
_ELIG_KEYS = ("ops", "conv_kernels", "conv_stride_one", "conv_no_padding", "conv_groups_one", "reduction_multiple",
              "output_multiple", "block_aligned", "alignment", "min_reduction", "min_outputs", "min_params",
              "min_sparsity", "min_sparsity_scope", "require_smaller")


def parse_target(data: dict, file: str, stem: str | None = None) -> Target:
    """Validate a parsed TOML document and build the Target (errors name `file` and the key)."""
    t = _Table(file, data)
    version = t.get("schema_version", int, required=True)
    if version != SCHEMA_VERSION:
        raise t.fail("schema_version", f"is {version}; this onnxprune reads version {SCHEMA_VERSION}")
    name = t.get("name", str, required=True)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise t.fail("name", f"is {name!r}; use lowercase letters, digits, '-', '_' or '.'")
    if stem is not None and name != stem:
        raise t.fail("name", f"is {name!r} but the file is {stem}.toml; name the file after the target")
    description = t.get("description", str, required=True).strip()
    if not description or "\n" in description:
        raise t.fail("description", "must be one non-empty line (put the long text under 'details')")
    details = t.get("details", str, "")
    runtime = t.get("runtime", str, required=True)
    accelerates = t.get("accelerates", bool, required=True)
    pattern_text = t.get("pattern", str, required=True)
    try:
        pattern = Pattern.parse(pattern_text)
    except OptionError:
        raise t.fail("pattern", f"is {pattern_text!r}; allowed: unstructured, N:M with 0 < N < M (e.g. 2:4), RxC blocks (e.g. 4x4)") from None
    dtypes = t.choices("dtypes", DTYPES, required=True)
    references = tuple(t.get("references", list, []))

    converts: dict[str, str] = {}
    ct = t.table("converts")
    if ct is not None:
        for dt in list(ct.data):
            if dt not in DTYPES:
                raise ct.fail(dt, f"is not a dtype; allowed: {', '.join(DTYPES)}")
            if dt in dtypes:
                raise ct.fail(dt, "is already a native dtype (in 'dtypes'); remove it from [converts]")
            converts[dt] = ct.get(dt, str)
        ct.finish(DTYPES)

    block_choices = None
    bt = t.table("block")
    if bt is not None:
        raw = bt.get("choices", list, required=True)
        if not raw:
            raise bt.fail("choices", "is empty; list RxC blocks (e.g. \"4x1\") or [\"any\"]")
        for c in raw:
            if c != "any" and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", c):
                raise bt.fail("choices", f"has {c!r}; allowed: RxC blocks such as \"4x1\", or \"any\"")
        block_choices = tuple(raw)
        bt.finish(("choices",))
        if pattern.kind != "block":
            raise t.fail("block", f"is only allowed with a block pattern; the pattern is {pattern}")
        if "any" not in block_choices and str(pattern) not in block_choices:
            raise bt.fail("choices", f"does not include the default pattern {pattern}; add it")

    ft = t.table("format", required=True)
    fmt = ft.choice("name", tuple(FORMAT_PARAMS), required=True)
    params = _format_params(ft, fmt, pattern)
    ft.finish(("name", "params"))

    et = t.table("emit", required=True)
    modes = et.choices("modes", EMIT_MODES, required=True)
    default = et.choice("default", modes, required=True)
    et.finish(("modes", "default"))
    if "sparse-initializer" in modes and fmt != "coo":
        raise et.fail("modes", "has 'sparse-initializer', which stores COO: use it with format 'coo'")
    if "portable" in modes and fmt == "nm" and params.get("compact"):
        raise et.fail("modes", "has 'portable', but compact N:M metadata has no portable decoder; set compact = false")

    el = _eligibility(t.table("eligibility", required=True), dtypes, converts)
    quantize_modes, qdq_layout = (), "onnxruntime"
    qt = t.table("quantize")
    if qt is not None:
        quantize_modes = qt.choices("modes", QUANTIZE_MODES, required=True)
        qdq_layout = qt.choice("qdq", QDQ_LAYOUTS, "onnxruntime")
        qt.finish(("modes", "qdq"))
    t.finish(_TOP_KEYS)
    return Target(name=name, description=description, runtime=runtime, accelerates=accelerates, pattern=pattern,
                  dtypes=dtypes, format=fmt, format_params=params, emit_modes=modes, default_emit=default,
                  eligibility=el, details=details, references=references, converts=converts,
                  block_choices=block_choices, source=file, quantize_modes=quantize_modes, qdq_layout=qdq_layout)


def _format_params(ft: _Table, fmt: str, pattern: Pattern) -> dict:
    pt = ft.table("params")
    given = {}
    if pt is not None:
        spec = FORMAT_PARAMS[fmt]
        for k in list(pt.data):
            if k not in spec:
                allowed = ", ".join(spec) or "none"
                raise TargetError(f"{ft.file}: unknown key 'format.params.{k}'; format {fmt} takes: {allowed}")
            given[k] = pt.get(k, spec[k])
        pt.finish(tuple(spec))
    if fmt == "nm":
        if pattern.kind != "nm":
            raise ft.fail("name", f"is 'nm', which needs an N:M pattern; the pattern is {pattern}")
        n, m = given.get("n", pattern.a), given.get("m", pattern.b)
        if (n, m) != (pattern.a, pattern.b):
            raise TargetError(f"{ft.file}: key 'format.params' has n={n}, m={m} but the pattern is {pattern}; make them agree")
        compact = given.get("compact", False)
        if not compact and m & (m - 1):
            raise TargetError(f"{ft.file}: key 'format.params.m' is {m}; hardware N:M metadata needs M a power of two (or compact = true)")
        return {"n": n, "m": m, "compact": compact}
    if fmt == "bsr":
        if pattern.kind != "block":
            raise ft.fail("name", f"is 'bsr', which needs an RxC block pattern; the pattern is {pattern}")
        r, c = given.get("r", pattern.a), given.get("c", pattern.b)
        if (r, c) != (pattern.a, pattern.b):
            raise TargetError(f"{ft.file}: key 'format.params' has r={r}, c={c} but the pattern is {pattern}; make them agree")
        return {"r": r, "c": c}
    return {}


def _kernel(text: str) -> tuple[int, ...] | None:
    if re.fullmatch(r"[1-9]\d*(x[1-9]\d*)*", text):
        return tuple(int(x) for x in text.split("x"))
    return None


def sparse_ops() -> tuple[str, ...]:
    """Ops a target may run sparse: every registered op but the integer ones (viewed like a float op)."""
    return tuple(op for spec in all_specs() if spec.view_of is None for op in spec.op_types)


def _eligibility(et: _Table, dtypes: tuple[str, ...], converts: dict) -> Eligibility:
    ops = et.choices("ops", sparse_ops(), required=True)
    kernels = []
    for k in et.get("conv_kernels", list, []):
        kern = _kernel(k)
        if kern is None:
            raise et.fail("conv_kernels", f"has {k!r}; allowed: kernel shapes such as \"1x1\" or \"3x3\"")
        kernels.append(kern)
    alignment: dict[str, dict[str, int]] = {}
    at = et.table("alignment")
    if at is not None:
        for dt in list(at.data):
            if dt not in DTYPES:
                raise at.fail(dt, f"is not a dtype; allowed: {', '.join(DTYPES)}")
            if dt not in dtypes and dt not in converts:
                raise at.fail(dt, "names a dtype the target does not accept; add it to 'dtypes' or [converts]")
            sub = at.table(dt)
            alignment[dt] = {"reduction": sub.int_at_least("reduction", 1, 1), "outputs": sub.int_at_least("outputs", 1, 1)}
            sub.finish(("reduction", "outputs"))
        at.finish(DTYPES)
    min_sparsity = et.get("min_sparsity", float, 0.0)
    if not 0.0 <= min_sparsity < 1.0:
        raise et.fail("min_sparsity", f"must be a number in [0, 1), got {min_sparsity}")
    el = Eligibility(
        ops=ops, conv_kernels=tuple(kernels),
        conv_stride_one=et.get("conv_stride_one", bool, False), conv_no_padding=et.get("conv_no_padding", bool, False),
        conv_groups_one=et.get("conv_groups_one", bool, False),
        reduction_multiple=et.int_at_least("reduction_multiple", 1, 1),
        output_multiple=et.int_at_least("output_multiple", 1, 1),
        block_aligned=et.get("block_aligned", bool, False), alignment=alignment,
        min_reduction=et.int_at_least("min_reduction", 0, 0), min_outputs=et.int_at_least("min_outputs", 0, 0),
        min_params=et.int_at_least("min_params", 0, 0), min_sparsity=min_sparsity,
        min_sparsity_scope=et.choice("min_sparsity_scope", ("layer", "model"), "layer"),
        require_smaller=et.get("require_smaller", bool, False),
    )
    et.finish(_ELIG_KEYS)
    return el


# ------------------------------------------------------------------------------------- discovery

def builtin_dir() -> Path:
    """The folder of the bundled target files (installed package data, else the source checkout's targets/)."""
    return data_dir("targets_data")


def builtin_names() -> list[str]:
    return sorted(toml_files("targets_data"))


def read_target_file(path: str | Path) -> Target:
    """Load and validate one target file given by path."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"{path}: no such target file; give a .toml path or a target name ({', '.join(builtin_names())})")
    return _parse_bytes(path.read_bytes(), str(path), path.stem)


def _parse_bytes(raw: bytes, file: str, stem: str) -> Target:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TargetError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start}); save the target file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{file}: not valid TOML ({' '.join(str(e).split())}); fix the syntax") from None
    return parse_target(data, file, stem)


def load_target(name_or_path: str | Path, block: str | None = None, options: dict | None = None) -> Target:
    """A bundled target by name (`onnxprune targets` lists them) or a target file by path, validated.

    `block` ("8x1") or `options` ({"block": "8x1"}, the recipe form) choose the block of targets
    whose [block] section allows it.

    Example::

        target = load_target("nvidia-2to4")
        print(target.pattern, target.format)
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        target = read_target_file(text)
    else:
        d = builtin_dir()
        entry = d / f"{text}.toml"
        if not entry.is_file():
            known = ", ".join(builtin_names()) or "none found"
            raise TargetError(f"unknown target {text!r}; known targets: {known} (or give the path of a .toml target file)")
        target = _parse_bytes(entry.read_bytes(), f"targets/{text}.toml", text)
    if options:
        target = target.with_options(options)
    return target.with_block(block)


def all_targets() -> list[Target]:
    """Every bundled target, validated (a broken file raises)."""
    return [load_target(n) for n in builtin_names()]
