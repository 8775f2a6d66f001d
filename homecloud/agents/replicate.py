"""The storage agent's DRBD side (issue 12): a replicated volume of the plan (a
``VolumeExport`` with ``drbd``) kept in step with its peer snode by DRBD 8.4.

For each such volume this snode keeps, besides the volume's thin LV ``v-NAME`` (made by the
pool like any volume), a thin LV ``m-NAME`` for DRBD's metadata (external metadata: the
volume keeps every byte, so a template's filesystem is whole on /dev/drbdMINOR), writes the
resource into one configuration file of its own (``<run>/drbd/homecloud.conf``, with
``usage-count no``), and runs the drbdadm steps homecloud.agents.drbd decides: create the
metadata once, ``adjust`` (attach and connect), on the primary the first-generation shortcut
for identical sides (``new-current-uuid --clear-bitmap``: clones of one template, or zeros,
need no initial sync) and ``primary``; on the replica ``secondary``.  The primary exports
``/dev/drbdMINOR``; the replica exports nothing.

A volume deleted by the plan is taken down (``drbdadm down``) before its LVs are removed.
The resources this agent brought up are remembered in ``<run>/drbd/resources.json`` (a
restarted agent can still take them down; after a reboot they are down anyway).

Standard library only: this module ships into the node images."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from homecloud.agents import drbd as D
from homecloud.agents import drbdhelper
from homecloud.agents.common import AgentError, CommandError, run
from homecloud.agents.poolproto import DRBD_GI_RE, DrbdState, VolumeExport

META_PREFIX = "m-"
META_BYTES = 8 << 20       # external metadata: room for the bitmap of ~250 GiB
CONF_NAME = "homecloud.conf"
KNOWN_NAME = "resources.json"
#: how long the primary of a new identical pair waits for its replica to connect
CONNECT_WAIT = 90.0

Runner = Callable[[Sequence[str]], str]


def resource_name(minor: int) -> str:
    return f"hc{minor}"


def meta_lv(name: str) -> str:
    return META_PREFIX + name


def _default_runner(argv: Sequence[str]) -> str:
    return run(argv, timeout=120)


class Replicator:
    """DRBD resources of this snode's replicated volumes (see the module's text)."""

    def __init__(self, vg: str, pool: str, run_dir: Path, log: Callable[[str], None],
                 runner: Runner = _default_runner, hostname: str | None = None,
                 proc_drbd: Path = Path("/proc/drbd"),
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 connect_wait: float = CONNECT_WAIT, dev: Path = Path("/dev"),
                 server: str = "", mac: str = "",
                 module_params: Path = Path("/sys/module/drbd/parameters")) -> None:
        """``dev``: where the LVs' device nodes are looked for (the resource file always
        names /dev/VG/LV, which drbdadm opens); ``server``, ``mac``: where the fence-peer
        helper asks (homecloud.agents.drbdhelper), written to ``<run>/drbd/fence.json``."""
        self.vg, self.pool, self.log, self.runner = vg, pool, log, runner
        self.dir = Path(run_dir) / "drbd"
        self.conf = self.dir / CONF_NAME
        self.hostname = hostname
        self.proc_drbd, self.sleep, self.clock = proc_drbd, sleep, clock
        self.connect_wait, self.dev = connect_wait, dev
        self.known: dict[str, D.ResourceSpec] = self._load()
        self.server, self.mac, self.module_params = server, mac, module_params

    # -------------------------------------------------------------- what is configured
    def _load(self) -> dict[str, D.ResourceSpec]:
        try:
            doc = json.loads((self.dir / KNOWN_NAME).read_text())
        except (OSError, ValueError):
            return {}
        out: dict[str, D.ResourceSpec] = {}
        for name, d in (doc.items() if isinstance(doc, dict) else ()):
            try:
                reps = tuple(D.Replica(**r) for r in d["replicas"])
                out[name] = D.ResourceSpec(d["name"], d["minor"], d["port"],
                                           (reps[0], reps[1]), d.get("max_resync_mib", 40))
            except (KeyError, TypeError, IndexError, ValueError):
                self.log(f"drbd: {self.dir / KNOWN_NAME}: entry {name!r} unreadable: ignored")
        return out

    def _save(self) -> None:
        """resources.json and the resource file, each written when it differs (a new agent
        may render the same resources with other options: ``adjust`` then applies them)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {n: asdict(s) for n, s in sorted(self.known.items())}
        for path, text in ((self.dir / KNOWN_NAME, json.dumps(doc, indent=1) + "\n"),
                           (self.conf, D.GLOBAL_CONF + "".join(
                               "\n" + D.render(s) for _, s in sorted(self.known.items())))):
            try:
                if path.read_text() == text:
                    continue
            except OSError:
                pass
            self._write(path, text)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.new")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def adm(self, *args: str) -> list[str]:
        return [D.DRBDADM, "-c", str(self.conf), *args]

    def status(self) -> dict[int, D.DrbdStatus]:
        try:
            text = self.proc_drbd.read_text()
        except FileNotFoundError:
            return {}      # the module is not loaded: nothing configured
        except OSError as exc:
            raise AgentError(f"drbd: cannot read {self.proc_drbd}: {exc}") from None
        try:
            return D.parse_proc_drbd(text)
        except D.DrbdError as exc:
            raise AgentError(f"drbd: {exc}") from None

    def states(self) -> dict[str, DrbdState]:
        """Each known volume's DRBD state (for the report), by volume name."""
        try:
            st = self.status()
        except AgentError as exc:
            self.log(str(exc))
            return {}
        out: dict[str, DrbdState] = {}
        for name, spec in self.known.items():
            s = st.get(spec.minor)
            if s is None or not s.configured:
                out[name] = DrbdState(spec.minor, "Unconfigured", "Unknown", "Unknown",
                                      "Diskless", "DUnknown")
                continue
            out[name] = DrbdState(spec.minor, s.connection, s.role or "Unknown",
                                  s.peer_role or "Unknown", s.disk or "Diskless",
                                  s.peer_disk or "DUnknown", s.out_of_sync_kib,
                                  s.synced_percent,
                                  self.gi(spec) if s.connection == "StandAlone" else "")
        return out

    def gi(self, spec: D.ResourceSpec) -> str:
        """``drbdadm get-gi`` of a resource ("" when it cannot be read: said in the log)."""
        try:
            text = self.runner(self.adm("get-gi", spec.name))
        except CommandError as exc:
            self.log(f"drbd {spec.name}: get-gi: {exc}")
            return ""
        # drbdadm-84 may print its version warning first: the identifiers are the line that
        # parses
        for line in text.splitlines():
            if DRBD_GI_RE.fullmatch(line.strip()):
                return line.strip()
        self.log(f"drbd {spec.name}: get-gi printed no identifiers: {text.strip()[:200]!r}")
        return ""

    # -------------------------------------------------------------- bringing one up
    def _me(self) -> str:
        return self.hostname or socket.gethostname()

    def _peer(self, e: VolumeExport) -> str:
        assert e.drbd is not None
        return next((h.host for h in e.drbd.hosts if h.host != self._me()), "?")

    def spec_of(self, e: VolumeExport) -> D.ResourceSpec:
        assert e.drbd is not None
        link = e.drbd
        me = self._me()
        if me not in (h.host for h in link.hosts):
            raise AgentError(f"volume {e.name}: this snode's host name {me!r} is neither of its "
                             f"DRBD hosts ({', '.join(h.host for h in link.hosts)}): drbdadm "
                             "picks its side by host name")
        reps = tuple(D.Replica(h.host, h.address, f"/dev/{self.vg}/v-{e.name}",
                               f"/dev/{self.vg}/{meta_lv(e.name)}") for h in link.hosts)
        spec = D.ResourceSpec(resource_name(link.minor), link.minor, link.port,
                              (reps[0], reps[1]))
        try:
            spec.check()
        except D.DrbdError as exc:
            raise AgentError(f"volume {e.name}: {exc}") from None
        return spec

    def _has_metadata(self, spec: D.ResourceSpec, st: D.DrbdStatus | None) -> bool:
        if st is not None and st.configured and st.disk not in ("", "Diskless"):
            return True        # attached: it has metadata
        try:
            self.runner(self.adm("dump-md", spec.name))
            return True
        except CommandError as exc:
            if "no valid meta data" in exc.output.lower():
                return False
            if "unclean" in exc.output:
                # metadata of a side that went down without detaching (a crash, a power
                # cut): there is metadata; attaching replays its activity log
                return True
            raise AgentError(f"drbd {spec.name}: cannot tell whether it has metadata: "
                             f"{exc}") from None

    def _meta(self, name: str) -> None:
        if (self.dev / self.vg / meta_lv(name)).exists():
            return
        self.log(f"drbd: volume {name}: new thin LV {meta_lv(name)} for DRBD's metadata")
        self.runner(["lvcreate", "-q", "-V", f"{META_BYTES}b", "-T", f"{self.vg}/{self.pool}",
                     "-n", meta_lv(name)])

    def ensure(self, e: VolumeExport) -> str | None:
        """Bring this snode's side of ``e`` to what its plan says; the device to export
        (the primary's /dev/drbdMINOR) or None (the replica).  AgentError naming the volume,
        the command and its output when a step fails, or when the primary of a new pair
        cannot be made (its replica did not connect within ``connect_wait``)."""
        assert e.drbd is not None
        spec = self.spec_of(e)
        old = self.known.get(e.name)
        if old is not None and old.minor != spec.minor:
            raise AgentError(f"volume {e.name}: DRBD minor {spec.minor} in the plan, but this "
                             f"snode runs it as minor {old.minor}")
        self._meta(e.name)
        self._module(e.name)
        self.known[e.name] = spec
        self._save()
        want = D.Want(spec, e.drbd.primary, e.drbd.identical, e.drbd.resolve)
        deadline = self.clock() + self.connect_wait
        while True:
            st = self.status().get(spec.minor)
            try:
                cmds = D.steps(want, st, self._has_metadata(spec, st), str(self.conf))
            except D.DrbdError as exc:
                # a new identical pair: the primary waits (its disk Inconsistent) until its
                # replica connects; anything else is for a person to decide
                if not (want.primary and want.identical and st is not None
                        and st.disk == "Inconsistent"):
                    raise AgentError(f"volume {e.name}: {exc}") from None
                if self.clock() >= deadline:
                    raise AgentError(f"volume {e.name}: its replica on {self._peer(e)} did not "
                                     f"connect within {self.connect_wait:g}s (DRBD minor "
                                     f"{spec.minor}: {st.connection}, disk {st.disk})") from None
                self.sleep(2.0)
                continue
            for c in cmds:
                self.log(f"drbd: volume {e.name}: {' '.join(c[3:])}")
                try:
                    self.runner(c)
                except CommandError as exc:
                    raise AgentError(f"volume {e.name}: {exc}") from None
            if not want.primary:
                return None
            st = self.status().get(spec.minor)
            if st is not None and st.role == "Primary":
                return f"/dev/drbd{spec.minor}"
            if self.clock() >= deadline:
                raise AgentError(f"volume {e.name}: not primary after {self.connect_wait:g}s "
                                 f"(DRBD minor {spec.minor}: "
                                 f"{st.connection if st else 'down'}, disk "
                                 f"{st.disk if st else '?'}; its replica: {self._peer(e)})")
            self.sleep(2.0)

    def _module(self, volume: str) -> None:
        """The drbd module loaded, with our fence-peer helper as its usermode helper, and
        the helper told where to ask (before any resource of ours is up)."""
        if self.server and self.mac:
            want = json.dumps({"server": self.server, "mac": self.mac}) + "\n"
            where = self.dir / drbdhelper.FENCE_FILE.split("/", 1)[1]
            if not where.exists() or where.read_text() != want:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._write(where, want)
        if not self.proc_drbd.exists():
            # drbdadm-84 does not load the module itself (it stops at "Could not stat
            # /proc/drbd ... try: modprobe drbd")
            self.log(f"drbd: loading the drbd module (usermode helper {D.HELPER})")
            try:
                self.runner(["modprobe", "drbd", f"usermode_helper={D.HELPER}"])
            except CommandError as exc:
                raise AgentError(f"volume {volume}: {exc}") from None
            return
        param = self.module_params / "usermode_helper"
        try:
            if param.read_text().strip() != D.HELPER:
                self.log(f"drbd: usermode helper {param.read_text().strip()!r} -> {D.HELPER}")
                param.write_text(D.HELPER)
        except OSError as exc:
            raise AgentError(f"volume {volume}: cannot set the drbd module's usermode helper "
                             f"({param}): {exc}: without it a primary that loses its peer "
                             "could not ask the config node") from None

    def leave(self) -> None:
        """This snode is going down cleanly: every resource of ours to secondary and down, so
        that each peer sees a clean departure (its data in step) and the config node can
        promote it at once instead of after a lost connection.  Best effort: a failure is
        logged, the next resource is tried."""
        st = self.status()
        for name, spec in sorted(self.known.items()):
            s = st.get(spec.minor)
            if s is None or not s.configured:
                continue
            for verb in (("secondary",) if s.role == "Primary" else ()) + ("down",):
                self.log(f"drbd: volume {name}: {verb} (this snode is shutting down)")
                try:
                    self.runner(self.adm(verb, spec.name))
                except CommandError as exc:
                    self.log(f"drbd: volume {name}: {exc}")
                    break

    # -------------------------------------------------------------- taking one down
    def teardown(self, name: str) -> None:
        """Before volume ``name``'s LVs are removed: its resource down, its metadata LV gone."""
        spec = self.known.get(name)
        if spec is not None:
            st = self.status().get(spec.minor)
            if st is not None and st.configured:
                self.log(f"drbd: volume {name}: down")
                try:
                    self.runner(self.adm("down", spec.name))
                except CommandError as exc:
                    raise AgentError(f"volume {name}: {exc}") from None
            del self.known[name]
            self._save()
        if (self.dev / self.vg / meta_lv(name)).exists():
            self.log(f"drbd: volume {name}: removing {meta_lv(name)}")
            self.runner(["lvremove", "-f", f"{self.vg}/{meta_lv(name)}"])
