"""Atomic file writes: write a temporary file in the destination folder, flush, fsync, rename.

A crash or error leaves either the old file or the new one, never a half-written file. A process
killed while writing (kill -9, power loss) leaves its temporary file behind: temporary names carry
the writer's host and PID (`.NAME.HOST.PID.XXXXXXXX.tmp`), and the next write to the same output
removes those whose writer is provably gone (same host, PID no longer alive), with a note.

A model with external data is two files, which no single rename replaces together: its data file
is named by its content (`OUT.<16 hex of sha256>.data`, `atomic_model_and_data`), goes into place
first, under its own name, then the model replaces the old one in one rename, and only then the old
model's data file is removed. Every moment leaves a model at OUT with its data, old or new.

Failures to write (a file where a folder is needed, a folder where a file is, no space) become
`OutputError`s: one line naming the path. `undo_on_error` removes what a failed command committed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from onnxprune.core.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)

log = logging.getLogger("onnxprune")

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_JOURNALS: list[list[tuple[str, Path]]] = []  # open `undo_on_error` blocks: what they committed


# ---------------------------------------------------------------------------------- stale temps

def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """Temporary files of writes to `path` whose writer is provably dead: written on this host by a
    PID that no longer runs. Others (another host, a live PID, names without a PID) are left alone."""
    path = Path(path)
    head = f".{path.name}.{_HOST}."
    found = []
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return []
    for name in entries:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        pid_text, _, rest = name[len(head):-len(".tmp")].partition(".")
        if not pid_text.isdigit() or not rest or "." in rest:
            continue
        pid = int(pid_text)
        if pid != os.getpid() and not _alive(pid):
            found.append((path.parent / name, pid))
    return sorted(found)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove `stale_temps(path)`, saying so on the `onnxprune` logger (stderr by default)."""
    removed = []
    for tmp, pid in stale_temps(path):
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # another writer cleaned it up first
            continue
        except OSError:
            continue
        log.warning("onnxprune: note: removed %s, a temporary file left by an interrupted run (pid %d)", tmp, pid)
        removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------ errors and undo

def _record(kind: str, path: Path) -> None:
    for journal in _JOURNALS:
        journal.append((kind, path))


def record_tree(path: str | os.PathLike) -> None:
    """Note a folder a command published (removed again by `undo_on_error`)."""
    _record("tree", Path(path))


def keep_on_error(path: str | os.PathLike) -> None:
    """Exempt the file `path` from `undo_on_error`: a partial result worth keeping (a sweep's points)."""
    path = Path(path).resolve()
    for journal in _JOURNALS:
        journal[:] = [(kind, p) for kind, p in journal if p.resolve() != path]


@contextlib.contextmanager
def undo_on_error(keep: tuple[type[BaseException], ...] = ()) -> Iterator[list[tuple[str, Path]]]:
    """Files and folders committed inside the block (by `atomic_open`, `atomic_model_and_data`,
    `record_tree`, and folders created for them) are removed again if the block raises, unless the
    exception is one of `keep`: a command that fails leaves no outputs behind."""
    journal: list[tuple[str, Path]] = []
    _JOURNALS.append(journal)
    try:
        yield journal
    except BaseException as e:
        if not isinstance(e, keep):
            for kind, path in reversed(journal):
                with contextlib.suppress(OSError):
                    if kind == "tree":
                        shutil.rmtree(path)
                    elif kind == "dir":
                        path.rmdir()  # only when empty
                    else:
                        path.unlink()
        raise
    finally:
        _JOURNALS.remove(journal)


def _blocked(path: Path) -> str | None:
    """Why a file cannot be created at `path` (None: nothing in the way that we can see)."""
    if path.is_dir():
        return "it is a folder; give a file path"
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"{parent} is a dangling link"
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Fail early (before any work) if the file `path` cannot be created."""
    why = _blocked(Path(path))
    if why:
        raise OutputError(f"{path}: cannot write the {what} there: {why}; choose another path")


def _output_error(path: Path, e: OSError, doing: str) -> OutputError:
    why = _blocked(path) or (e.strerror or str(e))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why += "; free some space"
    return OutputError(f"{path}: cannot {doing}: {why}; choose another path")


def make_parents(path: Path) -> None:
    """Create the folders above `path`, noting the new ones for `undo_on_error`; OutputError if
    something is in the way."""
    missing = []
    p = path.parent
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(path, e, "create its folder") from None
    for d in reversed(missing):
        _record("dir", d)


def _mkstemp(path: Path) -> tuple[int, str]:
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _output_error(path, e, "write") from None
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give outputs the usual permissions
    return fd, tmp


def _replace(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise _output_error(path, e, "write") from None
    _record("file", path)


# -------------------------------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path` atomically."""
    path = Path(path)
    make_parents(path)
    remove_stale_temps(path)
    fd, tmp = _mkstemp(path)
    try:
        try:
            text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}  # paths need not be UTF-8
            with os.fdopen(fd, mode, **text) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _output_error(path, e, "write") from e
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------- a model and its data

