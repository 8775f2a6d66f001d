"""Write side of the image store: build directories, atomic publish, GC, lock, leftovers.

Layout and manifest format: ``homecloud.core.manifest``.  A build is assembled in a temporary
directory inside the role's folder (same filesystem), every file and the directory are
fsync'ed, the directory is renamed to its build id, and ``current`` is flipped by renaming a
temporary symlink over it, then the role folder is fsync'ed.  A failed build never touches
``current``.  A build killed at any point leaves ``current`` complete; its leftovers
(``.tmp-*`` directories, ``.current-*`` symlinks) are removed by the next run, which holds the
role's lock (flock on ``<role>/.lock``) while it does so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from builder.errors import LockBusyError, StoreError
from builder.run import run
from homecloud.core.files import LockBusy, fsync_path, fsync_tree, locked
from homecloud.core.manifest import CURRENT, MANIFEST_NAME, ManifestError, load_manifest

LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
LINK_PREFIX = ".current-"


def mounts_below(path: Path, name_prefix: str = "") -> list[Path]:
    """Mount points below ``path`` (whose first component below it starts with
    ``name_prefix``), deepest first."""
    prefix = str(Path(path).resolve()) + "/" + name_prefix
    found: list[Path] = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            mp = fields[4].replace("\\040", " ")
            if mp.startswith(prefix):
                found.append(Path(mp))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_below(path: Path, name_prefix: str = "") -> list[Path]:
    """Lazily unmount what a killed build left mounted below ``path`` (DIB's tmpfs and
    chroot bind mounts, hcbuild's scratch tmpfs)."""
    mps = mounts_below(path, name_prefix)
    for mp in mps:
        run(["umount", "-l", str(mp)], what=f"unmount {mp}", check=False)
    return mps


def safe_rmtree(path: Path) -> None:
    """rmtree that first unmounts what is mounted below ``path`` and refuses to run while
    anything still is (DIB bind-mounts the host's /dev, /proc and /sys into its chroot)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    unmount_below(path)
    left = mounts_below(path)
    if left:
        raise StoreError(path, f"still mounted below it, not removing: {[str(x) for x in left]}")
    shutil.rmtree(path, ignore_errors=True)


class RoleStore:
    """The builds of one role: ``<store>/<role>/``."""

    def __init__(self, store: Path, role: str) -> None:
        self.store = Path(store)
        self.role = role
        self.dir = self.store / role

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """Exclusive lock of the role; ``LockBusyError`` after ``wait`` seconds."""
        with contextlib.ExitStack() as stack:
            try:
                fd = stack.enter_context(locked(self.dir / LOCK_NAME, wait=wait))
            except LockBusy as exc:
                raise LockBusyError(self.dir / LOCK_NAME,
                                    "another hcbuild is building this role") from exc
            except OSError as exc:
                raise StoreError(self.dir, f"cannot create lock: {exc.strerror}") from exc
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield

    # ------------------------------------------------------------- leftovers
    def clean_leftovers(self) -> list[Path]:
        """Remove what killed builds left (call with the lock held)."""
        removed: list[Path] = []
        if not self.dir.is_dir():
            return removed
        for p in sorted(self.dir.iterdir()):
            if p.name.startswith(LINK_PREFIX) and p.is_symlink():
                p.unlink()
                removed.append(p)
            elif p.name.startswith(TMP_PREFIX):
                safe_rmtree(p)
                removed.append(p)
        return removed

    # ------------------------------------------------------------ read side
    def current_id(self) -> str | None:
        try:
            return Path(os.readlink(self.dir / CURRENT)).name
        except OSError:
            return None

    def build_ids(self) -> list[str]:
        """Published builds, oldest first (build ids start with a UTC timestamp)."""
        if not self.dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.dir.iterdir()
            if p.is_dir()
            and not p.is_symlink()
            and not p.name.startswith(".")
            and (p / MANIFEST_NAME).is_file()
        )

    def build_key_of(self, build_id: str) -> str | None:
        try:
            return load_manifest(self.dir / build_id).build_key
        except ManifestError:
            return None

    def find_by_key(self, key: str) -> str | None:
        """A published build made from exactly these inputs: current first, then the newest."""
        cur = self.current_id()
        if cur and self.build_key_of(cur) == key:
            return cur
        for bid in reversed(self.build_ids()):
            if bid != cur and self.build_key_of(bid) == key:
                return bid
        return None

    # ----------------------------------------------------------- write side
    def new_tmp_dir(self, build_id: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        d = self.dir / f"{TMP_PREFIX}{build_id}-{os.getpid()}"
        safe_rmtree(d)
        d.mkdir()
        return d

    def publish(self, tmp: Path, build_id: str) -> Path:
        """Make ``tmp`` the build ``build_id`` and point ``current`` at it, atomically."""
        final = self.dir / build_id
        if final.exists():
            raise StoreError(final, "build id already exists")
        if not (tmp / MANIFEST_NAME).is_file():
            raise StoreError(tmp, "no manifest.json: refusing to publish")
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_path(self.dir)
        self.set_current(build_id)
        return final

    def set_current(self, build_id: str) -> None:
        if not (self.dir / build_id / MANIFEST_NAME).is_file():
            raise StoreError(self.dir / build_id, "not a published build")
        link = self.dir / f"{LINK_PREFIX}{os.getpid()}"
        link.unlink(missing_ok=True)
        os.symlink(build_id, link)
        os.rename(link, self.dir / CURRENT)
        fsync_path(self.dir)

    def gc(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest builds; never ``current``.  Returns removed ids."""
        if keep < 1:
            raise StoreError(self.dir, f"--keep must be at least 1, got {keep}")
        cur = self.current_id()
        ids = [b for b in self.build_ids() if b != cur]
        budget = keep - (1 if cur else 0)
        doomed = ids[: max(0, len(ids) - budget)]
        for bid in doomed:
            # rename first: a half-deleted build is a leftover, never a visible build
            trash = self.dir / f"{TMP_PREFIX}gc-{bid}"
            os.rename(self.dir / bid, trash)
            safe_rmtree(trash)
        if doomed:
            fsync_path(self.dir)
        return doomed
