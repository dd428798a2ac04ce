"""Model: load errors (one line, the right class, from Python and the CLI), external data (checked,
memory-mapped, round-tripped), atomic and deterministic saves that never touch the input."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import builders as B
import numpy as np
import onnx
import pytest
import realmodels
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.core.errors import ExternalDataError, ModelLoadError, OnnxPruneError
from onnxprune.core.model import Model


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _data_name(model_path: Path) -> str:
    """The one external-data location the saved model at `model_path` records."""
    proto = onnx.load(str(model_path), load_external_data=False)
    (name,) = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return name


def _cli_fails_cleanly(path, *fragments):
    """`onnxprune inspect PATH` exits 2 with one stderr line naming what is wrong, and no traceback."""
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _load_fails(path, cls, *fragments):
    with pytest.raises(cls) as info:
        Model.load(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    _cli_fails_cleanly(path, *fragments)
    return message


# ------------------------------------------------------------------------------- load errors

def test_missing_file(tmp_path):
    _load_fails(tmp_path / "nope.onnx", ModelLoadError, "nope.onnx", "no such file")


def test_directory(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    _load_fails(tmp_path / "dir.onnx", ModelLoadError, "dir.onnx", "not a file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not an ONNX model\n" * 3)
    _load_fails(path, ModelLoadError, "notes.onnx", "not a valid ONNX model")


def test_protobuf_that_is_not_a_model(tmp_path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    _load_fails(path, ModelLoadError, "tensor.onnx", "not a valid ONNX model")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _load_fails(path, ModelLoadError, "empty.onnx", "not a valid ONNX model")


def test_truncated_file(tmp_path):
    data = B.save(B.small_net(), tmp_path / "full.onnx").read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    _load_fails(path, ModelLoadError, "half.onnx", "not a valid ONNX model")


@pytest.mark.real
def test_truncated_real_file(tmp_path):
    data = realmodels.model_path("silero_vad_16k_sequence").read_bytes()
    path = tmp_path / "silero_half.onnx"
    path.write_bytes(data[: len(data) // 2])
    _load_fails(path, ModelLoadError, "silero_half.onnx", "truncated")


def test_opset_newer_than_onnx_knows(tmp_path):
    proto = B.matmul_2d()
    newer = onnx.defs.onnx_opset_version() + 1
    proto.opset_import[0].version = newer
    path = B.save(proto, tmp_path / "future.onnx")
    _load_fails(path, ModelLoadError, "future.onnx", f"opset {newer} is newer")


# ------------------------------------------------------------------------ external data errors

@pytest.fixture
def ext(tmp_path) -> Path:
    return B.external_data_model(tmp_path / "m")


def test_external_data_missing(ext):
    (ext.parent / "model.onnx.data").unlink()
    msg = _load_fails(ext, ExternalDataError, "'conv.W'", "'model.onnx.data'", "not found")
    assert str(ext) in msg


def test_external_data_absolute_location(ext):
    B.set_external_entries(ext, "fc.W", location=str(ext.parent / "model.onnx.data"))
    _load_fails(ext, ExternalDataError, "'fc.W'", repr(str(ext.parent / "model.onnx.data")), "relative path")


def test_external_data_location_with_dotdot(ext):
    outside = ext.parent.parent / "outside.data"
    outside.write_bytes((ext.parent / "model.onnx.data").read_bytes())
    B.set_external_entries(ext, "fc.W", location="../outside.data")
    _load_fails(ext, ExternalDataError, "'fc.W'", "'../outside.data'", "inside the model's folder")


def test_external_data_symlink_outside(ext):
    data = ext.parent / "model.onnx.data"
    outside = ext.parent.parent / "elsewhere" / "real.data"
    outside.parent.mkdir()
    outside.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(outside)
    _load_fails(ext, ExternalDataError, "'conv.W'", "'model.onnx.data'", "outside the model's folder")


def test_external_data_symlink_inside_is_fine(ext):
    data = ext.parent / "model.onnx.data"
    data.rename(ext.parent / "real.data")
    data.symlink_to("real.data")
    model = Model.load(ext)
    assert model.read("fc.W").shape == (10, 64)


def test_external_data_truncated(ext):
    data = ext.parent / "model.onnx.data"
    content = data.read_bytes()
    data.write_bytes(content[: len(content) - 8])
    _load_fails(ext, ExternalDataError, "'head.W'", "'model.onnx.data'", "truncated")


def test_external_data_bad_offset(ext):
    B.set_external_entries(ext, "fc.W", offset="twelve")
    _load_fails(ext, ExternalDataError, "'fc.W'", "'model.onnx.data'", "not integers")


# -------------------------------------------------------------------------- external round trip

def test_external_data_round_trip(ext, tmp_path):
    data = ext.parent / "model.onnx.data"
    hashes = {p: _sha(p) for p in (ext, data)}
    feeds = B.feeds(B.small_net())
    model = Model.load(ext)
    keys = [r.key for r in model.tensors()]
    assert keys == ["conv.W", "conv.B", "fc.W", "fc.B", "head.W"]
    original = {k: np.array(model.read(k)) for k in keys}
    fc = model.read("fc.W")
    assert not fc.flags.writeable  # read-only, like every array read() hands out
    assert str(data) in model._fds
    for k, v in original.items():
        assert np.array_equal(v, onnx.numpy_helper.to_array(B.small_net().graph.initializer[keys.index(k)]))

    new_fc = original["fc.W"].copy()
    new_fc[:, ::2] = 0
    model.write("fc.W", new_fc)
    expected = dict(original, **{"fc.W": new_fc})
    reference = B.small_net()
    reference.graph.initializer[2].CopyFrom(onnx.numpy_helper.from_array(new_fc, "fc.W"))
    want = B.run(reference, feeds)[0]

    internal = model.save(tmp_path / "out_int" / "model.onnx", external_data=False)
    external = model.save(tmp_path / "out_ext" / "model.onnx", external_data=True)
    assert sorted(os.listdir(internal.parent)) == ["model.onnx"]
    assert sorted(os.listdir(external.parent)) == ["model.onnx", _data_name(external)]
    for path in (internal, external):
        again = Model.load(path)
        assert [r.key for r in again.tensors()] == keys
        for k in keys:
            got = again.read(k)
            assert got.dtype == expected[k].dtype and np.array_equal(got, expected[k]), (path, k)
        np.testing.assert_array_equal(B.run(path, feeds)[0], want)
    assert {p: _sha(p) for p in hashes} == hashes  # the input files are untouched


def test_saving_over_the_input_is_refused(ext, tmp_path):
    model = Model.load(ext)
    before = _sha(ext)
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input"):
        model.save(ext)
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input"):
        model.save(ext.parent / "." / "model.onnx", external_data=True)
    # after an external save elsewhere the model reads that copy, but the input stays protected
    model.save(tmp_path / "copy" / "model.onnx", external_data=True)
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input"):
        model.save(ext, external_data=False)
    assert _sha(ext) == before
    inline = B.save(B.small_net(), tmp_path / "inline.onnx")
    with pytest.raises(OnnxPruneError, match="refusing to overwrite"):
        Model.load(inline).save(inline)


def test_external_save_inlines_small_tensors_of_an_external_input(ext, tmp_path):
    # small_net's biases are < 1 KiB: they cannot keep pointing at the input's data file
    model = Model.load(ext)
    out = model.save(tmp_path / "o" / "renamed.onnx", external_data=True)
    proto = onnx.load(str(out), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data}.get("location") for t in proto.graph.initializer}
    assert where == {"conv.W": None, "conv.B": None, "fc.W": _data_name(out), "fc.B": None, "head.W": None}
    assert re.fullmatch(r"renamed\.onnx\.[0-9a-f]{16}\.data", where["fc.W"])
    assert np.array_equal(Model.load(out).read("conv.B"), Model.load(ext).read("conv.B"))


def test_write_checks_shape_and_casts():
    model = Model(B.matmul_cast_fp16())
    with pytest.raises(OnnxPruneError, match="shape"):
        model.write("W", np.zeros((4, 8)))
    model.write("W", np.ones((8, 4), np.float64))
    assert model.read("W").dtype == np.float16 and np.all(model.read("W") == 1)
    with pytest.raises(OnnxPruneError, match="no constant tensor named 'V'"):
        model.read("V")


# ------------------------------------------------------------------------------- atomic save

class _Boom(RuntimeError):
    pass


class _FailingWriter:
    """A file whose writes raise once more than `after` bytes were written to it."""

    def __init__(self, f, after: int):
        self.f, self.after, self.n = f, after, 0

    def write(self, b):
        if self.n + len(b) > self.after:
            self.f.write(bytes(b)[: max(self.after - self.n, 0)])
            raise _Boom("disk full")
        self.n += len(b)
        return self.f.write(b)

    def __getattr__(self, name):  # tell, flush, fileno
        return getattr(self.f, name)


def _failing_atomic_model_and_data(real, after: int):
    """atomic_model_and_data whose files each raise after `after` bytes were written."""
    import contextlib

    @contextlib.contextmanager
    def wrapped(*args, **kwargs):
        with real(*args, **kwargs) as w:
            w.model = _FailingWriter(w.model, after)
            w.data = w.data and _FailingWriter(w.data, after)
            yield w
    return wrapped


@pytest.mark.parametrize("external", [False, True])
def test_failed_write_leaves_nothing(ext, tmp_path, monkeypatch, external):
    import onnxprune.core.model as M

    model = Model.load(ext)
    before = {r.key: np.array(model.read(r.key)) for r in model.tensors()}
    out = tmp_path / "out" / "model.onnx"
    monkeypatch.setattr(M, "atomic_model_and_data", _failing_atomic_model_and_data(M.atomic_model_and_data, after=1500))
    with pytest.raises(_Boom):
        model.save(out, external_data=external)
    assert os.listdir(out.parent) == []
    # the model in memory is as it was, and still reads its (external) data
    assert all(np.array_equal(model.read(k), v) for k, v in before.items())
    monkeypatch.undo()
    model.save(out, external_data=external)
    assert all(np.array_equal(Model.load(out).read(k), v) for k, v in before.items())


def test_failed_tensor_serialization_midway_leaves_nothing(ext, tmp_path, monkeypatch):
    model = Model.load(ext)
    proto_before = model.proto.SerializeToString()
    calls = []
    real = Model.tensor_bytes

    def flaky(self, ref):
        calls.append(ref.key)
        if len(calls) == 1:  # fc.W, the one tensor large enough for the data file
            raise _Boom(f"cannot serialise {ref.key}")
        return real(self, ref)

    monkeypatch.setattr(Model, "tensor_bytes", flaky)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(_Boom):
        model.save(out, external_data=True)
    assert os.listdir(out.parent) == []
    assert model.proto.SerializeToString() == proto_before  # external references put back
    assert model.path == ext.resolve()


def test_failed_proto_serialization_leaves_nothing(tmp_path, monkeypatch):
    model = Model(B.small_net())
    real = model.proto

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def SerializeToString(self):
            raise _Boom("serialisation failed")

    monkeypatch.setattr(model, "_proto", Failing())
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    with pytest.raises(_Boom):
        model.save(out, external_data=False)
    assert os.listdir(out.parent) == []


def test_two_saves_give_identical_bytes(ext, tmp_path):
    model = Model.load(ext)
    model.write("head.W", np.zeros((10, 3), np.float32))
    a = model.save(tmp_path / "a" / "m.onnx", external_data=False)
    b = model.save(tmp_path / "b" / "m.onnx", external_data=False)
    assert a.read_bytes() == b.read_bytes()
    model = Model.load(ext)
    a = model.save(tmp_path / "c" / "m.onnx", external_data=True)
    b = model.save(tmp_path / "d" / "m.onnx", external_data=True)
    assert sorted(os.listdir(a.parent)) == sorted(os.listdir(b.parent)) == ["m.onnx", _data_name(a)]
    for name in os.listdir(a.parent):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert Model.load(ext).save(tmp_path / "e" / "m.onnx").read_bytes() == Model.load(ext).save(
        tmp_path / "f" / "m.onnx").read_bytes()


def test_written_values_are_taken_over_and_reach_proto_and_saves(ext, tmp_path):
    """A handed-over fresh array is kept itself (no copy, read-only from then on), reads see it, the
    proto gets it when asked for, and an external save streams it into the data file."""
    model = Model.load(ext)
    new = np.empty(model.read("fc.W").shape, np.float32)
    new.reshape(-1)[:] = np.arange(new.size)
    kept = new.copy()
    model.write("fc.W", kept)  # copied: the caller keeps its array
    assert kept.flags.writeable and not np.shares_memory(model.read("fc.W"), kept)
    model.write("fc.W", new, hand_over=True)
    assert not new.flags.writeable and np.shares_memory(model.read("fc.W"), new)
    model.set_entries("fc.W", np.array([0, 3]), np.float32(-1))
    assert model.read("fc.W").reshape(-1)[[0, 1, 3]].tolist() == [-1, 1, -1]
    out = model.save(tmp_path / "o" / "m.onnx", external_data=True)
    again = Model.load(out)
    assert np.array_equal(again.read("fc.W"), model.read("fc.W"))
    assert again.read("fc.W").reshape(-1)[0] == -1
    copy = Model.load(ext)
    view = np.zeros(model.read("head.W").shape, np.float32)[:, :]
    copy.write("head.W", view.T.T, hand_over=True)  # not the owner: copied all the same
    assert not np.shares_memory(copy.read("head.W"), view)
    assert np.array_equal(onnx.numpy_helper.to_array(
        next(t for t in copy.proto.graph.initializer if t.name == "head.W")), view)


def test_failed_external_save_keeps_written_values(ext, tmp_path, monkeypatch):
    model = Model.load(ext)
    model.write("fc.W", np.full(model.read("fc.W").shape, 7, np.float32))

    def fail(*a, **k):
        raise _Boom("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", fail)
    with pytest.raises(_Boom):
        model.save(tmp_path / "o" / "m.onnx", external_data=True)
    monkeypatch.undo()
    assert (model.read("fc.W") == 7).all()
    assert (Model.load(model.save(tmp_path / "p" / "m.onnx", external_data=True)).read("fc.W") == 7).all()


def test_failed_external_save_keeps_small_written_values_and_the_earlier_artifact(ext, tmp_path, monkeypatch):
    """Tensors under 1 KiB are inlined during an external save; a failure must leave their written
    values pending, and must not touch an artifact already at the output path."""
    model = Model.load(ext)
    out = model.save(tmp_path / "o" / "m.onnx", external_data=True)
    earlier = {k: np.array(Model.load(out).read(k)) for k in ("fc.W", "head.W")}
    model = Model.load(ext)
    model.write("head.W", np.full(model.read("head.W").shape, 7, np.float32))  # 120 bytes, stored externally
    model.write("fc.W", np.full(model.read("fc.W").shape, 5, np.float32))

    def fail(*a, **k):
        raise _Boom("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", fail)
    with pytest.raises(_Boom):
        model.save(out, external_data=True)
    monkeypatch.undo()
    assert (model.read("head.W") == 7).all() and (model.read("fc.W") == 5).all()
    assert all(np.array_equal(Model.load(out).read(k), v) for k, v in earlier.items())  # untouched
    again = Model.load(model.save(tmp_path / "p" / "m.onnx", external_data=True))
    assert (again.read("head.W") == 7).all() and (again.read("fc.W") == 5).all()


def test_reads_after_saving_over_a_data_file_see_the_new_file(ext, tmp_path):
    model = Model.load(ext)
    a = tmp_path / "a" / "m.onnx"
    model.save(a, external_data=True)
    model.read("fc.W")  # opens a.data
    model.write("fc.W", np.zeros(model.read("fc.W").shape, np.float32))
    model.save(tmp_path / "b" / "m.onnx", external_data=True)
    model.save(a, external_data=True)  # a new a.data replaces the one read before
    assert (model.read("fc.W") == 0).all()
    assert (Model.load(model.save(tmp_path / "c" / "m.onnx", external_data=True)).read("fc.W") == 0).all()


def test_replace_proto_with_its_own_proto_keeps_pending_writes(ext):
    model = Model.load(ext)
    proto = model.proto
    model.write("fc.W", np.full(model.read("fc.W").shape, 3, np.float32))
    model.replace_proto(proto)
    assert (model.read("fc.W") == 3).all()


# ----------------------------------------------------- external data: content-named data files

def test_data_file_is_named_by_its_content(ext, tmp_path):
    out = Model.load(ext).save(tmp_path / "o" / "m.onnx", external_data=True)
    name = _data_name(out)
    assert name == f"m.onnx.{_sha(out.parent / name)[:16]}.data"
    assert sorted(os.listdir(out.parent)) == ["m.onnx", name]


def test_overwriting_an_external_output_removes_the_old_data_file(ext, tmp_path, caplog):
    out = tmp_path / "o" / "m.onnx"
    Model.load(ext).save(out, external_data=True)
    first, first_bytes = _data_name(out), out.read_bytes()
    model = Model.load(ext)
    model.write("fc.W", np.zeros(model.read("fc.W").shape, np.float32))
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        model.save(out, external_data=True)
        second = _data_name(out)
        assert second != first and sorted(os.listdir(out.parent)) == ["m.onnx", second]
        assert (Model.load(out).read("fc.W") == 0).all()
        # the same content again: the same name and bytes as the first time, the second data file goes
        Model.load(ext).save(out, external_data=True)
        assert out.read_bytes() == first_bytes and sorted(os.listdir(out.parent)) == ["m.onnx", first]
        Model.load(ext).save(out, external_data=True)  # identical data over itself: harmless
        assert out.read_bytes() == first_bytes and sorted(os.listdir(out.parent)) == ["m.onnx", first]
        Model.load(ext).save(out, external_data=False)  # an inline model needs no data file
        assert os.listdir(out.parent) == ["m.onnx"]
    assert not caplog.records  # replacing a model's own data file is routine: no notes
    Model.load(ext).save(out, external_data=True)
    onnx.checker.check_model(onnx.load(str(out), load_external_data=True))


def test_leftover_data_files_are_removed_with_a_note(ext, tmp_path, caplog):
    out = tmp_path / "o" / "m.onnx"
    out.parent.mkdir()
    orphan = out.parent / "m.onnx.0123456789abcdef.data"  # as a save killed between its renames leaves
    orphan.write_bytes(b"\0" * 4096)
    others = ["m.onnx.data.bak", "m.onnx.0123.data", "n.onnx.0123456789abcdef.data", "m.onnx.0123456789ABCDEF.data"]
    for name in others:  # not named like a data file of m.onnx: left alone
        (out.parent / name).write_bytes(b"x")
    (out.parent / "m.onnx.fedcba9876543210.data").mkdir()  # a folder is never removed
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        Model.load(ext).save(out, external_data=True)
    assert not orphan.exists()
    assert sorted(os.listdir(out.parent)) == sorted(["m.onnx", _data_name(out), "m.onnx.fedcba9876543210.data", *others])
    (note,) = [r.getMessage() for r in caplog.records]
    assert str(orphan) in note and "no model refers to" in note and "\n" not in note


def test_an_earlier_versions_data_file_is_left_with_a_note(ext, tmp_path, caplog):
    """Before data files were named by their content, the data of m.onnx was m.onnx.data; an
    overwrite leaves that file (something else may read it) and says so."""
    out = B.external_data_model(tmp_path / "o", name="m.onnx")  # refers to m.onnx.data
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        Model.load(ext).save(out, external_data=True)
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.onnx.data", _data_name(out)]
    (note,) = [r.getMessage() for r in caplog.records]
    assert str(out.parent / "m.onnx.data") in note and "left" in note and "\n" not in note


def test_no_data_file_without_large_tensors(tmp_path):
    out = Model(B.matmul_cast_fp16()).save(tmp_path / "o" / "m.onnx", external_data=True)
    assert os.listdir(out.parent) == ["m.onnx"]
    Model.load(out)


def test_a_data_file_the_input_reads_is_never_replaced_or_removed(ext, tmp_path):
    """A model whose data file is named like the output's: saving the same weights there would
    replace it, other weights would remove it. Both are refused or avoided."""
    out = Model.load(ext).save(tmp_path / "o" / "m.onnx", external_data=True)
    twin = out.parent / "twin.onnx"
    twin.write_bytes(out.read_bytes())  # reads m.onnx's data file
    data = out.parent / _data_name(out)
    before = _sha(data)
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input"):
        Model.load(twin).save(out, external_data=True)
    changed = Model.load(twin)
    changed.write("fc.W", np.zeros(changed.read("fc.W").shape, np.float32))
    changed.save(out, external_data=True)  # m.onnx's old data file is the input's: kept
    assert _sha(data) == before and len(os.listdir(out.parent)) == 4
    assert np.array_equal(Model.load(twin).read("fc.W"), Model.load(ext).read("fc.W"))


def test_a_failed_model_rename_leaves_the_old_model_and_its_data(ext, tmp_path, monkeypatch):
    import onnxprune.core.atomic as A

    out = Model.load(ext).save(tmp_path / "o" / "m.onnx", external_data=True)
    before = {p: _sha(p) for p in out.parent.iterdir()}
    real = os.replace

    def replace(src, dst):
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(A.os, "replace", replace)
    model = Model.load(ext)
    model.write("fc.W", np.ones(model.read("fc.W").shape, np.float32))
    with pytest.raises(OnnxPruneError, match="free some space"):
        model.save(out, external_data=True)
    monkeypatch.undo()
    assert {p: _sha(p) for p in out.parent.iterdir()} == before  # the new data file is gone again
    assert np.array_equal(Model.load(out).read("fc.W"), Model.load(ext).read("fc.W"))
    assert (Model.load(model.save(out, external_data=True)).read("fc.W") == 1).all()


def test_failing_node_reads_the_node_onnxruntime_names():
    """The one parser of onnxruntime's error text: a run-time kernel failure names its node
    ("... running MatMul node. Name:'mm' Status Message: ..."); a load-time shape error, or text
    without a name, gives None. Checked against the installed onnxruntime's own messages."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from onnxprune.core.runtime import failing_node, first_line, session

    def mm(x_shape):
        w = onnx.numpy_helper.from_array(np.ones((3, 5), np.float32), "w")
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    with pytest.raises(Exception) as run_error:
        session(mm(None), label="t").run(None, {"x": np.ones((2, 4), np.float32)})
    assert failing_node(first_line(run_error.value)) == "mm"
    with pytest.raises(ModelLoadError) as load_error:
        session(mm([2, 4]), label="t")
    assert failing_node(first_line(load_error.value.__cause__)) is None
    assert failing_node("Fail: out of memory") is None
    assert isinstance(run_error.value, ort.capi.onnxruntime_pybind11_state.Fail)


def test_copy_is_independent_and_refuses_unsaved_writes(tmp_path):
    """Model.copy gives a model over its own proto (writes to it leave the original alone) that saves
    the same bytes as one loaded from the file; a model with unsaved writes is not copied."""
    from onnxprune.core.model import Model

    path = B.save(B.matmul_2d(), tmp_path / "m.onnx")
    original = Model.load(path)
    twin = original.copy()
    key = original.tensors()[0].key
    before = np.array(original.read(key))
    twin.write(key, np.zeros_like(before))
    assert np.array_equal(original.read(key), before)
    Model.load(path).save(tmp_path / "a.onnx")
    original.copy().save(tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with pytest.raises(ValueError, match="unsaved writes"):
        twin.copy()
