"""kernels/*.yaml loading (strict, typed), kernel trees taken from a root directory, and the
test VMs' kernel fetching (tests/support/kernels.py) without apt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from builder.errors import CommandError
from builder.initramfs import INIT_MODES
from builder.kernel import (
    KernelError,
    KernelSpec,
    SpecError,
    XenSpec,
    kernel_tree_from_root,
    load_kernel_spec,
    load_spec,
    load_xen_spec,
)
from tests.support import kernels as K

KERNEL_YAML = """\
kind: kernel
name: test
package: linux-image-amd64
image_package: linux-image-6.1.0-*-amd64
cmdline: console=ttyS0
module_sets:
  nic: [virtio_net]
  fs: [ext4, crc32c_generic]
initramfs:
  aoe-root: [nic, fs]
  marker: []
"""


def write(tmp_path: Path, text: str, name: str = "k.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_kernel_spec() -> None:
    spec = load_kernel_spec("debian-6.1")
    assert isinstance(spec, KernelSpec)
    assert spec.package == "linux-image-amd64"
    mods = spec.modules_for("aoe-root")
    for m in ("aoe", "virtio_net", "virtio_pci", "e1000", "ext4", "crc32c_generic", "overlay"):
        assert m in mods
    assert mods.index("crc32c_generic") < mods.index("ext4")
    assert set(spec.initramfs) == set(INIT_MODES)  # the test mode marker is not the product's
    assert "squashfs" in spec.modules_for("ram-root")
    # NIC drivers of servers and of QEMU's NICs are loaded per PCI device
    auto = spec.autoload_for("aoe-root")
    assert {"e1000", "e1000e", "igb", "ixgbe", "r8169", "tg3", "8139cp", "vmxnet3"} <= set(auto)
    assert set(auto) <= set(mods) and "virtio_net" not in auto and "aoe" not in auto
    assert spec.autoload_for("ram-root") == ()  # a RAM root loads its modules at boot


def test_autoload_must_name_module_sets(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, KERNEL_YAML + "autoload: [nics]\n"))
    assert "autoload[0]" in str(ei.value) and "unknown module set 'nics'" in str(ei.value)
    spec = load_spec(write(tmp_path, KERNEL_YAML + "autoload: [nic]\n"))
    assert isinstance(spec, KernelSpec) and spec.autoload_for("aoe-root") == ("virtio_net",)


def test_shipped_xen_spec() -> None:
    spec = load_spec("xen-4.17")
    assert isinstance(spec, XenSpec)
    assert spec.hypervisor == "boot/xen-4.17-amd64.gz"
    words = spec.cmdline.split()
    assert "smap=0" in words and "console=com1" in words
    assert any(w.startswith("dom0_mem=") for w in words)
    assert "hap=0" not in words  # Debian's Xen has no shadow paging
    assert spec.dom0_cmdline.split() == ["console=hvc0"]


def test_specs_are_frozen() -> None:
    spec = load_kernel_spec("debian-6.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


def test_load_from_path(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, KERNEL_YAML))
    assert isinstance(spec, KernelSpec)
    assert spec.modules_for("aoe-root") == ("virtio_net", "ext4", "crc32c_generic")
    assert spec.version is None and spec.cmdline == "console=ttyS0"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, KERNEL_YAML + "modules: [aoe]\n")
    with pytest.raises(SpecError) as ei:
        load_kernel_spec(p)
    assert ei.value.key == "modules" and ei.value.path == p
    assert str(p) in str(ei.value) and "modules" in str(ei.value)


def test_missing_required_key(tmp_path: Path) -> None:
    p = write(tmp_path, KERNEL_YAML.replace("package: linux-image-amd64\n", ""))
    with pytest.raises(SpecError, match="package: missing required key"):
        load_kernel_spec(p)


def test_wrong_kind(tmp_path: Path) -> None:
    p = write(tmp_path, KERNEL_YAML)
    with pytest.raises(SpecError, match="kind"):
        load_xen_spec(p)
    with pytest.raises(SpecError, match="kind"):
        load_spec(write(tmp_path, "kind: bios\n", "b.yaml"))


def test_bad_types(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"module_sets\.nic"):
        load_kernel_spec(write(tmp_path, KERNEL_YAML.replace("[virtio_net]", "virtio_net")))
    with pytest.raises(SpecError, match="name"):
        load_kernel_spec(write(tmp_path, KERNEL_YAML.replace("name: test", "name: [a]")))
    with pytest.raises(SpecError, match="top level"):
        load_kernel_spec(write(tmp_path, "- a\n"))
    with pytest.raises(SpecError, match="invalid YAML"):
        load_kernel_spec(write(tmp_path, "kind: [\n"))


def test_initramfs_refers_to_unknown_set(tmp_path: Path) -> None:
    p = write(tmp_path, KERNEL_YAML.replace("aoe-root: [nic, fs]", "aoe-root: [nic, disk]"))
    with pytest.raises(SpecError, match=r"initramfs\.aoe-root\[1\].*disk"):
        load_kernel_spec(p)


def test_unknown_mode_and_set(tmp_path: Path) -> None:
    spec = load_kernel_spec(write(tmp_path, KERNEL_YAML))
    with pytest.raises(SpecError, match="ram-root"):
        spec.modules_for("ram-root")
    with pytest.raises(SpecError, match="nope"):
        spec.modules_in("nope")


def test_xen_hypervisor_path_stays_inside_package(tmp_path: Path) -> None:
    text = ("kind: xen\nname: x\npackage: p\nhypervisor: ../../etc/passwd\n"
            "cmdline: console=com1\ndom0_cmdline: console=hvc0\n")
    with pytest.raises(SpecError, match="hypervisor"):
        load_xen_spec(write(tmp_path, text))


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_kernel_spec("/nonexistent/k.yaml")


# ---------------------------------------------------------------- trees from a root


def fake_root(root: Path, *versions: str, with_dep: bool = True) -> Path:
    for v in versions:
        (root / "boot").mkdir(parents=True, exist_ok=True)
        (root / "boot" / f"vmlinuz-{v}").write_bytes(b"kernel")
        mods = root / "lib/modules" / v
        mods.mkdir(parents=True)
        if with_dep:
            (mods / "modules.dep").write_text("")
    return root


def test_kernel_tree_from_root_picks_newest(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "6.1.0-9-amd64", "6.1.0-10-amd64")
    t = kernel_tree_from_root(root)
    assert t.version == "6.1.0-10-amd64"
    assert t.vmlinuz == root / "boot/vmlinuz-6.1.0-10-amd64"
    assert t.modules_dir == root / "lib/modules/6.1.0-10-amd64"
    assert kernel_tree_from_root(root, "6.1.0-9-amd64").version == "6.1.0-9-amd64"


def test_kernel_tree_from_root_errors(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="no boot/vmlinuz"):
        kernel_tree_from_root(tmp_path)
    fake_root(tmp_path, "6.1.0-9-amd64")
    with pytest.raises(KernelError, match=r"6\.9.*not found"):
        kernel_tree_from_root(tmp_path, "6.9")


def test_kernel_tree_usr_lib_modules(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(b"k")
    mods = tmp_path / "usr/lib/modules/6.1.0-1-amd64"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    assert kernel_tree_from_root(tmp_path).modules_dir == mods


def test_resolve_metapackage_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    # apt's metadata replaced by a table: the unit tier runs without apt lists (no network).
    table = {
        "linux-image-amd64": {"Version": "6.1.192-2",
                              "Depends": "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"},
        "linux-image-6.1.0-56-amd64": {"Version": "6.1.192-2", "Depends": "kmod"},
    }
    monkeypatch.setattr(K, "_apt_show", lambda pkg, version=None: table[pkg])
    assert K._resolve_package("linux-image-amd64", "linux-image-6.1.0-*-amd64", None) == (
        "linux-image-6.1.0-56-amd64", "6.1.192-2")
    with pytest.raises(KernelError, match="no dependency matches"):
        K._resolve_package("linux-image-amd64", "linux-image-5.*", None)


def test_fetch_kernel_uses_complete_cache_entry_without_apt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # apt-cache replaced by a failing stub: simulates a host without apt lists (offline).
    def no_apt(pkg: str, version: str | None = None) -> dict[str, str]:
        raise CommandError(["apt-cache", "show", pkg], 100, f"apt metadata of {pkg}: exit code 100",
                           tail=["E: No packages found"])

    monkeypatch.setattr(K, "_apt_show", no_apt)
    spec = load_kernel_spec("debian-6.1")
    with pytest.raises(CommandError, match="apt-cache"):
        K.fetch_kernel(spec, tmp_path)
    for ver, pkg in (("6.1.100-1", "linux-image-6.1.0-30-amd64"),
                     ("6.1.192-2", "linux-image-6.1.0-56-amd64")):
        entry = tmp_path / "kernel" / f"{pkg}_{ver}"
        fake_root(entry / "root", pkg.removeprefix("linux-image-"))
        (entry / K.STAMP).write_text(f"{pkg}={ver}\n")
    (tmp_path / "kernel/linux-image-6.1.0-99-amd64_6.1.999-1").mkdir()  # incomplete: ignored
    t = K.fetch_kernel(spec, tmp_path)
    assert (t.package, t.package_version, t.version) == (
        "linux-image-6.1.0-56-amd64", "6.1.192-2", "6.1.0-56-amd64")
