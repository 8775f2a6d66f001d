"""The artifacts of a build, taken from the finished tree, and its manifest.

kernel, xen and initrd in one thread, the rootfs in another (``step_artifacts``); then the
manifest that describes them (``step_manifest``).
"""

from __future__ import annotations

import gzip
import shutil
import time
from datetime import UTC, datetime

from builder import cache
from builder.context import ROOTFS_LABEL, Build
from builder.errors import BuildError
from builder.kernel import bzimage_elf
from builder.pack import check_squashfs, fsck, pack_ext4, pack_ram_root, pack_squashfs
from builder.tree import package_version
from homecloud.core.manifest import Manifest, artifact_for


def step_kernel(b: Build) -> None:
    """The kernel as booted: a bzImage for Linux roles; for a Xen role the dom0 kernel as the
    ELF inside it, as the hypervisor itself is published gunzipped (Xen unpacks an xz bzImage
    with its own decompressor: 5.2 s of a lab hnode's boot under TCG, ``Building a PV Dom0``;
    the 66 MB ELF downloads in about a second there)."""
    tree = b.kernel_tree
    if b.resolved.xen is not None:
        b.artifact("kernel").write_bytes(
            bzimage_elf(tree.vmlinuz.read_bytes(), where=str(tree.vmlinuz)))
    else:
        shutil.copyfile(tree.vmlinuz, b.artifact("kernel"))
    b.versions["kernel"] = tree.version
    b.versions["kernel_package"] = package_version(b.packages, f"linux-image-{tree.version}")


def step_xen(b: Build) -> None:
    xs = b.resolved.xen
    if xs is None:  # the role boots no hypervisor
        return
    src = b.tree / xs.hypervisor.lstrip("/")
    if not src.is_file():
        raise BuildError(f"{src}: hypervisor of {xs.name} not in the image (element hc-xen-dom0?)")
    with gzip.open(src, "rb") as fin, open(b.artifact("xen"), "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    b.versions["xen"] = package_version(b.packages, xs.package) or xs.version or ""


def step_initrd(b: Build) -> None:
    p = b.profile
    if "initrd" not in p.artifacts:
        return
    out = b.artifact("initrd")
    if p.root == "ram":
        with b.progress.step("initrd: pack RAM root"):
            pack_ram_root(b.tree, out)
        return
    if b.plan.has("hc-netroot-initramfs"):
        from builder.initramfs import build_initramfs

        ks = b.resolved.kernel
        extra = p.env.get("HC_NETROOT_EXTRA_MODULES", "").split()
        with b.progress.step("initrd: busybox network-root initramfs"):
            res = build_initramfs(
                out,
                mode="aoe-root",
                kernel=b.kernel_tree,
                modules=(*ks.modules_for("aoe-root"), *extra),
                autoload=ks.autoload_for("aoe-root"),
            )
        b.versions["initramfs_modules"] = " ".join(res.modules)
        return
    version = b.kernel_tree.version
    cands = sorted((b.tree / "boot").glob(f"initrd.img-{version}"))
    if not cands:
        raise BuildError(f"{b.tree}/boot: no initrd.img-{version} in the image")
    shutil.copyfile(cands[0], out)


def step_rootfs(b: Build) -> None:
    p = b.profile
    if "rootfs" not in p.artifacts:
        return
    out = b.artifact("rootfs")
    if p.rootfs_format == "squashfs":
        with b.progress.step("rootfs: pack squashfs (zstd)"):
            pack_squashfs(b.tree, out)
            check_squashfs(out)
        return
    with b.progress.step("rootfs: pack ext4 at its size"
                         + (f" + {p.rootfs_free_mb} MiB free" if p.rootfs_free_mb else "")):
        pack_ext4(b.tree, out, ROOTFS_LABEL, p.rootfs_free_mb)
        fsck(out)


def step_artifacts(b: Build) -> None:
    """kernel, xen and initrd in one thread, the rootfs in another (the rootfs pack is the
    long one, and mke2fs uses one core); the tree goes with the work directory at publish."""

    def small() -> None:
        for step in (step_kernel, step_xen, step_initrd):
            step(b)

    b.progress.parallel(small, lambda: step_rootfs(b))
    b.settle()  # DIB has exited, successfully, before anything is published


def step_manifest(b: Build) -> None:
    p, boot = b.profile, b.resolved.boot
    rp = b.resolved.to_dict()
    for name in p.artifacts:
        f = b.artifact(name)
        if not f.is_file():
            raise BuildError(f"{f}: artifact {name!r} was not produced")
        b.artifacts[name] = artifact_for(f)
    b.versions["dib"] = cache.dib_version()
    b.versions["builder"] = cache.code_version()
    b.versions["base_layer"] = b.plan.base_key
    mirrors = b.plan.mirrors
    rp["build"] = {
        "seconds": round(time.monotonic() - b.started, 1),
        "logs": [str(b.log)],
        "mirrors": {"main": mirrors.main, "security": mirrors.security},
    }
    m = Manifest(
        role=b.role,
        build_id=b.build_id,
        build_key=b.plan.key,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        artifacts=b.artifacts,
        boot=boot,
        versions=b.versions,
        packages=b.packages,
        profile=rp,
    )
    (b.tmp / "manifest.json").write_text(m.to_json())
