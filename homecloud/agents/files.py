"""The storage node's export files: images downloaded into ``<store>/images/<sha256>.img``
(sha256 and size checked while downloading; a partial download is never used; an intact copy
is reused, a damaged one downloaded again) and sparse volumes ``<store>/volumes/<name>.vol``
(created, grown, never shrunk).  Standard library only."""

from __future__ import annotations

import errno
import hashlib
import http.client
import mmap
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from homecloud.agents.common import AgentError, Output
from homecloud.agents.protocol import Export, ImageExport
from homecloud.core.files import fsync_dir
from homecloud.core.manifest import sha256_file

CHUNK = 1 << 20          # bytes read and written at a time
ALIGN = 4096             # O_DIRECT alignment (offset, length, buffer address)
SYNC_EVERY = 64 << 20    # buffered writes: flushed and dropped from the page cache this often


def download(url: str, dest: str | Path, limit: int, *, into_device: bool = False,
             progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Stream ``url`` into ``dest`` (a new file, or with ``into_device`` a block device written
    in place), fsynced; return its sha256 (hex) and size.  AgentError when it fails or takes
    over ``limit`` seconds; the caller checks the sha256 and size against its plan.
    ``progress`` is called with the bytes so far after each chunk.

    The bytes never pile up in the page cache: a device is written with O_DIRECT (aligned
    chunks from an aligned buffer; an unaligned tail through the cache, then fsynced), a file
    (or a device refusing O_DIRECT) is flushed and dropped from the cache every
    :data:`SYNC_EVERY` bytes.  Gigabytes of dirty pages on a lab snode (2 GiB of RAM, dm-thin
    over md RAID1) twice hung its kernel for good in a template import: once in writeback
    throttling, once with every dm-thin user waiting on the pool's metadata lock."""
    h, n = hashlib.sha256(), 0
    deadline = time.monotonic() + limit
    buf = mmap.mmap(-1, CHUNK)       # page-aligned, as O_DIRECT wants
    view = memoryview(buf)
    fd, direct = -1, False
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            fd, direct = _open_dest(dest, into_device)
            synced = 0
            while True:
                fill = 0
                while fill < CHUNK:
                    got = r.readinto(view[fill:])
                    if not got:
                        break
                    fill += got
                if fill:
                    h.update(view[:fill])
                    _write(fd, view, fill, n, direct, dest)
                    n += fill
                    if not direct and n - synced >= SYNC_EVERY:
                        os.fdatasync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        synced = n
                    if progress is not None:
                        progress(n)
                if time.monotonic() > deadline:
                    raise AgentError(f"download of {url} took over {limit}s")
                if fill < CHUNK:
                    break
            os.fsync(fd)
    except OSError as exc:
        where = f" into {dest}" if into_device else ""
        raise AgentError(f"download of {url}{where} failed: {exc}") from None
    except (ValueError, http.client.HTTPException) as exc:
        # IncompleteRead and friends (the server closed early) are not OSErrors
        raise AgentError(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return h.hexdigest(), n


def _open_dest(dest: str | Path, into_device: bool) -> tuple[int, bool]:
    """The descriptor to write ``dest`` through, and whether it is O_DIRECT."""
    if not into_device:
        return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), False
    try:
        return os.open(dest, os.O_WRONLY | os.O_DIRECT), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:   # EINVAL: no O_DIRECT there (tmpfs): the cache, then
            raise
        return os.open(dest, os.O_WRONLY), False


def _write(fd: int, view: memoryview, fill: int, offset: int, direct: bool,
           dest: str | Path) -> None:
    """``view[:fill]`` at ``offset`` (the descriptor's position)."""
    aligned = fill - fill % ALIGN if direct else fill
    mv = view[:aligned]
    while mv:
        k = os.write(fd, mv)
        if direct and k != len(mv):
            raise OSError(errno.EIO, f"short O_DIRECT write ({k} of {len(mv)} bytes)")
        mv = mv[k:]
    if aligned < fill:          # the stream's unaligned tail, through the page cache
        tail = os.open(dest, os.O_WRONLY)
        try:
            os.pwrite(tail, view[aligned:fill], offset + aligned)
            os.fsync(tail)
        finally:
            os.close(tail)


class Files:
    """The export files in the store: images (downloaded, sha256-checked) and volumes."""

    def __init__(self, store: str, run: str, dl_timeout: int, out: Output) -> None:
        """``run``: the agent's state directory (``verified/<sha256>`` marks checked images);
        ``dl_timeout``: the longest download, seconds."""
        self.out, self.dl_timeout = out, dl_timeout
        self.images = Path(store) / "images"
        self.volumes = Path(store) / "volumes"
        self.verified = Path(run) / "verified"

    def prepare(self, e: Export) -> str:
        if isinstance(e, ImageExport):
            return str(self.image(e))
        return str(self.volume(e.name, e.size))

    def image(self, e: ImageExport) -> Path:
        self.images.mkdir(parents=True, exist_ok=True)
        path = self.images / f"{e.sha256}.img"
        mark = self.verified / e.sha256
        if path.is_file():
            if mark.exists():
                return path
            if path.stat().st_size == e.size and sha256_file(path) == e.sha256:
                self.out.log(f"image {e.sha256}: present, sha256 ok (not downloaded)")
                mark.touch()
                return path
            self.out.log(f"image {e.sha256}: present but damaged: downloading it again")
            path.unlink()
        part = self.images / f".{e.sha256}.part"
        t0 = time.monotonic()
        self.out.log(f"image {e.sha256}: downloading {e.url} ({e.size} bytes)")
        try:
            got, n = download(e.url, part, self.dl_timeout)
            if got != e.sha256:
                raise AgentError(f"sha256 mismatch for {e.url}: got {got}, plan says {e.sha256}")
            if n != e.size:
                raise AgentError(f"size mismatch for {e.url}: got {n} bytes, plan says {e.size}")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        fsync_dir(self.images)   # a power cut right after "exports ready" must not lose it
        mark.touch()
        if e.size % 512:
            self.out.log(f"image {e.sha256}: warning: size {e.size} is not a multiple of 512")
        self.out.log(f"image {e.sha256}: downloaded and verified in "
                     f"{time.monotonic() - t0:.0f}s")
        return path

    def volume(self, name: str, size: int) -> Path:
        self.volumes.mkdir(parents=True, exist_ok=True)
        path = self.volumes / f"{name}.vol"
        try:
            if not path.is_file():
                with open(path, "wb") as f:
                    f.truncate(size)
                self.out.log(f"volume {name}: created ({size} bytes, sparse)")
            else:
                cur = path.stat().st_size
                if cur < size:
                    os.truncate(path, size)
                    self.out.log(f"volume {name}: grown from {cur} to {size} bytes")
                elif cur > size:
                    self.out.log(f"volume {name}: warning: is {cur} bytes, plan says {size}:"
                                 " never shrunk")
        except OSError as exc:
            raise AgentError(f"volume {name}: {path}: {exc.strerror or exc}") from None
        return path

    def collect(self, keep: set[str]) -> None:
        """Delete downloaded images no running export uses."""
        if not self.images.is_dir():
            return
        for f in sorted(self.images.glob("*.img")):
            if f.stem not in keep:
                self.out.log(f"image {f.stem}: no longer exported: deleted")
                f.unlink(missing_ok=True)
                (self.verified / f.stem).unlink(missing_ok=True)
