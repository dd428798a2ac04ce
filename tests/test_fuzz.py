"""Property-based fuzzing with hypothesis (derandomized: the same examples on every run).

1. Mutated bytes of a real small model (samples/digits_mlp.onnx): bytes flipped, cut, inserted,
   mostly in the protobuf structure (tags, lengths, names, dims) rather than in the weight bytes.
2. Random pruning option combinations on the same model.

Invariants, as in test_corpus: no traceback (every failure is an OnnxPruneError, exit 2, one line
on stderr), or success; the input unchanged; nothing left behind.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import traceback
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.cli import main
from onnxprune.core.model import Model

MLP = Path(__file__).resolve().parents[1] / "samples" / "digits_mlp.onnx"
DATA = MLP.read_bytes()
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEEN = {"bytes": 0, "bytes_ok": 0, "options": 0, "options_ok": 0}


def _payload_spans(data: bytes) -> list[tuple[int, int]]:
    """Where the weights' raw bytes lie in the file (the rest is protobuf structure)."""
    spans = []
    for t in onnx.load_model_from_string(data).graph.initializer:
        start = data.index(t.raw_data)
        spans.append((start, start + len(t.raw_data)))
    return sorted(spans)


SPANS = _payload_spans(DATA)
_BOUNDS = [0, *(x for span in SPANS for x in span), len(DATA)]
STRUCTURE = [i for a, b in zip(_BOUNDS[::2], _BOUNDS[1::2]) for i in range(a, b)]  # positions outside the weights


def _position(draw) -> int:
    if draw(st.booleans()):
        return STRUCTURE[draw(st.integers(0, len(STRUCTURE) - 1))]
    return draw(st.integers(0, len(DATA) - 1))


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(DATA)
    if draw(st.integers(0, 2)) == 0:  # weight bytes only: the model stays valid, its values odd (NaN, Inf, ...)
        for _ in range(draw(st.integers(1, 8))):
            a, b = SPANS[draw(st.integers(0, len(SPANS) - 1))]
            at = draw(st.integers(a, b - 1))
            data[at] = draw(st.sampled_from([0x7F, 0xFF, 0x80, 0x00])) if draw(st.booleans()) else data[at] ^ 0x40
        return bytes(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = min(_position(draw), len(data) - 1)
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x12, 0x1A, 0x22]))
        elif kind == "cut":
            del data[at:]
            if not data:
                break
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


def _listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"{args}: traceback\n" + "".join(traceback.format_exception(*result.exc_info)))
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), (args, result.stderr)
    return result.exit_code, result.stderr


@FUZZ
@given(mutated())
def test_mutated_model_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, out = tmp / "in" / "m.onnx", tmp / "out"
        model.parent.mkdir()
        out.mkdir()
        model.write_bytes(data)
        before = _listing(model.parent)
        code, _ = _invoke(["inspect", str(model)])
        assert code in (0, 2)
        if code == 0:  # loads: the gate on itself passes (or cannot judge), pruning works or fails cleanly
            same, _ = _invoke(["check", str(model), str(model), "--samples", "2", "--quiet"])
            assert same in (0, 2), "a model checked against itself failed parity"
            code, _ = _invoke(["prune", str(model), "-o", str(out / "p.onnx"), "--quiet", "--min-params", "1"])
            assert code in (0, 2)
            if code == 0:
                Model.load(out / "p.onnx")  # what it wrote is a valid model
        assert _listing(model.parent) == before, "the input changed"
        left = _listing(out)
        assert left == {} or (code == 0 and set(left) == {"p.onnx"}), left
        SEEN["bytes"] += 1
        SEEN["bytes_ok"] += code == 0


FLOATS = st.one_of(st.sampled_from([-0.1, 0.0, 0.25, 0.5, 0.9, 0.99, 1.0, 1.5, math.nan, math.inf, -math.inf]),
                   st.floats(0, 1, exclude_max=True), st.floats(-1, 2, allow_nan=False))
