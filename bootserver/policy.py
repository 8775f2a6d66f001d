"""Policy: Machine -> what it boots.  The one place that joins inventory, image store and the
first-stage boot binaries; the DHCP/TFTP/HTTP servers only ask it questions.

Decision table for DHCP (``boot_file``):

    assigned role (or default_role)?  no  -> None (address only; machine recorded as seen)
    loader pxelinux (node or image), BIOS -> pxelinux.0 (also for iPXE clients: iPXE chains it)
    user class "iPXE"                     -> http://SERVER:PORT/boot/<mac>.ipxe
    arch 0 (BIOS) / absent                -> undionly.kpxe
    arch 6 (EFI IA32)                     -> None (no 32-bit EFI iPXE in Debian's package)
    arch 7, 9 (EFI x64)                   -> ipxe.efi (or snponly.efi, --efi-binary)
    arch 16 (EFI x64 HTTP boot)           -> http://SERVER:PORT/firststage/ipxe.efi
    anything else (ARM, ...)              -> None, logged
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bootserver.clientlog import for_mac
from bootserver.machine import (
    ARCH_BIOS,
    ARCH_EFI_BC,
    ARCH_EFI_X64,
    ARCH_EFI_X64_HTTP,
    BootFile,
    Machine,
)
from homecloud.core.errors import HomecloudError
from homecloud.core.manifest import ImageStore, Manifest, ManifestError
from homecloud.core.model import Export, ImageExport, Inventory, Nic, Node, default_node_name
from homecloud.inventory.protocol import InventoryStore

log = logging.getLogger("homecloud.boot")

FIRST_STAGE_BIOS = "undionly.kpxe"
FIRST_STAGE_PXELINUX = "pxelinux.0"
EFI_BINARIES = ("ipxe.efi", "snponly.efi")
_EFI_X64 = (ARCH_EFI_BC, ARCH_EFI_X64)

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=False,
    )


class RenderError(HomecloudError):
    """A boot script cannot be rendered for a machine (names the MAC and the reason)."""


def _clean_cmdline(*parts: str) -> str:
    words: list[str] = []
    for p in parts:
        if "\n" in p or "\r" in p:
            raise RenderError(f"newline in kernel command line part {p!r}")
        words.extend(p.split())
    return " ".join(words)


@dataclass(frozen=True)
class PolicyConfig:
    server_ip: str
    http_port: int = 80
    efi_binary: str = "ipxe.efi"
    unassigned_retry: int = 10  # seconds an unassigned iPXE client waits before rebooting
    mtu: int | None = None  # the boot network's MTU, passed as hc.mtu= (None: left alone)


@dataclass(frozen=True)
class Resolved:
    """A machine with its role's current build: everything a boot script is made from."""

    node: Node
    manifest: Manifest
    loader: str


