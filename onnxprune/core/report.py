"""Output shared by every command: JSON reports (versioned) and plain terminal tables."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import click
import numpy as np

from onnxprune.core.atomic import atomic_write_text

SCHEMA_VERSION = 1
STDOUT = "-"  # a --report path that means standard output


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def to_json(report: dict, kind: str) -> str:
    """Serialise a report with its schema header: {"schema": "onnxprune.<kind>", "version": N, ...}."""
    body = {"schema": f"onnxprune.{kind}", "version": SCHEMA_VERSION, **report}
    return json.dumps(_jsonable(body), indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike, report: dict, kind: str) -> None:
    """Write the report to `path`, or to standard output when `path` is "-"."""
    if is_stdout(path):
        click.echo(to_json(report, kind), nl=False)
    else:
        atomic_write_text(path, to_json(report, kind))


def is_stdout(path: str | os.PathLike | None) -> bool:
    """Is this report path "-" (stdout)? Then human-readable output goes to stderr, so stdout is pure JSON."""
    return path is not None and str(path) == STDOUT


def make_parent(path: str | os.PathLike | None) -> None:
    """Create the folder an output is written into if it is missing, and say so on stderr."""
    if path is None or is_stdout(path):
        return
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(parents=True)
        click.echo(f"onnxprune: created folder {parent}", err=True)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)  # nan, inf, -inf
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right_align: bool = True) -> str:
    """A plain monospace table; numbers right-aligned."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    def fmt(row):
        out = []
        for i, (c, w) in enumerate(zip(row, widths)):
            out.append(c.ljust(w) if i == 0 or not right_align else c.rjust(w))
        return "  ".join(out).rstrip()
    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)
