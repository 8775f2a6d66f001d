"""The storage node's local store: md RAID1 over two or more empty disks, one disk otherwise;
an existing array or file system labelled ``hc-store`` is reused (mkfs runs once); a disk that
holds anything else is never touched.

:func:`choose` decides from what the disks hold (pure, unit-tested); :func:`setup_store` looks
at the disks and runs mdadm, mkfs.ext4 and mount through the command funnel."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homecloud.agents.common import AgentError, CommandError, exists_in_path, run

HEAD_BYTES = 12288
EXT_MAGIC_OFF, EXT_LABEL_OFF = 1080, 1144           # superblock at 1024: magic +56, label +120
MD_MAGIC_OFF, MD_MAGIC = 4096, bytes.fromhex("fc4e2ba9")   # md 1.2 superblock at 4 KiB
_SKIP = ("loop", "ram", "md", "dm-", "sr", "zram", "nbd", "etherd", "fd", "mtd")


@dataclass(frozen=True)
class Disk:
    """What one disk holds, as far as the store is concerned."""

    dev: str
    readable: bool = True
    empty: bool = False             # no signature at all in the first 12 KiB
    label: str = ""                 # its ext2/3/4 label, "" if none
    md_member: bool = False         # carries an md 1.2 superblock
    holder_md: str = ""             # the running array it belongs to (/dev/mdN), "" if none
    in_use: bool = False            # held by something or mounted


@dataclass(frozen=True)
class Choice:
    """What to do: ``reuse`` dev, ``assemble`` members, ``raid1`` over members, ``single`` dev
    (mkfs), or ``fail`` with a reason."""

    how: str
    dev: str = ""
    members: tuple[str, ...] = ()
    reason: str = ""
    skipped: tuple[str, ...] = ()   # log lines about disks left alone


def choose(disks: Sequence[Disk], label: str, have_mdadm: bool) -> Choice:
    """The store to make or reuse from ``disks`` (pure)."""
    if not disks:
        return Choice("fail", reason="no disks")
    held = next((d.holder_md for d in disks if d.holder_md), "")
    if held:
        return Choice("reuse", dev=held)
    members = tuple(d.dev for d in disks if d.md_member)
    if members and have_mdadm:
        return Choice("assemble", members=members)
    own = next((d.dev for d in disks if d.label == label), "")
    if own:
        return Choice("reuse", dev=own)
    empty: list[str] = []
    skipped: list[str] = []
    for d in disks:
        if d.in_use:
            skipped.append(f"{d.dev} is in use: skipped")
        elif d.empty:
            empty.append(d.dev)
        else:
            skipped.append(f"{d.dev} not empty: skipped")
    if not empty:
        return Choice("fail", reason=f"no empty disk among {' '.join(d.dev for d in disks)}"
                      " (disks with data are never touched)", skipped=tuple(skipped))
    if len(empty) >= 2 and have_mdadm:
        return Choice("raid1", members=tuple(empty), skipped=tuple(skipped))
    if len(empty) >= 2:
        skipped.append(f"no mdadm: single disk {empty[0]}")
    return Choice("single", dev=empty[0], skipped=tuple(skipped))


# ------------------------------------------------------------------------ looking at disks


def read_head(dev: str) -> bytes | None:
    try:
        with open(dev, "rb") as f:
            data = f.read(HEAD_BYTES)
    except OSError:
        return None
    return data if len(data) == HEAD_BYTES else None


def ext_label(head: bytes | None) -> str:
    if head is None or head[EXT_MAGIC_OFF:EXT_MAGIC_OFF + 2] != b"\x53\xef":
        return ""
    return head[EXT_LABEL_OFF:EXT_LABEL_OFF + 16].rstrip(b"\0").decode(errors="replace")


def sysname(dev: str) -> str:
    return Path(os.path.realpath(dev)).name


def holder_md(dev: str) -> str:
    holders = Path("/sys/block") / sysname(dev) / "holders"
    try:
        names = sorted(p.name for p in holders.iterdir() if p.name.startswith("md"))
    except OSError:
        return ""
    return f"/dev/{names[0]}" if names else ""


def mounts() -> list[tuple[str, str]]:
    """(device, mount point) of /proc/mounts."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        f = line.split()
        if len(f) >= 2:
            out.append((f[0], f[1].replace("\\040", " ")))
    return out


def in_use(dev: str) -> bool:
    holders = Path("/sys/block") / sysname(dev) / "holders"
    try:
        if any(holders.iterdir()):
            return True
    except OSError:
        pass
    real = os.path.realpath(dev)
    return any(d in (dev, real) for d, _ in mounts())


