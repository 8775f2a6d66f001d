"""Profile schema: typed, strict, errors name the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder import paths
from builder.elements import ElementLibrary
from builder.errors import ProfileError
from builder.profile import SETTINGS, list_roles, load_profile, parse_profile, settings_help

GOOD = """
description: test
elements: [hc-ram-root]
kernel: debian-6.1
artifacts: [kernel, initrd]
root: ram
"""


def parse(text: str, name: str = "r.yaml") -> object:
    return parse_profile(text, Path("/x/profiles") / name)


def test_minimal_profile_gets_defaults() -> None:
    p = parse_profile(GOOD, Path("/x/profiles/r.yaml"))
    assert p.role == "r"
    assert p.loader == "ipxe"
    assert p.base_elements == ("hc-base",)
    assert p.release == "bookworm"
    assert p.env == {}
    assert p.boot_kind == "linux"


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        (GOOD + "elemnts: [x]\n", "elemnts", "did you mean 'elements'"),
        (GOOD + "pakages: [x]\n", "pakages", "did you mean 'packages'"),
        (GOOD + "boot: {cmdlin: x}\n", "boot.cmdlin", "did you mean 'cmdline'"),
        (GOOD + "boot: {xen_cmdline: x}\n", "boot.xen_cmdline", "without 'xen'"),
        (GOOD + "bogus: 1\n", "bogus", "unknown key"),
        (GOOD.replace("root: ram", "root: nfs"), "root", "not one of"),
        (GOOD.replace("root: ram", "root: 3"), "root", "must be a string"),
        (GOOD + "packages: vim\n", "packages", "list of strings"),
        (GOOD + "packages: [Bad_Name]\n", "packages", "bad Debian package"),
        (GOOD + "env: [a]\n", "env", "mapping"),
        (GOOD + "env: {lower: x}\n", "env", "bad variable names"),
        (GOOD + "rootfs: {free_mb: lots}\n", "rootfs.free_mb", "integer"),
        (GOOD + "rootfs: {free_mb: true}\n", "rootfs.free_mb", "integer"),
        (GOOD + "rootfs: {format: btrfs}\n", "rootfs.format", "not one of"),
        (GOOD.replace("[kernel, initrd]", "[kernel, initrd, rootfs]")
         + "rootfs: {format: squashfs}\n", "rootfs.format", "only for root aoe"),
        (GOOD + "boot: 1\n", "boot", "mapping"),
        (GOOD.replace("kernel: debian-6.1\n", ""), "kernel", "required"),
        (GOOD.replace("[kernel, initrd]", "[kernel, initrd, floppy]"), "artifacts", "floppy"),
        (GOOD.replace("[kernel, initrd]", "[initrd]"), "artifacts", "kernel"),
        (GOOD.replace("[kernel, initrd]", "[kernel, kernel]"), "artifacts", "duplicates"),
        (GOOD + "xen: xen-4.17\n", "artifacts", "must publish 'xen'"),
        (GOOD.replace("root: ram", "root: aoe"), "artifacts", "rootfs"),
        (GOOD.replace("[hc-ram-root]", "[hc-ram-root, hc-base]"), "elements", "base_elements"),
        (GOOD + "boot: {cmdline: \"a\\nb\"}\n", "boot.cmdline", "one line"),
    ],
)
def test_schema_errors_name_file_and_key(text: str, key: str, needle: str) -> None:
    with pytest.raises(ProfileError) as ei:
        parse(text)
    e = ei.value
    assert e.key == key
    assert str(e).startswith(f"/x/profiles/r.yaml: {key}: ")
    assert needle in str(e)


def test_not_yaml_or_not_mapping() -> None:
    with pytest.raises(ProfileError, match=r"r\.yaml: not valid YAML"):
        parse("a: [\n")
    with pytest.raises(ProfileError, match="top level must be a mapping"):
        parse("- a\n")


def test_every_setting_has_help_and_attr() -> None:
    text = settings_help()
    for s in SETTINGS:
        assert s.help and s.key in text
    p = parse_profile(GOOD, Path("/x/profiles/r.yaml"))
    d = p.to_dict()
    assert d["boot"] == {"cmdline": "", "xen_cmdline": ""}
    assert d["rootfs"] == {"format": "ext4", "free_mb": 256}


def test_shipped_profiles_load() -> None:
    roles = list_roles()
    assert {"hnode", "snode", "domu"} <= set(roles)
    for role in roles:
        p = load_profile(role)
        assert p.kernel_spec().is_file()
    assert load_profile("hnode").boot_kind == "xen"
    assert load_profile("snode").root == "ram"
    # the shared hnode root is a squashfs; the template (cloned read-write) stays ext4
    assert load_profile("hnode").rootfs_format == "squashfs"
    assert load_profile("domu").rootfs_format == "ext4"


def _copy_data(tmp_path: Path) -> Path:
    for name in ("elements", "profiles", "kernels"):
        shutil.copytree(paths.data_root() / name, tmp_path / name)
    return tmp_path / "profiles"


def test_env_keys_must_be_declared_by_an_element(tmp_path: Path) -> None:
    pdir = _copy_data(tmp_path)
    f = pdir / "snode.yaml"
    f.write_text(f.read_text() + "env:\n  HC_SERIAL_AUTOLOGIN: '1'\n")
    lib = ElementLibrary(root=tmp_path / "elements")
    assert load_profile("snode", pdir, lib).env == {"HC_SERIAL_AUTOLOGIN": "1"}
    f.write_text(f.read_text().replace("HC_SERIAL_AUTOLOGIN", "HC_SERIAL_AUTOLOGN"))
    with pytest.raises(ProfileError) as ei:
        load_profile("snode", pdir, ElementLibrary(root=tmp_path / "elements"))
    assert ei.value.key == "env.HC_SERIAL_AUTOLOGN"
    assert str(f) in str(ei.value)
    assert "HC_SERIAL_AUTOLOGIN" in str(ei.value)


def test_env_key_of_element_not_in_profile_is_rejected(tmp_path: Path) -> None:
    pdir = _copy_data(tmp_path)
    f = pdir / "snode.yaml"
    # HC_XEN_AUTOBALLOON belongs to hc-xen-dom0, which the snode does not use
    f.write_text(f.read_text() + "env: {HC_XEN_AUTOBALLOON: 'on'}\n")
    with pytest.raises(ProfileError, match=r"env\.HC_XEN_AUTOBALLOON"):
        load_profile("snode", pdir, ElementLibrary(root=tmp_path / "elements"))


def test_missing_element_kernel_spec_and_role(tmp_path: Path) -> None:
    pdir = _copy_data(tmp_path)
    lib = ElementLibrary(root=tmp_path / "elements")
    f = pdir / "snode.yaml"
    orig = f.read_text()
    f.write_text(orig.replace("hc-storage-node", "hc-no-such"))
    with pytest.raises(ProfileError, match=r"snode.yaml: elements: .*hc-no-such"):
        load_profile("snode", pdir, lib)
    f.write_text(orig.replace("kernel: debian-6.1", "kernel: linux-9"))
    with pytest.raises(ProfileError, match=r"snode.yaml: kernel: no spec"):
        load_profile("snode", pdir, ElementLibrary(root=tmp_path / "elements"))
    with pytest.raises(ProfileError, match="did you mean 'snode'"):
        load_profile("snodee", pdir)
