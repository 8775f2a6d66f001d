"""The storage node's local store: md RAID1 over two or more empty disks, one disk otherwise;
an existing array or file system labelled ``hc-store`` is reused (mkfs runs once); a disk that
holds anything else is never touched.

With LVM (lvm2 installed and the kernel's device-mapper present; ``HC_LVM=auto|yes|no``), a new
store device becomes volume group ``hc``: an ext4 LV ``store`` (labelled ``hc-store``, mounted at
the store: the image exports) and a thin pool ``pool`` over the rest (volumes and templates,
homecloud.agents.volumes).  After a reboot the VG is found again by its PV label (on the md
array or the disk) and activated; a device that carries our VG is never re-initialised, one
that carries another VG is never touched.  A store made before LVM (ext4 straight on the
device) is reused as it is: image exports keep working, but it has no pool (empty volumes are
sparse files as before; templates and clones are refused, naming the reason).

:func:`choose` decides from what the disks hold (pure, unit-tested); :func:`setup_store` looks
at the disks and runs mdadm, mkfs.ext4 and mount through the command funnel."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from homecloud.agents.common import AgentError, CommandError, exists_in_path, run

HEAD_BYTES = 12288
EXT_MAGIC_OFF, EXT_LABEL_OFF = 1080, 1144           # superblock at 1024: magic +56, label +120
MD_MAGIC_OFF, MD_MAGIC = 4096, bytes.fromhex("fc4e2ba9")   # md 1.2 superblock at 4 KiB
LVM_LABEL_OFF = 512                                 # "LABELONE" in sector 1, "LVM2 001" at +24
VG = "hc"
STORE_LV = "store"
THIN_POOL = "pool"
STORE_PERCENT = 40                                  # of the VG for the image store LV
_SKIP = ("loop", "ram", "md", "dm-", "sr", "zram", "nbd", "etherd", "fd", "mtd")


@dataclass(frozen=True)
class Disk:
    """What one disk holds, as far as the store is concerned."""

    dev: str
    readable: bool = True
    empty: bool = False             # no signature at all in the first 12 KiB
    label: str = ""                 # its ext2/3/4 label, "" if none
    md_member: bool = False         # carries an md 1.2 superblock
    lvm_pv: bool = False            # carries an LVM2 physical-volume label
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
    pv = next((d.dev for d in disks if d.lvm_pv), "")
    if pv:
        return Choice("reuse", dev=pv)
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


def is_lvm_pv(head: bytes | None) -> bool:
    o = LVM_LABEL_OFF
    return head is not None and head[o:o + 8] == b"LABELONE" and \
        head[o + 24:o + 32] == b"LVM2 001"


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
                lvm_pv=is_lvm_pv(head),
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
    pool: bool = False   # the VG's thin pool is there (volumes and templates)
    why_no_pool: str = ""
    pool_deferred: bool = False   # ours to make with make_thin_pool (after the image exports)


def have_device_mapper(misc: str = "/proc/misc") -> bool:
    try:
        return any(line.split()[-1:] == ["device-mapper"]
                   for line in open(misc).read().splitlines())
    except OSError:
        return False


def lvm_wanted(mode: str) -> tuple[bool, str]:
    """Whether to use LVM (``HC_LVM``: auto | yes | no), and why not."""
    if mode == "no":
        return False, "HC_LVM=no"
    if not exists_in_path("lvm"):
        return False, "lvm2 is not installed"
    if mode == "auto" and not have_device_mapper():
        with contextlib.suppress(CommandError):   # a module on Debian's kernel: load it
            run(["modprobe", "dm_mod"], timeout=30)
        if not have_device_mapper():
            return False, "the kernel has no device-mapper"
    return True, ""


def pool_present(vg: str = VG) -> bool:
    try:
        out = run(["lvs", "--noheadings", "-o", "lv_name,segtype", vg], timeout=60)
    except CommandError:
        return False
    return any(line.split() == [THIN_POOL, "thin-pool"] for line in out.splitlines())


def activate(dev: str, log: Callable[[str], None]) -> str:
    """Activate the VG on PV ``dev`` (ours only); the store LV's device."""
    vg = run(["pvs", "--noheadings", "-o", "vg_name", dev], timeout=60).strip()
    if vg != VG:
        raise AgentError(f"storage: {dev} is an LVM physical volume of volume group "
                         f"{vg or '(none)'!r}, not {VG!r}: not touching it")
    log(f"storage: activating volume group {VG} on {dev}")
    run(["vgchange", "-ay", VG], timeout=120)
    return f"/dev/{VG}/{STORE_LV}"


def _timed(steps: Sequence[Sequence[str]]) -> str:
    took = []
    for argv in steps:
        t0 = time.monotonic()
        run(argv, timeout=300)
        took.append(f"{argv[0]} {time.monotonic() - t0:.1f}s")
    return ", ".join(took)


def make_thin_pool(log: Callable[[str], None]) -> None:
    """The thin pool ``hc/pool`` over 90% of the VG's free space (the rest: room for the
    pool's metadata spare and a later lvextend).  The slowest LVM step at boot (16 s on a lab
    snode under TCG): a new store makes it after the image exports are served."""
    took = _timed([["lvcreate", "-q", "-y", "-l", "90%FREE", "-T", f"{VG}/{THIN_POOL}"]])
    log(f"storage: thin pool {VG}/{THIN_POOL} made ({took})")


