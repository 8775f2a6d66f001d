"""hc-storage-agent: serve this storage node's AoE exports as the config node's plan says.

At start: find the boot interface, the boot server and this node's MAC (kernel command line
``hc.server= hc.mac= BOOTIF=``, or environment overrides), set up the local store
(homecloud.agents.disks), fetch ``$server/plan/$mac.json`` (homecloud.agents.protocol; retried
with backoff), download every exported image (sha256 checked, skipped when present and intact;
a partial download is never used) and serve it; a new store's thin pool is made only then (the
hnodes wait on the image exports, nothing waits on an empty pool; until it is there the report
says so and volume exports wait), make the plan's templates and volumes in the LVM thin pool
(homecloud.agents.volumes; on a store without a pool, empty volumes are sparse files), delete
the volumes and templates the plan's ``delete`` list names (never one merely missing from the
plan), and run one supervised vblade
per export (restarted with backoff when it exits).  Then it prints ``hc-storage: exports ready
e1.0,...`` on the console, POSTs an ``exports-ready`` report, and re-polls the plan: new exports
start, removed ones stop (by PID), changed ones restart, without a reboot.

The decisions are homecloud.agents.reconcile (pure); this module carries them out, with the
export files in homecloud.agents.files and the local store in homecloud.agents.disks.  Exit: 0 on
SIGTERM after stopping every vblade it started, 2 on bad configuration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from homecloud.agents import reconcile as R
from homecloud.agents import volumes as V
from homecloud.agents.common import (
    AgentError,
    Backoff,
    Output,
    Reporter,
    cmdline_args,
    die,
    env_int,
    exists_in_path,
    http_get,
    post_report,
    run,
)
from homecloud.agents.disks import Store, make_thin_pool, setup_store
from homecloud.agents.files import Files
from homecloud.agents.protocol import (
    ExportStatus,
    Plan,
    PoolEntry,
    ProtocolError,
    VolumeExport,
    make_report,
    parse_plan,
)
from homecloud.agents.replicate import Replicator
from homecloud.agents.supervisor import Supervisor, stale_cleanup
from homecloud.core.ids import BadMac, Target, normalize_mac

PROG = "hc-storage-agent"
VERSION = 1
READY_PREFIX = "hc-storage: exports ready "
RETRY_FAILED = 30.0   # seconds before exports that failed are tried again
REPORT_EVERY = 300.0  # seconds: the last report is sent again this often (at once if it failed)
USAGE = """usage: hc-storage-agent [--help | --version]