_DATA_TAIL = re.compile(r"\.[0-9a-f]{16}\.data")


def data_file_name(out_name: str, digest: str) -> str:
    """The name of the data file of the model file `out_name` whose content has sha256 `digest`:
    `OUT.<first 16 hex digits>.data`. Same content, same name; new content, a new name."""
    return f"{out_name}.{digest[:16]}.data"


def is_data_file_name(out_name: str, name: str) -> bool:
    """Whether `name` has the form of a data file onnxprune writes for the model file `out_name`."""
    return name.startswith(out_name) and _DATA_TAIL.fullmatch(name[len(out_name):]) is not None


def data_files_beside(out: str | os.PathLike) -> list[Path]:
    """The files beside `out` named like its data files (`OUT.<16 hex>.data`), sorted."""
    out = Path(out)
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    return sorted(out.parent / n for n in names if is_data_file_name(out.name, n))


def _sync_file_range():
    """libc's sync_file_range (Linux), or None: the one call that starts writing a range of a file
    to disk without waiting for it (os has no binding; posix_fadvise would also drop the pages)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return fn


_START_WRITEBACK = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class _HashingFile:
    """A binary file that hashes (sha256) what is written to it; other attributes are the file's.
    A large write is hashed on a second thread while it is written (hashlib and the write both
    release the GIL), and `write` returns only once both are done: the caller may reuse its buffer.
    Its pages are then handed to the disk at once (where the OS allows), so the fsync of the commit
    waits for little more than the last write instead of the whole file."""

    _OVERLAP = 1 << 20  # bytes: from this size on, hash and write at the same time

    def __init__(self, f: IO):
        self._f, self._sha, self.sealed = f, hashlib.sha256(), False
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def write(self, b) -> int:
        if self.sealed:
            raise ValueError("the data file is sealed: its name is taken from what was written before")
        if memoryview(b).nbytes < self._OVERLAP:
            n = self._f.write(b)
            self._sha.update(b)
            return n
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxprune-sha256")
        hashed = self._pool.submit(self._sha.update, b)
        try:
            start = self._f.tell()
            n = self._f.write(b)
            if _START_WRITEBACK is not None:
                self._f.flush()
                _START_WRITEBACK(self._f.fileno(), start, n, _SYNC_FILE_RANGE_WRITE)  # a failure: fsync does it all
        finally:
            hashed.result()
        return n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._f.close()

    def __getattr__(self, name):  # tell, flush, fileno, ...
        return getattr(self._f, name)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[int | None]:
    """An exclusive flock on `folder` (released when the process dies, kill -9 included); yields
    the folder's fd (None where the folder cannot be opened; then there is no lock)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield None
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock: no lock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(fd: int | None) -> None:
    """Make the renames done so far in a folder durable before the next step depends on them."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.fsync(fd)


class ModelAndData:
    """The temporary files of `atomic_model_and_data`: write the data to `data`, take its name with
    `data_name()` (after that no more data), write the model (which records that name) to `model`,
    then `commit()`. Without data (`data` is None) the model is written alone."""

    def __init__(self, out: Path, model: tuple[IO, str], data: tuple[IO, str] | None, protect: set[Path],
                 replaced: set[str]):
        self.out, self._protect, self._replaced = out, protect, replaced
        self._model, self._model_tmp = model
        self._data, self._data_tmp = (_HashingFile(data[0]), data[1]) if data else (None, None)
        self.data, self.model = self._data, self._model  # what the caller writes to
        self.data_path: Path | None = None  # where the data went (None: no data file was asked for)
        self.removed: list[Path] = []  # data files of `out` the commit removed
        self.committed = False

    def data_name(self) -> str:
        """Seal the data file and return its name, `OUT.<16 hex of its sha256>.data`. A save that
        never asks for it writes no data file (no model refers to one)."""
        if self._data is None:
            raise ValueError("atomic_model_and_data(..., data=False) has no data file")
        if not self._data.sealed:
            self._data.flush()
            self._data.sealed = True
            self.data_path = self.out.with_name(data_file_name(self.out.name, self._data.hexdigest()))
        return self.data_path.name

    def commit(self) -> None:
        """Put the files into place so that `out` holds a complete model at every moment: fsync
        them; then, under a lock on the folder, rename the data file to its content-derived name (a
        new name when the data differs, so the model now at `out` keeps its own), fsync the folder,
        rename the model over `out` (the one atomic step from the old model to the new), fsync the
        folder, and only then remove the data files of `out` no model refers to any more (the
        replaced model's, and any left by interrupted saves). The files stay open: a caller can
        still read them back."""
        if self.committed:
            return
        out = self.out
        if out.resolve() in self._protect or (self.data_path is not None and self.data_path.resolve() in self._protect):
            raise OutputError(f"{out}: refusing to overwrite the input model or its data; choose another output path")
        try:
            for f in (self._data, self._model) if self.data_path is not None else (self._model,):
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _output_error(out, e, "write") from e
        with _folder_lock(out.parent) as folder:  # concurrent saves to `out` never remove each other's data
            existed = True
            if self.data_path is not None:
                existed = self.data_path.exists()  # same content, same name: it stays valid throughout
                try:
                    os.replace(self._data_tmp, self.data_path)
                except OSError as e:
                    raise _output_error(self.data_path, e, "write") from None
                _fsync_dir(folder)  # the data file is in place before any model points at it
            try:
                os.replace(self._model_tmp, out)
            except OSError as e:
                if not existed:
                    with contextlib.suppress(OSError):
                        self.data_path.unlink()  # the old model at `out` does not use it
                raise _output_error(out, e, "write") from None
            _fsync_dir(folder)  # the new model is in place before its predecessor's data goes
            self.committed = True
            if self.data_path is not None:
                _record("file", self.data_path)  # undone after the model (journal order, reversed)
            _record("file", out)
            self.removed = self._remove_unused()

    def _remove_unused(self) -> list[Path]:
        removed = []
        for path in data_files_beside(self.out):
            if path == self.data_path or path.resolve() in self._protect:
                continue
            try:
                os.unlink(path)
            except OSError:  # a folder, or gone already
                continue
            if path.name not in self._replaced:  # the replaced model's own data goes without a word
                log.warning("onnxprune: note: removed %s, a data file of %s that no model refers to "
                            "(left by an interrupted save)", path, self.out.name)
            removed.append(path)
        return removed

    def _close(self) -> None:
        for f, tmp in ((self._model, self._model_tmp), (self._data, self._data_tmp)):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)  # after a commit: renamed, nothing left to remove


@contextlib.contextmanager
def atomic_model_and_data(out: str | os.PathLike, protect: Iterable[str | os.PathLike] = (),
                          replaced: Iterable[str] = (), data: bool = True) -> Iterator[ModelAndData]:
    """Write a model file `out` and its data file `OUT.<16 hex of the data's sha256>.data` beside
    it, so that a kill at any moment leaves at `out` the old model with its data, or the new one
    with its data: see `ModelAndData.commit` (called at the end of the block if the block did not).
    Naming the data file by its content keeps the output deterministic (same data, same name, same
    model bytes) and keeps the old data in place until the model that uses it is replaced. With
    `data=False` only the model is written (and data files of `out` are removed all the same).

    `protect`: files never to overwrite or remove (the input model's). `replaced`: names of the
    data files the model now at `out` uses; removing them is routine, removing other leftovers
    is noted on stderr. A failure leaves `out` and its data as they were; temporary files of
    writers that are gone are removed first, as by `atomic_open`."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out}: cannot write: it is a folder; give a file path; choose another path")
    make_parents(out)
    data_stem = out.with_name(out.name + ".data")  # temporary data files: .OUT.data.HOST.PID.*.tmp
    remove_stale_temps(out)
    remove_stale_temps(data_stem)
    opened: list[tuple[IO, str]] = []
    try:
        for path in (out, data_stem) if data else (out,):
            fd, tmp = _mkstemp(path)
            opened.append((os.fdopen(fd, "w+b"), tmp))
    except BaseException:
        for f, tmp in opened:
            f.close()
            os.unlink(tmp)
        raise
    pair = ModelAndData(out, opened[0], opened[1] if data else None, {Path(p).resolve() for p in protect},
                        set(replaced))
    try:
        try:
            yield pair
        except OSError as e:
            raise _output_error(out, e, "write") from e
        pair.commit()
    finally:
        pair._close()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
