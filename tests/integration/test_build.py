"""Real diskimage-builder builds of every role into a temporary image store.

One build cache per session (``HC_TEST_BUILD_CACHE`` to reuse one across sessions): the first
role is built in one DIB pass from debootstrap that leaves the base layer behind, the others
start from it.  Cost here, on 2 cores: ~70 s for the first role, ~30 s for each other one.
``test_layered_build_equals_one_pass`` builds domu twice more in a cache of its own (~100 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import paths
from homecloud.core.manifest import CURRENT, ImageStore, sha256_file
from tests.support.builds import ROOT, ensure_built_all, hcbuild
from tests.support.treediff import differences

ROLES = ("domu", "hnode", "snode")

pytestmark = pytest.mark.skipif(
    shutil.which("disk-image-create") is None, reason="diskimage-builder not installed"
)


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_built_all(tmp_path_factory)[1]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_built_all(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def built_all(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    _store, _cache, ids, stderr = ensure_built_all(tmp_path_factory)
    assert sorted(ids) == list(ROLES)
    # progress: one line per phase with elapsed time, and the DIB log path
    assert "s] hnode: plan" in stderr
    if "unchanged" not in stderr:
        assert "DIB log: " in stderr
        assert "s] hnode: dib" in stderr
    return ids


def test_all_roles_build(store: Path, built_all: dict[str, str]) -> None:
    images = ImageStore(store)
    for role, bid in built_all.items():
        m = images.manifest(role)
        assert m is not None and m.build_id == bid and images.current_id(role) == bid
        for name, art in m.artifacts.items():
            f = store / role / bid / art.file
            assert f.stat().st_size == art.size, name
            assert sha256_file(f) == art.sha256, name
        assert m.versions["kernel"].startswith("6.1.")
        assert m.versions["dib"]
        assert any(p.startswith("systemd=") for p in m.packages)
        assert len(m.build_key) == 64
        kernel = (store / role / bid / "kernel").read_bytes()
        if m.boot.kind == "xen":   # the dom0 kernel: the ELF inside Debian's bzImage
            assert kernel[:4] == b"\x7fELF", role
        else:
            assert kernel[0x202:0x206] == b"HdrS", role  # a bzImage
    # hnode: Xen (gunzipped ELF) + dom0 kernel + small busybox initramfs + squashfs rootfs
    h = images.manifest("hnode")
    assert h is not None
    assert set(h.artifacts) == {"kernel", "initrd", "rootfs", "xen"}
    assert (h.boot.kind, h.boot.root, h.boot.loader) == ("xen", "aoe", "ipxe")
    assert "smap=0" in h.boot.xen_cmdline and "console=hvc0" in h.boot.cmdline
    assert (store / "hnode" / built_all["hnode"] / "xen").read_bytes()[:4] == b"\x7fELF"
    assert h.versions["xen"].startswith("4.17")
    assert h.artifacts["initrd"].size <= 8 * 2**20
    assert any(p.startswith("xen-utils-4.17=") for p in h.packages)
    # hnode: a zstd squashfs (the shared read-only root); domu: ext4 (superblock magic at
    # 1024 + 0x38), the template that instances clone read-write
    with open(store / "hnode" / built_all["hnode"] / "rootfs", "rb") as fs:
        assert fs.read(4) == b"hsqs"
    with open(store / "domu" / built_all["domu"] / "rootfs", "rb") as fs:
        fs.seek(1024 + 0x38)
        assert fs.read(2) == b"\x53\xef"
    # snode: the whole system is the initrd (zstd cpio), with vblade and mdadm
    s = images.manifest("snode")
    assert s is not None and s.boot.root == "ram" and s.boot.kind == "linux"
    assert (store / "snode" / built_all["snode"] / "initrd").read_bytes()[:4] == (
        b"\x28\xb5\x2f\xfd"
    )
    assert {"vblade", "mdadm", "aoetools", "lvm2", "drbd-utils"} <= {
        p.split("=")[0] for p in s.packages}
    d = images.manifest("domu")
    assert d is not None and d.boot.root == "disk" and "root=LABEL=hc-root" in d.boot.cmdline
    _modules_pruned(store, built_all)


def _modules_pruned(store: Path, built_all: dict[str, str]) -> None:
    """hnode and snode prune the kernel modules no server loads (prune_sets.server of
    kernels/debian-6.1.yaml) and the tree's depmod rebuilt the indexes; domu keeps them."""
    images = ImageStore(store)
    hroot = store / "hnode" / built_all["hnode"] / "rootfs"
    names = subprocess.run(["unsquashfs", "-l", "-no-progress", str(hroot)], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    mods = sorted({n.split("/kernel/", 1)[0].removeprefix("squashfs-root/")
                   for n in names if "/modules/" in n and "/kernel/" in n})
    assert len(mods) == 1, mods       # usr/lib/modules/VERSION
    kos = [n for n in names if n.endswith(".ko")]
    # gone, except the few a kept module needs (snd.ko for thinkpad_acpi, drm.ko for typec)
    for gone in ("/snd-hda-intel.ko", "/amdgpu.ko", "/i915.ko", "/iwlwifi.ko", "/btusb.ko"):
        assert not [n for n in kos if n.endswith(gone)], gone
    assert len([n for n in kos if "/kernel/sound/" in n or "/drivers/gpu/" in n]) < 10
    for needed in ("drivers/block/aoe/aoe.ko", "drivers/md/raid1.ko", "fs/squashfs/squashfs.ko",
                   "drivers/block/xen-blkback/xen-blkback.ko", "net/bridge/bridge.ko"):
        assert any(n.endswith("/kernel/" + needed) for n in kos), needed

    def cat(name: str) -> str:
        return subprocess.run(["unsquashfs", "-cat", str(hroot), f"{mods[0]}/{name}"],
                              check=True, capture_output=True, text=True).stdout

    dep = cat("modules.dep")
    assert "kernel/drivers/block/aoe/aoe.ko:" in dep and "snd-hda-intel" not in dep
    assert len(dep.splitlines()) == len(kos)          # depmod saw exactly what is left
    assert "snd_hda_intel" not in cat("modules.alias")
    for role in ("hnode", "snode"):
        m = images.manifest(role)
        assert m is not None
        removed, total = map(int, m.versions["modules_pruned"].split(" of "))
        assert 1000 < removed < total, (role, removed, total)
    d = images.manifest("domu")
    assert d is not None and "modules_pruned" not in d.versions


def test_unchanged_inputs_return_the_same_build(store: Path, build_cache: Path,
                                                built_all: dict[str, str]) -> None:
    for role, bid in built_all.items():
        r = hcbuild("image", role, "--out", str(store), "--cache", str(build_cache))
        assert r.returncode == 0, r.stderr
        _role, bid2, _path, state, _secs = r.stdout.split()
        assert (bid2, state) == (bid, "unchanged")
    r = hcbuild("list", "--out", str(store))
    assert all(bid in r.stdout for bid in built_all.values())


# ------------------------------------------------------------------- base layer
# what differs between any two builds of the same inputs, however they are made (measured):
# DIB's record of its command line and environment (paths of the build), ldconfig's cache of
# file times, the blkid cache of the build's loop devices, open-iscsi's random initiator
# name, and the image's own initramfs (its cpio holds the time it was made)
BUILD_NOISE = ("etc/dib-manifests/dib_arguments", "etc/dib-manifests/dib_environment",
               "var/cache/ldconfig/aux-cache", "run/blkid/blkid.tab",
               "etc/iscsi/initiatorname.iscsi", "boot/initrd.img-")


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop,ro,noload", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_layered_build_equals_one_pass(tmp_path: Path) -> None:
    """A build that starts from the cached base layer makes the same root tree as the one pass
    from debootstrap that took the layer (a fresh cache, so the first build is that pass)."""
    cache, one, layered = tmp_path / "cache", tmp_path / "one", tmp_path / "layered"
    r1 = hcbuild("image", "domu", "--out", str(one), "--cache", str(cache))
    assert r1.returncode == 0, r1.stderr
    assert "one pass from debootstrap" in r1.stderr
    layers = list((cache / "layers").glob("*/layer.tar"))
    assert len(layers) == 1 and layers[0].stat().st_size > 100 << 20
    r2 = hcbuild("image", "domu", "--out", str(layered), "--cache", str(cache), "--force")
    assert r2.returncode == 0, r2.stderr
    assert "from the cached base layer" in r2.stderr and "debootstrap" not in r2.stderr
    a, b = (ImageStore(s).manifest("domu") for s in (one, layered))
    assert a is not None and b is not None and a.build_key == b.build_key
    assert a.packages == b.packages  # the same package versions, one dpkg database
    with mounted(one / "domu" / a.build_id / "rootfs", tmp_path / "ma") as ma, \
            mounted(layered / "domu" / b.build_id / "rootfs", tmp_path / "mb") as mb:
        diff = differences(ma, mb, ignore=BUILD_NOISE)
    assert diff == [], "\n".join(diff[:40])


# --------------------------------------------------------------- failure and SIGKILL
def toggle_script(stage: str) -> str:
    """Test-only script: succeeds, fails or stalls depending on HC_TEST_MODE; ``stage`` is ""
    (install.d, before DIB hands the tree over) or "-final" (finalise.d, after)."""
    return f"""#!/bin/bash
# test-only: succeed, fail or stall depending on HC_TEST_MODE

if [ "${{DIB_DEBUG_TRACE:-0}}" -gt 0 ]; then
    set -x
fi
set -eu -o pipefail

echo "hc-test-toggle{stage} mode=${{HC_TEST_MODE}}"
case "${{HC_TEST_MODE}}" in
    fail{stage}) echo "hc-test-toggle{stage}: failing on purpose" >&2; exit 1 ;;
    stall{stage}) sleep 20 ;;
esac
echo ok > /etc/hc-test-toggle{stage}
"""


# (mode, the script that fails or stalls in it)
TOGGLES = [("fail", "install.d/60-hc-test-toggle"),
           ("fail-final", "finalise.d/70-hc-test-toggle-final")]


@pytest.fixture(scope="module")
def test_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped inputs plus a test-only element and profile."""
    d = tmp_path_factory.mktemp("hc-data")
    for name in ("elements", "profiles", "kernels"):
        shutil.copytree(paths.data_root() / name, d / name)
    el = d / "elements" / "hc-test-toggle"
    (el / "install.d").mkdir(parents=True)
    (el / "environment.d").mkdir()
    (el / "README.md").write_text(
        "# hc-test-toggle\n\nTest only.\n\n| Variable | Default | Description |\n"
        "|---|---|---|\n| `HC_TEST_MODE` | `ok` | ok, fail, stall, fail-final or "
        "stall-final |\n"
    )
    (el / "element-deps").write_text("hc-base\n")
    (el / "environment.d" / "10-hc-test-toggle").write_text(
        "export HC_TEST_MODE=${HC_TEST_MODE:-ok}\n")
    (el / "finalise.d").mkdir()
    for stage, script in (("", "install.d/60-hc-test-toggle"),
                          ("-final", "finalise.d/70-hc-test-toggle-final")):
        s = el / script
        s.write_text(toggle_script(stage))
        s.chmod(0o755)
    return d


def write_toggle_profile(data: Path, mode: str) -> None:
    (data / "profiles" / "toggle.yaml").write_text(
        "description: test-only role\nelements: [hc-test-toggle]\nkernel: debian-6.1\n"
        "artifacts: [kernel, rootfs]\nroot: disk\n"
        f"rootfs: {{free_mb: 16}}\nenv: {{HC_TEST_MODE: {mode}}}\n"
    )


@pytest.fixture(scope="module")
def toggle_store(tmp_path_factory: pytest.TempPathFactory, test_data: Path,
                 build_cache: Path) -> Iterator[tuple[Path, str]]:
    st = tmp_path_factory.mktemp("toggle-images")
    write_toggle_profile(test_data, "ok")
    r = hcbuild("image", "toggle", "--out", str(st), "--cache", str(build_cache),
                env={"HC_DATA_DIR": str(test_data)})
    assert r.returncode == 0, r.stdout + r.stderr
    yield st, r.stdout.split()[1]


@pytest.mark.parametrize(("mode", "script"), TOGGLES)
def test_failed_build_leaves_current_and_prints_log_tail(
        test_data: Path, build_cache: Path, toggle_store: tuple[Path, str], mode: str,
        script: str) -> None:
    """A script fails before DIB hands the tree over (install.d) or after (finalise.d)."""
    st, good = toggle_store
    write_toggle_profile(test_data, mode)
    r = hcbuild("image", "toggle", "--out", str(st), "--cache", str(build_cache),
                "--profiles-dir", str(test_data / "profiles"))
    assert r.returncode == 5, r.stderr
    assert f"in {script} (element hc-test-toggle)" in r.stderr
    assert "disk-image-create -a amd64 -t raw" in r.stderr
    assert "hcbuild: full log: " in r.stderr
    assert "failing on purpose" in r.stderr  # the log tail
    assert os.readlink(st / "toggle" / CURRENT) == good
    assert [p.name for p in (st / "toggle").iterdir() if p.name.startswith(".tmp")] == []
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if str(st) in m]


@pytest.mark.parametrize("stage", ["", "-final"])
def test_sigkill_mid_build_then_next_run_cleans(
        test_data: Path, build_cache: Path, toggle_store: tuple[Path, str], stage: str) -> None:
    """hcbuild killed while a script stalls before DIB hands the tree over, or after."""
    st, good = toggle_store
    write_toggle_profile(test_data, f"stall{stage}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "image", "toggle", "--out", str(st),
         "--cache", str(build_cache)],
        cwd=ROOT, env={**os.environ, "HC_DATA_DIR": str(test_data)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 900
        log: Path | None = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "DIB log: " in line and "base layer" not in line:
                log = Path(line.split("DIB log: ", 1)[1].strip())
                break
        assert log is not None
        marker = f"hc-test-toggle{stage} mode=stall{stage}"
        while not log.is_file() or marker not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        assert any(p.name.startswith(".tmp-") for p in (st / "toggle").iterdir())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert os.readlink(st / "toggle" / CURRENT) == good
    # the next run (inputs back to the published build) removes the leftovers, reuses `good`
    write_toggle_profile(test_data, "ok")
    r = hcbuild("image", "toggle", "--out", str(st), "--cache", str(build_cache),
                env={"HC_DATA_DIR": str(test_data)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "removed leftovers" in r.stderr
    assert r.stdout.split()[1] == good
    assert [p.name for p in (st / "toggle").iterdir() if p.name.startswith(".")] == [".lock"]
    m = json.loads((st / "toggle" / good / "manifest.json").read_text())
    assert m["build_id"] == good
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if str(st) in m]
