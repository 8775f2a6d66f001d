"""The file helpers: one atomic write, one lock, fsync of files and directories."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from homecloud.core.errors import HomecloudError


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename or a new entry in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix:
    temp file in the same directory, fsync, rename over, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class LockBusy(HomecloudError):
    """``locked(..., wait=False)`` found the lock held by another process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: locked by another process")


@contextlib.contextmanager
def locked(lock_path: Path, shared: bool = False, wait: bool = True) -> Iterator[int]:
    """Hold an flock on ``lock_path`` (created if needed) for the duration of the block; yields
    the lock file's descriptor.  ``wait=False`` raises :class:`LockBusy` instead of waiting."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, flags | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(lock_path) from None
        yield fd
    finally:
        os.close(fd)
