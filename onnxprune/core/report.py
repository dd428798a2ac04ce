"""Output shared by every command: JSON reports (versioned) and plain terminal tables."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

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
        sys.stdout.write(to_json(report, kind))
        sys.stdout.flush()
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
        print(f"onnxprune: created folder {parent}", file=sys.stderr, flush=True)


def scaled(n: int | None, units: tuple[tuple[str, float], ...], small: str = "{:,}", sep: str = " ") -> str:
    """`n` in the largest of `units` it reaches, two decimals (`3.14 MB`, `2.16M`); below them `small`
    formatted; "?" when unknown."""
    if n is None:
        return "?"
    for unit, scale in units:
        if n >= scale:
            return f"{n / scale:.2f}{sep}{unit}"
    return small.format(n)


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return str(v)  # nan, inf, -inf
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


_NUMBER = re.compile(r"^[-+<>=~ ]*[\d,]*\.?\d+(e[-+]?\d+)?\s*(%|x|s|[kMG]B?)?$")
ELLIPSIS = "…"


def _numeric(cells: list[str]) -> bool:
    filled = [c for c in cells if c not in ("", "-", "?")]
    return bool(filled) and all(_NUMBER.match(c) for c in filled)


def terminal_width() -> int | None:
    """Columns to fit tables in: $COLUMNS, else the terminal's width when stdout or stderr is one, else
    None (a pipe or a log file gets every character)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.isatty():
                return shutil.get_terminal_size().columns
        except (AttributeError, ValueError):
            continue
    return None


def clip(text: str, width: int) -> str:
    """`text` in at most `width` characters: whole if it fits, else its start and end around an ellipsis."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head = width // 2
    return text[:head] + ELLIPSIS + text[len(text) - (width - 1 - head):]


def _fold(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width`: prose wrapped at spaces, names (no spaces) broken after
    '/', '.' or '_'; only a single piece longer than a line is clipped, with an ellipsis."""
    if len(text) <= width:
        return [text]
    if " " in text.strip():
        pieces = [w + " " for w in text.split()]
    else:
        pieces = re.findall(r"[^/._]*[/._]|[^/._]+$", text)
    lines, line = [], ""
    for piece in pieces:
        if line and len(line + piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += piece
    lines.append(line.rstrip())
    return [clip(x, width) for x in lines if x]


def fill(text: str, indent: str = "  ") -> str:
    """A long line of prose wrapped to `terminal_width()` (continuation lines indented); whole in a pipe."""
    width = terminal_width()
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False)) if width and len(text) > width else text


def _fit(widths: list[int], natural: list[int], right: list[bool], headers: Sequence[str], width: int) -> list[int]:
    """Narrow the text columns (widest first, never below their header or 10 characters) until the row fits."""
    widths = list(widths)
    floor = [len(h) if right[i] else max(len(h), min(natural[i], 10)) for i, h in enumerate(headers)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        shrinkable = [i for i in range(len(widths)) if not right[i] and widths[i] > floor[i]]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    return widths


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right_align: bool | None = None,
          width: int | None = None, legend: dict[str, str] | None = None, below: str | None = None) -> str:
    """The one table renderer: text columns left-aligned, numbers right-aligned (with thousands
    separators), fitted to `width` (default `terminal_width()`): free text wraps at spaces, names at
    '/', '.' or '_' (a piece that still does not fit is clipped with an ellipsis). Where the first
    column would get fewer than 24 characters, it goes on a line of its own above the other columns
    of its row; the column named `below` (free text such as a description) goes under its row instead,
    when the table does not fit. `legend` explains columns under the table; `right_align=False` aligns
    every column left."""
    cells = [[_cell(c) for c in row] for row in rows]
    width = terminal_width() if width is None else width
    under = None
    if below is not None and width:
        natural = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        if sum(natural) + 2 * (len(natural) - 1) > width:
            under = list(headers).index(below)
    keep = [i for i in range(len(headers)) if i != under]
    head, blocks = _layout([headers[i] for i in keep], [[r[i] for i in keep] for r in cells], right_align, width)
    lines = list(head)
    for row, block in zip(cells, blocks):
        lines += block
        if under is not None:
            lines += textwrap.wrap(row[under], width, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False)
    return "\n".join(lines + _legend(legend, width))


def _layout(headers: Sequence[str], cells: list[list[str]], right_align: bool | None,
            width: int | None) -> tuple[list[str], list[list[str]]]:
    """(header lines, the lines of each row) of a table fitted to `width` (see `table`)."""
    cols = list(zip(*cells)) if cells else [()] * len(headers)
    right = [right_align is not False and _numeric(list(c)) for c in cols]
    natural = [max([len(h)] + [len(x) for x in c]) for h, c in zip(headers, cols)]
    widths, stacked = list(natural), False
    if width and sum(natural) + 2 * (len(natural) - 1) > width:
        widths = _fit(natural, natural, right, headers, width)
        if len(headers) > 2 and widths[0] < min(natural[0], 24):  # the first column on its own line
            stacked = True
            widths = [width] + _fit(natural[1:], natural[1:], right[1:], headers[1:], width - 2)

    def join(row: Sequence[str], ws: list[int], rs: list[bool]) -> list[str]:
        parts = [_fold(c, w) for c, w in zip(row, ws)]
        return ["  ".join((p[k] if k < len(p) else "").rjust(w) if r else (p[k] if k < len(p) else "").ljust(w)
                          for p, w, r in zip(parts, ws, rs)).rstrip()
                for k in range(max(len(p) for p in parts))]

    def lines_of(row: Sequence[str]) -> list[str]:
        if stacked:
            return _fold(row[0], width) + ["  " + line for line in join(row[1:], widths[1:], right[1:])]
        return join(row, widths, right)

    rule = "  ".join("-" * w for w in (widths[1:] if stacked else widths))
    return lines_of(list(headers)) + [("  " + rule) if stacked else rule], [lines_of(r) for r in cells]


def _legend(legend: dict[str, str] | None, width: int | None) -> list[str]:
    lines = [""] if legend else []
    for name, text in (legend or {}).items():
        lines += textwrap.wrap(f"{name}: {text}", width or 10**6, subsequent_indent="  ")
    return lines
