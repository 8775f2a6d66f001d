"""Compare two root trees by content: type, mode, owner, size, sha256, link target, device
number and extended attributes of every path (timestamps are not compared)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path


def _xattrs(p: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False)) for n in names))


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """relative path -> what is compared, for every path under ``root`` (one filesystem)."""
    out: dict[str, tuple[object, ...]] = {}
    dev = root.lstat().st_dev
    for d, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = os.path.join(d, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if st.st_dev != dev:
                dirs[:] = [x for x in dirs if x != name]
                continue
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                extra = (st.st_size, h.hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, extra, _xattrs(p))
    return out


def differences(a: Path, b: Path, ignore: Iterable[str] = ()) -> list[str]:
    """Paths whose description differs (or that exist on one side only), minus those under
    an ``ignore`` prefix."""
    da, db = describe(a), describe(b)
    skip = tuple(ignore)
    out: list[str] = []
    for rel in sorted(set(da) | set(db)):
        if skip and rel.startswith(skip):
            continue
        if da.get(rel) != db.get(rel):
            out.append(f"{rel}: {da.get(rel, 'absent')!s:.120} != {db.get(rel, 'absent')!s:.120}")
    return out
