"""Recipes: a whole job as data (TOML), schema-validated.

The `prune` flags and a recipe file both become a `Recipe`; `jobs.run.run_recipe` runs it. So flags and
recipes cannot drift: `prune ... --dump-recipe F` followed by `run F` gives the same bytes.

Sections and keys (relative paths are taken from the current directory, like CLI flags):

  [job]     name, description
  [input]   model
  [prune]   the PruneOptions fields (the keys are generated from them): sparsity, pattern, scope,
            criterion, overrides, skip, min_params, nm_remainder, steps, initial_sparsity, t0, dt,
            hooks, fold_constants, calib_samples, sequential, repair, round_to, reinit
  [data]    calibration, evaluation, labels, samples, seed, shapes, int_ranges
  [check]   enabled, the thresholds (min_cosine, max_rel_l2, min_top1_agreement,
            max_accuracy_drop, atol, rtol, min_snr_db, max_abs, min_exact_match,
            output_thresholds), batch_size, provider, threads, allow_guessed_shapes
  [target]  name (a targets/ file or path), emit, block, enforce, out (artifact folder);
            without prune.pattern, pruning uses the target's pattern
  [output]  model, report, masks, masks_in, external_data
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from onnxprune.core.bundled import toml_files
from onnxprune.core.errors import OnnxPruneError, OptionError, recipe_key
from onnxprune.jobs.prune_job import PruneOptions, build_pipeline, option_fields
from onnxprune.pack.targets import load_target

_FLOAT, _INT, _BOOL, _STR, _STRS = (int, float), int, bool, str, list
_KINDS = {float: _FLOAT, int: _INT, bool: _BOOL, str: _STR, list: _STRS}  # a PruneOptions field's type -> key kind

SCHEMA: dict[str, dict[str, Any]] = {
    "job": {"name": _STR, "description": _STR},
    "input": {"model": _STR},
    "prune": {name: _KINDS[kind] for name, kind in option_fields().items()},
    "data": {"calibration": _STR, "evaluation": _STR, "labels": _STR, "samples": _INT, "seed": _INT,
             "shapes": _STRS, "int_ranges": _STRS},
    "check": {"enabled": _BOOL, "min_cosine": _FLOAT, "max_rel_l2": _FLOAT, "min_top1_agreement": _FLOAT,
              "max_accuracy_drop": _FLOAT, "atol": _FLOAT, "rtol": _FLOAT, "min_snr_db": _FLOAT, "max_abs": _FLOAT,
              "min_exact_match": _FLOAT, "output_thresholds": _STRS, "batch_size": _INT, "provider": _STR,
              "threads": _INT, "allow_guessed_shapes": _BOOL},
    "target": {"name": _STR, "emit": _STR, "block": _STR, "enforce": _BOOL, "out": _STR},
    "output": {"model": _STR, "report": _STR, "masks": _STR, "masks_in": _STR, "external_data": _BOOL},
}


@dataclass
class Recipe:
    prune: PruneOptions = field(default_factory=PruneOptions)
    job: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    source: str = "<flags>"

    def to_dict(self) -> dict:
        """The resolved recipe, without empty values (what --dump-recipe writes)."""
        out: dict[str, dict] = {}
        for section in SCHEMA:
            values = self.prune.to_dict() if section == "prune" else getattr(self, section)
            kept = {k: v for k, v in values.items() if v is not None and v != [] and k in SCHEMA[section]}
            if kept:
                out[section] = kept
        return out

    def dumps(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def sha256(self) -> str:
        return hashlib.sha256(self.dumps().encode("utf-8", "surrogateescape")).hexdigest()  # paths need not be UTF-8

    def model_part(self) -> str:
        """The sections that determine the output model's bytes (not paths of outputs or checks)."""
        full = self.to_dict()
        return tomli_w.dumps({k: full[k] for k in ("prune", "data") if k in full})


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Line number of `key` in `[section]` (or of the section header), for error messages."""
    current = None
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if m := re.fullmatch(r"\[\s*([A-Za-z0-9_.-]+)\s*\]", s):
            current = m[1]
            if key is None and current == section:
                return no
        elif current == section and key is not None and re.match(rf"{re.escape(key)}\s*=", s):
            return no
    return None


def _err(source: str, text: str, section: str, key: str | None, what: str) -> OptionError:
    line = _line_of(text, section, key)
    where = f"{source}:{line}" if line else source
    name = f"{section}.{key}" if key else f"[{section}]"
    return OptionError(f"{where}: {name}: {what}")


def _check_type(value: Any, kind: Any) -> bool:
    if kind is _BOOL:
        return isinstance(value, bool)
    if kind is _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


_KIND_NAMES = {_BOOL: "true or false", _INT: "an integer", _FLOAT: "a number", _STRS: "a list of strings",
               _STR: "a string"}


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def from_dict(data: dict, source: str = "<recipe>", text: str = "") -> Recipe:
    """Validate a parsed recipe; every error names the file, line and key."""
    recipe = Recipe(source=source)
    prune: dict[str, Any] = {}
    for section, values in data.items():
        if section not in SCHEMA:
            raise _err(source, text, section, None, f"unknown section; use one of {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise _err(source, text, section, None, "must be a table")
        for key, value in values.items():
            kind = SCHEMA[section].get(key)
            if kind is None:
                raise _err(source, text, section, key, f"unknown key; [{section}] takes {', '.join(SCHEMA[section])}")
            if not _check_type(value, kind):
                raise _err(source, text, section, key, f"must be {_KIND_NAMES[kind]}, got {value!r}")
            if section == "prune":
                prune[key] = float(value) if kind is _FLOAT else value
            else:
                getattr(recipe, section)[key] = value
    if recipe.target.get("name") and "pattern" not in prune:

        try:
            prune["pattern"] = str(load_target(recipe.target["name"], block=recipe.target.get("block")).pattern)
        except OnnxPruneError as e:
            raise _err(source, text, "target", "name", e.render(recipe_key)) from e
    try:
        recipe.prune = PruneOptions(**prune)

        build_pipeline(recipe.prune)  # validates values (pattern, scope, schedule, hooks)
    except OptionError as e:
        what = e.render(recipe_key)
        key = next((o.name for o in e.options if o.key.startswith("prune.") and o.name in prune), None)
        key = key or next((k for k in prune if k.replace("_", "-") in what or k in what), None)
        line = _line_of(text, "prune", key) if key else _line_of(text, "prune", None)
        raise OptionError(f"{source}:{line}: prune{'.' + key if key else ''}: {what}" if line
                          else f"{source}: {what}") from e
    return recipe


def find_recipe(name_or_path: str) -> Path:
    """A recipe file by path, or a shipped recipe by name (passes/NAME.toml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise OptionError(f"recipe {name_or_path!r}: no such file or shipped recipe; shipped: {', '.join(sorted(shipped))}")


def shipped_recipes() -> dict[str, Path]:
    return toml_files("recipes")


def load_recipe(name_or_path: str, sets: list[str] = ()) -> Recipe:
    """Read and validate a recipe; `sets` are `section.key=value` overrides (TOML values)."""
    path = find_recipe(name_or_path)
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"{path}: not valid TOML ({e})") from e
    for item in sets:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not key:
            raise OptionError(f"--set {item!r}: use section.key=value, e.g. prune.sparsity=0.6")
        data.setdefault(section, {})[key] = _parse_value(value.strip())
    return from_dict(data, str(path), text)
