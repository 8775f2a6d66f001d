"""The model: named nodes with NICs, AoE exports (image | volume), the inventory that holds them.

Plain frozen data, no I/O.  The YAML form lives in ``homecloud.inventory.schema``; the store that
keeps it (file now, etcd later) behind ``homecloud.inventory.protocol.InventoryStore``.

A machine is a *named node* with one or more NICs (as in warewulf's node model): the NIC whose
purpose is ``provisioning`` is the one that PXE-boots (its MAC picks the role, its address is the
node's static lease); a hardware node may carry a second NIC for the instance network, a storage
node one for replication.  A MAC is unique across every NIC of every node.

An export is a sum type: :class:`ImageExport` (a published build artifact, e.g. the shared
read-only hnode root) or :class:`VolumeExport` (a writable volume).  Volumes and instances join
the model here as their own types when they arrive (issue 11); replicas of a volume are a list
of storage nodes on the volume, not a new export kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from homecloud.core.ids import BadMac, Target, normalize_mac

#: the roles homecloud knows: the config node assigns these; images are built for them
ROLES = ("snode", "hnode", "domu")
STORAGE_ROLE = "snode"
HOST_ROLE = "hnode"
LOADERS = ("ipxe", "pxelinux")
NIC_PURPOSES = ("provisioning", "instance", "storage")
BOOT_PURPOSE = "provisioning"
EXPORT_MODES = ("ro", "rw")
HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def default_node_name(role: str, mac: str) -> str:
    """The name a node gets when none is given: its role and the last three bytes of its MAC."""
    return f"{role}-{mac.replace(':', '')[-6:]}"


@dataclass(frozen=True)
class Nic:
    mac: str  # normalised (homecloud.core.ids.normalize_mac)
    purpose: str = BOOT_PURPOSE
    ip: str | None = None  # static IPv4 address on this NIC's network


@dataclass(frozen=True)
class Node:
    """A named machine.  ``name`` is also its host name (DHCP option 12, ``hc.hostname=``)."""

    name: str
    role: str
    nics: tuple[Nic, ...]
    cmdline: str = ""  # extra kernel arguments
    loader: str | None = None  # ipxe | pxelinux; None = the image's

    @property
    def boot_nic(self) -> Nic:
        for nic in self.nics:
            if nic.purpose == BOOT_PURPOSE:
                return nic
        return self.nics[0]

    @property
    def mac(self) -> str:
        """The MAC of the NIC that boots (the provisioning NIC)."""
        return self.boot_nic.mac

    @property
    def ip(self) -> str | None:
        return self.boot_nic.ip

    @property
    def hostname(self) -> str:
        return self.name

    def nic(self, mac: str) -> Nic | None:
        return next((n for n in self.nics if n.mac == mac), None)


@dataclass(frozen=True)
class _ExportBase:
    target: Target
    mode: str = "ro"
    consumers: tuple[str, ...] = ()  # roles, node names or MACs allowed to use it
    snodes: tuple[str, ...] | None = None  # storage nodes (names or MACs); None = all

    @property
    def shelf(self) -> int:
        return self.target.shelf

    @property
    def slot(self) -> int:
        return self.target.slot


@dataclass(frozen=True)
class ImageExport(_ExportBase):
    """A published artifact of a role's build (``build`` None: the role's current build)."""

    role: str = ""
    artifact: str = "rootfs"
    build: str | None = None


@dataclass(frozen=True)
class VolumeExport(_ExportBase):
    """A writable volume of ``size`` bytes kept by the storage nodes (a thin LV in an snode's
    pool), made from ``origin_kind`` (``template`` | ``volume`` | ``empty``) ``origin``.
    ``snodes`` lists the storage node(s) that keep it.  A replicated volume (``drbd_minor``
    set) has two: DRBD 8.4 keeps them in step, the first is the primary (it exports the
    volume), the second its replica; ``drbd_minor`` is /dev/drbdMINOR on both, and the
    replication link's port is ``DRBD_PORT_BASE + drbd_minor``.  ``outdated`` names the snode
    (of the two) whose copy misses writes the other acknowledged: set by the config node when
    the primary lost its replica (DRBD's fence-peer) or was replaced by it, cleared once both
    are in step again; an outdated side is never made primary."""

    name: str = ""
    size: int = 0
    origin_kind: str = "empty"
    origin: str = ""
    drbd_minor: int | None = None
    outdated: str | None = None
    #: after a split brain: the snode a person named to keep (``hcboot volume resolve``); the
    #: other discards its writes since the split; cleared once both are connected again
    keep: str | None = None

    @property
    def replicated(self) -> bool:
        return self.drbd_minor is not None


Export = ImageExport | VolumeExport
#: a replicated volume's link listens on this + its DRBD minor (both snodes); minors below
#: DRBD_MINOR_LIMIT keep the port under 65536
DRBD_PORT_BASE = 7800
DRBD_MINOR_LIMIT = 65536 - DRBD_PORT_BASE

# ----------------------------------------------------------------- volumes and templates
#: where a new volume's bytes come from; what a pool deletion names
ORIGIN_KINDS = ("template", "volume", "empty")
POOL_KINDS = ("volume", "template")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class TemplateImage:
    """A template: a read-only base volume on every storage node, filled from a published
    build's artifact (``/images/<role>/<build>/<file>``, checked by ``sha256`` and ``size``)."""

    name: str
    role: str
    build: str
    file: str
    size: int
    sha256: str
    artifact: str = "rootfs"


@dataclass(frozen=True)
class PoolDeletion:
    """A destroyed volume or template the storage nodes ``snodes`` (names) must delete; the
    control service drops the entry once their reports no longer list it."""

    kind: str  # one of POOL_KINDS
    name: str
    snodes: tuple[str, ...] = ()
    since: float = 0.0  # when it was asked (time.time())
    target: Target | None = None  # a volume's old shelf.slot: not reused until it is gone


# ------------------------------------------------------------------------------- instances
#: an instance's name is its Xen domain name and its host name: the hnode agent's rule
#: (homecloud.agents.hostproto.NAME_RE), so ``NAME--incoming`` stays a valid xl name
INSTANCE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
#: locally administered, unicast: "HC"; the control service allocates the last three bytes
INSTANCE_MAC_PREFIX = "0a:48:43"
#: the states an instance record can be in (the allowed transitions: homecloud.control.lifecycle)
INSTANCE_STATES = ("creating", "stopped", "starting", "running", "stopping", "rebooting",
                   "migrating", "destroying", "error")


@dataclass(frozen=True)
class Instance:
    """A Xen guest made from a template, with its root volume on the storage nodes.

    ``host`` is the hnode it runs on (state running) or last ran on; ``last_error`` is why the
    last action failed (kept until an action succeeds)."""

    name: str
    template: str = ""
    memory_mb: int = 512
    vcpus: int = 1
    disk_size: int = 0  # bytes
    mac: str = ""  # 0a:48:43:xx:xx:xx, allocated by the control service
    ip: str = ""  # on the instance network, allocated by the control service
    uuid: str = ""
    volume: str = ""  # the root volume's name (homecloud.control.contracts.VolumeApi)
    host: str | None = None
    state: str = "creating"
    ssh_keys: tuple[str, ...] = ()
    user_data: str = ""
    last_error: str = ""


@dataclass(frozen=True)
class Inventory:
    """Every node by name, the role for unknown MACs, and the AoE exports."""

    nodes: tuple[Node, ...] = ()
    default_role: str | None = None
    exports: tuple[Export, ...] = ()
    templates: tuple[TemplateImage, ...] = ()
    deletions: tuple[PoolDeletion, ...] = ()
    instances: tuple[Instance, ...] = ()
    drained: tuple[str, ...] = ()  # hnodes placement skips (hcboot node drain)
    _by_mac: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)
    _by_name: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for n in self.nodes:
            self._by_name[n.name] = n
            for nic in n.nics:
                self._by_mac[nic.mac] = n

    def node(self, mac: str) -> Node | None:
        """The node that owns NIC ``mac`` (any of its NICs)."""
        return self._by_mac.get(mac)

    def named(self, name: str) -> Node | None:
        return self._by_name.get(name)

    def lookup(self, key: str) -> Node | None:
        """A node by name or by the MAC of any of its NICs."""
        return self._by_name.get(key) or self._by_mac.get(key)

    def with_node(self, node: Node) -> Inventory:
        """This inventory with ``node`` added, or replacing the node of the same name."""
        nodes = [n for n in self.nodes if n.name != node.name] + [node]
        return replace(self, nodes=tuple(sorted(nodes, key=lambda n: n.name)),
                       _by_mac={}, _by_name={})

    def without(self, name: str) -> Inventory:
        return replace(self, nodes=tuple(n for n in self.nodes if n.name != name),
                       _by_mac={}, _by_name={})

    def with_default_role(self, role: str | None) -> Inventory:
        return replace(self, default_role=role, _by_mac={}, _by_name={})

    def with_exports(self, exports: tuple[Export, ...]) -> Inventory:
        return replace(self, exports=exports, _by_mac={}, _by_name={})

    # -------------------------------------------------------------------------- instances
    def instance(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    def instance_by_mac(self, mac: str) -> Instance | None:
        """The instance whose NIC has ``mac`` (the instance network's DHCP asks this)."""
        try:
            mac = normalize_mac(mac)
        except BadMac:
            return None
        return next((i for i in self.instances if i.mac == mac), None)

    def with_instance(self, inst: Instance) -> Inventory:
        """This inventory with ``inst`` added, or replacing the instance of the same name."""
        rest = [i for i in self.instances if i.name != inst.name] + [inst]
        return replace(self, instances=tuple(sorted(rest, key=lambda i: i.name)),
                       _by_mac={}, _by_name={})

    def without_instance(self, name: str) -> Inventory:
        return replace(self, instances=tuple(i for i in self.instances if i.name != name),
                       _by_mac={}, _by_name={})

    def with_drained(self, drained: tuple[str, ...]) -> Inventory:
        return replace(self, drained=tuple(sorted(set(drained))), _by_mac={}, _by_name={})

    def with_templates(self, templates: tuple[TemplateImage, ...]) -> Inventory:
        return replace(self, templates=tuple(sorted(templates, key=lambda t: t.name)),
                       _by_mac={}, _by_name={})

    def with_deletions(self, deletions: tuple[PoolDeletion, ...]) -> Inventory:
        return replace(self, deletions=deletions, _by_mac={}, _by_name={})

    def template(self, name: str) -> TemplateImage | None:
        return next((t for t in self.templates if t.name == name), None)

    def volume(self, name: str) -> VolumeExport | None:
        return next((e for e in self.exports if isinstance(e, VolumeExport) and e.name == name),
                    None)

    def consumer_macs(self, exp: Export) -> tuple[str, ...]:
        """The provisioning MACs of the nodes an export's consumers name (roles, names, MACs)."""
        macs: set[str] = set()
        for c in exp.consumers:
            if c in self._by_mac:
                macs.add(self._by_mac[c].mac)
            elif ":" in c:
                macs.add(c)
            elif c in self._by_name:
                macs.add(self._by_name[c].mac)
            else:
                macs.update(n.mac for n in self.nodes if n.role == c)
        return tuple(sorted(macs))

    def serves(self, exp: Export, node: Node) -> bool:
        """Whether storage node ``node`` serves ``exp``."""
        return exp.snodes is None or node.name in exp.snodes or any(
            nic.mac in exp.snodes for nic in node.nics)
