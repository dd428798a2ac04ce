"""The package's layers import only downward (the import-linter contract in pyproject.toml)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layers_import_only_downward(monkeypatch):
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)  # reads [tool.importlinter] from pyproject.toml
    monkeypatch.syspath_prepend(str(ROOT))
    assert cli.lint_imports(no_cache=True) == 0, "run `lint-imports` in the repo root for the broken contract"
