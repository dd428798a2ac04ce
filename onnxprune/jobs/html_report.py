"""A report worth opening: one self-contained HTML page rendered from a JSON report dict.

`write_html(report, path)` takes the dict a command writes with `--report` (prune, check, sweep, and
kinds it does not know) and shows each section only where the report has its data: sizes per stage,
the per-layer table (sparsity, pattern, params, MACs, eligibility per target, skip reasons) and a
sparsity bar chart, channel groups, the target's packing, parity per output with thresholds and the
verdict, sweep curves with the threshold and the chosen level, any other section generically (a
layers x levels matrix as a heatmap, a list of records as a table and a curve), and the recipe that
reproduces the run. CSS is inline and plots are PNG data URIs: no script and nothing fetched. Every
string from the report is HTML-escaped (node names come from the model).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from typing import Any, Iterable, Sequence

import tomli_w

from onnxprune import __version__
from onnxprune.core.atomic import atomic_write_text
from onnxprune.core.errors import Opt
from onnxprune.jobs import plots

# keys the sections below render; any other top-level key goes to the generic renderer
_KNOWN = {"schema", "version", "options", "options_sha256", "weights", "totals", "passes", "speed_note", "target",
          "input", "output", "recipe", "recipe_sha256", "parity", "structured", "layers", "sizes", "points",
          "max_passing", "error", "model", "inputs", "thresholds", "passed", "original", "candidate", "run",
          "outputs", "failures", "eligibility_by_target"}
_X_NAMES = ("level", "sparsity", "step", "iteration", "trial", "round", "index")  # a trace's x column, by preference

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1c2833;background:#f4f6f7}
nav a{margin-right:4px}main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5d8dc;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
section{background:#fff;border:1px solid #e5e8e8;border-radius:6px;padding:4px 16px 14px;margin:14px 0}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #eaeded;padding:3px 8px;vertical-align:top;text-align:left}
th{background:#f8f9f9;position:sticky;top:0;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{overflow-wrap:anywhere;max-width:420px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.scroll{overflow-x:auto;max-height:640px;overflow-y:auto}
.verdict{display:inline-block;padding:6px 14px;border-radius:4px;font-weight:700;color:#fff;margin:6px 0}
.pass{background:#1e8449}.fail{background:#c0392b}.info{background:#5d6d7e}
td.ok{color:#1e8449;font-weight:600}td.no{color:#c0392b}td.dim{color:#7f8c8d}
pre{background:#f8f9f9;border:1px solid #e5e8e8;padding:10px;overflow-x:auto;font-size:12px}
.note{color:#566573;font-size:13px}img{max-width:100%;height:auto;display:block;margin:8px 0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:6px 0}dt{color:#566573}dd{margin:0;overflow-wrap:anywhere}
"""


