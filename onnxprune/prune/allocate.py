"""Per-layer sparsity: uniform, global or allocated per weight, per-name overrides and skips (globs), a minimum size."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping

from onnxprune.analyze.weights import Weight
from onnxprune.core.errors import OptionError
from onnxprune.prune.patterns import Pattern

DEFAULT_MIN_PARAMS = 1024


@dataclass
class Allocation:
    """targets: weight -> fixed sparsity; global_keys: weights ranked together; skipped: weight -> reason."""

    targets: dict[str, float] = field(default_factory=dict)
    global_keys: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def parse_override(text: str) -> tuple[str, float]:
    glob, sep, value = text.rpartition("=")
    try:
        s = float(value)
    except ValueError:
        s = -1.0
    if not sep or not glob or not 0 <= s < 1:
        raise OptionError(f"override {text!r}: use GLOB=SPARSITY with 0 <= SPARSITY < 1, e.g. 'conv1*=0.3'")
    return glob, s


def allocate(
    weights: list[Weight],
    sparsity: float,
    pattern: Pattern,
    scope: str = "layer",
    overrides: list[tuple[str, float]] = (),
    skip: list[str] = (),
    min_params: int = DEFAULT_MIN_PARAMS,
    nm_remainder: str = "skip",
    exclude: Mapping[str, str] | None = None,
    allocated: Mapping[str, float] | None = None,
) -> Allocation:
    """Per weight: its target sparsity, global ranking, or why it is skipped (`exclude`: weight key ->
    the reason the job leaves it dense, e.g. not eligible for the target; `allocated`: weight key ->
    its sparsity from a non-uniform allocation, in place of `sparsity`; overrides come first)."""
    if scope not in ("layer", "global"):
        raise OptionError(f"scope {scope!r}: use layer or global")
    if nm_remainder not in ("skip", "pad"):
        raise OptionError(f"nm remainder {nm_remainder!r}: use skip or pad")
    alloc = Allocation()
    exclude = exclude or {}
    for w in weights:
        if w.key in exclude:
            alloc.skipped[w.key] = exclude[w.key]
            continue
        names = [w.key] + [u.node for u in w.uses]
        if any(fnmatch.fnmatchcase(n, g) for g in skip for n in names):
            alloc.skipped[w.key] = "skipped by --skip"
            continue
        override = next((s for g, s in reversed(list(overrides)) if any(fnmatch.fnmatchcase(n, g) for n in names)), None)
        if override is None and w.params < min_params:
            alloc.skipped[w.key] = f"{w.params} params < minimum {min_params} (tiny tensors stay dense)"
            continue
        if pattern.kind == "nm" and w.group_axis_len % pattern.b and nm_remainder == "skip":
            alloc.skipped[w.key] = (f"reduction length {w.group_axis_len} is not a multiple of {pattern.b} "
                                    f"(use --nm-remainder pad to pad the last group)")
            continue
        if override is not None:
            if override > 0:
                alloc.targets[w.key] = override
            else:
                alloc.skipped[w.key] = "override sparsity 0"
        elif allocated and w.key in allocated:
            if allocated[w.key] > 0:
                alloc.targets[w.key] = allocated[w.key]
            else:
                alloc.skipped[w.key] = "left dense by the allocation"
        elif scope == "global" and pattern.kind != "nm":
            alloc.global_keys.append(w.key)
        else:
            alloc.targets[w.key] = sparsity
    return alloc
