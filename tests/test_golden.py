"""Behaviour is preserved across refactors: every job of tests/golden.py writes what tests/golden.json recorded."""

import json

import pytest
from golden import GOLDEN, cases, run_case

RECORDED = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@pytest.mark.parametrize("name", sorted(cases()))
def test_golden(name, tmp_path):
    if name not in RECORDED:
        pytest.skip(f"{name} is not recorded in {GOLDEN.name} (python tests/golden.py --record)")
    assert run_case(cases()[name], tmp_path) == RECORDED[name]
