"""Boot decisions (option 93 / 77 table) and golden renders of the boot templates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootserver.machine import BootFile, Machine
from bootserver.policy import Policy, PolicyConfig, RenderError
from homecloud.control.service import ControlService
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo, ImageStore
from homecloud.core.model import ImageExport
from homecloud.inventory.protocol import update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.images import publish

GOLDEN = Path(__file__).parent / "golden"
ROLES = ("hnode", "snode", "domu")
MAC_H, MAC_S, MAC_P, MAC_U = ("52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03",
                              "52:54:00:00:00:99")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HC_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with HC_REGEN_GOLDEN=1"
    assert text == path.read_text()


@pytest.fixture()
def policy(tmp_path: Path) -> Policy:
    store = tmp_path / "images"
    publish(store, "hnode", {"xen": b"X", "kernel": b"K", "initrd": b"I", "rootfs": b"R"},
            BootInfo(kind="xen", loader="ipxe", root="aoe", cmdline="console=hvc0",
                     xen_cmdline="console=com1 dom0_mem=512M smap=0"), build_id="b-hnode-1")
    publish(store, "snode", {"kernel": b"K", "initrd": b"I", "rootfs": b"R"},
            BootInfo(kind="linux", loader="ipxe", root="ram", cmdline="console=ttyS0"),
            build_id="b-snode-1")
    inv = YamlFileStore(tmp_path, ROLES)
    svc = ControlService(inv, tmp_path, store)
    svc.assign(MAC_H, "hnode", hostname="hnode1")
    svc.assign(MAC_S, "snode", hostname="snode1")
    svc.assign(MAC_P, "snode", loader="pxelinux", cmdline="quiet")
    svc.set_exports((ImageExport(Target(1, 0), role="hnode", consumers=("hnode",)),))
    return Policy(PolicyConfig("192.0.2.1", 8080), inv, ImageStore(store))


@pytest.mark.parametrize("mac,arch,uc,expected", [
    (MAC_H, 0, None, "undionly.kpxe"),
    (MAC_H, None, None, "undionly.kpxe"),
    (MAC_H, 7, None, "ipxe.efi"),
    (MAC_H, 9, None, "ipxe.efi"),
    (MAC_H, 0, "iPXE", f"http://192.0.2.1:8080/boot/{MAC_H}.ipxe"),
    (MAC_H, 9, "iPXE", f"http://192.0.2.1:8080/boot/{MAC_H}.ipxe"),
    (MAC_P, 0, None, "pxelinux.0"),
    (MAC_P, 9, None, "ipxe.efi"),
    (MAC_P, 0, "iPXE", "pxelinux.0"),
    (MAC_P, 9, "iPXE", f"http://192.0.2.1:8080/boot/{MAC_P}.ipxe"),
    (MAC_H, 16, None, "http://192.0.2.1:8080/firststage/ipxe.efi"),
    (MAC_H, 16, "iPXE", f"http://192.0.2.1:8080/boot/{MAC_H}.ipxe"),
    (MAC_H, 6, None, None),
    (MAC_H, 11, None, None),
    (MAC_U, 0, None, None),
    (MAC_U, 0, "iPXE", None),
])
def test_boot_file_table(policy: Policy, mac: str, arch: int | None, uc: str | None,
                         expected: str | None) -> None:
    bf = policy.boot_file(Machine(mac=mac, arch=arch, user_class=uc))
    assert (bf.filename if bf else None) == expected


def test_default_role_boots_unknown_machines(policy: Policy, tmp_path: Path) -> None:
    update(policy.inventory, lambda inv: inv.with_default_role("snode"))
    assert policy.boot_file(Machine(mac=MAC_U, arch=0)) == BootFile("undionly.kpxe", "snode")


def test_efi_binary_choice(policy: Policy) -> None:
    pol = Policy(PolicyConfig("192.0.2.1", 80, efi_binary="snponly.efi"), policy.inventory,
                 policy.store)
    assert pol.boot_file(Machine(mac=MAC_S, arch=7)) == BootFile("snponly.efi", "snode")


def test_no_image_means_no_boot_file(policy: Policy, tmp_path: Path) -> None:
    ControlService(policy.inventory, tmp_path, tmp_path / "images").assign(
        "52:54:00:00:00:05", "domu")  # domu has no published build
    assert policy.boot_file(Machine(mac="52:54:00:00:00:05", arch=0)) is None


def test_golden_ipxe_xen(policy: Policy) -> None:
    check_golden("hnode.ipxe", policy.ipxe_script(MAC_H))


def test_golden_ipxe_linux(policy: Policy) -> None:
    text = policy.ipxe_script(MAC_S)
    assert "hc.rootfs_sha256=" in text
    check_golden("snode.ipxe", text)


def test_golden_ipxe_unassigned(policy: Policy) -> None:
    check_golden("unassigned.ipxe", policy.ipxe_script(MAC_U))


def test_golden_pxelinux(policy: Policy) -> None:
    check_golden("snode.pxelinux", policy.pxelinux_config(MAC_P) or "")
    check_golden("hnode.pxelinux", policy.pxelinux_config(MAC_H) or "")
    assert policy.pxelinux_config(MAC_U) is None


def test_hnode_gets_its_aoe_root(policy: Policy) -> None:
    assert "hc.aoe=e1.0" in policy.ipxe_script(MAC_H)


def test_newline_in_cmdline_is_refused(policy: Policy) -> None:
    f = Path(policy.inventory.where)
    f.write_text(f.read_text().replace("cmdline: quiet", 'cmdline: "a\\nb"'))
    # the inventory refuses it outright (previous inventory stays), so nothing renders a newline
    assert "\n" not in policy.kernel_cmdline(policy.resolve(MAC_P))  # type: ignore[arg-type]
    with pytest.raises(RenderError):
        from bootserver.policy import _clean_cmdline
        _clean_cmdline("a\nb")


def test_templates_are_strict(policy: Policy) -> None:
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        policy.env.get_template("boot.ipxe.j2").render(mac=MAC_H)


def test_the_boot_networks_mtu_reaches_every_nodes_command_line(policy: Policy) -> None:
    """hcboot serve --mtu 9000: the initramfs sets it on the boot NIC before AoE or DHCP
    (builder/init/init.sh.j2 iface_up); without it nothing is said."""
    assert "hc.mtu=" not in policy.ipxe_script(MAC_H)
    jumbo = Policy(PolicyConfig("192.0.2.1", 8080, mtu=9000), policy.inventory, policy.store)
    for mac in (MAC_H, MAC_S):
        assert " hc.mtu=9000" in jumbo.ipxe_script(mac)
    assert "hc.mtu=9000" in (jumbo.pxelinux_config(MAC_P) or "")
