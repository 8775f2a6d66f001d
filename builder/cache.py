"""Build keys: the sha256 of every input of a build, and the base-layer cache.

``role_inputs`` lists what a role image is made of (resolved profile, every file of every
homecloud element it uses with deps, the kernel and Xen specs, the diskimage-builder version,
mirror URLs, arch, the builder's own code).  Equal keys mean the published build can be reused.
``base_inputs`` is what the base layer (debootstrap, the base elements up to the install.d
checkpoint, the kernel) is made of; the layer lives in ``<cache>/layers/<base key>/``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import builder
from builder.elements import TREE_OUTPUT, Element
from builder.mirrors import Mirrors
from builder.store import safe_rmtree
from homecloud.core.files import LockBusy, fsync_path, locked

_PKG_DIR = Path(builder.__file__).resolve().parent
# the builder files the base layer depends on: how DIB is run (the rest post-processes)
BASE_CODE = ("dib.py", "cache.py")


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
    env: Mapping[str, str] | None = None,
    also: Iterable[str] = (),
) -> dict[str, Any]:
    """``env``: the profile's values of variables the base elements declare; ``also``: names
    of DIB elements outside the base whose environment.d is sourced before the checkpoint."""
    return {
        "what": "homecloud base layer",
        "elements": element_files(base_elements),
        "env": dict(sorted((env or {}).items())),
        "also": sorted(also),
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
    python: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``python``: the digests of the agents' Python sources (builder.pysrc) when the image
    installs them, else nothing (the key of an image without them does not change)."""
    doc: dict[str, Any] = {
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
    if python:
        doc["python"] = dict(sorted(python.items()))
    return doc


LAYER_ELEMENT = "hc-build-layers"
# DIB hands the finished tree over instead of copying it into an image (elements/hc-tree-output)
BUILD_ELEMENTS = (LAYER_ELEMENT, TREE_OUTPUT)  # hcbuild adds these to every build
LAYERS_KEPT = 2  # base layers kept in the cache (~0.9 GB each), most recently used first


def layer_env(*, kernel_package: str, layer_from: Path | None, layer_save: Path | None,
              image_cache: Path) -> dict[str, str]:
    """DIB's environment for hc-build-layers: start from ``layer_from`` (with the stand-in
    debootstrap tarball in ``image_cache``), or run debootstrap and take the checkpoint into
    ``layer_save``."""
    env = {"HC_LAYER_KERNEL": kernel_package, "DIB_IMAGE_CACHE": str(image_cache),
           "DIB_DEBOOTSTRAP_CACHE": "0"}  # never let DIB save its own debootstrap tarball
    if layer_from is not None:
        env.update(HC_LAYER_FROM=str(layer_from), DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE="1")
    elif layer_save is not None:
        env.update(HC_LAYER_SAVE=str(layer_save))
    return env


class LayerCache:
    """``<cache>/layers/<key>/layer.tar``: base layers, each the checkpoint one build took in
    passing (see elements/hc-build-layers).  A build whose layer is here starts from it; a
    build whose layer is not runs in one pass from debootstrap and leaves it here."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "layers"
        self.apt_cache = Path(cache_dir) / "apt"

    def entry(self, key: str) -> Path:
        return self.root / key

    def find(self, key: str) -> Path | None:
        tar = self.entry(key) / "layer.tar"
        return tar if tar.is_file() and (self.entry(key) / ".complete").is_file() else None

    @staticmethod
    def stand_in_name(release: str, arch: str, distro: str = "debian") -> str:
        """What DIB's debootstrap element looks for in DIB_IMAGE_CACHE."""
        return f"debootstrap-{distro}-{release}-{arch}.tar.gz"

    def _with_apt(self, d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        self.apt_cache.mkdir(parents=True, exist_ok=True)
        link = d / "apt"
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):
                os.symlink(self.apt_cache, link)
        return d

    def image_cache_dir(self, release: str, arch: str, stand_in: bool) -> Path:
        """A DIB_IMAGE_CACHE: the shared apt cache, and with ``stand_in`` an empty debootstrap
        tarball, so DIB unpacks nothing where it would run debootstrap (the layer is unpacked
        by hc-build-layers' root.d instead)."""
        d = self._with_apt(self.root / ("stand-in" if stand_in else "fresh"))
        name = d / self.stand_in_name(release, arch)
        if stand_in and not name.is_file():  # "fresh" never has one: DIB runs debootstrap
            tmp = d / f".{name.name}.{os.getpid()}"
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                       mtime=0) as gz:
                gz.write(b"\0" * 1024)  # an empty tar: two zero blocks
            os.replace(tmp, name)
        return d

    @contextlib.contextmanager
    def lock(self, key: str, shared: bool = False, wait: bool = True) -> Iterator[bool]:
        """The layer's lock: exclusive to save or remove it, shared while a build reads it.
        Yields False when ``wait`` is False and the lock is taken."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self.root / f"{key}.lock", shared=shared, wait=wait))
            except LockBusy:
                yield False
                return
            yield True

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Path | None]:
        """The layer of ``key`` (None when absent), kept from ``gc`` while in use; its
        ``.complete`` mtime records the last use."""
        with self.lock(key, shared=True):
            found = self.find(key)
            if found is not None:
                with contextlib.suppress(OSError):
                    os.utime(self.entry(key) / ".complete")
            yield found

    def gc(self, keep: int = LAYERS_KEPT) -> list[str]:
        """Remove all but the ``keep`` most recently used layers (not those in use), and the
        base tarballs of hcbuild versions before layers (``<cache>/base``)."""
        removed: list[str] = []
        legacy = self.root.parent / "base"
        if legacy.is_dir():
            safe_rmtree(legacy)
            removed.append(str(legacy))
        if not self.root.is_dir():
            return removed
        entries = [p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 64]

        def last_use(p: Path) -> float:
            try:
                return (p / ".complete").stat().st_mtime
            except OSError:
                return 0.0

        for entry in sorted(entries, key=last_use, reverse=True)[keep:]:
            with self.lock(entry.name, wait=False) as got:
                if got:
                    safe_rmtree(entry)
                    removed.append(entry.name)
        return removed

    def save(self, key: str, tar: Path) -> Path:
        """Keep ``tar`` (a checkpoint just taken) as the layer of ``key``; a layer another
        build saved meanwhile wins.  The tarball is moved when it can be, else copied."""
        with self.lock(key):
            found = self.find(key)
            if found is not None:
                tar.unlink(missing_ok=True)
                return found
            entry = self.entry(key)
            safe_rmtree(entry)
            entry.mkdir(parents=True)
            dest = entry / "layer.tar"
            tmp = entry / ".layer.tar.tmp"
            try:
                os.replace(tar, tmp)
            except OSError:  # another filesystem
                shutil.copyfile(tar, tmp)
                tar.unlink()
            fsync_path(tmp)
            os.replace(tmp, dest)
            (entry / ".complete").write_text(key + "\n")
            return dest
