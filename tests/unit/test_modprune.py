"""Kernel module pruning (builder/modprune.py): which modules go, which stay and why, the
deletion and its check of depmod's result; the profile and kernel-spec keys that drive it.

prune_tree runs depmod through a callable; here a stand-in rewrites modules.dep from the files
left (the real depmod runs in the image tree during the builds of tests/integration/test_build.py,
which also checks the published hnode and snode images)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from builder.elements import ElementLibrary
from builder.errors import BuildError, ProfileError
from builder.kernel import SpecError, load_kernel_spec
from builder.modprune import (
    compile_patterns,
    find_depmod,
    plan_prune,
    prune_tree,
    read_dep,
)
from builder.profile import load_profile, parse_profile
from tests.unit.test_profile import _copy_data

DEP = {
    "kernel/sound/core/snd.ko": (),
    "kernel/sound/pci/snd-hda.ko": ("kernel/sound/core/snd.ko",),
    "kernel/drivers/gpu/drm/drm.ko": (),
    "kernel/drivers/gpu/drm/bochs.ko": ("kernel/drivers/gpu/drm/drm.ko",),
    # a kept module that needs a pruned one: the dependency stays
    "kernel/drivers/platform/x86/thinkpad_acpi.ko": ("kernel/sound/core/snd.ko",),
    "kernel/drivers/net/virtio_net.ko": ("kernel/drivers/net/net_failover.ko",),
    "kernel/drivers/net/net_failover.ko": (),
    "kernel/drivers/net/wireless/iwl.ko": (),
    "kernel/drivers/media/rc/rc-core.ko": (),
}
PRUNE = [r"^kernel/sound/", r"^kernel/drivers/gpu/", r"^kernel/drivers/net/wireless/",
         r"^kernel/drivers/media/"]


def pats(p: list[str]) -> list[re.Pattern[str]]:
    return compile_patterns(p, "test")


def test_plan_removes_matches_and_keeps_what_kept_modules_need() -> None:
    plan = plan_prune(DEP, pats(PRUNE), [], [])
    assert plan.total == len(DEP)
    assert set(plan.remove) == {"kernel/sound/pci/snd-hda.ko", "kernel/drivers/gpu/drm/drm.ko",
                                "kernel/drivers/gpu/drm/bochs.ko",
                                "kernel/drivers/net/wireless/iwl.ko",
                                "kernel/drivers/media/rc/rc-core.ko"}
    assert plan.needed == {"kernel/sound/core/snd.ko": "needed by thinkpad_acpi"}
    assert "kernel/drivers/net/virtio_net.ko" not in plan.remove


def test_plan_keep_patterns_and_kernel_spec_names() -> None:
    # modules.keep keeps a matched module, and with it what it needs (drm for bochs)
    plan = plan_prune(DEP, pats(PRUNE), pats([r"/bochs\.ko$"]), ["rc_core"])
    assert plan.needed["kernel/drivers/gpu/drm/bochs.ko"] == "modules.keep"
    assert plan.needed["kernel/drivers/gpu/drm/drm.ko"] == "needed by bochs"
    # names of the kernel spec's module sets ('-' and '_' alike) are never removed
    assert "initramfs" in plan.needed["kernel/drivers/media/rc/rc-core.ko"]
    assert set(plan.remove) == {"kernel/sound/pci/snd-hda.ko",
                                "kernel/drivers/net/wireless/iwl.ko"}


def test_plan_nothing_matches() -> None:
    plan = plan_prune(DEP, pats([r"^kernel/fs/ocfs2/"]), [], [])
    assert plan.remove == () and plan.needed == {}


def test_bad_pattern_names_its_place() -> None:
    with pytest.raises(BuildError, match=r"here\[1\]: '\(' is not a regular expression"):
        compile_patterns(["ok", "("], "here")


def _tree(tmp_path: Path, dep: dict[str, tuple[str, ...]]) -> Path:
    mods = tmp_path / "lib/modules/6.1.0-99-amd64"
    for rel in dep:
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(b"\x7fELF" + b"\0" * 1020)
    _write_dep(mods, dep)
    return mods


def _write_dep(mods: Path, dep: dict[str, tuple[str, ...]]) -> None:
    (mods / "modules.dep").write_text("".join(f"{m}: {' '.join(d)}\n" for m, d in dep.items()))


def _depmod_standin(mods: Path) -> None:
    """What depmod does to modules.dep, for this test only: list the modules still there."""
    dep = read_dep(mods)
    _write_dep(mods, {m: d for m, d in dep.items() if (mods / m).is_file()})


def test_prune_tree_deletes_drops_empty_dirs_and_checks_depmod(tmp_path: Path) -> None:
    mods = _tree(tmp_path, DEP)
    plan = plan_prune(read_dep(mods), pats(PRUNE), [], [])
    done = prune_tree(mods, plan, lambda: _depmod_standin(mods))
    assert done.removed == 5 and done.total == len(DEP) and done.bytes == 5 * 1024
    assert not (mods / "kernel/drivers/gpu").exists()          # emptied: removed
    assert not (mods / "kernel/sound/pci").exists()
    assert (mods / "kernel/sound/core/snd.ko").is_file()        # needed: kept
    assert (mods / "kernel/drivers/net").is_dir()               # not empty: kept
    assert len(read_dep(mods)) == len(DEP) - 5


def test_prune_tree_refuses_a_stale_modules_dep(tmp_path: Path) -> None:
    mods = _tree(tmp_path, DEP)
    plan = plan_prune(read_dep(mods), pats(PRUNE), [], [])
    with pytest.raises(BuildError, match="still lists removed modules"):
        prune_tree(mods, plan, lambda: None)      # a depmod that did nothing


def test_find_depmod(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"no depmod .*kmod"):
        find_depmod(tmp_path)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/depmod").write_text("")
    assert find_depmod(tmp_path) == "/usr/sbin/depmod"


def test_shipped_server_set_and_profiles() -> None:
    spec = load_kernel_spec("debian-6.1")
    server = compile_patterns(spec.prune_sets["server"], "server")
    must_stay = ["kernel/drivers/block/aoe/aoe.ko", "kernel/drivers/md/raid1.ko",
                 "kernel/drivers/md/dm-thin-pool.ko", "kernel/drivers/block/drbd/drbd.ko",
                 "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
                 "kernel/drivers/block/xen-blkback/xen-blkback.ko",
                 "kernel/fs/squashfs/squashfs.ko",
                 "kernel/net/bridge/bridge.ko", "kernel/drivers/char/ipmi/ipmi_si.ko",
                 "kernel/drivers/watchdog/iTCO_wdt.ko", "kernel/drivers/nvme/host/nvme.ko"]
    for m in must_stay:
        assert not any(r.search(m) for r in server), m
    for m in ["kernel/sound/core/snd.ko", "kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko",
              "kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko"]:
        assert any(r.search(m) for r in server), m
    assert load_profile("snode").modules_prune == ("server",)
    assert load_profile("hnode").modules_prune == ("server",)
    assert load_profile("domu").modules_prune == ()    # a guest's own OS: untouched


def test_profile_errors_name_the_key(tmp_path: Path) -> None:
    pdir = _copy_data(tmp_path)
    f = pdir / "snode.yaml"
    f.write_text(f.read_text().replace("prune: [server]", "prune: [server, desktop]"))
    with pytest.raises(ProfileError) as ei:
        load_profile("snode", pdir, ElementLibrary(root=tmp_path / "elements"))
    assert ei.value.key == "modules.prune[1]" and "no prune set 'desktop'" in str(ei.value)
    assert "it has: server" in str(ei.value)
    with pytest.raises(ProfileError, match=r"modules\.keep: \[0\] '\[' is not a regular"):
        parse_profile("elements: [hc-ram-root]\nkernel: debian-6.1\nartifacts: [kernel, initrd]\n"
                      "root: ram\nmodules:\n  keep: ['[']\n", f)


def test_kernel_spec_prune_sets_are_checked(tmp_path: Path) -> None:
    base = "kind: kernel\nname: t\npackage: linux-image-amd64\n"
    for body, key in (("prune_sets: {server: ['(']}\n", r"prune_sets\.server\[0\]"),
                      ("prune_sets: {server: []}\n", r"prune_sets\.server"),
                      ("prune_sets: [x]\n", r"prune_sets")):
        (tmp_path / "k.yaml").write_text(base + body)
        with pytest.raises(SpecError, match=key):
            load_kernel_spec(tmp_path / "k.yaml")