def write_html(report: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Render `report` (a JSON report dict, as a command writes it with --report) to one self-contained
    HTML file at `path`, written atomically. Needs matplotlib (`pip install 'onnxprune[plot]'`).

    >>> write_html(json.load(open("r.json")), "report.html")  # doctest: +SKIP
    """
    require_plotting()
    atomic_write_text(path, render_html(json.loads(json.dumps(report, default=_plain)), title))


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays as the JSON report stores them."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def require_plotting() -> None:
    """Fail (exit 2, one line) before any work when --html cannot be rendered: matplotlib is missing."""
    plots.pyplot(Opt("output.html"))


def report_kind(report: dict) -> str:
    """prune, parity, sweep, pack, ... from the schema, else from the sections present."""
    schema = str(report.get("schema", ""))
    if schema.startswith("onnxprune."):
        return schema.partition(".")[2]
    if "points" in report:
        return "sweep"
    if "outputs" in report and "passed" in report:
        return "parity"
    if "weights" in report or "structured" in report:
        return "prune"
    return "report"


def render_html(report: dict, title: str | None = None) -> str:
    """The page as text (see the module docstring)."""
    kind = report_kind(report)
    subject = report.get("input") or report.get("model") or report.get("candidate") or ""
    title = title or f"onnxprune {kind} report" + (f": {os.path.basename(str(subject))}" if subject else "")
    parts = [_header(report, kind, title)]
    parts += [s for s in (_sizes(report), _layers(report), _structured(report), _target(report.get("target")),
                          _parity(report), _sweep(report)) if s]
    parts += [_generic(k, v, report) for k, v in report.items() if k not in _KNOWN and v not in (None, [], {})]
    parts += [s for s in (_passes(report.get("passes")), _recipe(report), _options(report)) if s]
    links = re.findall(r"<section id='([^']*)'><h2>([^<]*)</h2>", "\n".join(parts))
    if links:
        parts.insert(1, "<nav class=\"note\">" + " · ".join(f"<a href=\"#{a}\">{t}</a>" for a, t in links) + "</nav>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"generator\" content=\"onnxprune {_e(__version__)}\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><main>\n" + "\n".join(parts) +
            f"\n<p class=\"note\">Written by onnxprune {_e(__version__)} from the {_e(kind)} report; "
            "self-contained (no scripts, nothing fetched).</p></main></body></html>\n")


# ------------------------------------------------------------------------------------ building blocks

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    """A cell value as text: thousands separators, 4 significant digits, yes/no, '-' for missing."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else _fmt(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Cell:
    """A table cell with a CSS class (n: number, name: a model name) and an optional tooltip."""

    def __init__(self, text: str, cls: str = "", tip: str = ""):
        self.text, self.cls, self.tip = text, cls, tip


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], name_cols: Sequence[int] = (0,)) -> str:
    rows = list(rows)
    numeric = [bool(rows) and all(_is_num(r[i]) or r[i] is None or (isinstance(r[i], Cell) and r[i].cls == "n")
                                  for r in rows) for i in range(len(headers))]
    out = ["<div class=\"scroll\"><table><thead><tr>"]
    out += [("<th class='n'>" if numeric[i] else "<th>") + f"{_e(h)}</th>" for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for i, v in enumerate(r):
            if isinstance(v, Cell):
                cls, text, tip = v.cls, v.text, v.tip
            else:
                cls, text, tip = "n" if numeric[i] else ("name" if i in name_cols else ""), _fmt(v), ""
            attrs = (f" class=\"{cls}\"" if cls else "") + (f" title=\"{_e(tip)}\"" if tip else "")
            out.append(f"<td{attrs}>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _img(png: bytes, alt: str) -> str:
    return f"<img alt=\"{_e(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\">"


def _section(title: str, body: str, anchor: str = "") -> str:
    opening = f"<section id='{_e(anchor)}'>" if anchor else "<section>"
    return f"{opening}<h2>{_e(title)}</h2>\n{body}\n</section>"


def _facts(items: Iterable[tuple[str, Any]]) -> str:
    rows = [f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in items if v not in (None, "", [], {})]
    return f"<dl>{''.join(rows)}</dl>" if rows else ""


def _note(text: str) -> str:
    return f"<p class=\"note\">{_e(text)}</p>"


# ------------------------------------------------------------------------------------ sections

def _verdict(report: dict, kind: str) -> str:
    parity = report.get("parity") if isinstance(report.get("parity"), dict) else (
        report if kind == "parity" else None)
    if parity is not None and "passed" in parity:
        failures = parity.get("failures") or []
        word = "PASS" if parity["passed"] else "FAIL"
        text = f"{word}: parity gate" + (f" ({len(failures)} check(s) failed)" if failures else "")
        return f"<div class=\"verdict {'pass' if parity['passed'] else 'fail'}\">{_e(text)}</div>"
    if isinstance(report.get("passed"), bool):  # a kind this module does not know, with a verdict
        return f"<div class=\"verdict {'pass' if report['passed'] else 'fail'}\">{'PASS' if report['passed'] else 'FAIL'}</div>"
    if kind == "sweep" and "points" in report:
        chosen = plots.chosen_level(report["points"], report.get("max_passing"))
        text = (f"highest passing sparsity: {chosen:g}" if chosen is not None
                else "no level passes the gate")
        return f"<div class=\"verdict {'pass' if chosen is not None else 'fail'}\">{_e(text)}</div>"
    return ""


def _header(report: dict, kind: str, title: str) -> str:
    opts = report.get("options") or {}
    facts = [("input", report.get("input") or report.get("model")), ("output", report.get("output")),
             ("pattern", opts.get("pattern")), ("requested sparsity", opts.get("sparsity")),
             ("criterion", opts.get("criterion")), ("repair", opts.get("repair") if opts.get("repair") != "none" else None),
             ("scope", opts.get("scope"))]
    t = report.get("totals")
    if isinstance(t, dict) and "pruned_params" in t:
        facts.append(("pruned", f"{t['pruned_params']:,} of {t['prunable_params']:,} prunable params "
                                f"({_pct(t.get('sparsity_of_prunable'))}; {_pct(t.get('sparsity_of_selected'))} "
                                "of the selected weights)"))
    s = report.get("structured")
    if isinstance(s, dict) and "params_before" in s:
        facts.append(("channels", f"{s['channels_before']:,} -> {s['channels_after']:,}"))
        facts.append(("params", f"{s['params_before']:,} -> {s['params_after']:,} ({s['params_ratio']:.3f}x)"))
        if s.get("macs_before"):
            facts.append(("MACs", f"{s['macs_before']:,} -> {s['macs_after']:,} ({s['macs_ratio']:.3f}x)"))
    if report.get("error"):
        facts.append(("error", report["error"]))
    body = f"<h1>{_e(title)}</h1>{_verdict(report, kind)}{_facts(facts)}"
    if report.get("speed_note"):
        body += _note(report["speed_note"])
    return f"<section>{body}</section>"


def _sizes(report: dict) -> str:
    sizes = report.get("sizes")
    if not isinstance(sizes, list) or not sizes:
        return ""
    first = sizes[0].get("bytes")
    rows = [(Cell(s.get("stage", ""), ""), s.get("bytes"),
             Cell(f"{s['bytes'] / first:.3f}x" if first and _is_num(s.get("bytes")) else "-", "n"),
             s.get("params"), s.get("nonzero"), Cell(s.get("path", ""), "name")) for s in sizes]
    return _section("Sizes per stage", _table(["stage", "bytes on disk", "vs first", "params", "non-zeros", "file"],
                                              rows, name_cols=()) +
                    _note("Bytes on disk count the model file and its external data files; params and non-zeros "
                          "count the elements of every stored constant."), "sizes")


def _layer_rows(report: dict) -> list[dict]:
    """Per-weight rows: the `layers` details where the report has them, else the prune report's `weights`."""
    if isinstance(report.get("layers"), list):
        return report["layers"]
    patterns: dict[str, str] = {}
    for p in report.get("passes") or []:
        for key, rec in (p.get("weights") or {}).items():
            if isinstance(rec, dict) and rec.get("pattern"):
                patterns[key] = rec["pattern"]
    return [{"weight": w["name"], "op": w.get("op"), "params": w.get("params"), "sparsity": w.get("sparsity"),
             "pattern": patterns.get(w["name"], "dense" if w.get("skipped") else None),
             "skipped": w.get("skipped")} for w in report.get("weights") or []]


def _layers(report: dict) -> str:
    rows = _layer_rows(report)
    if not rows:
        return ""
    targets = list(dict.fromkeys(t for r in rows for t in (r.get("targets") or {})))
    has_macs = any(r.get("macs") is not None for r in rows)
    headers = ["weight", "nodes", "op", "pattern", "params", "sparsity"] + (["MACs"] if has_macs else [])
    headers += [f"{t}" for t in targets] + ["skip reason / note"]
    body_rows = []
    for r in rows:
        nodes = ", ".join(r.get("nodes") or []) or "-"
        cells: list[Any] = [Cell(r["weight"], "name"), Cell(nodes, "name"), r.get("op") or "-",
                            r.get("pattern") or "-", r.get("params"), Cell(_pct(r.get("sparsity")), "n")]
        if has_macs:
            cells.append(Cell(_fmt(r.get("macs")), "n", r.get("macs_note") or ""))
        for t in targets:
            e = (r.get("targets") or {}).get(t)
            if e is None:
                cells.append(Cell("-", "dim"))
            elif e.get("runs_sparse"):
                cells.append(Cell("sparse", "ok", "runs sparse on " + t))
            elif e.get("packed"):
                cells.append(Cell("packed", "ok", "stored packed; runs dense on " + t))
            else:
                codes = ", ".join(dict.fromkeys(x.get("code", "") for x in e.get("reasons") or [])) or "no"
                tip = "; ".join(x.get("text", "") for x in e.get("reasons") or [])
                cells.append(Cell(codes, "no", tip))
        cells.append(r.get("skipped") or r.get("note") or "")
        body_rows.append(cells)
    body = _table(headers, body_rows, name_cols=(0, 1, len(headers) - 1))
    if targets:
        body += _note("Target columns: 'sparse' = this layer runs sparse on the target; 'packed' = stored packed, "
                      "runs dense; otherwise the rules it fails (hover for the reason): op, dtype, quantization, conv, "
                      "alignment, size, pattern, sparsity, not-worth-it.")
        why = [(Cell(r["weight"], "name"), t, "; ".join(x.get("text", "") for x in e["reasons"]))
               for r in rows for t, e in sorted((r.get("targets") or {}).items()) if e.get("reasons")]
        if why:
            body += (f"<details><summary>Why not sparse: {len(why)} layer x target pairs, reason by reason</summary>"
                     + _table(["weight", "target", "reasons"], why, name_cols=(0, 2)) + "</details>")
        body += _eligibility_totals(report.get("eligibility_by_target") or {})
    if "structured" in report:  # dense layers: the channel section charts what was removed
        return _section("Per-layer table", body, "layers")
    requested = (report.get("options") or {}).get("sparsity") or (report.get("totals") or {}).get("requested_sparsity")
    values = [float(r.get("sparsity") or 0.0) for r in rows]
    labels = [r["weight"] + (f" ({r['nodes'][0]}, {r.get('op')})" if r.get("nodes") and r["nodes"][0] != r["weight"]
                             else f" ({r.get('op')})") for r in rows]
    fig = plots.bar_figure(labels, values, "sparsity (share of weights that are zero)",
                           "Sparsity per layer (grey: left dense)", [bool(r.get("skipped")) for r in rows],
                           requested if _is_num(requested) else None)
    body += _img(plots.png(fig), "sparsity per layer")
    return _section("Per-layer table", body, "layers")


def _eligibility_totals(totals: dict) -> str:
    if not totals:
        return ""
    rows = [(Cell(name, "name"), t.get("layers_sparse"), t.get("layers"), Cell(_pct(t.get("share_params_sparse")), "n"),
             Cell(_pct(t.get("share_macs_sparse")), "n"), Cell(_pct(t.get("share_params_packed")), "n"),
             ", ".join(f"{k} {v}" for k, v in (t.get("reasons") or {}).items()))
            for name, t in totals.items()]
    return "<h3>Per target</h3>" + _table(["target", "layers sparse", "layers", "params sparse", "MACs sparse",
                                            "params packed", "layers held back by"], rows)


def _structured(report: dict) -> str:
    s = report.get("structured")
    if not isinstance(s, dict) or not s.get("groups"):
        return ""
    groups = s["groups"]
    rows = [(g.get("group"), Cell(", ".join(g.get("producers") or []) or g.get("name", ""), "name"),
             g.get("channels_before"), g.get("channels_after"),
             Cell(_pct(1 - g["channels_after"] / g["channels_before"]) if g.get("channels_before") else "-", "n"),
             "; ".join(g.get("reasons") or []) if g.get("frozen") else "") for g in groups]
    body = "<h3>Channel groups</h3>" + _table(["group", "producers", "channels before", "after", "removed", "frozen: why"],
                                              rows, name_cols=(1, 5))
    macs = s.get("macs_per_layer") or {}
    if macs:
        mrows = [(Cell(node, "name"), b, a, Cell(f"{a / b:.3f}x" if b else "-", "n")) for node, (b, a) in macs.items()]
        shapes = s.get("input_shapes")
        body += "<h3>MACs per layer</h3>" + _table(["node", "MACs before", "after", "ratio"], mrows)
        if shapes:
            body += _note(f"at input shapes {json.dumps(shapes)}" + (" (guessed)" if s.get("input_shapes_guessed") else ""))
    fig = plots.bar_figure([", ".join(g.get("producers") or []) or g.get("name", "") for g in groups],
                           [1 - g["channels_after"] / g["channels_before"] if g.get("channels_before") else 0.0
                            for g in groups], "share of channels removed", "Channels removed per group (grey: frozen)",
                           [bool(g.get("frozen")) for g in groups], s.get("sparsity"), "frozen")
    body += _img(plots.png(fig), "channels removed per group")
    for n in s.get("notes") or []:
        body += _note(n)
    return _section("Structured (channel) pruning", body, "structured")


def _target(packed: Any) -> str:
    if not isinstance(packed, dict) or not packed.get("eligibility"):
        return ""
    elig, sizes = packed["eligibility"], packed.get("sizes") or {}
    t = elig.get("totals") or {}
    name = (packed.get("target") or {}).get("name") or elig.get("target")
    body = _facts([("target", name), ("artifact folder", packed.get("output")), ("emit", packed.get("emit")),
                   ("layers running sparse", f"{t.get('layers_sparse', 0)} of {t.get('layers', 0)}"),
                   ("share of params / MACs sparse", f"{_pct(t.get('share_params_sparse'))} / "
                                                     f"{_pct(t.get('share_macs_sparse'))}"),
                   ("packed weights", f"{sizes.get('dense_bytes', 0):,} B dense -> {sizes.get('packed_bytes', 0):,} B "
                                      f"({_pct(sizes.get('ratio_to_dense'))}; {sizes.get('ratio_to_bound', 0):.3f}x the "
                                      "information bound)" if sizes.get("dense_bytes") else None),
                   ("artifact files", f"model.onnx {sizes.get('model_bytes', 0):,} B, weights.bin "
                                      f"{sizes.get('weights_bin_bytes', 0):,} B" if "model_bytes" in sizes else None)])
    layers = elig.get("layers") or []
    counts: dict[str, int] = {}
    for r in layers:
        for n in r.get("notes") or []:
            counts[n] = counts.get(n, 0) + 1
    common = [n for n, c in counts.items() if c > 1 and c * 2 >= len(layers)]  # said once, below the table
    rows = [(Cell(r.get("node", ""), "name"), Cell(r.get("weight", ""), "name"), r.get("op"), r.get("params"),
             Cell(_pct(r.get("sparsity")), "n"), Cell(_fmt(r.get("macs")), "n", r.get("macs_note") or ""),
             Cell("yes", "ok") if r.get("runs_sparse") else Cell("no", "no"),
             "; ".join(x.get("text", "") for x in r.get("reasons") or [])
             or "; ".join(n for n in r.get("notes") or [] if n not in common))
            for r in layers]
    body += _table(["node", "weight", "op", "params", "sparsity", "MACs", "runs sparse", "why / note"], rows,
                   name_cols=(0, 1, 7))
    for n in common + list(elig.get("notes") or []):
        body += _note(n)
    if packed.get("speed_note"):
        body += _note(packed["speed_note"])
    return _section(f"Target {name}", body, "target")


def _parity(report: dict) -> str:
    p = report.get("parity") if isinstance(report.get("parity"), dict) else (
        report if "outputs" in report and "passed" in report else None)
    if not p:
        return ""
    body = _verdict({"parity": p}, "prune")
    for f in p.get("failures") or []:
        body += _note("failed: " + f)
    inputs = p.get("inputs") or {}
    body += _facts([("original", p.get("original")), ("candidate", p.get("candidate")),
                    ("inputs", "synthetic (random)" if inputs.get("synthetic") else inputs.get("source")),
                    ("samples", inputs.get("samples")), ("labels", inputs.get("labels")),
                    ("feed shapes", json.dumps(inputs.get("shapes")) if inputs.get("shapes") else None),
                    ("shapes guessed", inputs.get("shapes_guessed") or None)])
    th = {k: v for k, v in (p.get("thresholds") or {}).items() if v not in (None, {}, [])}
    if th:
        body += "<h3>Thresholds</h3>" + _table(["threshold", "limit"], [(k, Cell(_fmt(v), "n")) for k, v in th.items()])
    for out in p.get("outputs") or []:
        checks = {c.get("metric"): c for c in out.get("checks") or []}
        rows = []
        for metric, c in checks.items():
            rows.append((metric, Cell(_limit(c), ""), _num_cell(c.get("value")),
                         Cell("PASS", "ok") if c.get("passed") else Cell("FAIL", "no")))
        for metric, v in (out.get("metrics") or {}).items():
            if metric not in checks:
                rows.append((metric, Cell("", ""), _num_cell(v), Cell("", "dim")))
        what = ", ".join(f"{k} {_fmt(out[k])}" for k in ("dtype", "shape", "kind", "rows") if out.get(k) is not None)
        body += f"<h3>Output {_e(out.get('name', ''))}</h3>" + _note(what) + _table(
            ["metric", "threshold", "value", "result"], rows, name_cols=())
    return _section("Parity", body, "parity")


def _limit(check: dict) -> str:
    """A check's rule as text: `min_cosine >= 0.99`, `finite == 0`, `allclose atol 1e-05 rtol 0`."""
    name, limit = str(check.get("threshold")), check.get("limit")
    if name == "finite":
        return "finite: == 0"
    if isinstance(limit, dict):
        return f"{name}: " + " ".join(f"{k} {_fmt(v)}" for k, v in limit.items())
    return f"{name}: {'>=' if name.startswith('min_') else '<=' if name.startswith('max_') else ''} {_fmt(limit)}"


def _num_cell(v: Any) -> Cell:
    return Cell(_fmt(v), "n" if _is_num(v) or v is None else "")


def _sweep(report: dict) -> str:
    points = report.get("points")
    if not isinstance(points, list) or not points:
        return ""
    chosen = plots.chosen_level(points, report.get("max_passing"))
    thresholds = report.get("thresholds") or {}
    title = f"{os.path.basename(str(report.get('model', '')))} ({(report.get('options') or {}).get('pattern', '')})"
    body = _verdict(report, "sweep")
    body += _img(plots.png(plots.sweep_figure(points, thresholds, chosen, title)), "parity metrics against sparsity")
    cols = [k for k in plots.METRIC_THRESHOLDS if any(p.get(k) is not None for p in points)]
    rows = [(p["sparsity"], p.get("achieved_sparsity"), *(p.get(k) for k in cols),
             Cell("PASS", "ok") if p.get("passed") else Cell("FAIL", "no"), "; ".join(p.get("failures") or []))
            for p in sorted(points, key=lambda p: p["sparsity"])]
    body += _table(["sparsity", "achieved", *cols, "verdict", "failures"], rows, name_cols=())
    if report.get("inputs"):
        inputs = report["inputs"]
        body += _note(f"evaluated on {inputs.get('samples')} samples from "
                      f"{'synthetic inputs' if inputs.get('synthetic') else inputs.get('source')}; metrics of output "
                      f"{points[0].get('output', '')}")
    return _section("Sweep", body, "sweep")


def _passes(passes: Any) -> str:
    if not isinstance(passes, list) or not passes:
        return ""
    rows = [(p.get("pass"), p.get("modified"), p.get("seconds"), len(p.get("weights") or {}),
             "; ".join(p.get("notes") or [])) for p in passes]
    return _section("Passes", _table(["pass", "modified", "seconds", "weights touched", "notes"], rows,
                                     name_cols=(4,)), "passes")


def _recipe(report: dict) -> str:
    recipe = report.get("recipe")
    how = "onnxprune run RECIPE.toml reproduces this run"
    if not isinstance(recipe, dict) and "points" in report and report.get("options"):
        chosen = plots.chosen_level(report["points"], report.get("max_passing"))
        if chosen is None:
            return ""
        prune = {k: v for k, v in report["options"].items() if v not in (None, [])}
        recipe = {"input": {"model": report.get("model", "")}, "prune": {**prune, "sparsity": chosen},
                  "output": {"model": "OUT.onnx"}}
        how = "onnxprune run RECIPE.toml prunes at the chosen level (one-shot, with the sweep's options)"
    if not isinstance(recipe, dict):
        return ""
    try:
        text = tomli_w.dumps(recipe)
    except (TypeError, ValueError):
        text = json.dumps(recipe, indent=2)
    return _section("Recipe", _note(how + (f" (sha256 {report['recipe_sha256'][:16]}...)"
                                            if report.get("recipe_sha256") else "")) + f"<pre>{_e(text)}</pre>", "recipe")


def _options(report: dict) -> str:
    opts = report.get("options")
    if not isinstance(opts, dict):
        return ""
    return _section("All options", f"<details><summary>{len(opts)} options</summary><pre>"
                                   f"{_e(json.dumps(opts, indent=2, default=str))}</pre></details>")


# ------------------------------------------------------------------------------------ generic sections

def _generic(name: str, value: Any, report: dict) -> str:
    """A section this module does not know: a matrix becomes a heatmap, records a table and a curve,
    scalars a list, anything else JSON."""
    context = {"chosen": _chosen(report), "thresholds": report.get("thresholds") or {}}
    return _section(name.replace("_", " ").capitalize(), _generic_body(name, value, 0, context), name)


def _chosen(d: dict) -> float | None:
    """The level a search or sweep settled on, where the report says: chosen, best, selected or max_passing,
    a number or a record with a level or sparsity."""
    for k in ("chosen", "best", "selected", "max_passing"):
        v = d.get(k)
        if _is_num(v):
            return v
        if isinstance(v, dict):
            found = next((v[x] for x in ("level", "sparsity") if _is_num(v.get(x))), None)
            if found is not None:
                return found
    return None


def _generic_body(name: str, value: Any, depth: int, context: dict, labels: tuple | None = None) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _records(name, value, context)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in value) + "</ul>"
    if not isinstance(value, dict):
        return f"<pre>{_e(json.dumps(value, indent=2, default=str))}</pre>"
    context = {**context, "chosen": _chosen(value) if _chosen(value) is not None else context.get("chosen")}
    matrix = _find_matrix(value)
    body = ""
    used: set[str] = set()
    if matrix is not None:
        rows, cols, data, (row_key, col_key, grid_key) = matrix
        used |= {row_key, col_key, grid_key}
        metric = f" ({value['metric']})" if isinstance(value.get("metric"), str) else ""
        fig = plots.heatmap_figure(rows, cols, data, col_key, row_key, f"{name}: {grid_key}{metric}")
        body += _img(plots.png(fig), f"{name} heatmap") + _grid_table(rows, cols, data)
        labels = (rows, cols)
    scalars = [(k, v) for k, v in value.items() if k not in used and not isinstance(v, (dict, list))]
    body = _facts(scalars) + body
    for k, v in value.items():
        if k in used or not isinstance(v, (dict, list)) or v in ([], {}):
            continue
        if labels is not None and _is_grid(v, len(labels[0]), len(labels[1])):
            body += f"<h3>{_e(k)}</h3>" + _grid_table(labels[0], labels[1], v)
        elif isinstance(v, dict) and depth < 2:
            body += f"<h3>{_e(k)}</h3>" + _generic_body(k, v, depth + 1, context, labels)
        elif isinstance(v, list):
            body += f"<h3>{_e(k)}</h3>" + _generic_body(k, v, depth + 1, context)
        else:
            body += f"<h3>{_e(k)}</h3><pre>{_e(json.dumps(v, indent=2, default=str))}</pre>"
    return body


def _is_grid(v: Any, rows: int, cols: int) -> bool:
    return (isinstance(v, list) and len(v) == rows and all(isinstance(r, list) and len(r) == cols for r in v)
            and all(_is_num(x) or x is None for r in v for x in r))


def _grid_table(rows: Sequence, cols: Sequence, data: Sequence[Sequence]) -> str:
    return _table(["", *[_fmt(c) for c in cols]], [(Cell(str(r), "name"), *row) for r, row in zip(rows, data)])


def _find_matrix(d: dict) -> tuple[list, list, list, tuple[str, str, str]] | None:
    """(row labels, column labels, rows of numbers, the keys of the three) if `d` holds a labelled matrix: a list of
    names, a list of numbers and a 2-D list of numbers that match, or {row: {column: number}}."""
    names = [k for k, v in d.items() if isinstance(v, list) and v and all(isinstance(x, str) for x in v)]
    levels = [k for k, v in d.items() if isinstance(v, list) and v and all(_is_num(x) for x in v)]
    grids = [k for k, v in d.items() if isinstance(v, list) and v and all(isinstance(r, list) for r in v)
             and all(_is_num(x) or x is None for r in v for x in r)]
    for g in grids:
        grid = d[g]
        for n in names:
            for lv in levels:
                if len(grid) == len(d[n]) and all(len(r) == len(d[lv]) for r in grid):
                    return d[n], d[lv], grid, (n, lv, g)
                if len(grid) == len(d[lv]) and all(len(r) == len(d[n]) for r in grid):
                    return d[n], d[lv], [list(c) for c in zip(*grid)], (n, lv, g)
    for k, v in d.items():
        if isinstance(v, dict) and len(v) > 1 and all(isinstance(r, dict) and r for r in v.values()):
            cols = list(dict.fromkeys(c for r in v.values() for c in r))
            if all(_is_num(x) or x is None for r in v.values() for x in r.values()):
                return (list(v), [_as_level(c) for c in cols], [[r.get(c) for c in cols] for r in v.values()],
                        ("row", "column", k))
    return None


def _as_level(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _flat(record: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys ({"parity": {"y": {"cosine_mean": 1}}} -> {"parity.y.cosine_mean": 1})."""
    out: dict = {}
    for k, v in record.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _records(name: str, records: list[dict], context: dict) -> str:
    """A list of dicts as a table, and, where one column is a numeric x (sparsity, level, step, trial, ...),
    the other numeric columns as curves against it: parity metrics first, with their threshold lines."""
    flat = [_flat(r) for r in records]
    cols = list(dict.fromkeys(k for r in flat for k in r))
    rows = [[r.get(c) if not isinstance(r.get(c), (dict, list)) else json.dumps(r.get(c), default=str)
             for c in cols] for r in flat]
    body = _table(cols, rows, name_cols=tuple(i for i, c in enumerate(cols)
                                              if all(isinstance(r.get(c), str) for r in flat)))
    numeric = [c for c in cols if all(_is_num(r.get(c)) or r.get(c) is None for r in flat)
               and any(_is_num(r.get(c)) for r in flat)]
    x_col = next((c for c in _X_NAMES if c in numeric and all(_is_num(r.get(c)) for r in flat)), None)
    metric = lambda c: c.rpartition(".")[2] in plots.METRIC_THRESHOLDS  # noqa: E731
    ys = sorted((c for c in numeric if c != x_col), key=lambda c: not metric(c))
    if ys and len(records) > 1:
        thresholds = context.get("thresholds") or {}
        limits = {c: thresholds.get(plots.METRIC_THRESHOLDS[c.rpartition(".")[2]]) for c in ys if metric(c)}
        x = [r[x_col] for r in flat] if x_col else list(range(len(flat)))
        passed = [bool(r.get("passed")) for r in flat] if any(isinstance(r.get("passed"), bool) for r in flat) else None
        fig = plots.curve_figure(x, {c: [r.get(c) for r in flat] for c in ys}, x_col or "entry (in order)", name,
                                 passed, context.get("chosen") if x_col else None,
                                 {k: v for k, v in limits.items() if _is_num(v)})
        body = _img(plots.png(fig), f"{name} curve") + body
    return body