def look(dev: str) -> Disk:
    head = read_head(dev)
    if head is None:
        return Disk(dev, readable=False, in_use=in_use(dev), holder_md=holder_md(dev))
    return Disk(dev, empty=not head.strip(b"\0"), label=ext_label(head),
                md_member=head[MD_MAGIC_OFF:MD_MAGIC_OFF + 4] == MD_MAGIC,
                holder_md=holder_md(dev), in_use=in_use(dev))


def auto_disks(sys_block: Path = Path("/sys/block")) -> list[str]:
    """Whole, fixed, non-virtual-stack disks (the ones a storage node may use)."""
    out = []
    try:
        names = sorted(p.name for p in sys_block.iterdir())
    except OSError:
        return []
    for n in names:
        if n.startswith(_SKIP):
            continue
        try:
            if (sys_block / n / "removable").read_text().strip() == "1":
                continue
            if int((sys_block / n / "size").read_text().strip() or 0) <= 0:
                continue
        except (OSError, ValueError):
            continue
        if Path(f"/dev/{n}").exists():
            out.append(f"/dev/{n}")
    return out


def disk_list(spec: str) -> list[str]:
    """``auto`` | ``none`` | "/dev/vdb /dev/vdc" (space or comma separated)."""
    if spec == "auto":
        return auto_disks()
    return spec.replace(",", " ").split()


# ------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class Store:
    dev: str   # device mounted at the store, or "none"
    how: str   # new | reused | mounted | HC_DISKS=none


def mounted_at(path: str) -> str:
    dev = ""
    for d, mp in mounts():
        if mp == path:
            dev = d
    return dev


def setup_store(spec: str, store: str, label: str, md: str,
                log: Callable[[str], None]) -> Store:
    """Mount the local store at ``store``; AgentError (naming the disks, or the command that
    failed) when there is no usable one."""
    os.makedirs(store, exist_ok=True)
    cur = mounted_at(store)
    if cur:
        log(f"storage: {store} already mounted ({cur})")
        return Store(cur, "mounted")
    if spec == "none":
        log(f"storage: HC_DISKS=none: {store} used as it is")
        return Store("none", "HC_DISKS=none")
    disks = disk_list(spec)
    if not disks:
        raise AgentError(f"storage: no disks (HC_DISKS={spec})")
    for d in disks:
        if not Path(d).is_block_device():
            raise AgentError(f"storage: {d} is not a block device")
    have_mdadm = exists_in_path("mdadm")
    c = choose([look(d) for d in disks], label, have_mdadm)
    for line in c.skipped:
        log(f"storage: {line}")
    dev = c.dev
    if c.how == "fail":
        raise AgentError(f"storage: {c.reason}")
    if c.how == "assemble":
        log(f"storage: assembling {md} from {' '.join(c.members)}")
        try:
            run(["mdadm", "--assemble", md, "--run", *c.members])
        except CommandError as exc:
            log(f"storage: {exc}")
        dev = holder_md(c.members[0])
        if not dev:
            raise AgentError(f"storage: md members {' '.join(c.members)} did not assemble")
    if c.how == "raid1":
        log(f"storage: creating RAID1 {md} over {' '.join(c.members)}")
        try:
            run(["mdadm", "--create", md, "--run", "--level=1",
                 f"--raid-devices={len(c.members)}", "--metadata=1.2", f"--name={label}",
                 *c.members])
            dev = holder_md(c.members[0])
        except CommandError as exc:
            log(f"storage: {exc}")
        if not dev:
            dev = c.members[0]
            log(f"storage: RAID1 not possible: single disk {dev}")
    if c.how in ("reuse", "assemble"):
        found = look(dev)
        if found.label == label:
            log(f"storage: reusing {dev} (label {label})")
            _mount(dev, store)
            return Store(dev, "reused")
        if not found.empty:
            raise AgentError(f"storage: {dev} holds something that is not {label}:"
                             " not touching it")
    mkfs = "mkfs.ext4" if exists_in_path("mkfs.ext4") else "mke2fs"
    log(f"storage: {mkfs} -L {label} {dev}")
    argv = [mkfs, "-q", "-F", "-L", label, dev]
    if mkfs == "mke2fs":
        argv[1:1] = ["-t", "ext4"]
    run(argv)
    _mount(dev, store)
    log(f"storage: new store on {dev} mounted at {store}")
    return Store(dev, "new")


def _mount(dev: str, store: str) -> None:
    run(["mount", "-t", "ext4", "-o", "noatime", dev, store])
