"""A model's footprint (bytes on disk, params, non-zeros, MACs) and the before/after line printed
after every write (`prune`, `run`, `pack`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxprune.core.model import Model
from onnxprune.core.report import scaled
from onnxprune.ops import spec_for
from onnxprune.pack.eligibility import mac_shapes


@dataclass(frozen=True)
class Footprint:
    """What one model costs: `disk_bytes` (model file + its external data files; None in memory),
    `params` and `nonzeros` over every constant tensor, `macs` of the main graph's ops whose count is
    known (None if none is), `macs_partial` when some op's count is unknown (then `macs` is a floor)."""

    disk_bytes: int | None
    params: int
    nonzeros: int
    macs: int | None
    macs_partial: bool = False


def footprint(model: Model, path: str | os.PathLike | None = None,
              input_shapes: dict[str, tuple[int, ...]] | None = None) -> Footprint:
    """Measure `model` (as saved at `path`, default its own path). Reads every constant once."""
    path = Path(path) if path is not None else model.path
    disk = None
    if path is not None and Path(path).exists():
        disk = Path(path).stat().st_size + sum(f.stat().st_size for f in model.external_files() if f.exists())
    params = nonzeros = 0
    for ref in model.tensors():
        values = model.read(ref.key)
        params += values.size
        nonzeros += int(np.count_nonzero(values))
    return Footprint(disk, params, nonzeros, *_macs(model, input_shapes))


def _macs(model: Model, input_shapes) -> tuple[int | None, bool]:
    """(multiply-accumulates of the main graph's ops as their specs count them, whether some op's count
    is unknown); (None, True) when shape inference fails."""
    try:
        shapes, _ = mac_shapes(model, input_shapes)
    except Exception:  # noqa: BLE001 - a summary, not a check: unknown MACs print as "?"
        return None, True
    consts = {r.proto.name: tuple(r.proto.dims) for r in model.tensors() if not r.graph}
    total, unknown, known = 0, False, False
    for node in model.proto.graph.node:
        spec = spec_for(node.op_type, node.domain)
        if spec is None:
            continue
        count = spec.macs(node, lambda name: consts.get(name) or shapes.get(name))
        if count is None:
            unknown = True
        else:
            total, known = total + count, True
    return (total if known else None), unknown


BYTES = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
COUNTS = (("G", 1e9), ("M", 1e6))


def summary_line(before: Footprint, after: Footprint, where: str | os.PathLike) -> str:
    """`wrote OUT: 3.14 MB -> 1.62 MB on disk, params ..., non-zeros ... (49.9% zeros), MACs ...`."""
    zeros = 1 - after.nonzeros / after.params if after.params else 0.0
    return (f"wrote {where}: {scaled(before.disk_bytes, BYTES, '{} B')} -> {scaled(after.disk_bytes, BYTES, '{} B')} "
            f"on disk, params {scaled(before.params, COUNTS)} -> {scaled(after.params, COUNTS)}, "
            f"non-zeros {scaled(before.nonzeros, COUNTS)} -> {scaled(after.nonzeros, COUNTS)} ({zeros:.1%} zeros), "
            f"MACs {_macs_text(before)} -> {_macs_text(after)}")


def _macs_text(f: Footprint) -> str:
    return (">=" if f.macs_partial and f.macs is not None else "") + scaled(f.macs, COUNTS)
