"""Debian's kernel and Xen packages for the test VMs, fetched with apt and unpacked.

Test-only (the product takes the kernel from the tree it built: builder.kernel): a spec
(``kernels/*.yaml``) becomes files on disk, cached by package version under ``<cache>/kernel/``
and ``<cache>/xen/``.  Without usable apt metadata (offline, no lists) a complete cache entry
matching the spec is used.  Commands go through builder.run (CommandError on failure).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import gzip
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import CommandError
from builder.kernel import (
    KernelError,
    KernelSpec,
    KernelTree,
    XenSpec,
    _depmod,
    _kernel_versions,
    _version_key,
    kernel_tree_from_root,
)
from builder.run import run

STAMP = ".complete"


class NoAptMetadata(KernelError):
    """apt knows the package but tells no version."""


@dataclass(frozen=True)
class XenTree:
    xen_elf: Path
    version: str
    package: str = ""


def _apt_show(package: str, version: str | None = None) -> dict[str, str]:
    """Fields of the candidate (or the pinned ``version``) of ``package`` from apt's metadata."""
    cmd = ["apt-cache", "show", "--no-all-versions", package] if version is None else [
        "apt-cache", "show", f"{package}={version}"]
    out = run(cmd, what=f"apt metadata of {package}").stdout
    fields: dict[str, str] = {}
    for line in out.split("\n\n")[0].splitlines():
        m = re.match(r"^([A-Za-z0-9-]+):\s?(.*)$", line)
        if m:
            fields[m.group(1)] = m.group(2)
    if "Version" not in fields:
        raise NoAptMetadata(f"{shlex.join(cmd)}: no Version field for {package}")
    return fields


def _resolve_package(package: str, image_glob: str, version: str | None) -> tuple[str, str]:
    """(image package, version): follow ``package``'s Depends to the one matching ``image_glob``."""
    if fnmatch.fnmatchcase(package, image_glob):
        return package, _apt_show(package, version)["Version"]
    meta = _apt_show(package)
    for dep in meta.get("Depends", "").split(","):
        name = dep.split("|")[0].strip().split(" ")[0].split(":")[0]
        if fnmatch.fnmatchcase(name, image_glob):
            return name, _apt_show(name, version)["Version"]
    raise KernelError(f"{package}: no dependency matches {image_glob!r} "
                      f"(Depends: {meta.get('Depends', '')})")


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", s)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_and_extract(entry: Path, package: str, version: str) -> Path:
    """Fill ``entry`` with the .deb and ``root/``; returns root.  Caller holds the lock."""
    if entry.exists():
        shutil.rmtree(entry)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    tmp.chmod(0o755)
    try:
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
             f"{package}={version}"], what=f"download {package}={version}", cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download {package}={version}: expected one .deb in {tmp}, "
                              f"found {[d.name for d in debs]}")
        run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], what=f"unpack {debs[0].name}")
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry / "root"


def _resolve_or_cached(kind: str, cache_dir: Path, package: str, image_glob: str,
                       version: str | None) -> tuple[str, str]:
    """``_resolve_package``, or, when apt's metadata is unusable (no lists, offline), the newest
    complete cache entry whose package matches ``image_glob`` (and ``version`` when pinned)."""
    try:
        return _resolve_package(package, image_glob, version)
    except (CommandError, NoAptMetadata):
        found: list[tuple[str, str]] = []
        for stamp in (Path(cache_dir) / kind).glob(f"*/{STAMP}"):
            pkg, _, ver = stamp.read_text().strip().partition("=")
            if fnmatch.fnmatchcase(pkg, image_glob) and version in (None, ver):
                found.append((pkg, ver))
        if not found:
            raise
        return max(found, key=lambda pv: (_version_key(pv[1]), pv[0]))


def fetch_kernel(spec: KernelSpec, cache_dir: Path) -> KernelTree:
    """Download and unpack the kernel package of ``spec`` (cached by package version).

    Without usable apt metadata, a complete cache entry matching the spec is used."""
    package, version = _resolve_or_cached("kernel", cache_dir, spec.package, spec.image_package,
                                          spec.version)
    entry = Path(cache_dir) / "kernel" / _safe(f"{package}_{version}")
    with _locked(entry.with_name(entry.name + ".lock")):
        if not (entry / STAMP).is_file():
            root = _download_and_extract(entry, package, version)
            vers = _kernel_versions(root)
            if len(vers) != 1:
                raise KernelError(f"{package}={version}: expected one kernel, found {vers}")
            _depmod(root, vers[0])
            (entry / STAMP).write_text(f"{package}={version}\n")
        tree = kernel_tree_from_root(entry / "root")
    return KernelTree(tree.vmlinuz, tree.modules_dir, tree.version, package, version)


def fetch_xen(spec: XenSpec, cache_dir: Path) -> XenTree:
    """Download the hypervisor package of ``spec``; returns the gunzipped ELF (cached)."""
    package, version = _resolve_or_cached("xen", cache_dir, spec.package, spec.package,
                                          spec.version)
    entry = Path(cache_dir) / "xen" / _safe(f"{package}_{version}")
    elf = entry / "xen.elf"
    with _locked(entry.with_name(entry.name + ".lock")):
        if not (entry / STAMP).is_file():
            root = _download_and_extract(entry, package, version)
            src = root / spec.hypervisor
            if not src.is_file():
                raise KernelError(f"{package}={version}: no {spec.hypervisor} in the package "
                                  f"(spec {spec.source})")
            tmp = elf.with_suffix(".tmp")
            if src.suffix == ".gz":
                with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
                    shutil.copyfileobj(fi, fo)
            else:
                shutil.copyfile(src, tmp)
            if tmp.read_bytes()[:4] != b"\x7fELF":
                raise KernelError(f"{src}: not an ELF after decompression")
            os.replace(tmp, elf)
            (entry / STAMP).write_text(f"{package}={version}\n")
    return XenTree(elf, version, package)