PATTERNS = st.one_of(
    st.sampled_from(["unstructured", "channel", "2:4", "1:2", "4:8", "2:4", "4x4", "1x4", "unstructured"]),
    st.sampled_from(["nonsense", "", "2:", ":4", "1x1", "0x0", "2:4:8"]),
    st.builds(lambda n, m: f"{n}:{m}", st.integers(-1, 9), st.integers(-1, 9)),
    st.builds(lambda r, c: f"{r}x{c}", st.integers(-1, 9), st.integers(-1, 9)))
# half of the option sets stick to legal values, so that many jobs run to the end
LEGAL = {
    "sparsity": st.floats(0, 0.95), "pattern": st.sampled_from(["unstructured", "2:4", "1:4", "4x4", "8x1", "channel"]),
    "scope": st.sampled_from(["layer", "global"]), "criterion": st.just("magnitude"),
    "min_params": st.sampled_from([0, 1, 1000, 40000]), "skip": st.sampled_from(["fc1*", "fc?.weight", "nothing"]),
    "override": st.sampled_from(["fc1*=0.3", "*=0.9", "fc3*=0.0"]), "steps": st.integers(1, 3),
    "nm_remainder": st.sampled_from(["skip", "pad"]), "initial": st.floats(0, 0.5), "round_to": st.sampled_from([1, 8, 16])}
WILD = {
    "sparsity": FLOATS, "pattern": PATTERNS, "scope": st.sampled_from(["layer", "global", "bogus"]),
    "criterion": st.sampled_from(["magnitude", "wanda", "sparsegpt", "bogus"]),
    "min_params": st.sampled_from([-5, 0, 1, 1000, 40000, 10**9]),
    "skip": st.sampled_from(["*", "fc1*", "fc?.weight", "[", "nothing", ""]),
    "override": st.sampled_from(["fc1*=0.3", "*=0.9", "fc2.weight=1.5", "fc3*", "=0.5", "x=nan"]),
    "steps": st.integers(-1, 3), "nm_remainder": st.sampled_from(["skip", "pad", "bogus"]), "initial": FLOATS,
    "round_to": st.integers(-1, 64)}


@st.composite
def option_sets(draw) -> list[str]:
    pool = WILD if draw(st.booleans()) else LEGAL
    args = []
    for flag, key, chance in (("--sparsity", "sparsity", 2), ("--pattern", "pattern", 2), ("--scope", "scope", 2),
                              ("--criterion", "criterion", 5), ("--min-params", "min_params", 2),
                              ("--skip", "skip", 3), ("--override", "override", 3), ("--steps", "steps", 4),
                              ("--nm-remainder", "nm_remainder", 4), ("--initial-sparsity", "initial", 4),
                              ("--round-to", "round_to", 4)):
        if draw(st.integers(0, chance - 1)) == 0:
            value = draw(pool[key])
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    return args


@FUZZ
@given(option_sets())
def test_random_prune_options(args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        before = hashlib.sha256(MLP.read_bytes()).hexdigest()
        code, _ = _invoke(["prune", str(MLP), "-o", str(out / "p.onnx"), "--quiet", *args])
        assert code in (0, 2), (args, code)
        assert hashlib.sha256(MLP.read_bytes()).hexdigest() == before
        left = sorted(os.listdir(out))
        if code == 0:
            assert left == ["p.onnx"], left
            pruned = Model.load(out / "p.onnx")
            sparsity = next((float(a) for a, b in zip(args[1:], args) if b == "--sparsity"), None)
            if sparsity is not None:  # what was asked is what was done, or it was refused
                w = pruned.read("fc2.weight")
                assert 0.0 <= sparsity < 1.0 and np.all(np.isfinite(w)), (args, sparsity)
        else:
            assert left == [], left
        SEEN["options"] += 1
        SEEN["options_ok"] += code == 0


def test_fuzz_tally(capsys):
    with capsys.disabled():
        print(f"\nfuzz: {SEEN['bytes']} mutated models ({SEEN['bytes_ok']} still loaded and pruned), "
              f"{SEEN['options']} option sets ({SEEN['options_ok']} accepted); no tracebacks, inputs unchanged, "
              "nothing left behind")
