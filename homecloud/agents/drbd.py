"""DRBD 8.4 on the storage nodes (issue 12, groundwork): the resource file a replicated volume
gets, and the reader of ``/proc/drbd`` the storage agent will report from.

Debian 12's kernel carries the in-tree drbd 8.4 module; Debian's drbd-utils (9.x) hands 8.4
resources to ``/usr/lib/drbd/drbdadm-84``.  The files written here are what that drbdadm
parses (tests/unit/test_drbd.py runs ``drbdadm-84 dump`` on them: no kernel module needed).

The choices, from docs and field reports (docs/replication.md will carry the reasoning):

- ``usage-count no`` always (drbdadm would otherwise try to reach LINBIT's counter);
- protocol C: a write is acknowledged once it is on both snodes' disks;
- single primary (``allow-two-primaries`` never set): the snode that exports a volume is its
  primary; on its loss the peer promotes and exports the same shelf.slot;
- split brain is never resolved by discarding data automatically: every ``after-sb-*`` policy
  is ``disconnect`` and ``rr-conflict`` too, so both sides stay as they are, StandAlone, until an
  explicit command names the side to keep (Ganeti's users lost data to automatic discards);
- ``on-io-error detach``: a failing backing disk leaves the resource diskless (served by the
  peer's disk) rather than passing errors up;
- the resync rate is capped (``c-max-rate``) so that a resync leaves instances room, with the
  dynamic controller on (``c-plan-ahead``).

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from homecloud.core.errors import HomecloudError

#: the global section every snode's drbd.conf starts with
GLOBAL_CONF = """\
# homecloud: written by the storage agent (homecloud.agents.drbd), do not edit
global {
    usage-count no;
}
"""

#: the kernel's usermode helper for our resources (the storage agent loads the module with
#: ``usermode_helper=`` this; homecloud.agents.drbdhelper): DRBD runs it with ``fence-peer``
#: when a primary loses its peer, and with I/O frozen until it answers (``fencing
#: resource-and-stonith``) it asks the config node before acknowledging any write the peer
#: would not have.  Named in ``handlers`` too, for drbdadm and for a person reading the file.
HELPER = "/usr/local/sbin/hc-drbd-helper"
#: a dead peer is noticed within PING_INT + PING_TIMEOUT/10 seconds (DRBD's defaults, 10 s +
#: 0.5 s, stall every write of the primary that long, and a long stall makes the hnodes' aoe
#: driver back off its retransmissions for up to a minute more: docs/replication.md);
#: ACK_TIMEOUT (tenths of a second) bounds a write's wait for the peer's ack and must stay
#: below PING_INT
PING_INT = 3
PING_TIMEOUT = 15
ACK_TIMEOUT = 25

RESOURCE_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
HOST_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DISK_RE = re.compile(r"^/dev/[A-Za-z0-9][A-Za-z0-9/_.+-]*$")
MAX_MINOR = (1 << 20) - 1


class DrbdError(HomecloudError, ValueError):
    """A replica description or a status text that cannot be used; names what is at fault."""


@dataclass(frozen=True)
class Replica:
    host: str      # the snode's host name: drbdadm picks its own ``on`` section by it
    address: str   # its IPv4 address on the storage network (the replication link)
    disk: str      # the backing block device there (the thin volume)
    #: where DRBD keeps its metadata: ``internal`` takes the end of ``disk`` (the replicated
    #: device is then smaller than the volume: a template's filesystem would lose its tail),
    #: so a clone of a template gets a small thin volume of its own for it
    meta: str = "internal"


@dataclass(frozen=True)
class ResourceSpec:
    name: str                  # the resource's name (the storage agent's: ``hcMINOR``)
    minor: int                 # /dev/drbdMINOR, the same on both sides
    port: int                  # TCP port of the replication link
    replicas: tuple[Replica, Replica]
    max_resync_mib: int = 40   # c-max-rate, MiB/s: what a resync may take at most

    def check(self) -> None:
        """Raises :class:`DrbdError` naming the field at fault."""
        where = f"resource {self.name!r}"
        if not RESOURCE_RE.match(self.name):
            raise DrbdError(f"{where}: name must be a lower-case letter, then lower case, "
                            "digits and - (the storage agent names them hcMINOR)")
        if not 0 <= self.minor <= MAX_MINOR:
            raise DrbdError(f"{where}: minor {self.minor} not in 0..{MAX_MINOR}")
        if not 1024 <= self.port <= 65535:
            raise DrbdError(f"{where}: port {self.port} not in 1024..65535")
        if not 1 <= self.max_resync_mib <= 4096:
            raise DrbdError(f"{where}: max_resync_mib {self.max_resync_mib} not in 1..4096")
        if len(self.replicas) != 2:
            raise DrbdError(f"{where}: exactly two replicas, got {len(self.replicas)}")
        for i, r in enumerate(self.replicas):
            if not HOST_RE.match(r.host):
                raise DrbdError(f"{where}: replicas[{i}].host {r.host!r} is not a host name")
            try:
                addr = ipaddress.IPv4Address(r.address)
            except ValueError:
                raise DrbdError(f"{where}: replicas[{i}].address {r.address!r} is not an "
                                "IPv4 address") from None
            if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
                raise DrbdError(f"{where}: replicas[{i}].address {r.address} cannot be a "
                                "replication peer")
            if not DISK_RE.match(r.disk) or ".." in r.disk.split("/"):
                raise DrbdError(f"{where}: replicas[{i}].disk {r.disk!r} is not a /dev path")
            if r.meta != "internal" and (not DISK_RE.match(r.meta)
                                         or ".." in r.meta.split("/") or r.meta == r.disk):
                raise DrbdError(f"{where}: replicas[{i}].meta {r.meta!r} is neither "
                                "'internal' nor a /dev path apart from the disk")
        a, b = self.replicas
        if a.host == b.host or a.address == b.address:
            raise DrbdError(f"{where}: the two replicas must be two snodes "
                            f"({a.host} {a.address}, {b.host} {b.address})")


def render(spec: ResourceSpec) -> str:
    """The resource file for ``spec`` (``/etc/drbd.d/NAME.res`` on both snodes)."""
    spec.check()
    ons = "".join(f"""\
    on {r.host} {{
        device /dev/drbd{spec.minor};
        disk {r.disk};
        address ipv4 {r.address}:{spec.port};
        meta-disk {r.meta};
    }}
