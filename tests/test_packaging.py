"""Every third-party module the library imports is a declared dependency (or a declared extra),
so a plain `pip install onnxprune` runs every command."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"matplotlib": "plot", "ray": "ray"}  # `--plot`/`--html`; `sensitivity --executor ray`: behind a clear error


def _imports() -> dict[str, str]:
    """Top-level module -> first file importing it, over onnxprune/."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "onnxprune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                found.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_every_imported_third_party_module_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    extras = {k: {_requirement_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    dists = md.packages_distributions()
    missing = []
    for module, where in _imports().items():
        if module in sys.stdlib_module_names or module == "onnxprune":
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if module in OPTIONAL:
            assert names & extras[OPTIONAL[module]], f"{module} ({where}) is not in the {OPTIONAL[module]!r} extra"
        elif not names & declared:
            missing.append(f"{module} (imported by {where}, distribution {sorted(names)})")
    assert not missing, "imported but not declared in [project].dependencies: " + "; ".join(missing)
