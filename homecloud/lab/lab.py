"""The virtual lab: a whole homecloud (hcboot serve, storage nodes, Xen hosts) in QEMU on one
machine, isolated in a network namespace.

Layout of the lab directory (``--state-dir``, default ``<hcboot state>/lab``)::

    lab.json          what the lab created: namespace, taps, PIDs (written BEFORE each resource)
    context.json      what hcboot needs to talk to the lab (homecloud.lab.context; lab env)
    ssh/              the lab's SSH key (an admin key of the lab's hcboot) and known_hosts
    hcboot/           hcboot's state dir for the lab (inventory.yaml, leases, seen, reports, log)
    vms/              per node: serial log, serial + monitor sockets, argv, QEMU's log
    disks/            the storage nodes' raw sparse disks (two each, for md RAID1)

Everything the lab starts runs inside its namespace, so ``down`` can always finish the job:
recorded PIDs are stopped after ``/proc/PID/cmdline`` is checked, whatever is left in the
namespace is killed, and deleting the namespace removes the bridges and the taps.

Two networks (homecloud.lab.net): provisioning/storage on ``hcbr0`` (every node's NIC 1) and
instances on ``hcbr1`` (the hnodes' NIC 2, where dom0 bridges its guests); hcboot serve answers
DHCP on both (on ``hcbr1`` only for instance MACs the inventory knows).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from homecloud.control.admin_keys import add_admin_key
from homecloud.control.reports import read_reports
from homecloud.control.seen import read_seen
from homecloud.control.service import ControlService
from homecloud.core.files import atomic_write, locked
from homecloud.core.ids import Target
from homecloud.core.manifest import ImageStore, ManifestError
from homecloud.core.model import STORAGE_ROLE, ImageExport, Inventory, Nic, Node
from homecloud.lab import net, procs, vm
from homecloud.lab.context import LabContext, clear_context, write_context
from homecloud.lab.errors import LabError
from homecloud.lab.progress import STATES, Follower, combine, final_state, reported_at, scan
from homecloud.lab.status import (
    BOOT_ORDER,
    DEFAULT_INST_NET,
    DEFAULT_MTU,
    DEFAULT_NET,
    FORMAT,
    HNODE_AOE_WAIT,
    HNODE_GUEST_CPUID,
    HNODE_MEMORY_SHARED,
    HNODE_STARTS,
    INST_NIC_ROLES,
    LAB_NAME,
    MEMORY,
    POOL,
    ROOT_TARGET,
    NodeStatus,
    Say,
    lab_id,
    lab_ip,
    lab_mac,
    read_leases,
)


class Lab:
    def __init__(self, lab_dir: Path, images: Path | None = None,
                 say: Say | None = None) -> None:
        self.dir = Path(lab_dir).resolve()
        self.images = Path(images).resolve() if images else None
        self.say: Say = say or (lambda s: print(s, flush=True))
        self.id = lab_id(self.dir)
        self.path = self.dir / LAB_NAME
        self.hcboot_dir = self.dir / "hcboot"
        self.vms_dir = self.dir / "vms"
        self.disks_dir = self.dir / "disks"
        self.ssh_dir = self.dir / "ssh"
        self.doc: dict[str, Any] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._shown: dict[str, str] = {}  # node -> last state printed by follow()
        self._followers: dict[str, Follower] = {}
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lab.json
    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            doc = {}
        except ValueError as exc:
            raise LabError(f"{self.path}: unreadable ({exc}); hcboot lab down still cleans up "
                           f"namespace hclab-{self.id}") from None
        if not isinstance(doc, dict):
            raise LabError(f"{self.path}: not a JSON object")
        self.doc = doc
        if self.images is None and doc.get("images"):
            self.images = Path(doc["images"])
        return doc

    def save(self) -> None:
        self.doc["updated"] = time.time()
        atomic_write(self.path, json.dumps(self.doc, indent=1, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with locked(self.dir / ".lab.lock"):
            yield

    @property
    def net(self) -> net.LabNet:
        return net.LabNet(netns=self.doc.get("netns") or f"hclab-{self.id}",
                          bridge=self.doc.get("bridge") or "hcbr0",
                          server_cidr=self.doc.get("server_cidr") or DEFAULT_NET,
                          inst_bridge=self.doc.get("inst_bridge") or "hcbr1",
                          inst_cidr=self.doc.get("inst_cidr") or DEFAULT_INST_NET,
                          mtu=int(self.doc.get("mtu") or net.ETHERNET_MTU))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.doc.get("nodes") or [])

    def node(self, name: str) -> dict[str, Any]:
        for n in self.nodes():
            if name in (n["name"], n["mac"]):
                return n
        known = ", ".join(n["name"] for n in self.nodes()) or "none"
        raise LabError(f"no lab node {name!r} (nodes: {known})")

    def _put_node(self, rec: dict[str, Any]) -> None:
        nodes = self.nodes()
        names = [n["name"] for n in nodes]
        if rec["name"] in names:
            nodes[names.index(rec["name"])] = rec
        else:
            nodes.append(rec)
        self.doc["nodes"] = nodes
        self.save()

    def _control(self) -> ControlService:
        """The control service over the lab's hcboot state (as `hcboot --state-dir` uses)."""
        return ControlService.open(self.hcboot_dir, self.images or self.hcboot_dir / "images")

    def inventory(self) -> Inventory:
        """The lab's inventory as hcboot holds it (nodes, exports, instances)."""
        return self._control().inventory()

    def _elapsed(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    # ------------------------------------------------------------------ checks
    def _anything_left(self) -> list[str]:
        left = []
        if net.netns_exists(self.net.netns):
            left.append(f"namespace {self.net.netns}")
        srv = self.doc.get("server") or {}
        if procs.is_ours(srv.get("pid"), self._server_tokens()):
            left.append(f"hcboot serve (pid {srv['pid']})")
        for n in self.nodes():
            if procs.is_ours(n.get("pid"), self._vm_tokens(n)):
                left.append(f"{n['name']} (pid {n['pid']})")
        return left

    def _server_tokens(self) -> list[str]:
        return [str(self.hcboot_dir), "serve"]

    def _vm_tokens(self, n: dict[str, Any]) -> list[str]:
        return [str(self.vms_dir), f"hclab-{self.id}-{n['name']}"]

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, taps)")
        for tool in ("ip", vm.QEMU):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found (apt install iproute2 qemu-system-x86)")

    def _check_images(self, roles: list[str]) -> None:
        assert self.images is not None
        store = ImageStore(self.images)
        missing = []
        for role in roles:
            try:
                m = store.manifest(role)
            except ManifestError as exc:
                raise LabError(f"image store {self.images}: {exc}") from None
            if m is None:
                missing.append(role)
        if missing:
            raise LabError(f"image store {self.images} has no published image for "
                           f"{', '.join(missing)}: run `hcbuild image --all --out {self.images}`"
                           " (or drop --no-build)")

    # ------------------------------------------------------------------ build
    def build(self, roles: list[str]) -> None:
        """``hcbuild image --all`` into the lab's store (hcbuild's cache makes it a no-op when
        nothing changed)."""
        from builder.paths import profiles_dir

        assert self.images is not None
        missing = [r for r in roles if not (profiles_dir() / f"{r}.yaml").is_file()]
        if missing:
            raise LabError(f"hcbuild has no profile for {', '.join(missing)} yet "
                           f"({profiles_dir()}): build the images elsewhere and pass "
                           "--images STORE --no-build")
        exe = shutil.which("hcbuild")
        argv = [exe] if exe else [sys.executable, "-m", "builder"]
        argv += ["image", "--all", "--out", str(self.images)]
        self.say(f"{self._elapsed()} building images: {' '.join(argv)}")
        self.doc["build"] = {"pid": None, "argv": argv}
        self.save()
        try:
            p = subprocess.Popen(argv)
        except OSError as exc:
            raise LabError(f"cannot run hcbuild: {exc}") from None
        self.doc["build"]["pid"] = p.pid
        self.save()
        rc = p.wait()
        self.doc.pop("build", None)
        self.save()
        if rc != 0:
            raise LabError(f"hcbuild image --all failed (exit {rc}); see its output above")

    # ------------------------------------------------------------------ up
    def up(self, snodes: int = 2, hnodes: int = 2, build: bool = True, timeout: float = 1800,
           disk_size: int = 8 << 30, network: str = DEFAULT_NET,
           snode_memory: int | None = None, hnode_memory: int | None = None,
           instance_network: str = DEFAULT_INST_NET,
           hnode_start: str = "exports-ready", mtu: int = DEFAULT_MTU) -> list[NodeStatus]:
        """Boot the lab.  ``hnode_start`` (HNODE_STARTS): ``with-snodes`` starts the hnodes
        together with the snodes (their initramfs waits up to HNODE_AOE_WAIT s for the root
        export); ``snodes-ready`` once every snode's system is up (its agent then sets up the
        disks and fetches the image while Xen and dom0's kernel boot); ``exports-ready`` only
        once every snode exports."""
        if hnode_start not in HNODE_STARTS:
            raise LabError(f"hnode start {hnode_start!r}: not one of {', '.join(HNODE_STARTS)}")
        self._t0 = time.monotonic()
        self._preflight()
        if self.images is None:
            raise LabError("no image store given")
        nets = []
        for opt, value in (("--network", network), ("--instance-network", instance_network)):
            try:
                iface = ipaddress.IPv4Interface(value)
            except ValueError:
                raise LabError(f"{opt} {value!r} is not ADDRESS/24") from None
            if iface.network.prefixlen != 24 or iface.ip in (iface.network.network_address,
                                                             iface.network.broadcast_address):
                raise LabError(f"{opt} {value}: the lab needs a host address in a /24")
            nets.append(iface.network)
        if nets[0].overlaps(nets[1]):
            raise LabError(f"--instance-network {instance_network} overlaps --network {network}: "
                           "instances need a network of their own")
        with self._lock():
            self.load()
            left = self._anything_left()
            if left:
                raise LabError(f"a lab is already up in {self.dir} (or left over from a crash): "
                               f"{', '.join(left)}; run `hcboot lab down` first")
            self.doc = {"format": FORMAT, "id": self.id, "dir": str(self.dir),
                        "images": str(self.images), "netns": f"hclab-{self.id}",
                        "bridge": "hcbr0", "server_cidr": network, "inst_bridge": "hcbr1",
                        "inst_cidr": instance_network, "mtu": mtu, "created": time.time(),
                        "phase": "creating", "server": None, "nodes": []}
            self._reset_dirs()
            self.save()
        if build:  # not under the lock: `lab down` may stop a long build
            self.build(["snode", "hnode"])
        with self._lock():
            self.load()
            if self.doc.get("phase") != "creating":
                raise LabError(f"{self.path} changed during the build (lab down?): stopping")
            self._check_images(["snode", "hnode"])
            self._create_network()
            self._write_inventory(snodes, hnodes)
            self._lab_key()
            self._start_server()
            self._write_context()
            for i in range(1, snodes + 1):
                self._start_node("snode", i, memory=snode_memory, disk_size=disk_size)
            if hnode_start == "with-snodes":
                self._start_hnodes(hnodes, hnode_memory)
            self.doc["phase"] = "booting"
            self.save()
        snames = [f"snode{i}" for i in range(1, snodes + 1)]
        hnames = [f"hnode{i}" for i in range(1, hnodes + 1)]
        deadline = time.monotonic() + timeout
        if hnode_start != "with-snodes":
            self.follow(snames, deadline,
                        until="ready" if hnode_start == "snodes-ready" else None)
            with self._lock():
                self.load()
                if self.doc.get("phase") == "down":
                    raise LabError("the lab was taken down while it booted")
                self._start_hnodes(hnodes, hnode_memory)
        self.follow(snames + hnames, deadline)
        with self._lock():
            self.load()
            if self.doc.get("phase") == "booting":
                self.doc["phase"] = "up"
                self.save()
        return self.status()

    def _start_hnodes(self, hnodes: int, memory: int | None) -> None:
        mem = memory or (HNODE_MEMORY_SHARED if hnodes > 1 else MEMORY["hnode"])
        for i in range(1, hnodes + 1):
            self._start_node("hnode", i, memory=mem)

    def _reset_dirs(self) -> None:
        """A fresh lab: new hcboot state (inventory, leases, seen, reports), logs and disks."""
        for d in (self.hcboot_dir, self.vms_dir, self.disks_dir, self.ssh_dir):
            if self.images is not None and (self.images == d or d in self.images.parents):
                raise LabError(f"image store {self.images} is inside the lab's {d}: "
                               "choose another --images")
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    def _create_network(self) -> None:
        n = self.net
        self.say(f"{self._elapsed()} network: namespace {n.netns}, bridge {n.bridge} "
                 f"{n.server_cidr} MTU {n.mtu} (provisioning + storage), bridge {n.inst_bridge} "
                 f"{n.inst_cidr} (instances); no forwarding between them, no link to the host")
        net.create_netns(n)  # lab.json already names it

    def _write_inventory(self, snodes: int, hnodes: int) -> None:
        prefix = self.net.prefix()
        nodes = []
        for role, count in (("snode", snodes), ("hnode", hnodes)):
            for i in range(1, count + 1):
                nics: tuple[Nic, ...] = (Nic(lab_mac(role, i), ip=lab_ip(prefix, role, i)),)
                if role in INST_NIC_ROLES:  # NIC 2 on the instance bridge (dom0's xenbr1)
                    nics += (Nic(lab_mac(role, i, 2), purpose="instance"),)
                # the lab starts hnodes with the snodes: their initramfs waits for the root
                # export (default 30 s) while the snodes fetch it
                # and every lab node logs root in on its serial console (lab console NODE;
                # element hc-base's hc-getty: the images are the production ones)
                # hnodes: guests without AVX (faults under TCG's SVM: xlcfg's docstring);
                # snodes: their disks are new sparse files, zeros, so their RAID1 is in sync
                # as made (no initial resync: agents/disks.md_create_argv)
                cmdline = "hc.autologin=1" + (f" hc.aoe_wait={HNODE_AOE_WAIT}"
                                              f" hc.guest_cpuid={HNODE_GUEST_CPUID}"
                                              if role == "hnode" else
                                              " hc.md_assume_clean=1" if role == "snode"
                                              else "")
                nodes.append(Node(f"{role}{i}", role, nics, cmdline=cmdline))
        # consumers: every hnode, and the lab bridge itself so that `hcboot aoe verify` run in
        # the lab's namespace is an allowed initiator (vblade -m)
        exports = (ImageExport(Target.parse(ROOT_TARGET), mode="ro", role="hnode",
                               artifact="rootfs", consumers=("hnode", self.net.bridge_mac),
                               snodes=None),)
        self._control().replace_inventory(
            Inventory(tuple(sorted(nodes, key=lambda n: n.name)), None, exports))
        self.say(f"{self._elapsed()} inventory: {snodes} snode(s), {hnodes} hnode(s); export "
                 f"{ROOT_TARGET} = hnode rootfs (ro) from every snode to role hnode "
                 f"(and the lab bridge, for hcboot aoe verify)")

    def _start_server(self) -> None:
        n = self.net
        prefix = n.prefix()
        log = self.hcboot_dir / "hcboot.log"
        argv = n.exec_argv(sys.executable, "-m", "homecloud", "--state-dir",
                           str(self.hcboot_dir), "--images", str(self.images), "-v", "serve",
                           "--interface", n.bridge, "--mode", "full", "--address", n.server_ip,
                           "--range", f"{prefix}{POOL[0]}-{prefix}{POOL[1]}",
                           "--instance-interface", n.inst_bridge, "--instance-address",
                           n.inst_cidr,
                           *(("--mtu", str(n.mtu)) if n.mtu != net.ETHERNET_MTU else ()))
        self.doc["server"] = {"pid": None, "argv": argv, "log": str(log)}
        self.save()
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self._procs["hcboot"] = p
        self.doc["server"].update(pid=p.pid, started=time.time())
        self.save()
        deadline = time.monotonic() + 30
        while "hcboot serving" not in log.read_text(errors="replace"):
            if p.poll() is not None:
                raise LabError(f"hcboot serve exited ({p.returncode}): "
                               f"{log.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise LabError(f"hcboot serve did not come up in 30 s (log {log})")
            time.sleep(0.1)
        self.say(f"{self._elapsed()} hcboot serve up (pid {p.pid}) on {n.bridge} "
                 f"{n.server_ip}: DHCP full, TFTP, HTTP; on {n.inst_bridge} {n.inst_ip}: DHCP "
                 f"for instances; log {log}")

    def _lab_key(self) -> None:
        """The lab's SSH key (made once per lab up), an admin key of the lab's hcboot."""
        key = self.ssh_dir / "id_ed25519"
        if not key.exists():
            self.ssh_dir.mkdir(parents=True, exist_ok=True)
            argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                    f"homecloud-lab-{self.id}", "-f", str(key)]
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            except FileNotFoundError:
                raise LabError("ssh-keygen not found (apt install openssh-client)") from None
            if r.returncode != 0:
                raise LabError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()[-300:]}")
        add_admin_key(self.hcboot_dir, key.with_suffix(".pub").read_text())
        (self.ssh_dir / "known_hosts").touch()

    def context(self) -> LabContext:
        n = self.net
        return LabContext(lab_dir=str(self.dir), state_dir=str(self.hcboot_dir),
                          images=str(self.images), netns=n.netns, bridge=n.bridge,
                          server_ip=n.server_ip, inst_bridge=n.inst_bridge, inst_ip=n.inst_ip,
                          ssh_key=str(self.ssh_dir / "id_ed25519"),
                          known_hosts=str(self.ssh_dir / "known_hosts"))

    def _write_context(self) -> None:
        path = write_context(self.context())
        self.say(f"{self._elapsed()} context: {path} (hcboot lab env; hcboot --lab COMMAND)")

    def _start_node(self, role: str, index: int, memory: int | None = None,
                    disk_size: int = 0, added: bool = False) -> dict[str, Any]:
        name = f"{role}{index}"
        rec: dict[str, Any] = {
            "name": name, "role": role, "mac": lab_mac(role, index), "index": index,
            "ip": lab_ip(self.net.prefix(), role, index), "tap": net.tap_names(name)[0],
            "memory_mb": memory or MEMORY.get(role, 1024), "pid": None, "started": None,
            "assigned": None if added else time.time(), "ready_at": None, "added": added,
            "disks": [],
        }
        if role == STORAGE_ROLE and disk_size:
            rec["disks"] = [str(self.disks_dir / f"{name}-{x}.img") for x in ("a", "b")]
        if role in INST_NIC_ROLES:
            rec.update(inst_tap=net.tap_names(name)[1], inst_mac=lab_mac(role, index, 2))
        spec = self._spec(rec)
        rec.update({k: str(v) for k, v in spec.files.items()})
        self._put_node(rec)                      # recorded before the tap and the VM exist
        net.create_tap(self.net, rec["tap"])
        if rec.get("inst_tap"):
            net.create_tap(self.net, rec["inst_tap"], self.net.inst_bridge)
        for d in rec["disks"]:
            vm.sparse_disk(Path(d), disk_size)
        p = vm.start(spec)
        self._procs[name] = p
        rec.update(pid=p.pid, started=time.time())
        self._put_node(rec)
        vm.wait_sockets(spec, p)
        what = f"{rec['memory_mb']} MB"
        if rec.get("inst_mac"):
            what += f", NIC 2 {rec['inst_mac']} on {self.net.inst_bridge}"
        if rec["disks"]:
            what += f", 2 x {disk_size >> 30} GiB sparse disks"
        self.say(f"{self._elapsed()} {name:8} started: {rec['mac']} {what} (pid {p.pid})")
        return rec

    def _spec(self, rec: dict[str, Any]) -> vm.VmSpec:
        """The QEMU machine of node record ``rec`` (the same at every start of it)."""
        nics = [vm.Nic("virtio", tap=rec["tap"], mac=rec["mac"])]
        if rec.get("inst_tap"):
            # NIC 2 (eth1) on the instance bridge; no option ROM: it never boots
            nics.append(vm.Nic("virtio", tap=rec["inst_tap"], mac=rec["inst_mac"], romfile=""))
        return vm.VmSpec(
            name=f"hclab-{self.id}-{rec['name']}",
            workdir=self.vms_dir, memory_mb=rec["memory_mb"],
            nics=nics,
            # virtio-scsi, not virtio-blk: a lab snode once hung for good with 256 writes in
            # flight on vda that QEMU had completed (a completion interrupt lost under TCG);
            # the SCSI layer times such a command out, aborts and retries it (docs/lab.md)
            disks=[vm.Disk(Path(d), iface="virtio-scsi") for d in rec["disks"]],
            boot=BOOT_ORDER,
            cpu=vm.role_cpu(rec["role"]),
            netns=self.net.netns)

    # ------------------------------------------------------------------ follow
    def _vm_running(self, n: dict[str, Any]) -> bool:
        p = self._procs.get(n["name"])
        if p is not None and p.poll() is not None:
            return False
        return procs.is_ours(n.get("pid"), self._vm_tokens(n))

    def follow(self, names: list[str], deadline: float, until: str | None = None) -> bool:
        """Show each node's progress until all of ``names`` are done, failed or off (or, with
        ``until``, have reached that state of progress.STATES or a later one)."""
        followers = self._followers
        shown = self._shown
        while True:
            self.load()
            reports = read_reports(self.hcboot_dir)
            pending = 0
            for name in names:
                n = self.node(name)
                f = followers.get(name)
                if f is None:
                    f = followers[name] = Follower(n["serial_log"], n["role"])
                cs = f.poll()
                rep = reports.get(n["mac"])
                state = combine(cs, n["role"], rep, self._vm_running(n),
                                since=float(n.get("started") or 0))
                since = n.get("assigned") or n.get("started") or time.time()
                for step in cs.drain()[:-1]:  # states passed within one poll
                    if step != shown.get(name) and step != state:
                        shown[name] = step
                        self.say(f"{self._elapsed()} {name:8} {step:13} "
                                 f"(+{max(0.0, time.time() - since):.1f}s)")
                if state != shown.get(name):
                    shown[name] = state
                    detail = f": {cs.detail[:100]}" if state == "failed" else ""
                    self.say(f"{self._elapsed()} {name:8} {state:13} "
                             f"(+{max(0.0, time.time() - since):.1f}s){detail}")
                if state == final_state(n["role"]) and not n.get("ready_at"):
                    t = time.time()
                    rt = reported_at(rep, state)  # the report of this state, not a later one
                    if rt is not None:
                        t = min(t, rt)
                    n["ready_at"] = max(t, since)
                    self._put_node(n)
                if state not in (final_state(n["role"]), "failed", "off") and not (
                        until and STATES.index(state) >= STATES.index(until)):
                    pending += 1
            if pending == 0:
                return all(shown.get(x) == final_state(self.node(x)["role"]) for x in names)
            if time.monotonic() > deadline:
                late = [x for x in names if shown.get(x) != final_state(self.node(x)["role"])]
                self.say(f"{self._elapsed()} timed out waiting for {', '.join(late)}")
                return False
            time.sleep(0.5)

    # ------------------------------------------------------------------ add-node
    def add_node(self, role: str = "hnode", timeout: float = 1200, memory: int | None = None,
                 assign_after: float = 0.0) -> tuple[NodeStatus, float | None]:
        """A new machine with a fresh MAC powers on (PXE), is seen unassigned, gets assigned
        and boots into ``role``.  Returns its status and the seconds from assignment to its
        final state (None if it did not get there)."""
        self._t0 = time.monotonic()
        self._preflight()
        with self._lock():
            self.load()
            if not self.doc or self.doc.get("phase") in (None, "down"):
                raise LabError(f"no lab is up in {self.dir} (hcboot lab up)")
            srv = self.doc.get("server") or {}
            if not procs.is_ours(srv.get("pid"), self._server_tokens()):
                raise LabError("the lab's hcboot serve is not running (hcboot lab down; "
                               "hcboot lab up)")
            used = {n["index"] for n in self.nodes() if n["role"] == role}
            index = next(i for i in range(1, 256) if i not in used)
            mem = memory or (HNODE_MEMORY_SHARED if role == "hnode" else MEMORY.get(role, 1024))
            rec = self._start_node(role, index, memory=mem, added=True)
        name, mac = rec["name"], rec["mac"]
        self.say(f"{self._elapsed()} {name:8} powered on without a role; waiting for hcboot to "
                 "see it (hcboot nodes --unassigned)")
        deadline = time.monotonic() + timeout
        while not any(s.mac == mac for s in read_seen(self.hcboot_dir)):
            if time.monotonic() > deadline:
                raise LabError(f"{name} ({mac}) never asked hcboot for a boot (see "
                               f"{rec['serial_log']})")
            if not self._vm_running(rec):
                raise LabError(f"{name}: QEMU exited before PXE ({rec['qemu_log']})")
            time.sleep(0.5)
        if assign_after > 0:
            self.say(f"{self._elapsed()} {name:8} seen unassigned; leaving it without a role "
                     f"for {assign_after:.0f} s (it keeps retrying PXE)")
            time.sleep(assign_after)
        self.say(f"{self._elapsed()} {name:8} seen unassigned; hcboot assign {mac} {role} "
                 f"--hostname {name}" + (f" --ip {rec['ip']}" if rec["ip"] else ""))
        self._control().assign(mac, role, name, rec["ip"])
        with self._lock():
            self.load()
            n = self.node(name)
            n["assigned"] = time.time()
            self._put_node(n)
        self.say(f"{self._elapsed()} {name:8} assigned; SeaBIOS retries PXE by itself "
                 "(no reboot needed)")
        self.follow([name], deadline)
        st = next(s for s in self.status() if s.name == name)
        return st, st.seconds if st.done else None

    def reset_node(self, name: str) -> None:
        """Reboot a node through its QEMU monitor (system_reset)."""
        self.load()
        n = self.node(name)
        if not self._vm_running(n):
            raise LabError(f"{name}: its VM is not running")
        vm.monitor(Path(n["monitor_sock"]), "system_reset")

    def kill_node(self, name: str) -> int:
        """Power a node off hard: SIGKILL to its QEMU (no shutdown, no TCP reset from it: what
        a machine that dies looks like to its peers).  Its disks and taps stay; ``start_node``
        powers it on again.  Returns the PID that was killed."""
        self.load()
        n = self.node(name)
        pid = n.get("pid")
        if not isinstance(pid, int) or not self._vm_running(n):
            raise LabError(f"{name}: its VM is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.is_ours(pid, self._vm_tokens(n)) and time.monotonic() < deadline:
            p = self._procs.get(name)
            if p is not None:
                p.poll()
            time.sleep(0.05)
        n["ready_at"] = None
        self._put_node(n)
        return pid

    def start_node(self, name: str) -> int:
        """Power a stopped (killed or crashed) node on again: the same QEMU machine (MAC,
        disks, taps), booting from the network as at first.  Returns the new PID."""
        self.load()
        n = self.node(name)
        if self._vm_running(n):
            raise LabError(f"{name}: its VM is running (pid {n.get('pid')})")
        spec = self._spec(n)
        p = vm.start(spec)
        self._procs[name] = p
        n.update(pid=p.pid, started=time.time(), ready_at=None)
        self._put_node(n)
        vm.wait_sockets(spec, p)
        return p.pid

    # ------------------------------------------------------------------ status
    def status(self) -> list[NodeStatus]:
        if not self.doc:
            self.load()
        reports = read_reports(self.hcboot_dir)
        leases = read_leases(self.hcboot_dir)
        out = []
        for n in self.nodes():
            try:
                text = Path(n["serial_log"]).read_bytes().decode(errors="replace")
            except (FileNotFoundError, KeyError):
                text = ""
            cs = scan(text, n["role"])
            running = self._vm_running(n)
            rep = reports.get(n["mac"])
            state = (combine(cs, n["role"], rep, running, since=float(n.get("started") or 0))
                     if n.get("pid") else "off")
            since = n.get("assigned") or n.get("started")
            ready = n.get("ready_at")
            if ready is None and state == final_state(n["role"]):
                ready = reported_at(rep, state)
            secs = round(ready - since, 1) if ready and since else None
            out.append(NodeStatus(n["name"], n["mac"], n["role"],
                                  leases.get(n["mac"]) or n.get("ip") or "-", state, secs,
                                  "running" if running else "off",
                                  cs.detail if state == "failed" else ""))
        return out

    def summary(self) -> dict[str, Any]:
        self.load()
        srv = self.doc.get("server") or {}
        return {
            "dir": str(self.dir), "phase": self.doc.get("phase", "down"),
            "netns": self.net.netns if self.doc else None,
            "netns_exists": net.netns_exists(self.net.netns),
            "server": {"pid": srv.get("pid"),
                       "running": procs.is_ours(srv.get("pid"), self._server_tokens()),
                       "address": self.net.server_ip, "log": srv.get("log"),
                       "instance_address": self.net.inst_ip},
            "bridges": {"provisioning": self.net.bridge, "instance": self.net.inst_bridge},
            "images": self.doc.get("images"),
            "nodes": [s.to_doc() for s in self.status()] if self.doc else [],
        }

    # ------------------------------------------------------------------ down
    def down(self, keep_disks: bool = False) -> list[str]:
        """Stop everything the lab started and remove its namespace; idempotent."""
        done: list[str] = []
        with self._lock():
            try:
                self.load()
            except LabError as exc:
                self.say(f"warning: {exc}")
                self.doc = {}
            build = self.doc.get("build") or {}
            if procs.stop(build.get("pid"), [str(a) for a in build.get("argv", [])[-3:]]):
                done.append(f"hcbuild (pid {build['pid']})")
            for n in reversed(self.nodes()):
                if procs.stop(n.get("pid"), self._vm_tokens(n)):
                    done.append(f"{n['name']} (pid {n['pid']})")
            srv = self.doc.get("server") or {}
            if procs.stop(srv.get("pid"), self._server_tokens()):
                done.append(f"hcboot serve (pid {srv['pid']})")
            ns = self.net.netns
            left = net.netns_pids(ns)
            if net.delete_netns(ns):
                done.append(f"namespace {ns} (bridge, taps"
                            + (f", {len(left)} leftover process(es)" if left else "") + ")")
            clear_context(self.dir)
            if not keep_disks and self.disks_dir.is_dir():
                shutil.rmtree(self.disks_dir, ignore_errors=True)
            if self.doc:
                self.doc["phase"] = "down"
                self.doc.pop("build", None)
                self.save()
        return done

