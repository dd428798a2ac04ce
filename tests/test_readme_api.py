"""The README's "### Python API" code blocks run as written (from a folder with the samples)."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API"):]
    section = section[:section.index("\n### ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_has_the_python_api_examples():
    blocks = _blocks()
    assert len(blocks) >= 3
    assert any("class " in b and "(op.Pass)" in b for b in blocks)  # a custom pass
    assert any("HookContext" in b and "hooks=[" in b for b in blocks)  # a custom hook


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_python_api_block_runs(tmp_path, monkeypatch, index):
    os.symlink(ROOT / "samples", tmp_path / "samples")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks()[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
