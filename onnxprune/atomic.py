"""Atomic file writes: write a temporary file in the destination folder, flush, fsync, rename.

A crash or error leaves either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give outputs the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.chmod(tmp, 0o666 & ~_UMASK)
            temps.append((path, tmp))
            files.append(os.fdopen(fd, mode))
        yield files
        for f in files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for path, tmp in temps:
            os.replace(tmp, path)
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
