"""Packing the artifacts from the finished root tree: the RAM root (a zstd newc cpio of the
whole tree) and the rootfs (a fresh ext4 at the tree's size, mke2fs -d, or a zstd squashfs for a
read-only network root), every command through the funnel (builder.run).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from builder.errors import BuildError
from builder.run import exit_words, run, run_pipeline

RAM_ROOT_EXCLUDE = (
    "./boot/vmlinuz-*", "./boot/initrd.img-*", "./tmp/*", "./var/cache/apt/*", "./lost+found",
)


def pack_ram_root(root: Path, out: Path) -> None:
    """The whole root tree as a zstd-compressed newc cpio (the kernel unpacks it into its
    tmpfs rootfs and runs /init)."""
    if not (root / "init").exists() and not (root / "init").is_symlink():
        raise BuildError(f"{root}: no /init (element hc-ram-root sets it)")
    with open(out, "wb") as fout:
        run_pipeline(
            [["find", ".", "-mindepth", "1", "(", *_prune_args(), ")", "-prune", "-o", "-print0"],
             ["cpio", "--null", "--quiet", "-o", "-H", "newc", "--reproducible"],
             ["zstd", "-q", "-3", "-T0", "-c"]],
            what="pack RAM root", cwd=root, stdout=fout,
        )


def _prune_args() -> list[str]:
    args: list[str] = []
    for pat in RAM_ROOT_EXCLUDE:
        if args:
            args.append("-o")
        args += ["-path", pat]
    return args


def _need_tree(tree: Path) -> None:
    if not tree.is_dir():
        raise BuildError(f"{tree}: no root tree to pack into the rootfs")


def fsck(image: Path) -> None:
    run(["e2fsck", "-f", "-n", str(image)], what="check rootfs")


# zstd level 9: the hnode tree (842 MiB) packs to 248 MiB in 8.5 s on this machine's 2 cores;
# level 15 (mksquashfs's default) saves 6 % more for 50 s, level 3 costs 8 % more (docs/measured.md)
SQUASHFS_ZSTD_LEVEL = 9


def pack_squashfs(tree: Path, out: Path) -> None:
    """A zstd squashfs of ``tree``: owners, modes, hard links, device nodes, symlinks and xattrs
    (file capabilities) kept, other file systems mounted inside the tree not entered, padded to
    4 KiB (a whole number of sectors for the AoE export)."""
    _need_tree(tree)
    out.unlink(missing_ok=True)
    run(["mksquashfs", str(tree), str(out), "-noappend", "-no-progress", "-quiet",
         "-one-file-system", "-comp", "zstd", "-Xcompression-level", str(SQUASHFS_ZSTD_LEVEL)],
        what="pack rootfs (squashfs)", merge_stderr=True)


def check_squashfs(image: Path) -> None:
    """Read back the superblock and every directory table (a listing of every file)."""
    with open(image, "rb") as f:
        if f.read(4) != b"hsqs":
            raise BuildError(f"{image}: no squashfs superblock (magic 'hsqs') at offset 0")
    run(["unsquashfs", "-no-progress", "-l", "-d", "", str(image)], what="check rootfs (squashfs)")


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes of allocated blocks, inodes) of the tree at ``root``, hard links counted once,
    other filesystems (mount points) not entered."""
    dev = root.lstat().st_dev
    seen: set[int] = set()
    used, inodes = 0, 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                if st.st_nlink > 1 and not e.is_dir(follow_symlinks=False):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                used += st.st_blocks * 512
                inodes += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
    return used, inodes


JOURNAL_MB = 16
BLOCK = 4096


def ext4_geometry(used: int, inodes: int, free_mb: int) -> tuple[int, int]:
    """(image bytes, inode count) for an ext4 that holds a tree of ``used`` bytes and ``inodes``
    inodes with ``free_mb`` MiB (and inodes for it, one per 16 KiB) to spare."""
    n = int(inodes * 1.25) + 1024 + free_mb * 64
    size = int(used * 1.04) + n * 256 + (JOURNAL_MB + 16 + free_mb) * 2**20
    return -(-size // BLOCK) * BLOCK, n


def pack_ext4(tree: Path, out: Path, label: str, free_mb: int = 0) -> None:
    """A fresh ext4 image of ``tree`` (mke2fs -d), sized to the tree plus ``free_mb``.

    DIB would make its ext4 for images that get resized later: one inode per 4 KiB, a 64 MiB
    journal and 40 % slack (hnode: 1.6 GiB for 0.8 GiB of files).  The rootfs is downloaded by
    storage nodes and read over AoE, so it is packed at its size instead (0.9 GiB).  mke2fs -d keeps
    owners, modes, hard links, device nodes, symlinks and xattrs (file capabilities); timestamps
    keep whole seconds."""
    _need_tree(tree)
    used, inodes = tree_usage(tree)
    size, n = ext4_geometry(used, inodes, free_mb)
    for _attempt in range(4):
        out.unlink(missing_ok=True)
        with open(out, "wb") as f:
            f.truncate(size)
        cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-m", "0", "-N", str(n),
               "-J", f"size={JOURNAL_MB}", "-L", label, "-d", str(tree), str(out)]
        # mke2fs fsyncs the whole image when it ends (0.9 GB: 2.7 s at this machine's
        # 330 MB/s), and the publish fsyncs it again, so its pages are sent to disk while it
        # still writes
        r = run(cmd, what="pack rootfs", check=False, merge_stderr=True,
                tick=(0.25, lambda: _start_writeback(out)))
        if r.ok:
            return
        if not any(w in r.stdout.lower() for w in ("could not allocate", "too small", "too big",
                                                   "no space")):
            raise r.error()
        size, n = -(-int(size * 1.5) // BLOCK) * BLOCK, int(n * 1.5)  # estimate too tight
    raise r.error(note=f"the tree does not fit, {exit_words(r.returncode, r.cmd)}")


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _start_writeback(path: Path) -> None:
    """Start writing ``path``'s dirty pages to disk without waiting (sync_file_range)."""
    libc = _libc()
    try:
        fd = os.open(path, os.O_RDONLY)  # not there yet: nothing to write back
    except OSError:
        return
    try:
        if libc is not None:
            libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0),
                                 ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))
    finally:
        os.close(fd)
