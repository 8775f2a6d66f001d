"""Cached boot artifacts for e2e tests: the Debian kernel, Xen, small initramfs images, tiny roots.

Everything lives under ``$HC_TEST_CACHE`` (default ``/var/cache/homecloud/test``) and is reused by
later test runs: the kernel and Xen are cached by package version (tests/support/kernels.py),
initramfs images and root images by a hash of everything that goes into them.  Functions are
memoised per process, so they can be called from any fixture or test.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from builder import initramfs as initramfs_mod
from builder.initramfs import INIT_DIR, build_initramfs
from builder.kernel import KernelSpec, KernelTree, XenSpec, load_kernel_spec, load_xen_spec
from tests.support.kernels import XenTree, fetch_kernel, fetch_xen

BUSYBOX = Path("/bin/busybox")
KERNEL_SPEC = "debian-6.1"
XEN_SPEC = "xen-4.17"


def cache_dir() -> Path:
    d = Path(os.environ.get("HC_TEST_CACHE", "/var/cache/homecloud/test"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@functools.cache
def kernel_spec() -> KernelSpec:
    return load_kernel_spec(KERNEL_SPEC)


@functools.cache
def xen_spec() -> XenSpec:
    return load_xen_spec(XEN_SPEC)


@functools.cache
def debian_kernel() -> KernelTree:
    """Debian's 6.1 kernel (vmlinuz + depmod'ed modules), downloaded once per package version."""
    return fetch_kernel(kernel_spec(), cache_dir())


@functools.cache
def xen() -> XenTree:
    """Debian's Xen 4.17 hypervisor as a gunzipped ELF."""
    return fetch_xen(xen_spec(), cache_dir())


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.read_bytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# the test initramfs modes (marker): templates that extend builder/init/init.sh.j2
MODES_DIR = Path(__file__).resolve().parent / "init"


def _initramfs_inputs() -> list[Path]:
    return [Path(initramfs_mod.__file__), *sorted(INIT_DIR.iterdir()),
            *sorted(MODES_DIR.iterdir()), BUSYBOX]


@functools.cache
def _initramfs(mode: str, params_json: str, with_kernel: bool, compression: str) -> Path:
    params: dict[str, str] = json.loads(params_json)
    kernel = debian_kernel() if with_kernel else None
    modules = kernel_spec().modules_for(mode) if with_kernel else ()
    autoload = kernel_spec().autoload_for(mode) if with_kernel else ()
    key = _digest(mode, params, compression, kernel.version if kernel else None,
                  list(modules), list(autoload), *_initramfs_inputs())
    out = cache_dir() / "initramfs" / f"{mode}-{key}.img"
    if not out.is_file():
        build_initramfs(out, mode=mode, kernel=kernel, modules=modules, autoload=autoload,
                        params=params, compression=compression, busybox=BUSYBOX,
                        modes_dir=MODES_DIR)
    return out


def marker_initramfs(marker: str = "HC-MARKER", compression: str = "gzip") -> Path:
    """Initramfs that prints ``marker`` (or hc.marker=) on the console and powers off."""
    return _initramfs("marker", json.dumps({"marker": marker}), False, compression)


def aoe_root_initramfs(params: Mapping[str, str] | None = None,
                       compression: str = "gzip") -> Path:
    """The hnode initramfs: AoE (or hc.root=) root, read-only + tmpfs overlay, switch_root."""
    return _initramfs("aoe-root", json.dumps(dict(params or {}), sort_keys=True), True,
                      compression)


def ram_root_initramfs(params: Mapping[str, str] | None = None,
                       compression: str = "gzip") -> Path:
    """The snode initramfs: fetch hc.rootfs= over HTTP into RAM, switch_root."""
    return _initramfs("ram-root", json.dumps(dict(params or {}), sort_keys=True), True,
                      compression)


# ---------------------------------------------------------------- tiny roots for switch_root

ROOT_INIT = """#!/bin/busybox sh
# tiny test root: prove we are the switched-to root, then print the marker and power off
export PATH=/bin
busybox echo "root: / is $(busybox grep ' / ' /proc/mounts)"
if busybox touch /hc-write-test 2>/dev/null; then busybox echo "root: writable"; fi
busybox echo "root: pid $$"
busybox echo "root: machine-id $(busybox cat /etc/machine-id 2>/dev/null)"
busybox echo {marker}
busybox sync
busybox poweroff -f
"""


MACHINE_ID_UNSET = "uninitialized\n"


def busybox_root(dest: Path, marker: str) -> Path:
    """A minimal root tree at ``dest``: static busybox and an /sbin/init printing ``marker``."""
    dest = Path(dest)
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    (dest / "bin/sh").unlink(missing_ok=True)
    (dest / "bin/sh").symlink_to("busybox")
    # as Debian 12's images ship it (machine-id(5)): the init must still make an id
    (dest / "etc/machine-id").write_text(MACHINE_ID_UNSET)
    init = dest / "sbin/init"
    init.write_text(ROOT_INIT.format(marker=marker))
    init.chmod(0o755)
    return dest


def ext4_image(src: Path, out: Path, size_mb: int = 16) -> Path:
    """An ext4 file system image of ``src`` (mke2fs -d; no root or loop device needed)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "hcroot", "-d", str(src), str(tmp),
           f"{size_mb}M"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr.strip()}")
    os.replace(tmp, out)
    return out


@functools.cache
def marker_root_image(marker: str) -> Path:
    """A cached ext4 image of ``busybox_root(marker)`` (treat as read-only: copy before writing)."""
    key = _digest(marker, ROOT_INIT, BUSYBOX, MACHINE_ID_UNSET)
    out = cache_dir() / "roots" / f"ext4-{key}.img"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as td:
            ext4_image(busybox_root(Path(td) / "root", marker), out)
    return out


@functools.cache
def marker_root_squashfs(marker: str) -> Path:
    """A cached squashfs of ``busybox_root(marker)``, packed the way hcbuild packs the hnode
    root (builder.pack.pack_squashfs)."""
    from builder.pack import pack_squashfs

    key = _digest(marker, ROOT_INIT, BUSYBOX, MACHINE_ID_UNSET, "squashfs")
    out = cache_dir() / "roots" / f"squashfs-{key}.img"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as td:
            tmp = Path(td) / "root.sqfs"
            pack_squashfs(busybox_root(Path(td) / "root", marker), tmp)
            os.replace(tmp, out)
    return out
