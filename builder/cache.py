"""Build keys: the sha256 of every input of a build, and the base-layer cache.

``role_inputs`` lists what a role image is made of (resolved profile, every file of every
homecloud element it uses with deps, the kernel and Xen specs, the diskimage-builder version,
mirror URLs, arch, the builder's own code).  Equal keys mean the published build can be reused.
``base_inputs`` is the subset the shared base layer (debootstrap + base elements + kernel) is
made of; its tarball lives in ``<cache>/base/<base key>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import builder
from builder.dib import DibRun, run_dib
from builder.elements import Element
from builder.errors import CommandError
from builder.mirrors import Mirrors
from builder.progress import Progress
from builder.store import safe_rmtree

_PKG_DIR = Path(builder.__file__).resolve().parent
# the files the base layer depends on (the rest of the builder only post-processes)
BASE_CODE = ("dib.py", "cache.py")
# DIB's tar output leaves out /proc and /sys: the base tarball and every root tree get them
MOUNTPOINTS = (("proc", 0o555), ("sys", 0o555))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(doc: Mapping[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of ``doc``."""
    return sha256_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


@cache
def dib_version() -> str:
    try:
        return metadata.version("diskimage-builder")
    except metadata.PackageNotFoundError:
        return "absent"


def code_files(names: Iterable[str] | None = None) -> list[Path]:
    if names is not None:
        return [_PKG_DIR / n for n in names]
    files = [
        p
        for p in _PKG_DIR.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and "_data" not in p.relative_to(_PKG_DIR).parts
        and p.suffix not in (".pyc",)
    ]
    return sorted(files)


