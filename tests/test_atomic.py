"""kill -9 during a save: the output is the old file or the complete new one, never a torn one, also
for a model with external data saved over an earlier one (two files); the temporary files and data
files a killed writer leaves behind are removed by the next save to the same output."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import builders as B
import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.core import atomic
from onnxprune.core.errors import OutputError
from onnxprune.core.model import Model

# The child (a fork of this process) saves a 4 MiB model to `out` over and over, alternating two
# versions (tagged in their metadata), and says "ready" once the first save is complete. With
# "hang", its fsync blocks after the first save: the next save's temporary file is fully written,
# not yet renamed. With "external", each save goes with external data into a fresh folder out/<k>/.
# With "overwrite", each goes with external data over the one before (version 1 first, then 2, 1,
# ...). With "stop:STEP", the first overwrite (version 2 over 1) stops at STEP of its commit and
# says so: "written" (both temporary files complete, nothing renamed), "data renamed" (the new data
# file in place, the old model still at `out`), "model renamed" (the new model in place, the old
# data file not yet removed).


@functools.cache
def _weights(version: int) -> np.ndarray:
    return np.random.default_rng(version).standard_normal((1024, 1024)).astype(np.float32)


def _model(version: int) -> Model:
    g = h.make_graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], "g",
                     [h.make_tensor_value_info("X", 1, [1, 1024])], [h.make_tensor_value_info("Y", 1, [1, 1024])],
                     [nh.from_array(_weights(version), "W")])
    m = Model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    m.set_metadata({"version": str(version)})
    return m


def _child(out: Path, mode: str, say) -> None:
    models = [_model(1), _model(2)]
    if mode == "external":
        say("ready")
        for k in itertools.count():
            models[k % 2].save(out / str(k) / "m.onnx", external_data=True)
    if mode == "overwrite" or mode.startswith("stop:"):
        _model(1).save(out, external_data=True)  # a fresh Model each time: a saved one reads `out`
        if mode.startswith("stop:"):
            _stop_at(mode[len("stop:"):], say)
        say("ready")
        for i in itertools.count():
            _model(2 - i % 2).save(out, external_data=True)
    models[0].save(out)
    if mode == "hang":
        def hang(fd):
            say("hanging")
            time.sleep(60)
        atomic.os.fsync = hang  # only in the child
    say("ready")
    for i in itertools.count(1):
        models[i % 2].save(out)


def _stop_at(step: str, say) -> None:
    """Make the next external save stop at `step` of its commit (only in the child)."""
    def stop():
        say(step)
        time.sleep(60)

    if step == "written":
        real_lock = atomic._folder_lock

        @contextlib.contextmanager
        def lock(folder):
            with real_lock(folder) as fd:
                stop()
                yield fd
        atomic._folder_lock = lock
    else:
        real_sync, calls = atomic._fsync_dir, itertools.count(1)

        def sync(fd):
            real_sync(fd)
            if next(calls) == {"data renamed": 1, "model renamed": 2}[step]:
                stop()
        atomic._fsync_dir = sync


def _spawn(out: Path, mode: str):
    _weights(1), _weights(2)  # computed before the fork, once
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(r)
            _child(out, mode, lambda text: os.write(w, (text + "\n").encode()))
        finally:
            os._exit(0)
    os.close(w)
    reader = os.fdopen(r)
    assert reader.readline().strip() == "ready"
    return pid, reader


def _kill(child) -> None:
    pid, reader = child
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    reader.close()


def _assert_whole(out: Path) -> int:
    """The model at `out` loads and is exactly one of the versions; returns which."""
    model = Model.load(out)
    version = int(dict((p.key, p.value) for p in model.proto.metadata_props)["version"])
    assert version in (1, 2, 3)
    assert np.array_equal(model.read("W"), _weights(version)), "model and weights from different saves"
    return version


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.009, 0.014, 0.02, 0.03, 0.045])
def test_kill_at_any_moment_of_an_inline_save_leaves_old_or_new(tmp_path, delay):
    out = tmp_path / "m.onnx"
    child = _spawn(out, "inline")
    time.sleep(delay)
    _kill(child)
    _assert_whole(out)
    temps = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(p.startswith(f".m.onnx.{atomic._HOST}.{child[0]}.") for p in temps), temps
    Model(B.small_net()).save(out)  # the next write removes what the killed writer left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_kill_during_external_saves_into_fresh_folders(tmp_path):
    """An external save into a fresh folder renames its data file first and the model last: after
    a kill the model is absent or complete with its own data."""
    child = _spawn(tmp_path, "external")
    time.sleep(0.07)  # a few saves complete, one is cut
    _kill(child)
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    for folder in folders:
        if (folder / "m.onnx").exists():
            _assert_whole(folder / "m.onnx")
        else:  # killed in this save: no model, maybe its data and temporary files
            assert all(p.name.endswith(".tmp") or atomic.is_data_file_name("m.onnx", p.name) for p in folder.iterdir())


def test_kill_while_the_temporary_file_is_complete(tmp_path, caplog):
    """Killed after writing, before the rename: the old file stays, the full temporary file is
    left; the next save to that output removes it and says so."""
    out = tmp_path / "m.onnx"
    child = _spawn(out, "hang")
    assert child[1].readline().strip() == "hanging"
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    _kill(child)
    assert _assert_whole(out) == 1 and hashlib.sha256(out.read_bytes()).hexdigest() == before
    (stale,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert stale.name.startswith(f".m.onnx.{atomic._HOST}.{child[0]}.") and stale.stat().st_size > 4 * 2**20
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        Model(B.small_net()).save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    (note,) = [r.getMessage() for r in caplog.records if "temporary file" in r.getMessage()]
    assert str(stale) in note and f"pid {child[0]}" in note and "\n" not in note


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    out = tmp_path / "m.onnx"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".m.onnx.{atomic._HOST}.{dead.pid}.abcdefgh.tmp",
        "alive": f".m.onnx.{atomic._HOST}.{os.getppid()}.abcdefgh.tmp",
        "self": f".m.onnx.{atomic._HOST}.{os.getpid()}.abcdefgh.tmp",
        "other host": f".m.onnx.elsewhere.{dead.pid}.abcdefgh.tmp",
        "old style": ".m.onnx.abcdefgh.tmp",
        "other output": f".n.onnx.{atomic._HOST}.{dead.pid}.abcdefgh.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    atomic.atomic_write_bytes(out, b"new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.onnx"} | set(names.values()) - {names["dead"]}, left


def test_write_errors_are_one_line_output_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic.atomic_write_bytes(blocker / "sub" / "out.bin", b"x")
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        atomic.atomic_write_bytes(tmp_path / "dir.bin", b"x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic.check_writable(blocker / "x.json", "report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.bin", "file"]


def test_undo_on_error_removes_what_the_block_committed(tmp_path):
    old = tmp_path / "kept.txt"
    old.write_text("before")
    with pytest.raises(RuntimeError):
        with atomic.undo_on_error():
            atomic.atomic_write_text(tmp_path / "new" / "deep" / "a.txt", "a")
            atomic.atomic_write_text(tmp_path / "b.txt", "b")
            raise RuntimeError("the job failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]  # files and the folders made for them
    with atomic.undo_on_error(keep=(KeyError,)):
        atomic.atomic_write_text(tmp_path / "c.txt", "c")
    assert (tmp_path / "c.txt").read_text() == "c"


# ------------------------------------------------------------- external data over an earlier save

@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[int, tuple[bytes, str, bytes]]:
    """Per version: the bytes of m.onnx saved with external data, its data file's name and bytes
    (what any save of that version to any m.onnx must give)."""
    found = {}
    for version in (1, 2, 3):
        out = _model(version).save(tmp_path_factory.mktemp(f"ref{version}") / "m.onnx", external_data=True)
        (data,) = [p for p in out.parent.iterdir() if p != out]
        found[version] = (out.read_bytes(), data.name, data.read_bytes())
    assert len({name for _, name, _ in found.values()}) == 3
    return found


def _assert_pair(out: Path, refs) -> int:
    """`out` loads with onnx (external data too) and is, with its data file, bit for bit one of
    the versions; returns which."""
    proto = onnx.load(str(out), load_external_data=True)
    version = int({p.key: p.value for p in proto.metadata_props}["version"])
    model_bytes, data_name, data_bytes = refs[version]
    assert out.read_bytes() == model_bytes
    assert (out.parent / data_name).read_bytes() == data_bytes
    assert np.array_equal(nh.to_array(proto.graph.initializer[0]), _weights(version))
    assert _assert_whole(out) == version
    return version


def _leftovers(folder: Path, pid: int) -> tuple[list[str], list[str]]:
    """(temporary files, data files) in `folder`, besides m.onnx; temporary files only of `pid`."""
    names = sorted(p.name for p in folder.iterdir() if p.name != "m.onnx")
    temps = [n for n in names if n.endswith(".tmp")]
    for n in temps:
        assert n.startswith((f".m.onnx.{atomic._HOST}.{pid}.", f".m.onnx.data.{atomic._HOST}.{pid}.")), n
    data = [n for n in names if n not in temps]
    assert all(atomic.is_data_file_name("m.onnx", n) for n in data), data
    return temps, data


def _next_save_cleans_up(out: Path, refs, caplog) -> list[str]:
    """A save of version 3 over `out` leaves m.onnx and its data file only; returns its notes."""
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        _model(3).save(out, external_data=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", refs[3][1]]
    assert _assert_pair(out, refs) == 3
    notes = [r.getMessage() for r in caplog.records]
    assert all("\n" not in n for n in notes)
    return notes


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.006, 0.01, 0.015, 0.02, 0.03, 0.045, 0.07, 0.1])
def test_kill_at_any_moment_of_an_external_overwrite_leaves_old_or_new(tmp_path, refs, caplog, delay):
    out = tmp_path / "m.onnx"
    child = _spawn(out, "overwrite")
    time.sleep(delay)
    _kill(child)
    version = _assert_pair(out, refs)
    _, data = _leftovers(tmp_path, child[0])
    assert refs[version][1] in data and set(data) <= {refs[1][1], refs[2][1]}
    _next_save_cleans_up(out, refs, caplog)


@pytest.mark.parametrize("step, expect", [("written", 1), ("data renamed", 1), ("model renamed", 2)])
def test_kill_at_each_step_of_an_external_overwrite(tmp_path, refs, caplog, step, expect):
    """Version 2 over version 1, killed at each step of the commit: `out` is version 1 with its data
    up to the model's rename, version 2 with its data after it; what the killed save left (its
    temporary files, the data file no model refers to) goes with the next save, which says so."""
    out = tmp_path / "m.onnx"
    child = _spawn(out, f"stop:{step}")
    assert child[1].readline().strip() == step
    _kill(child)
    assert _assert_pair(out, refs) == expect
    temps, data = _leftovers(tmp_path, child[0])
    if step == "written":  # the data's and the model's temporary files
        assert len(temps) == 2 and data == [refs[1][1]]
    else:  # the model's temporary file until its rename
        assert len(temps) == (step == "data renamed") and data == sorted([refs[1][1], refs[2][1]])
    notes = _next_save_cleans_up(out, refs, caplog)
    orphan = {"written": None, "data renamed": refs[2][1], "model renamed": refs[1][1]}[step]
    assert sum("temporary file" in n for n in notes) == len(temps)
    said = [n for n in notes if "data file" in n]
    if orphan:
        assert said == [(f"onnxprune: note: removed {tmp_path / orphan}, a data file of m.onnx that no model "
                         "refers to (left by an interrupted save)")]
    else:
        assert said == []


def test_the_same_external_save_twice_gives_identical_bytes_and_data_name(tmp_path, refs):
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    _model(1).save(a, external_data=True)
    _model(1).save(b, external_data=True)
    _model(1).save(b, external_data=True)  # over itself
    for out in (a, b):
        assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", refs[1][1]]
        assert _assert_pair(out, refs) == 1
    assert refs[1][1] == f"m.onnx.{hashlib.sha256(refs[1][2]).hexdigest()[:16]}.data"
