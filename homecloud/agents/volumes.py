"""The storage node's volume pool: LVM thin volumes for templates and instance volumes.

Layout (made by homecloud.agents.disks on an empty store device, found again after a reboot):
volume group ``hc`` with an ext4 LV ``store`` (downloaded image exports, as before LVM) and a
thin pool ``pool``.  In the pool:

- ``t-NAME``: a template, read-only, filled from an hcbuild build's rootfs (downloaded over HTTP,
  sha256 and size checked); ``t-NAME.part`` while it is filled (a leftover one is removed);
- ``v-NAME``: a volume: a thin snapshot of a template or of another volume (copy-on-write, no
  copy: seconds), or an empty thin LV; grown with lvextend, never shrunk.

:func:`reconcile` is the pure part (plan + the LVs seen -> the lvm actions, in order), unit
tested; :class:`Pool` carries the actions out with lvcreate/lvextend/lvremove/lvrename through
the command funnel.  Nothing is deleted unless the plan's ``delete`` list names it.  Standard
library only: this module ships into the node images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from homecloud.agents.common import AgentError, run
from homecloud.agents.files import download
from homecloud.agents.protocol import Deletion, Plan, PoolEntry, TemplateSpec, VolumeExport

VG = "hc"
THIN_POOL = "pool"
STORE_LV = "store"
VOL_PREFIX = "v-"
TPL_PREFIX = "t-"
PART_SUFFIX = ".part"
BUSY_EVERY = 15.0    # seconds between progress lines of a template download
LVS_FIELDS = "lv_name,lv_size,origin,lv_attr"


@dataclass(frozen=True)
class LV:
    """One logical volume of the volume group, as ``lvs`` shows it."""

    name: str
    size: int
    origin: str = ""   # the LV it is a snapshot of ("" if none or gone)
    attr: str = ""

    @property
    def kind(self) -> str:
        """``volume`` | ``template`` | ``partial`` (a template being filled) | ``other``."""
        if self.name.startswith(TPL_PREFIX):
            return "partial" if self.name.endswith(PART_SUFFIX) else "template"
        return "volume" if self.name.startswith(VOL_PREFIX) else "other"

    @property
    def short(self) -> str:
        """The volume's or template's own name (without the prefix)."""
        if self.kind in ("volume", "template"):
            return self.name[2:]
        return self.name


def vol_lv(name: str) -> str:
    return VOL_PREFIX + name


def tpl_lv(name: str) -> str:
    return TPL_PREFIX + name


def origin_text(origin_lv: str) -> str:
    """``template:NAME`` | ``volume:NAME`` | "" for an LV's origin."""
    lv = LV(origin_lv, 0)
    if lv.kind == "template":
        return f"template:{lv.short}"
    if lv.kind == "volume":
        return f"volume:{lv.short}"
    return ""


def parse_lvs(text: str) -> list[LV]:
    """``lvs --noheadings --nosuffix --units b --separator '|' -o lv_name,lv_size,origin,
    lv_attr VG`` output -> LVs; AgentError naming the line that does not parse."""
    out: list[LV] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = [x.strip() for x in line.split("|")]
        if len(f) != 4:
            raise AgentError(f"lvs output line {n}: {line.strip()!r}: expected 4 fields")
        try:
            size = int(f[1].split(".")[0] or 0)
        except ValueError:
            raise AgentError(f"lvs output line {n}: size {f[1]!r} is not bytes") from None
        out.append(LV(f[0], size, f[2], f[3]))
    return out


def pool_entries(lvs: Iterable[LV]) -> tuple[PoolEntry, ...]:
    """The report's view of the pool: every volume and complete template."""
    return tuple(PoolEntry(lv.short, lv.kind, lv.size, origin_text(lv.origin))
                 for lv in sorted(lvs, key=lambda lv: lv.name)
                 if lv.kind in ("volume", "template"))


# ---------------------------------------------------------------------------- the actions


@dataclass(frozen=True)
class Remove:
    lv: str
    why: str


@dataclass(frozen=True)
class Fill:
    """Create ``t-NAME.part``, download the build into it, check it, rename it ``t-NAME``
    and make it read-only."""

    template: TemplateSpec


@dataclass(frozen=True)
class Snapshot:
    """``v-NAME`` as a thin snapshot of ``origin_lv`` (grown to ``size`` if that is bigger)."""

    name: str
    origin_lv: str
    size: int