def code_version(names: Iterable[str] | None = None) -> str:
    """Version of the builder's own code: its package version plus a hash of its files."""
    h = hashlib.sha256(builder.__version__.encode())
    for p in code_files(names):
        h.update(str(p.relative_to(_PKG_DIR)).encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<absent>")
    return f"{builder.__version__}+{h.hexdigest()[:16]}"


def element_files(elements: Iterable[Element]) -> dict[str, str]:
    """``element/relative/path`` -> sha256 (and ``+x`` when executable) for homecloud elements.

    DIB's own elements are covered by the DIB version.
    """
    out: dict[str, str] = {}
    for el in elements:
        if el.external:
            out[f"{el.name}/"] = f"diskimage-builder {dib_version()}"
            continue
        for f in el.files():
            rel = f"{el.name}/{f.relative_to(el.path)}"
            mode = "+x" if os.access(f, os.X_OK) else ""
            out[rel] = sha256_bytes(f.read_bytes()) + mode
    return out


def file_digest(path: Path | None) -> str:
    if path is None:
        return ""
    return sha256_bytes(path.read_bytes()) if path.is_file() else "<absent>"


def base_inputs(
    *,
    base_elements: Iterable[Element],
    release: str,
    arch: str,
    kernel_spec: Path,
    mirrors: Mirrors,
) -> dict[str, Any]:
    return {
        "what": "homecloud base layer",
        "elements": element_files(base_elements),
        "release": release,
        "arch": arch,
        "kernel_spec": file_digest(kernel_spec),
        "dib": dib_version(),
        "mirrors": {"main": mirrors.main, "security": mirrors.security},
        "code": code_version(BASE_CODE),
    }


def role_inputs(
    *,
    profile: Mapping[str, Any],
    elements: Iterable[Element],
    kernel_spec: Path,
    xen_spec: Path | None,
    mirrors: Mirrors,
    arch: str,
    base_key: str,
) -> dict[str, Any]:
    return {
        "what": "homecloud role image",
        "profile": dict(profile),
        "elements": element_files(elements),
        "kernel_spec": file_digest(kernel_spec),
        "xen_spec": file_digest(xen_spec),
        "dib": dib_version(),
        "mirrors": {"main": mirrors.main, "security": mirrors.security},
        "arch": arch,
        "base": base_key,
        "code": code_version(),
    }


class BaseCache:
    """``<cache>/base/<key>/``: the base layer tarball, named the way DIB's debootstrap element
    looks for its own cached tarball, so DIB unpacks it instead of running debootstrap."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "base"
        self.apt_cache = Path(cache_dir) / "apt"

    def entry(self, key: str) -> Path:
        return self.root / key

    @staticmethod
    def tarball_name(release: str, arch: str, distro: str = "debian") -> str:
        return f"debootstrap-{distro}-{release}-{arch}.tar.gz"

    def tarball(self, key: str, release: str, arch: str) -> Path | None:
        p = self.entry(key) / self.tarball_name(release, arch)
        return p if p.is_file() and (self.entry(key) / ".complete").is_file() else None

    def image_cache_dir(self, key: str) -> Path:
        """A DIB_IMAGE_CACHE for builds on this base: the tarball plus a shared apt cache."""
        d = self.entry(key)
        d.mkdir(parents=True, exist_ok=True)
        self.apt_cache.mkdir(parents=True, exist_ok=True)
        link = d / "apt"
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                os.symlink(self.apt_cache, link)
        return d

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(
        self,
        *,
        key: str,
        elements: Sequence[str],
        known: Sequence[Element],
        kernel_package: str,
        elements_path: Sequence[Path],
        mirrors: Mirrors,
        release: str,
        arch: str,
        env: Mapping[str, str],
        log_path: Path,
        progress: Progress,
    ) -> Path:
        """The base tarball of ``key``, built with DIB (``-t tar``) when absent."""
        with self.lock(key):
            found = self.tarball(key, release, arch)
            if found is not None:
                progress.info(f"base layer {key[:12]}: cached")
                return found
            entry = self.image_cache_dir(key)
            work = entry / ".work"
            safe_rmtree(work)  # with a killed base build's DIB mounts
            work.mkdir()
            (work / "tmp").mkdir()
            progress.info(f"base layer {key[:12]}: building; DIB log: {log_path}")
            run = DibRun(
                elements=list(elements),
                output=work / "base",
                log_path=log_path,
                elements_path=list(elements_path),
                mirrors=mirrors,
                release=release,
                arch=arch,
                packages=[kernel_package],
                env={**env, "DIB_IMAGE_CACHE": str(entry), "DIB_DEBOOTSTRAP_CACHE": "0",
                     # DIB's own temporary dirs (and its tmpfs mount) below .work, so a killed
                     # build's mounts are found and removed by the next run
                     "TMPDIR": str(work / "tmp")},
            )
            with progress.step("base layer: diskimage-builder"):
                tar = run_dib(run, known)
            name = self.tarball_name(release, arch)
            with progress.step("base layer: compress"):
                add_mountpoints(tar, work)
                tmp = entry / f".{name}.tmp"
                # gzip framing is what DIB's debootstrap element reads (tar -xz); level 0
                # (stored blocks) costs a copy instead of tens of seconds of deflate
                with open(tmp, "wb") as raw:
                    with open(tar, "rb") as fin, gzip.GzipFile(
                        filename="", mode="wb", compresslevel=0, fileobj=raw, mtime=0
                    ) as gz:
                        shutil.copyfileobj(fin, gz, 4 << 20)
                    raw.flush()
                    os.fsync(raw.fileno())
                os.replace(tmp, entry / name)
                (entry / ".complete").write_text(key + "\n")
            safe_rmtree(work)
            return entry / name


def add_mountpoints(tar: Path, scratch: Path) -> None:
    """Append the empty /proc and /sys mount points to a DIB tar (DIB leaves them out)."""
    stage = scratch / "mountpoints"
    stage.mkdir(exist_ok=True)
    for name, mode in MOUNTPOINTS:
        (stage / name).mkdir(exist_ok=True)
        (stage / name).chmod(mode)
    cmd = ["tar", "-C", str(stage), "--numeric-owner", "--owner=0", "--group=0", "-rf", str(tar),
           *(f"./{n}" for n, _ in MOUNTPOINTS)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CommandError(cmd, r.returncode, "add mount points", tail=r.stderr.splitlines())
    shutil.rmtree(stage)