def make_vg(dev: str, label: str, log: Callable[[str], None], pool: bool = True) -> str:
    """Volume group ``hc`` on the empty ``dev``: the store LV (ext4, ``label``) and, with
    ``pool``, the thin pool; the store LV's device."""
    log(f"storage: new volume group {VG} on {dev}: LV {STORE_LV} ({STORE_PERCENT}%) and thin"
        f" pool {THIN_POOL}{'' if pool else ' (later)'}")
    took = _timed([["pvcreate", "-q", dev], ["vgcreate", "-q", VG, dev],
                   ["lvcreate", "-q", "-y", "-l", f"{STORE_PERCENT}%VG", "-n", STORE_LV, VG]])
    log(f"storage: volume group made ({took})")
    if pool:
        make_thin_pool(log)
    store_dev = f"/dev/{VG}/{STORE_LV}"
    _mkfs(store_dev, label, log)
    return store_dev


def mounted_at(path: str) -> str:
    dev = ""
    for d, mp in mounts():
        if mp == path:
            dev = d
    return dev


def md_create_argv(md: str, label: str, members: Sequence[str],
                   assume_clean: bool = False) -> list[str]:
    """``mdadm --create`` of the store's RAID1 over ``members``.

    A write-intent bitmap: after a crash or power loss only the regions written meanwhile
    resync, not the whole array (minutes of I/O under TCG).  ``assume_clean`` skips the
    initial resync, which is right only for members known to hold the same bytes, i.e.
    zeroed disks (mdadm(8), --assume-clean): the lab's disks are new sparse files, and their
    resync (8 GiB per snode, emulated virtio-scsi I/O) took a host core for ~80 s while the
    hnodes booted.  On disks with old data, a skipped resync leaves never-written regions
    different between the members (a later ``check`` counts them; nothing above md reads
    a region before writing it)."""
    return ["mdadm", "--create", md, "--run", "--level=1", "--bitmap=internal",
            *(["--assume-clean"] if assume_clean else []),
            f"--raid-devices={len(members)}", "--metadata=1.2", f"--name={label}", *members]


def setup_store(spec: str, store: str, label: str, md: str,
                log: Callable[[str], None], lvm: str = "auto",
                defer_pool: bool = False, assume_clean: bool = False) -> Store:
    """Mount the local store at ``store`` (and find or make the volume pool, see the module
    doc); AgentError (naming the disks, or the command that failed) when there is no usable
    one.  ``defer_pool``: a thin pool still to make (a new volume group, or ours without one:
    an agent stopped while it made it) is left to the caller (``Store.pool_deferred``,
    make_thin_pool).  ``assume_clean``: a new RAID1 is made without its initial resync
    (:func:`md_create_argv`)."""
    os.makedirs(store, exist_ok=True)
    use_lvm, why = lvm_wanted(lvm)
    cur = mounted_at(store)
    if cur:
        log(f"storage: {store} already mounted ({cur})")
        if use_lvm and pool_present():
            return Store(cur, "mounted", pool=True)
        return Store(cur, "mounted", why_no_pool=why or f"no thin pool {VG}/{THIN_POOL}")
    if spec == "none":
        log(f"storage: HC_DISKS=none: {store} used as it is")
        return Store("none", "HC_DISKS=none", why_no_pool="HC_DISKS=none")
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
        log(f"storage: creating RAID1 {md} over {' '.join(c.members)}"
            + (" (--assume-clean: the disks are zeroed, hc.md_assume_clean)" if assume_clean
               else ""))
        try:
            run(md_create_argv(md, label, c.members, assume_clean))
            dev = holder_md(c.members[0])
        except CommandError as exc:
            log(f"storage: {exc}")
        if not dev:
            dev = c.members[0]
            log(f"storage: RAID1 not possible: single disk {dev}")
    if c.how in ("reuse", "assemble"):
        found = look(dev)
        if found.lvm_pv:
            if not use_lvm:
                raise AgentError(f"storage: {dev} carries an LVM volume group but {why}:"
                                 " not touching it")
            lv = activate(dev, log)
            _mount(lv, store)
            log(f"storage: reusing volume group {VG} on {dev}: {lv} mounted at {store}")
            if pool_present():
                return Store(dev, "reused", pool=True)
            log(f"storage: volume group {VG} has no thin pool {THIN_POOL} (made when it was"
                " interrupted?): making it")
            if defer_pool:
                return Store(dev, "reused", pool_deferred=True)
            make_thin_pool(log)
            return Store(dev, "reused", pool=True)
        if found.label == label:
            log(f"storage: reusing {dev} (label {label}); it predates LVM: no volume pool")
            _mount(dev, store)
            return Store(dev, "reused", why_no_pool=f"the store on {dev} predates LVM (ext4 "
                                                    "straight on the device)")
        if not found.empty:
            raise AgentError(f"storage: {dev} holds something that is not {label}:"
                             " not touching it")
    if use_lvm:
        lv = make_vg(dev, label, log, pool=not defer_pool)
        _mount(lv, store)
        log(f"storage: new store on {lv} (volume group {VG} on {dev}) mounted at {store}")
        return Store(dev, "new", pool=not defer_pool, pool_deferred=defer_pool)
    _mkfs(dev, label, log)
    _mount(dev, store)
    log(f"storage: new store on {dev} mounted at {store} (no volume pool: {why})")
    return Store(dev, "new", why_no_pool=why)


def _mkfs(dev: str, label: str, log: Callable[[str], None]) -> None:
    mkfs = "mkfs.ext4" if exists_in_path("mkfs.ext4") else "mke2fs"
    log(f"storage: {mkfs} -L {label} {dev}")
    argv = [mkfs, "-q", "-F", "-L", label, dev]
    if mkfs == "mke2fs":
        argv[1:1] = ["-t", "ext4"]
    run(argv)


def _mount(dev: str, store: str) -> None:
    run(["mount", "-t", "ext4", "-o", "noatime", dev, store])