@dataclass(frozen=True)
class Create:
    """``v-NAME`` as an empty thin LV of ``size``."""

    name: str
    size: int


@dataclass(frozen=True)
class Grow:
    lv: str
    size: int


@dataclass(frozen=True)
class Wait:
    """A volume that cannot be made yet (its origin is missing): not exported."""

    name: str
    why: str


@dataclass(frozen=True)
class Refuse:
    """A deletion the agent will not do (a template that still has clones)."""

    deletion: Deletion
    why: str


Action = Remove | Fill | Snapshot | Create | Grow | Wait | Refuse


def wanted_volumes(plan: Plan) -> dict[str, VolumeExport]:
    """The plan's volumes by name (exported at several targets: the biggest size)."""
    out: dict[str, VolumeExport] = {}
    for e in plan.exports:
        if isinstance(e, VolumeExport):
            cur = out.get(e.name)
            if cur is None or e.size > cur.size:
                out[e.name] = e
    return out


def reconcile(plan: Plan, lvs: Sequence[LV]) -> list[Action]:
    """The actions that make the pool hold what ``plan`` wants, in the order to run them:
    leftover partial templates removed; the plan's deletions (volumes, then templates: a
    template with clones is refused); missing templates filled; missing volumes made, each
    after its origin; volumes smaller than the plan grown."""
    have = {lv.name: lv for lv in lvs}
    actions: list[Action] = []
    for lv in lvs:
        if lv.kind == "partial":
            actions.append(Remove(lv.name, "left over from an interrupted template download"))
    vols = wanted_volumes(plan)
    gone: set[str] = set()
    for d in sorted(plan.delete, key=lambda d: (d.kind != "volume", d.name)):
        lvname = vol_lv(d.name) if d.kind == "volume" else tpl_lv(d.name)
        if lvname not in have:
            continue
        if d.kind == "volume" and d.name in vols:
            actions.append(Refuse(d, f"volume {d.name} is also exported by the plan"))
            continue
        if d.kind == "template":
            if any(t.name == d.name for t in plan.templates):
                actions.append(Refuse(d, f"template {d.name} is also wanted by the plan"))
                continue
            clones = sorted(lv.short for lv in lvs if lv.origin == lvname
                            and lv.name not in gone)
            clones += sorted(n for n, e in vols.items()
                             if e.origin_kind == "template" and e.origin == d.name
                             and vol_lv(n) not in have)
            if clones:
                actions.append(Refuse(d, f"template {d.name} still has clones: "
                                         f"{', '.join(clones)}"))
                continue
        actions.append(Remove(lvname, f"{d.kind} {d.name} deleted by the plan"))
        gone.add(lvname)
    present = set(have) - gone
    for t in plan.templates:
        if tpl_lv(t.name) not in present:
            actions.append(Fill(t))
            present.add(tpl_lv(t.name))
    todo = [e for n, e in sorted(vols.items()) if vol_lv(n) not in present]
    while todo:
        progress = False
        for e in list(todo):
            if e.origin_kind == "empty":
                actions.append(Create(e.name, e.size))
            else:
                src = tpl_lv(e.origin) if e.origin_kind == "template" else vol_lv(e.origin)
                if src not in present:
                    continue
                actions.append(Snapshot(e.name, src, e.size))
            present.add(vol_lv(e.name))
            todo.remove(e)
            progress = True
        if not progress:
            for e in todo:
                actions.append(Wait(e.name, f"its origin {e.origin_kind} {e.origin} is not in"
                                            " this storage node's pool"))
            break
    for n, e in sorted(vols.items()):
        cur = have.get(vol_lv(n))
        if cur is not None and cur.name not in gone and cur.size < e.size:
            actions.append(Grow(cur.name, e.size))
    return actions


def subject(a: Action) -> str:
    """The volume's or template's name an action is about (for errors by name)."""
    if isinstance(a, Fill):
        return a.template.name
    if isinstance(a, Snapshot | Create | Wait):
        return a.name
    if isinstance(a, Refuse):
        return a.deletion.name
    return LV(a.lv, 0).short


# ------------------------------------------------------------------------- carrying out


