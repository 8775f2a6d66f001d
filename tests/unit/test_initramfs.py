"""The small initramfs: module closure from modules.dep, the newc writer, /init rendering and a
full build against a fake kernel tree (no root, no network)."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.initramfs import (
    INIT_MODES,
    CpioEntry,
    InitramfsError,
    ModuleMissing,
    build_initramfs,
    module_closure,
    pci_driver_table,
    read_newc,
    render_init,
    write_newc,
)
from builder.kernel import KernelTree
from tests.support.artifacts import MODES_DIR

VERSION = "6.1.0-99-amd64"

MODULES_DEP = """\
kernel/drivers/block/aoe/aoe.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:
kernel/drivers/net/ethernet/realtek/r8169.ko: kernel/drivers/net/phy/realtek.ko \
kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/realtek.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/libphy.ko:
kernel/drivers/net/ethernet/realtek/8139cp.ko: kernel/drivers/net/mii.ko
kernel/drivers/net/mii.ko:
"""

MODULES_ALIAS = """alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169
alias pci:v000010ECd00008139sv*sd*bc*sc*i* 8139cp
alias pci:v000010ECd00008139sv000010ECsd00008139bc*sc*i* 8139cp
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias pci:v000010ECd00008129sv*sd*bc*sc*i* 8139too
"""


@pytest.fixture
def kernel_tree(tmp_path: Path) -> KernelTree:
    mods = tmp_path / "root/lib/modules" / VERSION
    for line in MODULES_DEP.splitlines():
        rel = line.split(":")[0]
        f = mods / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        body = f"ELF module {rel}".encode()
        f.write_bytes(lzma.compress(body) if rel.endswith(".xz") else body)
    (mods / "modules.dep").write_text(MODULES_DEP)
    (mods / "modules.alias").write_text(MODULES_ALIAS)
    (mods / "modules.builtin").write_text(
        "kernel/net/packet/af_packet.ko\nkernel/net/unix/unix.ko\n")
    vmlinuz = tmp_path / "root/boot" / f"vmlinuz-{VERSION}"
    vmlinuz.parent.mkdir(parents=True)
    vmlinuz.write_bytes(b"kernel")
    return KernelTree(vmlinuz, mods, VERSION)


@pytest.fixture
def busybox(tmp_path: Path) -> Path:
    """A stand-in for busybox-static: answers --list-full like the real one."""
    bb = tmp_path / "busybox"
    bb.write_text("#!/bin/sh\nprintf 'bin/sh\\nbin/busybox\\nsbin/switch_root\\n"
                  "usr/bin/wget\\nsbin/insmod\\n'\n")
    bb.chmod(0o755)
    return bb


# ---------------------------------------------------------------- module closure


def test_closure_dependencies_first(kernel_tree: KernelTree) -> None:
    refs = module_closure(kernel_tree.modules_dir, ["virtio_net", "ext4", "aoe"])
    names = [r.name for r in refs]
    assert len(names) == len(set(names))
    assert set(names) == {"virtio_net", "virtio", "virtio_ring", "net_failover", "failover",
                          "ext4", "jbd2", "mbcache", "crc16", "aoe"}
    for r in refs:
        for d in r.deps:
            assert names.index(d) < names.index(r.name), (d, r.name)
    assert names[-1] == "aoe"  # requested order kept where dependencies allow


def test_closure_skips_builtin_and_normalises_dashes(kernel_tree: KernelTree) -> None:
    refs = module_closure(kernel_tree.modules_dir, ["af_packet", "crc32c-generic"])
    assert [r.name for r in refs] == ["crc32c_generic"]


def test_closure_missing_module(kernel_tree: KernelTree) -> None:
    with pytest.raises(ModuleMissing) as ei:
        module_closure(kernel_tree.modules_dir, ["aoe", "no_such_driver"])
    assert ei.value.module == "no_such_driver"
    assert str(kernel_tree.modules_dir) in str(ei.value)


def test_closure_missing_dependency_names_its_user(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(ModuleMissing, match="needed by a"):
        module_closure(tmp_path, ["a"])


def test_closure_without_modules_dep(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match="depmod"):
        module_closure(tmp_path, ["aoe"])


def test_compressed_module_path(kernel_tree: KernelTree) -> None:
    (ref,) = module_closure(kernel_tree.modules_dir, ["overlay"])
    assert ref.relpath.endswith(".ko.xz") and ref.plain_relpath.endswith("overlay.ko")


# ---------------------------------------------------------------- newc writer


def test_newc_roundtrip_parents_and_order() -> None:
    import io
    buf = io.BytesIO()
    write_newc([CpioEntry("z/file", data=b"hello", mode=0o600),
                CpioEntry("a/link", "symlink", 0o777, b"../z/file"),
                CpioEntry("dev/console", "char", 0o600, rdev=(5, 1))], buf)
    data = buf.getvalue()
    assert len(data) % 4 == 0
    entries = read_newc(data)
    assert [e.path for e in entries] == ["a", "a/link", "dev", "dev/console", "z", "z/file"]
    by = {e.path: e for e in entries}
    assert by["z/file"].data == b"hello" and by["z/file"].mode == 0o600
    assert by["a/link"].kind == "symlink" and by["a/link"].data == b"../z/file"
    assert by["dev/console"].kind == "char" and by["dev/console"].rdev == (5, 1)
    assert by["z"].kind == "dir"


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "./a", "a//b"])
def test_newc_rejects_bad_paths(bad: str) -> None:
    import io
    with pytest.raises(InitramfsError, match="bad archive path"):
        write_newc([CpioEntry(bad)], io.BytesIO())


def test_newc_rejects_duplicates_and_file_parents() -> None:
    import io
    with pytest.raises(InitramfsError, match="twice"):
        write_newc([CpioEntry("a"), CpioEntry("a")], io.BytesIO())
    with pytest.raises(InitramfsError, match="below it"):
        write_newc([CpioEntry("a"), CpioEntry("a/b")], io.BytesIO())


# ---------------------------------------------------------------- /init


@pytest.mark.parametrize("mode", [*INIT_MODES, "marker"])
def test_init_renders_and_parses(mode: str, tmp_path: Path) -> None:
    # marker: the test mode of tests/support/init, a template that extends init.sh.j2
    text = render_init(mode, {"marker": "it's a \"marker\" $HOME", "aoe_wait": "7"}, MODES_DIR)
    assert text.startswith("#!/bin/sh\n")
    assert f"HC_MODE={mode}" in text
    assert "hc_aoe_wait=7\n" in text
    assert "{{" not in text and "{%" not in text
    script = tmp_path / "init"
    script.write_text(text)
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh
    r = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_init_param_values_are_shell_quoted(tmp_path: Path) -> None:
    value = "it's a \"marker\" $HOME `x`"
    text = render_init("marker", {"marker": value}, MODES_DIR)
    line = next(ln for ln in text.splitlines() if ln.startswith("hc_marker="))
    r = subprocess.run(["sh", "-c", f'{line}\nprintf %s "$hc_marker"'], capture_output=True,
                       text=True)
    assert r.stdout == value


def test_init_modes_carry_their_contract() -> None:
    aoe = render_init("aoe-root", {})
    assert "HC-ERROR: $*" in aoe
    assert 'die "AoE root $hc_aoe not found after ${wait}s"' in aoe
    assert "/dev/etherd/discover" in aoe and "aoe_iflist=" in aoe
    assert "exec switch_root /newroot" in aoe
    ram = render_init("ram-root", {})
    assert "udhcpc" in ram and "sha256sum" in ram and "wget" in ram
    marker = render_init("marker", {}, MODES_DIR).split("# " + "-" * 64 + " marker")[1]
    assert "poweroff -f" in marker and "exec switch_root" not in marker


def test_init_rejects_bad_params() -> None:
    with pytest.raises(InitramfsError, match="keys"):
        render_init("marker", {"Bad-Key": "x"}, MODES_DIR)
    with pytest.raises(InitramfsError, match="one line"):
        render_init("marker", {"marker": "a\nb"}, MODES_DIR)
    with pytest.raises(InitramfsError, match="unknown init mode"):
        render_init("nfs-root", {})


def test_marker_is_a_test_mode_of_tests_support(tmp_path: Path) -> None:
    assert "marker" not in INIT_MODES
    with pytest.raises(InitramfsError, match="unknown init mode 'marker'"):
        render_init("marker", {})
    with pytest.raises(InitramfsError, match=r"and no .*/nfs-root\.sh\.j2"):
        render_init("nfs-root", {}, MODES_DIR)
    # a mode of one's own: the common start of init.sh.j2, then its block "mode"
    (tmp_path / "hello.sh.j2").write_text(
        '{% extends "init.sh.j2" %}\n{% block mode %}\necho "hello {{ mode }}"\n{% endblock %}\n')
    text = render_init("hello", {"x": "1"}, tmp_path)
    assert text.startswith("#!/bin/sh\n") and "HC_MODE=hello\nhc_x=1\n" in text
    assert text.endswith('echo "hello hello"\n') and "switch_root /newroot" in text
    assert "load_modules aoe" not in text and "wget" not in text  # no product mode


# ---------------------------------------------------------------- build


def _entries(path: Path) -> dict[str, CpioEntry]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return {e.path: e for e in read_newc(data)}


def test_build_contents(kernel_tree: KernelTree, busybox: Path, tmp_path: Path) -> None:
    res = build_initramfs(tmp_path / "out/initrd.img", mode="aoe-root", kernel=kernel_tree,
                          modules=["virtio_net", "crc32c_generic", "ext4", "overlay", "aoe",
                                   "af_packet"],
                          params={"aoe_wait": "9"}, busybox=busybox, compression="none",
                          extra_files={"etc/motd": b"hi\n", "usr/bin/tool": busybox})
    e = _entries(res.path)
    assert res.size == res.path.stat().st_size
    assert e["init"].mode == 0o755 and b"hc_aoe_wait=9" in e["init"].data
    assert e["bin/busybox"].data == busybox.read_bytes()
    assert e["sbin/switch_root"].kind == "symlink"
    assert e["sbin/switch_root"].data == b"../bin/busybox"
    assert e["usr/bin/wget"].data == b"../../bin/busybox"
    assert e["dev/console"].rdev == (5, 1)
    assert e["tmp"].mode == 0o1777
    assert e["usr/share/udhcpc/default.script"].mode == 0o755
    base = f"lib/modules/{VERSION}/kernel"
    overlay = e[f"{base}/fs/overlayfs/overlay.ko"].data  # stored decompressed
    assert overlay == b"ELF module kernel/fs/overlayfs/overlay.ko.xz"
    assert f"{base}/fs/overlayfs/overlay.ko.xz" not in e
    assert f"{base}/drivers/net/ethernet/intel/e1000e/e1000e.ko" not in e  # not requested
    listing = e["etc/hc/modules"].data.decode().splitlines()
    assert [ln.split()[0] for ln in listing] == list(res.modules)
    assert res.modules[-1] == "aoe" and "af_packet" not in res.modules
    dep = e[f"lib/modules/{VERSION}/modules.dep"].data.decode()
    assert "kernel/fs/ext4/ext4.ko: " in dep
    assert e["etc/motd"].data == b"hi\n" and e["usr/bin/tool"].mode == 0o755


def test_autoload_drivers_ship_with_a_pci_table(kernel_tree: KernelTree, busybox: Path,
                                                tmp_path: Path) -> None:
    """NIC drivers named in ``autoload`` are shipped, flagged ``auto`` (with the dependencies only
    they need) and listed by PCI vendor:device, so the init loads only what the machine has."""
    res = build_initramfs(tmp_path / "i.img", mode="aoe-root", kernel=kernel_tree,
                          modules=["virtio_net", "e1000e", "r8169", "8139cp", "aoe"],
                          autoload=["e1000e", "r8169", "8139cp"], busybox=busybox,
                          compression="none")
    e = _entries(res.path)
    flags = {ln.split()[0]: ln.split()[2:] for ln in
             e["etc/hc/modules"].data.decode().splitlines()}
    assert flags["virtio_net"] == [] and flags["aoe"] == [] and flags["virtio"] == []
    for auto in ("e1000e", "r8169", "realtek", "libphy", "8139cp", "mii"):
        assert flags[auto] == ["auto"], auto
    table = e["etc/hc/pci-drivers"].data.decode().splitlines()
    assert table == ["8086 10d3 e1000e", "10ec 8168 r8169", "10ec 8139 8139cp"]
    init = e["init"].data.decode()
    assert "load_pci_drivers" in init and "/etc/hc/pci-drivers" in init


def test_pci_driver_table_needs_modules_alias(tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match=r"modules\.alias: cannot read"):
        pci_driver_table(tmp_path, ["e1000"])


def test_build_is_deterministic(kernel_tree: KernelTree, busybox: Path, tmp_path: Path) -> None:
    kw = dict(mode="aoe-root", kernel=kernel_tree, modules=["ext4", "aoe"], busybox=busybox)
    a = build_initramfs(tmp_path / "a.img", **kw)  # type: ignore[arg-type]
    b = build_initramfs(tmp_path / "b.img", **kw)  # type: ignore[arg-type]
    assert a.path.read_bytes() == b.path.read_bytes() and a.sha256 == b.sha256
    raw = a.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    mtimes = {int(raw_hdr[46:54], 16) for raw_hdr in _headers(gzip.decompress(raw))}
    assert mtimes == {0}


def _headers(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while True:
        hdr = data[pos:pos + 110]
        out.append(hdr)
        namesize, size = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1]
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
        if name == b"TRAILER!!!":
            return out


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_gnu_cpio_reads_it(kernel_tree: KernelTree, busybox: Path, tmp_path: Path) -> None:
    res = build_initramfs(tmp_path / "i.img", mode="ram-root", busybox=busybox, compression="none")
    r = subprocess.run(["cpio", "-t", "--quiet"], input=res.path.read_bytes(),
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.decode().split()
    assert listed == sorted(_entries(res.path))
    assert "init" in listed and "bin/busybox" in listed


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_zstd_compression(kernel_tree: KernelTree, busybox: Path, tmp_path: Path) -> None:
    res = build_initramfs(tmp_path / "i.zst", mode="ram-root", busybox=busybox,
                          compression="zstd")
    assert res.path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"


def test_build_errors(kernel_tree: KernelTree, busybox: Path, tmp_path: Path) -> None:
    with pytest.raises(InitramfsError, match="no kernel tree"):
        build_initramfs(tmp_path / "x", mode="aoe-root", modules=["aoe"], busybox=busybox)
    with pytest.raises(InitramfsError, match="busybox-static"):
        build_initramfs(tmp_path / "x", mode="ram-root", busybox=tmp_path / "nope")
    with pytest.raises(InitramfsError, match="compression"):
        build_initramfs(tmp_path / "x", mode="ram-root", busybox=busybox, compression="lz4")
    with pytest.raises(InitramfsError, match="twice"):
        build_initramfs(tmp_path / "x", mode="ram-root", busybox=busybox,
                        extra_files={"init": b"#!/bin/sh\n"})
    assert not (tmp_path / "x").exists()
