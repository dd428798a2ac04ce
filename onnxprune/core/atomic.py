"""Atomic file writes: write a temporary file in the destination folder, flush, fsync, rename.

A crash or error leaves either the old file or the new one, never a half-written file. A process
killed while writing (kill -9, power loss) leaves its temporary file behind: temporary names carry
the writer's host and PID (`.NAME.HOST.PID.XXXXXXXX.tmp`), and the next write to the same output
removes those whose writer is provably gone (same host, PID no longer alive), with a note.

Failures to write (a file where a folder is needed, a folder where a file is, no space) become
`OutputError`s: one line naming the path. `undo_on_error` removes what a failed command committed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator

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
    """Files and folders committed inside the block (by `atomic_open`, `atomic_files`,
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


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike, mode: str = "w+b") -> Iterator[list[IO]]:
    """Temporary files next to several `paths` (a model and its data file); only when the block
    succeeds are they fsynced and renamed into place, in the order given (the data before the model
    that points at it). On failure none of them is touched."""
    targets = [Path(p) for p in paths]
    temps: list[tuple[Path, str]] = []
    files: list[IO] = []
    try:
        for path in targets:
            why = _blocked(path) if path.is_dir() else None
            if why:  # a folder in the way: fail before anything is written
                raise OutputError(f"{path}: cannot write: {why}; choose another path")
            make_parents(path)
            remove_stale_temps(path)
            fd, tmp = _mkstemp(path)
            temps.append((path, tmp))
            files.append(os.fdopen(fd, mode))
        try:
            yield files
            for f in files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        except OSError as e:
            raise _output_error(targets[-1], e, "write") from e
        for path, tmp in temps:
            _replace(tmp, path)
    except BaseException:
        for f in files:
            f.close()
        for _, tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