class Pool:
    """The thin pool of volume group ``vg``: observe it and carry out the actions."""

    def __init__(self, vg: str = VG, pool: str = THIN_POOL, dl_timeout: int = 3600,
                 log: Callable[[str], None] = print,
                 busy: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``busy`` hears how a long step goes (a template's download, every
        ``BUSY_EVERY`` seconds), for the agent to tell the config node."""
        self.vg, self.pool, self.dl_timeout, self.log = vg, pool, dl_timeout, log
        self.busy, self.clock = busy, clock

    def path(self, lv: str) -> str:
        return f"/dev/{self.vg}/{lv}"

    def volume_path(self, name: str) -> str:
        return self.path(vol_lv(name))

    def lvs(self) -> list[LV]:
        return parse_lvs(run(["lvs", "--noheadings", "--nosuffix", "--units", "b",
                              "--separator", "|", "-o", LVS_FIELDS, self.vg], timeout=60))

    def carry(self, a: Action) -> None:
        """Run one action; AgentError (naming the command and its output) when it fails."""
        vg = self.vg
        if isinstance(a, Remove):
            self.log(f"pool: removing {a.lv}: {a.why}")
            run(["lvremove", "-f", f"{vg}/{a.lv}"], timeout=120)
        elif isinstance(a, Create):
            self.log(f"pool: volume {a.name}: new empty thin LV of {a.size} bytes")
            run(["lvcreate", "-q", "-V", f"{a.size}b", "-T", f"{vg}/{self.pool}",
                 "-n", vol_lv(a.name)], timeout=120)
        elif isinstance(a, Snapshot):
            self.log(f"pool: volume {a.name}: thin snapshot of {a.origin_lv}")
            # -kn: no activation-skip flag, so the volume activates with the VG after a reboot
            run(["lvcreate", "-q", "-s", "-kn", "-p", "rw", "-n", vol_lv(a.name),
                 f"{vg}/{a.origin_lv}"], timeout=120)
            run(["lvchange", "-ay", f"{vg}/{vol_lv(a.name)}"], timeout=60)
            self.grow(vol_lv(a.name), a.size)
        elif isinstance(a, Grow):
            self.grow(a.lv, a.size)
        elif isinstance(a, Fill):
            self.fill(a.template)

    def grow(self, lv: str, size: int) -> None:
        cur = next((x.size for x in self.lvs() if x.name == lv), 0)
        if cur < size:
            self.log(f"pool: {lv}: growing from {cur} to {size} bytes")
            run(["lvextend", "-q", "-L", f"{size}b", f"{self.vg}/{lv}"], timeout=120)

    def _download_progress(self, t: TemplateSpec) -> Callable[[int], None]:
        said = [self.clock()]

        def progress(n: int) -> None:
            now = self.clock()
            if now - said[0] < BUSY_EVERY:
                return
            said[0] = now
            text = (f"template {t.name}: downloading, {n * 100 // max(1, t.size)}% of "
                    f"{t.size} bytes")
            self.log(f"pool: {text}")
            if self.busy is not None:
                self.busy(text)
        return progress

    def fill(self, t: TemplateSpec) -> None:
        part = tpl_lv(t.name) + PART_SUFFIX
        t0 = time.monotonic()
        self.log(f"pool: template {t.name}: downloading {t.url} ({t.size} bytes)")
        run(["lvcreate", "-q", "-V", f"{t.size}b", "-T", f"{self.vg}/{self.pool}", "-n", part],
            timeout=120)
        try:
            got, n = download(t.url, self.path(part), self.dl_timeout, into_device=True,
                              progress=self._download_progress(t))
            if n != t.size:
                raise AgentError(f"template {t.name}: size mismatch for {t.url}: got {n} bytes,"
                                 f" plan says {t.size}")
            if got != t.sha256:
                raise AgentError(f"template {t.name}: sha256 mismatch for {t.url}: got {got},"
                                 f" plan says {t.sha256}")
            run(["lvrename", self.vg, part, tpl_lv(t.name)], timeout=60)
        except AgentError:
            try:
                run(["lvremove", "-f", f"{self.vg}/{part}"], timeout=120)
            except AgentError as exc:
                self.log(f"pool: {exc}")
            raise
        run(["lvchange", "-p", "r", f"{self.vg}/{tpl_lv(t.name)}"], timeout=60)
        self.log(f"pool: template {t.name}: filled and verified in "
                 f"{time.monotonic() - t0:.0f}s")
