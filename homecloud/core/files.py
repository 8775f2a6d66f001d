"""The file helpers: one atomic write, one lock, fsync of files and directories."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
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


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory below ``root`` (bottom-up), then ``root``."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                fsync_path(p)
        fsync_path(Path(dirpath))


def write_all(fd: int, data: bytes,
              write: Callable[[int, memoryview], int] = os.write) -> None:
    """Write all of ``data`` to ``fd`` or raise: a short write is continued, a write of 0 bytes
    is ENOSPC (what a full file system does on the retry)."""
    view = memoryview(data)
    while view:
        n = write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"short write: {len(data) - len(view)} of {len(data)} "
                          "bytes written")
        view = view[n:]


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, *,
                 write: Callable[[int, memoryview], int] = os.write,
                 fsync: Callable[[int], None] = os.fsync) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix:
    temp file in the same directory, every byte written, fsync, rename over, fsync the
    directory.  On failure the temp file is removed (it may be what fills the disk) and the old
    file stays.  ``write``/``fsync``: injectable for tests of failing disks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            write_all(fd, raw, write)
            fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(dfd)
    finally:
        os.close(dfd)


class LockBusy(HomecloudError):
    """``locked(..., wait=False)`` found the lock held by another process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: locked by another process")


@contextlib.contextmanager
def locked(lock_path: Path, shared: bool = False, wait: bool | float = True) -> Iterator[int]:
    """Hold an flock on ``lock_path`` (created if needed) for the duration of the block; yields
    the lock file's descriptor.  ``wait``: True blocks until the lock is free; False (or 0)
    raises :class:`LockBusy` at once when it is taken; a number of seconds tries that long."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if wait is True:
            fcntl.flock(fd, flags)
        else:
            deadline = time.monotonic() + float(wait)
            while True:
                try:
                    fcntl.flock(fd, flags | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(lock_path) from None
                    time.sleep(0.2)
        yield fd
    finally:
        os.close(fd)
