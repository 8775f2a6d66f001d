"""The rootfs artifact is a fresh ext4 of the built tree at its size (mke2fs -d), read back with
debugfs, or a zstd squashfs read back with unsquashfs, so no mount and no root are needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder import pack
from builder.errors import BuildError, CommandError


def debugfs(image: Path, request: str) -> str:
    r = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                       check=True)
    return r.stdout


def superblock(image: Path) -> dict[str, str]:
    r = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True)
    return {k.strip(): v.strip() for k, v in
            (ln.split(":", 1) for ln in r.stdout.splitlines() if ":" in ln)}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "etc").mkdir(parents=True)
    (t / "etc" / "hostname").write_text("node\n")
    (t / "usr" / "bin").mkdir(parents=True)
    data = os.urandom(3 * 2**20)
    (t / "usr" / "bin" / "tool").write_bytes(data)
    (t / "usr" / "bin" / "tool").chmod(0o4755)
    os.link(t / "usr" / "bin" / "tool", t / "usr" / "bin" / "tool-alias")
    (t / "bin").symlink_to("usr/bin")
    (t / "var" / "empty").mkdir(parents=True)
    for i in range(300):
        (t / "var" / f"f{i}").write_text(str(i))
    return t


def test_tree_usage_counts_hard_links_once(tree: Path) -> None:
    used, inodes = pack.tree_usage(tree)
    assert 3 * 2**20 <= used < 3 * 2**20 + 400 * 8192
    # etc, hostname, usr, usr/bin, tool (+alias once), bin, var, var/empty, 300 files
    assert inodes == 308


def test_geometry_grows_with_the_tree_and_free_space() -> None:
    s0, n0 = pack.ext4_geometry(800 * 2**20, 20000, 0)
    s1, n1 = pack.ext4_geometry(800 * 2**20, 20000, 256)
    assert s0 % 4096 == 0 and 800 * 2**20 < s0 < 900 * 2**20 and n0 >= 25000
    assert s1 - s0 >= 256 * 2**20 and n1 > n0


def test_pack_keeps_content_links_modes_and_label(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "rootfs"
    pack.pack_ext4(tree, img, "hc-root", free_mb=8)
    sb = superblock(img)
    assert sb["Filesystem volume name"] == "hc-root"
    assert sb["Reserved block count"] == "0"
    free = int(sb["Free blocks"]) * int(sb["Block size"])
    assert free >= 8 * 2**20
    assert img.stat().st_size < 3 * 2**20 + 64 * 2**20  # no DIB-style 40 % slack
    assert debugfs(img, "cat /etc/hostname") == "node\n"
    out = tmp_path / "tool"
    subprocess.run(["debugfs", "-R", f"dump /usr/bin/tool {out}", str(img)],
                   capture_output=True, check=True)
    assert out.read_bytes() == (tree / "usr" / "bin" / "tool").read_bytes()
    st = debugfs(img, "stat /usr/bin/tool")
    assert "Links: 2" in st and "Mode:  04755" in st
    assert "Fast link dest: \"usr/bin\"" in debugfs(img, "stat /bin")
    subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, check=True)


def test_pack_retries_when_the_estimate_is_too_tight(tree: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack, "ext4_geometry", lambda u, i, f: (20 * 2**20, 400))
    img = tmp_path / "rootfs"
    pack.pack_ext4(tree, img, "hc-root")  # 20 MiB cannot hold 3 MiB + the 16 MiB journal
    assert img.stat().st_size > 20 * 2**20
    assert debugfs(img, "cat /etc/hostname") == "node\n"


def test_pack_errors_name_the_tree_or_the_command(tree: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BuildError, match="missing: no root tree"):
        pack.pack_ext4(tmp_path / "missing", tmp_path / "rootfs", "hc-root")
    with monkeypatch.context() as m:  # a failure that more room does not fix is not retried
        m.setattr(pack, "JOURNAL_MB", 1)  # real mke2fs: a 1 MiB journal is refused
        with pytest.raises(CommandError, match="mke2fs") as ei:
            pack.pack_ext4(tree, tmp_path / "rootfs", "hc-root")
    assert ei.value.returncode != 0
    assert any("journal size" in line for line in ei.value.tail), ei.value.tail


def test_squashfs_keeps_content_links_modes_and_symlinks(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "rootfs"
    pack.pack_squashfs(tree, img)
    pack.check_squashfs(img)
    assert img.read_bytes()[:4] == b"hsqs"
    assert img.stat().st_size % 4096 == 0          # whole sectors for the AoE export
    sb = subprocess.run(["unsquashfs", "-s", str(img)], capture_output=True, text=True,
                        check=True).stdout
    assert "Compression zstd" in sb
    out = tmp_path / "x"
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(out), str(img)],
                   capture_output=True, check=True)
    assert (out / "etc" / "hostname").read_text() == "node\n"
    tool = out / "usr" / "bin" / "tool"
    assert tool.read_bytes() == (tree / "usr" / "bin" / "tool").read_bytes()
    assert tool.stat().st_mode & 0o7777 == 0o4755
    assert tool.stat().st_ino == (out / "usr" / "bin" / "tool-alias").stat().st_ino
    assert os.readlink(out / "bin") == "usr/bin"
    assert len(list((out / "var").glob("f*"))) == 300


def test_squashfs_errors_name_the_image_or_tree(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="missing: no root tree"):
        pack.pack_squashfs(tmp_path / "missing", tmp_path / "rootfs")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 8192)
    with pytest.raises(BuildError, match=r"bad: no squashfs superblock"):
        pack.check_squashfs(bad)
    img = tmp_path / "rootfs"
    pack.pack_squashfs(tree, img)
    data = bytearray(img.read_bytes())
    data[-4096:] = b"\xff" * 4096     # the tables (at the end) destroyed
    img.write_bytes(bytes(data))
    with pytest.raises(CommandError, match="unsquashfs"):
        pack.check_squashfs(img)
