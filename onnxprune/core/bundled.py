"""Where the bundled data folders are: `passes/` (recipes) and `targets/` (accelerators).

An installed package carries them as `onnxprune/recipes` and `onnxprune/targets_data`
(pyproject maps the top-level folders there); a source checkout has them at the repo's top.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # the onnxprune package folder
_FOLDERS = {"recipes": "passes", "targets_data": "targets"}


def data_dir(name: str) -> Path:
    """The folder of bundled `.toml` files for `name` ("recipes" or "targets_data")."""
    installed = _PACKAGE / name
    if installed.is_dir() and any(installed.glob("*.toml")):
        return installed
    return _PACKAGE.parent / _FOLDERS[name]


def toml_files(name: str) -> dict[str, Path]:
    """Bundled files by stem, sorted."""
    return {p.stem: p for p in sorted(data_dir(name).glob("*.toml"))}