""" for r in spec.replicas)
    return f"""\
# homecloud volume {spec.name}: written by the storage agent, do not edit
resource {spec.name} {{
    net {{
        protocol C;
        ping-int {PING_INT};
        ping-timeout {PING_TIMEOUT};
        timeout {ACK_TIMEOUT};
        after-sb-0pri disconnect;
        after-sb-1pri disconnect;
        after-sb-2pri disconnect;
        rr-conflict disconnect;
    }}
    disk {{
        on-io-error detach;
        fencing resource-and-stonith;
        c-plan-ahead 20;
        c-max-rate {spec.max_resync_mib}M;
    }}
    handlers {{
        fence-peer "{HELPER}";
    }}
{ons}}}
"""


# ------------------------------------------------------------------------------ /proc/drbd


@dataclass(frozen=True)
class DrbdStatus:
    minor: int
    connection: str          # cs: Connected, StandAlone, WFConnection, SyncSource, ...
    role: str = ""           # ro: this side
    peer_role: str = ""
    disk: str = ""           # ds: this side (UpToDate, Inconsistent, Outdated, Diskless, ...)
    peer_disk: str = ""
    protocol: str = ""
    out_of_sync_kib: int = 0  # oos
    synced_percent: float | None = None  # while a resync runs

    @property
    def configured(self) -> bool:
        return self.connection != "Unconfigured"

    @property
    def syncing(self) -> bool:
        return self.connection.startswith(("Sync", "PausedSync"))

    @property
    def degraded(self) -> bool:
        """Not both disks up to date and connected (a volume that one more loss would cost)."""
        return not (self.connection == "Connected" and self.disk == "UpToDate"
                    and self.peer_disk == "UpToDate")


_DEV = re.compile(r"^\s*(\d+):\s+cs:(\S+)(.*)$")
_FIELD = re.compile(r"\b(ro|ds):(\S+?)/(\S+)")
_OOS = re.compile(r"\boos:(\d+)")
_SYNCED = re.compile(r"sync'ed:\s*([0-9.]+)%")


def parse_proc_drbd(text: str) -> dict[int, DrbdStatus]:
    """Every device of a DRBD 8.4 ``/proc/drbd`` by minor; :class:`DrbdError` naming the line
    for a device line that cannot be read."""
    out: dict[int, DrbdStatus] = {}
    cur: dict[str, object] | None = None

    def flush() -> None:
        if cur is not None:
            out[int(str(cur["minor"]))] = DrbdStatus(**cur)  # type: ignore[arg-type]

    for n, line in enumerate(text.splitlines(), 1):
        m = _DEV.match(line)
        if m:
            flush()
            cur = {"minor": int(m.group(1)), "connection": m.group(2)}
            rest = m.group(3)
            fields = {k: (a, b) for k, a, b in _FIELD.findall(rest)}
            if cur["connection"] != "Unconfigured" and ("ro" not in fields
                                                        or "ds" not in fields):
                raise DrbdError(f"/proc/drbd line {n}: no ro:/ds: fields in {line.strip()!r}")
            if "ro" in fields:
                cur["role"], cur["peer_role"] = fields["ro"]
            if "ds" in fields:
                cur["disk"], cur["peer_disk"] = fields["ds"]
            proto = rest.split()
            for i, word in enumerate(proto):
                if word.startswith("ds:") and i + 1 < len(proto) and proto[i + 1] in ("A", "B",
                                                                                  "C"):
                    cur["protocol"] = proto[i + 1]
            continue
        if cur is None:
            continue  # version:, srcversion:, GIT-hash: lines
        m2 = _OOS.search(line)
        if m2:
            cur["out_of_sync_kib"] = int(m2.group(1))
        m3 = _SYNCED.search(line)
        if m3:
            cur["synced_percent"] = float(m3.group(1))
    flush()
    return out


# ------------------------------------------------------------------------------ actions

#: drbdadm for 8.4 kernel modules (Debian's drbd-utils 9.x hands them to it)
DRBDADM = "/usr/lib/drbd/drbdadm-84"


@dataclass(frozen=True)
class Want:
    """What the storage plan asks of this snode for one resource."""
    spec: ResourceSpec
    primary: bool             # this snode exports the volume (single primary)
    #: both backing volumes are fresh clones of one template (identical): the first primary
    #: starts the generation without a full sync (``new-current-uuid --clear-bitmap``)
    identical: bool = False
    #: after a split brain: "keep" (reconnect as is) or "discard" (secondary, then reconnect
    #: throwing away this side's writes since the split); "" refuses to touch a split brain
    resolve: str = ""


def steps(want: Want, status: DrbdStatus | None, has_metadata: bool,
          conf: str = "/etc/drbd.conf") -> list[list[str]]:
    """The drbdadm commands that bring this snode's side of ``want.spec`` from ``status``
    (None: no device of its minor) to what is wanted; an empty list when it is there.

    Refuses (:class:`DrbdError`) what must not happen without a person's decision: promoting
    a side whose data is not UpToDate (Outdated, Inconsistent: the peer may hold newer
    writes), and touching a resource in split brain (StandAlone after a connection: both
    sides stay as they are until :func:`resolve_split_brain_steps` is told which to keep)."""
    spec, name = want.spec, want.spec.name
    spec.check()
    adm = [DRBDADM, "-c", conf]
    out: list[list[str]] = []
    if not has_metadata:
        out.append([*adm, "create-md", "--force", name])
    up = status is not None and status.configured
    if up and status is not None and status.connection == "StandAlone" and status.disk \
            and status.disk != "Diskless":
        if want.resolve in ("keep", "discard"):
            # a person named the side to keep: this side reconnects (keeping its data), or
            # gives up its writes since the split and resyncs from the kept side
            return out + resolve_split_brain_steps(spec, want.resolve == "keep", conf)
        raise DrbdError(f"resource {name} (minor {spec.minor}): StandAlone with its disk "
                        f"{status.disk}: split brain or a refused peer; nothing done until "
                        "the side to keep is named")
    out.append([*adm, "adjust", name])  # up when down; otherwise applies what changed
    if status is None or not up:
        return out  # promotion waits for the device's state after it is up
    if want.primary:
        if want.identical and status.disk == "Inconsistent" \
                and status.peer_disk == "Inconsistent" and status.connection == "Connected":
            out.append([*adm, "new-current-uuid", "--clear-bitmap", name])
        elif status.role != "Primary" and status.disk != "UpToDate":
            raise DrbdError(f"resource {name} (minor {spec.minor}): will not become primary "
                            f"with its disk {status.disk or 'unknown'} (the peer may hold "
                            "newer writes)")
        if status.role != "Primary":
            out.append([*adm, "primary", name])
    elif status.role == "Primary":
        out.append([*adm, "secondary", name])
    return out


def resolve_split_brain_steps(spec: ResourceSpec, keep_here: bool,
                              conf: str = "/etc/drbd.conf") -> list[list[str]]:
    """The explicit resolution of a split brain on one snode: the side named to keep only
    reconnects; the other becomes secondary and reconnects discarding its own writes since
    the split (its data is then resynced from the kept side)."""
    spec.check()
    adm = [DRBDADM, "-c", conf]
    if keep_here:
        return [[*adm, "connect", spec.name]]
    return [[*adm, "secondary", spec.name],
            [*adm, "connect", "--discard-my-data", spec.name]]
