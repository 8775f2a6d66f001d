"""elements/hc-tree-output against the installed diskimage-builder: its block-device.d script
on a build directory laid out as DIB leaves it after post-root.d, then the steps DIB runs after
the hook, with DIB's real block-device tool (init before, umount / getval / cleanup after).

No root: ``sudo`` is a stand-in that runs its arguments (DIB runs as root here anyway)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from builder.elements import dib_elements_dir
from builder.paths import elements_dir

SCRIPT = elements_dir() / "hc-tree-output" / "block-device.d" / "10-hc-tree-output"
DIB_LIB = Path(str(dib_elements_dir())).parent / "lib"
BLOCK_DEVICE_CONFIG = """\
- local_loop:
    name: image0
- mkfs:
    name: mkfs_root
    base: image0
    type: ext4
    mount:
      mount_point: /
      fstab:
        options: "defaults"
        fsck-passno: 1
"""


@pytest.fixture
def build(tmp_path: Path) -> dict[str, Path]:
    """A DIB build directory as it is when block-device.d runs: the tree in built/, no mnt/,
    the block-device tool initialised."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sudo = bindir / "sudo"
    sudo.write_text('#!/bin/sh\nexec "$@"\n')
    sudo.chmod(0o755)
    b = tmp_path / "dib_build.x"
    tree = b / "built"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("node\n")
    (tree / "tmp").mkdir()
    (tree / "tmp").chmod(0o1777)
    os.utime(tree / "tmp", (1_000_000_000, 1_000_000_000))
    (b / "block-device").mkdir()
    (b / "block-device" / "config.yaml").write_text(BLOCK_DEVICE_CONFIG)
    params = b / "block-device" / "params.yaml"
    params.write_text(
        f"config: {b}/block-device/config.yaml\nimage-dir: {tmp_path}/img\n"
        f"root-fs-type: ext4\nroot-label: hc-root\nmount-base: {b}/mnt\nbuild-dir: {b}\n")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "DIB_BLOCK_DEVICE_PARAMS_YAML": str(params), "TMP_BUILD_DIR": str(b),
           "HC_TREE_OUT": str(tmp_path / "out" / "tree"), "DIB_PYTHON_EXEC": sys.executable}
    (tmp_path / "out").mkdir()
    bd(env, "init")
    return {"b": b, "out": tmp_path / "out" / "tree", "env": env}  # type: ignore[dict-item]


def bd(env: dict[str, str], *args: str) -> str:
    """DIB's block-device tool, as disk-image-create calls it."""
    r = subprocess.run([sys.executable, str(DIB_LIB / "dib-block-device.py"), *args],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def hook(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)


def test_the_installed_dib_has_the_hook_this_relies_on() -> None:
    text = (DIB_LIB / "disk-image-create").read_text()
    hook_at = text.index('eval_run_d block-device "IMAGE_BLOCK_DEVICE="')
    copy_at = text.index("cp -ra ${TMP_BUILD_DIR}/built/* $TMP_BUILD_DIR/mnt")
    finalise_at = text.index("run_d_in_target finalise")
    assert hook_at < copy_at < finalise_at
    assert "if [ -z ${IMAGE_BLOCK_DEVICE} ] ; then" in text[hook_at:copy_at]
    assert "no-final-image" in text
    assert (dib_elements_dir() / "no-final-image").is_dir()


def test_tree_handed_over(build: dict[str, Path]) -> None:
    b, out, env = build["b"], build["out"], build["env"]
    r = hook(env)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "IMAGE_BLOCK_DEVICE=none"
    assert (out / "etc" / "hostname").read_text() == "node\n"
    assert (b / "mnt").is_symlink() and (b / "mnt").resolve() == out.resolve()
    # what DIB does next: copy built/* into mnt, empty built/, finalise through mnt
    subprocess.run(["bash", "-ec", f"cp -ra {b}/built/* {b}/mnt; rm -fr {b}/built/*; "
                    f"echo final > {b}/mnt/etc/motd"], check=True)
    st = (out / "tmp").stat()
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_mtime == 1_000_000_000
    assert sorted(p.name for p in out.iterdir()) == ["etc", "tmp"]
    assert (out / "etc" / "motd").read_text() == "final\n"
    # DIB's block-device tool after finalise: nothing to unmount, no image, clean up
    bd(env, "umount")  # type: ignore[arg-type]
    assert bd(env, "getval", "image-path") == ""  # type: ignore[arg-type]
    bd(env, "cleanup")  # type: ignore[arg-type]
    assert not (b / "states" / "block-device").exists()
    # cleanup_build_dir: rm -rf built, mnt, the build dir; the tree stays
    subprocess.run(["rm", "-rf", str(b / "built"), str(b / "mnt")], check=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(b)], check=True)
    assert (out / "etc" / "motd").read_text() == "final\n"


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda b, out: out.mkdir(), "already exists"),
    (lambda b, out: (b / "mnt").mkdir(), "mnt: already exists"),
    (lambda b, out: (b / "built" / "tmp").rmdir(), "has no /tmp"),
])
def test_refuses_an_unexpected_layout(build: dict[str, Path], setup: object,
                                      needle: str) -> None:
    b, out = build["b"], build["out"]
    setup(b, out)  # type: ignore[operator]
    r = hook(build["env"])  # type: ignore[arg-type]
    assert r.returncode != 0 and "hc-tree-output:" in r.stderr and needle in r.stderr, r.stderr
    assert (b / "built" / "etc" / "hostname").is_file()  # the tree was not touched


def test_needs_hc_tree_out(build: dict[str, Path]) -> None:
    env = {**build["env"], "HC_TREE_OUT": ""}  # type: ignore[dict-item]
    r = hook(env)
    assert r.returncode != 0 and "HC_TREE_OUT is not set" in r.stderr