class Policy:
    def __init__(self, config: PolicyConfig, inventory: InventoryStore, store: ImageStore,
                 on_unassigned: Callable[[Machine], None] | None = None) -> None:
        """``inventory``: any inventory store (the policy only reads snapshots);
        ``on_unassigned``: called for a machine that asked to boot and has no node (the
        composition root records it as seen)."""
        self.config = config
        self.inventory = inventory
        self.store = store
        self.on_unassigned = on_unassigned
        self.env = template_env()

    def current(self) -> Inventory:
        return self.inventory.snapshot().inventory

    # ------------------------------------------------------------------ lookups
    @property
    def http_base(self) -> str:
        port = "" if self.config.http_port == 80 else f":{self.config.http_port}"
        return f"http://{self.config.server_ip}{port}"

    def node_for(self, mac: str, inv: Inventory | None = None) -> Node | None:
        inv = inv or self.current()
        node = inv.node(mac)
        if node is None and inv.default_role:
            node = Node(default_node_name(inv.default_role, mac), inv.default_role,
                        (Nic(mac),))
        return node

    def resolve(self, mac: str) -> Resolved | None:
        node = self.node_for(mac)
        if node is None:
            return None
        try:
            manifest = self.store.manifest(node.role)
        except ManifestError as exc:
            for_mac(log, mac).error("role %s: image store manifest unreadable: %s", node.role,
                                   exc)
            return None
        if manifest is None:
            for_mac(log, mac).warning("role %s has no published image in %s (run hcbuild image"
                                      " %s)", node.role, self.store.root, node.role)
            return None
        return Resolved(node, manifest, node.loader or manifest.boot.loader)

    # ------------------------------------------------------------------ DHCP side
    def static_address(self, mac: str) -> tuple[str, str | None] | None:
        node = self.current().node(mac)
        nic = node.nic(mac) if node is not None else None
        if node is None or nic is None or nic.ip is None:
            return None
        return nic.ip, node.name

    def record_seen(self, machine: Machine) -> None:
        if self.on_unassigned is not None and self.current().node(machine.mac) is None:
            self.on_unassigned(machine)

    def boot_file(self, machine: Machine) -> BootFile | None:
        r = self.resolve(machine.mac)
        if r is None:
            return None
        role = r.node.role
        arch = ARCH_BIOS if machine.arch is None else machine.arch
        if r.loader == "pxelinux" and arch == ARCH_BIOS:
            # iPXE (a ROM or our own first stage) chain-loads pxelinux.0 like any PXE NBP
            return BootFile(FIRST_STAGE_PXELINUX, role)
        if machine.is_ipxe:
            return BootFile(f"{self.http_base}/boot/{machine.mac}.ipxe", role)
        if arch == ARCH_BIOS:
            return BootFile(FIRST_STAGE_BIOS, role)
        if arch == ARCH_EFI_X64_HTTP:  # UEFI HTTP boot: a URL, fetched by the firmware itself
            return BootFile(f"{self.http_base}/firststage/{self.config.efi_binary}", role)
        if arch in _EFI_X64:
            if r.loader == "pxelinux":
                for_mac(log, machine.mac).info("pxelinux is BIOS-only; EFI client gets %s",
                                               self.config.efi_binary)
            if r.manifest.boot.kind == "xen":
                for_mac(log, machine.mac).warning("Xen via iPXE needs multiboot (BIOS); EFI boot"
                                                  " of role %s will fail in iPXE", role)
            return BootFile(self.config.efi_binary, role)
        for_mac(log, machine.mac).warning("client architecture %s (option 93) is not"
                                          " supported", arch)
        return None

    # ------------------------------------------------------------------ scripts
    def kernel_cmdline(self, r: Resolved) -> str:
        mac = r.node.mac
        extra = [f"BOOTIF=01-{mac.replace(':', '-')}", f"hc.mac={mac}", f"hc.role={r.node.role}",
                 f"hc.server={self.http_base}"]
        if self.current().node(mac) is not None:  # a default-role machine has no name yet
            extra.append(f"hc.hostname={r.node.name}")
        if self.config.mtu is not None:
            extra.append(f"hc.mtu={self.config.mtu}")
        if r.manifest.boot.root == "aoe":
            exp = self.root_export(r.node)
            if exp is None:
                for_mac(log, mac).error("role %s boots from AoE but no export of its image lists"
                                        " it as a consumer (hcboot exports)", r.node.role)
            else:
                extra.append(f"hc.aoe={exp.target}")
        if "rootfs" in r.manifest.artifacts and r.manifest.boot.root == "ram":
            art = r.manifest.artifacts["rootfs"]
            extra.append(f"hc.rootfs={self.http_base}/images/{r.node.role}/"
                         f"{r.manifest.build_id}/{art.file}")
            extra.append(f"hc.rootfs_sha256={art.sha256}")
        return _clean_cmdline(r.manifest.boot.cmdline, " ".join(extra), r.node.cmdline)

    def root_export(self, node: Node) -> Export | None:
        for exp in self.current().exports:
            if isinstance(exp, ImageExport) and exp.role == node.role and (
                    node.mac in exp.consumers or node.role in exp.consumers
                    or node.name in exp.consumers):
                return exp
        return None

    def _vars(self, r: Resolved, base: str) -> dict[str, object]:
        arts = r.manifest.artifacts

        def file(name: str) -> str | None:
            return arts[name].file if name in arts else None

        return {
            "mac": r.node.mac,
            "role": r.node.role,
            "build_id": r.manifest.build_id,
            "kind": r.manifest.boot.kind,
            "base": base,
            "kernel_file": file("kernel"),
            "initrd_file": file("initrd"),
            "xen_file": file("xen"),
            "cmdline": self.kernel_cmdline(r),
            "xen_cmdline": _clean_cmdline(r.manifest.boot.xen_cmdline),
        }

    def ipxe_script(self, mac: str) -> str:
        """The per-node iPXE script; unassigned machines get a wait-and-retry script."""
        r = self.resolve(mac)
        if r is None:
            return self.env.get_template("unassigned.ipxe.j2").render(
                mac=mac, retry=self.config.unassigned_retry)
        base = f"{self.http_base}/images/{r.node.role}/{r.manifest.build_id}"
        return self.env.get_template("boot.ipxe.j2").render(**self._vars(r, base))

    def pxelinux_config(self, mac: str) -> str | None:
        r = self.resolve(mac)
        if r is None:
            return None
        base = f"images/{r.node.role}/{r.manifest.build_id}"
        return self.env.get_template("pxelinux.cfg.j2").render(**self._vars(r, base))