Environment (kernel command line in brackets; the environment wins):
  HC_SERVER      boot server base URL            [hc.server=http://IP[:PORT]]
  HC_MAC         this node's MAC (plan name)     [hc.mac=, else BOOTIF=, else the interface's]
  HC_IFACE       interface vblade serves on      [hc.iface=, else BOOTIF=, else the default
                                                  route's, else the first ethernet interface]
  HC_BOOTIF      boot NIC as 01-aa-bb-cc-dd-ee-ff                   [BOOTIF=]
  HC_DISKS       auto | none | "/dev/vdb /dev/vdc" (space or comma separated)    [auto]
  HC_STORE       mount point of the local store                       [/srv/hc]
  HC_POLL        seconds between plan polls (set: overrides the plan's)   [the plan's, 5]
  HC_RUN         state directory (pid files, verified images)         [/run/hc-storage]
  HC_CMDLINE     kernel command line file                             [/proc/cmdline]
  HC_CONSOLE     where "exports ready" is also written, or none       [/dev/console]
  HC_VBLADE      vblade binary                                        [vblade]
  HC_MD          md device to create for RAID1                        [/dev/md/hc-store]
  HC_FSLABEL     ext4 label that marks the store                      [hc-store]
  HC_LVM         auto | yes | no: volume group hc with a thin pool    [auto: if lvm2 and
                                                  the kernel's device-mapper are there]
  HC_BACKOFF_MAX longest restart/retry delay, seconds                 [30]
  HC_DL_TIMEOUT  longest image download, seconds                      [3600]
  HC_MD_ASSUME_CLEAN  1: a new RAID1 skips its initial resync: only for
                 disks known to be zeroed (the lab's new sparse files) [hc.md_assume_clean=, 0]
"""


def system_stopping(runner: Callable[[Sequence[str]], str] | None = None) -> bool:
    """systemd says the machine is shutting down (not merely this agent restarting)."""
    try:
        out = (runner or (lambda a: run(a, timeout=10)))(["systemctl", "is-system-running"])
    except (AgentError, OSError) as exc:
        out = getattr(exc, "output", "") or ""
    return out.strip() == "stopping"


class Shutdown(Exception):
    """SIGTERM, SIGINT or SIGHUP: stop every vblade and exit 0."""


@dataclass(frozen=True)
class Config:
    server: str
    mac: str
    iface: str
    bootif: str
    disks: str = "auto"
    store: str = "/srv/hc"
    poll: int | None = None
    run: str = "/run/hc-storage"
    console: str = "/dev/console"
    vblade: str = "vblade"
    md: str = "/dev/md/hc-store"
    fslabel: str = "hc-store"
    lvm: str = "auto"
    backoff_max: int = 30
    dl_timeout: int = 3600
    md_assume_clean: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        cl = cmdline_args(env.get("HC_CMDLINE") or "/proc/cmdline")

        def pick(name: str, key: str) -> str:
            return env.get(name) or cl.get(key, "")

        poll = env_int(env, "HC_POLL", 0)
        if "HC_POLL" in env and env["HC_POLL"] != "" and poll <= 0:
            raise AgentError(f"HC_POLL={env['HC_POLL']}: not seconds")
        return cls(server=pick("HC_SERVER", "hc.server").rstrip("/"),
                   mac=pick("HC_MAC", "hc.mac"), iface=pick("HC_IFACE", "hc.iface"),
                   bootif=pick("HC_BOOTIF", "BOOTIF"), disks=env.get("HC_DISKS") or "auto",
                   store=env.get("HC_STORE") or "/srv/hc", poll=poll or None,
                   run=env.get("HC_RUN") or "/run/hc-storage",
                   console=env.get("HC_CONSOLE") or "/dev/console",
                   vblade=env.get("HC_VBLADE") or "vblade",
                   md=env.get("HC_MD") or "/dev/md/hc-store",
                   fslabel=env.get("HC_FSLABEL") or "hc-store",
                   lvm=_lvm_mode(env.get("HC_LVM") or "auto"),
                   backoff_max=env_int(env, "HC_BACKOFF_MAX", 30),
                   dl_timeout=env_int(env, "HC_DL_TIMEOUT", 3600),
                   md_assume_clean=_flag("HC_MD_ASSUME_CLEAN",
                                         pick("HC_MD_ASSUME_CLEAN", "hc.md_assume_clean")))


def _flag(name: str, v: str) -> bool:
    """A yes/no setting: 1/yes/true or 0/no/false (or unset); AgentError naming it else."""
    if v.lower() in ("1", "yes", "true"):
        return True
    if v.lower() in ("", "0", "no", "false"):
        return False
    raise AgentError(f"{name}={v}: not 1/yes/true or 0/no/false")


def _lvm_mode(v: str) -> str:
    if v not in ("auto", "yes", "no"):
        raise AgentError(f"HC_LVM={v}: not auto, yes or no")
    return v


# ---------------------------------------------------------------------- interface and MAC


def iface_mac(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/address").read_text().strip()
    except OSError:
        return ""


def default_route_iface() -> str:
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return ""
    for line in lines:
        f = line.split()
        if len(f) > 2 and f[1] == "00000000":
            return f[0]
    return ""


def find_iface(cfg: Config) -> str:
    """HC_IFACE, else BOOTIF's interface, else the default route's, else the first Ethernet."""
    net = Path("/sys/class/net")
    if cfg.iface:
        return cfg.iface if (net / cfg.iface).exists() else ""
    names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    if cfg.bootif:
        try:
            want = normalize_mac(cfg.bootif)
        except BadMac:
            return ""
        return next((n for n in names if iface_mac(n) == want), "")
    dflt = default_route_iface()
    if dflt:
        return dflt
    for n in names:
        try:
            ether = (net / n / "type").read_text().strip() == "1"
        except OSError:
            continue
        if n != "lo" and ether and not (net / n / "bridge").exists():
            return n
    return ""


def kernel_named(name: str, sys_net: Path = Path("/sys/class/net"),
                 run_udev: Path = Path("/run/udev")) -> bool:
    """A udevd runs here and ``name`` is still the kernel's (ethN): udev may rename it."""
    if not (run_udev / "control").exists():
        return False
    try:
        return (sys_net / name / "name_assign_type").read_text().strip() == "1"  # NET_NAME_ENUM
    except OSError:
        return False


def udev_pending(name: str, sys_net: Path = Path("/sys/class/net"),
                 run_udev: Path = Path("/run/udev")) -> bool:
    """True while the udev running here has not processed the kernel-named interface ``name``
    (no ``/run/udev/data/n<ifindex>`` yet).  Until then its name may still change (eth0 ->
    ens2), and setting it up first makes udev's rename fail ("already up, cannot rename"),
    after which systemd-networkd leaves the link pending for good: a storage node without an
    address.  Names given by a person (veth, HC_IFACE=) and hosts without udevd never wait."""
    if not kernel_named(name, sys_net, run_udev):
        return False
    try:
        idx = (sys_net / name / "ifindex").read_text().strip()
    except OSError:
        return False
    return not (run_udev / "data" / f"n{idx}").exists()


# ------------------------------------------------------------------------------- the agent


class Agent:
    def __init__(self, cfg: Config, out: Output, iface: str, mac: str) -> None:
        self.cfg, self.out, self.iface, self.mac = cfg, out, iface, mac
        self.sup = Supervisor(Path(cfg.run) / "exports", out, cfg.backoff_max)
        self.files = Files(cfg.store, cfg.run, cfg.dl_timeout, out)
        self.errors: dict[Target, str] = {}
        self.failed_at = 0.0
        self.reported: tuple[list[Target], tuple[PoolEntry, ...], bool] | None = None
        self.pool: V.Pool | None = None
        self.why_no_pool = "no store yet"
        self.vol_errors: dict[str, str] = {}   # volume or template name -> why
        self.entries: tuple[PoolEntry, ...] = ()
        self.pool_deferred = False       # the thin pool is made once the images are served
        self.reporter = Reporter(lambda r: post_report(cfg.server, r), out.log, REPORT_EVERY)
        self.replicator = Replicator(V.VG, V.THIN_POOL, Path(cfg.run), out.log,
                                     server=cfg.server, mac=cfg.mac)
        self.lv_entries: tuple[PoolEntry, ...] = ()   # the pool's entries without DRBD states

    def report(self, state: str, detail: str, statuses: Sequence[ExportStatus] = ()) -> None:
        facts: dict[str, str | bool] = {"volume_pool": self.pool is not None}
        if self.pool is None:
            facts["volume_pool_why"] = self.why_no_pool[:1000]
        try:
            r = make_report(self.mac, state, detail[:4000], facts, exports=tuple(statuses),
                            volumes=self.entries)
        except (ProtocolError, ValueError) as exc:
            self.out.log(f"warning: report {state}: {exc}")
            return
        self.reporter.send(r)

    def leaving(self) -> None:
        """The last report before the machine goes down: state ``leaving`` with the volumes'
        DRBD states after :meth:`Replicator.leave`.  The config node then counts this snode gone
        at once (a replica of its volumes is promoted at its next plan fetch, not
        ``DEAD_AFTER`` seconds later) and shows why.  Best effort, one try."""
        last = self.reporter.last
        if last is None:
            return
        try:
            now = self.with_drbd(self.lv_entries) if self.replicator.known else last.volumes
            post_report(self.cfg.server, replace(
                last, state="leaving", volumes=now, exports=(),
                detail="this storage node is shutting down: exports stopped, replicated "
                       "volumes handed over"), timeout=5)
        except (AgentError, ProtocolError, ValueError) as exc:
            self.out.log(f"warning: report leaving: {exc}")

    def busy(self, text: str) -> None:
        """How a long step goes, to the config node: the last report with ``text`` as its
        detail (sent once, not kept: the next real report replaces it)."""
        last = self.reporter.last
        if last is None:
            return
        with contextlib.suppress(AgentError):
            post_report(self.cfg.server, replace(last, detail=text[:4000]), timeout=5)

    # ------------------------------------------------------------------ the volume pool
    def pool_actions(self, plan: Plan) -> list[V.Action]:
        """Make the plan's templates and volumes (before the exports start); the removals are
        returned, to run once the vblades of removed exports are stopped."""
        self.vol_errors = {}
        if self.pool is None:
            for t in plan.templates:
                self.vol_errors[t.name] = f"template {t.name}: no volume pool on this storage" \
                                          f" node ({self.why_no_pool})"
            for n, e in V.wanted_volumes(plan).items():
                if e.origin_kind != "empty":
                    self.vol_errors[n] = (f"volume {n}: cannot clone {e.origin_kind} {e.origin}:"
                                          f" no volume pool on this storage node "
                                          f"({self.why_no_pool})")
            return []
        try:
            actions = V.reconcile(plan, self.pool.lvs())
        except AgentError as exc:
            self.out.log(f"pool: {exc}")
            for n in V.wanted_volumes(plan):
                self.vol_errors[n] = f"volume {n}: {exc}"
            return []
        later: list[V.Action] = []
        for a in actions:
            if isinstance(a, V.Remove) and not a.lv.endswith(V.PART_SUFFIX):
                later.append(a)
            elif isinstance(a, V.Wait):
                self.vol_errors[a.name] = f"volume {a.name}: {a.why}"
            elif isinstance(a, V.Refuse):
                self.out.log(f"pool: not deleting {a.deletion.kind} {a.deletion.name}: {a.why}")
            elif isinstance(a, V.Snapshot) and V.LV(a.origin_lv, 0).short in self.vol_errors:
                src = V.LV(a.origin_lv, 0)
                self.vol_errors[a.name] = (f"volume {a.name}: its origin {src.kind} {src.short}"
                                           " could not be made (see its error)")
            else:
                self._carry(a)
        return later

    def _carry(self, a: V.Action) -> None:
        assert self.pool is not None
        try:
            if isinstance(a, V.Remove) and V.LV(a.lv, 0).kind == "volume":
                self.replicator.teardown(V.LV(a.lv, 0).short)   # DRBD down first, if any
            self.pool.carry(a)
        except AgentError as exc:
            self.vol_errors[V.subject(a)] = str(exc)
            self.out.log(f"pool: {exc}")

    def finish_pool(self, later: list[V.Action]) -> None:
        for a in later:
            self._carry(a)
        if self.pool is None:
            self.entries = self.lv_entries = ()
            return
        try:
            self.lv_entries = V.pool_entries(self.pool.lvs())
        except AgentError as exc:
            self.out.log(f"pool: {exc}")
        self.entries = self.with_drbd(self.lv_entries)

    def with_drbd(self, entries: tuple[PoolEntry, ...]) -> tuple[PoolEntry, ...]:
        """``entries`` with each replicated volume's DRBD state as /proc/drbd shows it now."""
        if not self.replicator.known:
            return entries
        states = self.replicator.states()
        return tuple(replace(x, drbd=states.get(x.name)) if x.kind == "volume" else x
                     for x in entries)

    def refresh_replicas(self) -> None:
        """Between plan changes: a changed DRBD state (a peer lost, a resync's progress) goes
        to the config node at once, in the last report."""
        if not self.replicator.known or self.reporter.last is None:
            return
        now = self.with_drbd(self.lv_entries)
        if now != self.entries:
            self.entries = now
            self.reporter.send(replace(self.reporter.last, volumes=now))

    def volume_path(self, e: VolumeExport) -> str:
        if e.name in self.vol_errors:
            raise AgentError(self.vol_errors[e.name])
        if self.pool is None:
            if e.drbd is not None:
                raise AgentError(f"volume {e.name}: a replicated volume needs this snode's "
                                 f"volume pool ({self.why_no_pool})")
            return self.files.prepare(e)    # a store without a pool: a sparse file
        if e.drbd is not None:
            dev = self.replicator.ensure(e)
            assert dev is not None          # the primary's (replicas are not exported here)
            return dev
        path = self.pool.volume_path(e.name)
        if not Path(path).exists():
            raise AgentError(f"volume {e.name}: {path} is not there")
        return path

    def fetch_plan(self) -> Plan:
        url = f"{self.cfg.server}/plan/{self.mac}.json"
        try:
            plan = parse_plan(http_get(url, 20))
        except ProtocolError as exc:
            raise AgentError(f"{url}: {exc}") from None
        if plan.node != self.mac:
            raise AgentError(f"{url}: plan.node is {plan.node}, not this node")
        return plan

    def apply(self, full: Plan) -> None:
        self.errors = {}
        later = self.pool_actions(full)
        serving: list[Target] = []
        statuses: list[ExportStatus] = []
        for p in full.pending:
            self.out.log(f"export {p.target}: not served yet: {p.reason}")
        # a replicated volume whose primary is the other snode: kept here, not exported
        replicas = [e for e in full.exports if isinstance(e, VolumeExport)
                    and e.drbd is not None and not e.drbd.primary]
        plan = replace(full, exports=tuple(e for e in full.exports if e not in replicas))
        for a in R.reconcile(plan, self.sup.running()):
            if isinstance(a, R.Unassigned):
                self.out.log(f"export {a.target}: no consumer assigned yet: not served")
                statuses.append(ExportStatus(a.target, "unassigned"))
            elif isinstance(a, R.Keep):
                serving.append(a.export.target)
            elif isinstance(a, R.Stop):
                self.out.log(f"export {a.target}: {a.why}")
                self.sup.stop(a.target)
            else:
                new = a.export if isinstance(a, R.Start) else a.new
                try:
                    path = (self.volume_path(new) if isinstance(new, VolumeExport)
                            else self.files.prepare(new))
                except AgentError as exc:
                    self.errors[new.target] = str(exc)
                    self.out.log(f"export {new.target}: {exc}")
                    statuses.append(ExportStatus(new.target, "failed", str(exc)[:1000]))
                    if isinstance(a, R.Replace):   # the old one serves until the new is ready
                        serving.append(new.target)
                    continue
                if isinstance(a, R.Replace):
                    self.out.log(f"export {new.target}: plan changed: restarting")
                    self.sup.stop(new.target)
                self.sup.start(new, R.vblade_argv(self.cfg.vblade, new, self.iface, path))
                serving.append(new.target)
        for e in replicas:       # after the exports loop: a demoted primary's vblade is gone
            if e.name in self.vol_errors:
                self.errors[e.target] = self.vol_errors[e.name]
                statuses.append(ExportStatus(e.target, "failed", self.vol_errors[e.name][:1000]))
                continue
            try:
                self.replicator.ensure(e)
                statuses.append(ExportStatus(e.target, "replica"))
            except AgentError as exc:
                self.errors[e.target] = str(exc)
                self.out.log(f"replica {e.target}: {exc}")
                statuses.append(ExportStatus(e.target, "failed", str(exc)[:1000]))
        self.files.collect(R.images_in_use(self.sup.running().values()))
        self.finish_pool(later)
        served = R.served_list(plan, serving)
        statuses += [ExportStatus(t, "served") for t in served if t not in self.errors]
        now = (served, self.entries, self.pool is not None)
        if now != self.reported:
            if self.reported is None or served != self.reported[0]:
                self.out.console(f"exports ready {','.join(map(str, served)) or 'none'}")
            self.report("exports-ready", " ".join(map(str, served)), statuses)
            self.reported = now
        if self.errors or self.vol_errors:
            self.failed_at = time.monotonic()
            text = " ".join([f"{t}: {m};" for t, m in self.errors.items()]
                            + [f"{m};" for n, m in self.vol_errors.items()
                               if not any(n in x for x in self.errors.values())])
            self.out.log(f"errors: {text}")
            self.report("exports-error", text, statuses)

    def nap(self, seconds: float) -> None:
        """Sleep, supervising the vblades meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self.sup.tick()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def serve(self) -> None:
        back = Backoff(self.cfg.backoff_max)
        while True:
            try:
                store = setup_store(self.cfg.disks, self.cfg.store, self.cfg.fslabel,
                                    self.cfg.md, self.out.log, self.cfg.lvm, defer_pool=True,
                                    assume_clean=self.cfg.md_assume_clean)
                break
            except AgentError as exc:
                self.out.log(str(exc))
                self.report("storage-error", f"no usable local store (HC_DISKS="
                            f"{self.cfg.disks}): {exc}")
                d = back.next()
                self.out.log(f"storage: retrying in {d:g}s")
                self.nap(d)
        self._store_line(store)
        if store.pool:
            self.pool = V.Pool(dl_timeout=self.cfg.dl_timeout, log=self.out.log,
                               busy=self.busy)
            self.out.console(f"volume pool {V.VG}/{V.THIN_POOL}")
        elif store.pool_deferred:
            self.pool_deferred = True
            self.why_no_pool = (f"its thin pool {V.VG}/{V.THIN_POOL} is being made (after the "
                                "image exports): try again in a moment")
        else:
            self.why_no_pool = store.why_no_pool or "none"
            self.out.console(f"no volume pool: {self.why_no_pool}")
        back = Backoff(self.cfg.backoff_max)
        while True:
            try:
                plan = self.fetch_plan()
                break
            except AgentError as exc:
                d = back.next()
                self.out.log(f"plan: {exc}; retry in {d:g}s")
                self.nap(d)
        applied: Plan | None = None
        fetch_ok = True
        while True:
            if plan != applied or ((self.errors or self.vol_errors)
                                   and time.monotonic() - self.failed_at >= RETRY_FAILED):
                if applied is not None and plan != applied:
                    self.out.log("plan: changed")
                self.apply(images_only(plan) if self.pool_deferred else plan)
                applied = plan
            if self.pool_deferred:
                self.make_deferred_pool()
                applied = None      # now the volumes and templates too
                continue
            self.nap(self.cfg.poll or plan.poll)
            self.refresh_replicas()
            self.reporter.again()
            try:
                plan = self.fetch_plan()
                if not fetch_ok:
                    self.out.log("plan: server reachable again")
                fetch_ok = True
            except AgentError as exc:
                if fetch_ok:
                    self.out.log(f"plan: fetch failed ({exc}): keeping the current exports")
                fetch_ok = False

    def make_deferred_pool(self) -> None:
        """The thin pool of a new store, made once the image exports are served (a hnode
        waits on those to boot; nothing waits on an empty pool).  If it fails the store
        serves images without a pool, saying why; the next start of the agent tries again."""
        self.pool_deferred = False
        try:
            make_thin_pool(self.out.log)
        except AgentError as exc:
            self.why_no_pool = f"making the thin pool failed: {exc}"
            self.out.log(f"pool: {self.why_no_pool}")
            self.out.console(f"no volume pool: {self.why_no_pool[:300]}")
            return
        self.pool = V.Pool(dl_timeout=self.cfg.dl_timeout, log=self.out.log,
                           busy=self.busy)
        self.out.console(f"volume pool {V.VG}/{V.THIN_POOL}")

    def _store_line(self, store: Store) -> None:
        self.out.console(f"store {store.dev} ({store.how}) at {self.cfg.store}")


def images_only(plan: Plan) -> Plan:
    """``plan`` without what needs the volume pool (volume exports, templates, deletions)."""
    return replace(plan, exports=tuple(e for e in plan.exports
                                       if not isinstance(e, VolumeExport)),
                   templates=(), delete=())


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    if args == ["--version"]:
        print(f"{PROG} {VERSION}")
        return 0
    if args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    os.umask(0o022)
    env = os.environ if env is None else env
    out = Output("hc-storage", env.get("HC_CONSOLE") or "/dev/console")
    try:
        cfg = Config.from_env(env)
    except AgentError as exc:
        return die(out, str(exc))
    if not cfg.server:
        return die(out, "no boot server: hc.server= on the kernel command line or HC_SERVER")
    if not exists_in_path(cfg.vblade, env):
        return die(out, f"vblade ({cfg.vblade}) not installed")
    exports_dir = Path(cfg.run) / "exports"
    try:
        exports_dir.mkdir(parents=True, exist_ok=True)
        (Path(cfg.run) / "verified").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return die(out, f"cannot create {cfg.run}: {exc}")
    stale_cleanup(exports_dir)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    agent: Agent | None = None
    try:
        iface = ""
        settled = False
        for _ in range(61):
            iface = find_iface(cfg)
            if iface and not settled and kernel_named(iface):
                # udev's database entry alone was seen before its rename had run (a CI lab
                # run): wait for udev's queue to drain once, then look again
                settled = True
                with contextlib.suppress(AgentError):
                    run(["udevadm", "settle", "--timeout=30"], timeout=40)
                continue
            if iface and not udev_pending(iface):
                break
            time.sleep(0.5)
        if not iface:
            return die(out, f"no boot interface (HC_IFACE={cfg.iface} BOOTIF={cfg.bootif})")
        if udev_pending(iface):
            out.log(f"warning: udev has not processed {iface} after 30s: using it as it is")
        try:
            mac = normalize_mac(cfg.mac or cfg.bootif or iface_mac(iface))
        except BadMac as exc:
            return die(out, f"this node's MAC: {exc}")
        out.log(f"agent {VERSION}: server {cfg.server}, mac {mac}, interface {iface}, "
                f"store {cfg.store}")
        with contextlib.suppress(AgentError):
            run(["ip", "link", "set", iface, "up"], timeout=10)
        agent = Agent(cfg, out, iface, mac)
        agent.serve()
    except Shutdown as exc:
        out.log(f"stopping ({exc})")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if agent is not None:
            agent.sup.stop_all()
            if system_stopping():
                # the machine goes down (poweroff, reboot): its replicated volumes are handed
                # over cleanly (secondary, then down: the peer sees its primary leave, in step)
                agent.replicator.leave()
                agent.leaving()
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
