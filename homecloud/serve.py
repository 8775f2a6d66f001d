"""``hcboot serve``: DHCP (full or proxy) + TFTP + HTTP on one provisioning interface, and
optionally DHCP for instances (static, known MACs only) on an instance interface.

Composition only (with homecloud.cli, the composition root): every protocol lives in its own
module of ``bootserver``; this file builds the objects -- the inventory store, the boot policy,
the boot and control HTTP routes, the seen-machines writer -- starts them, and stops them all on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click

from bootserver.bootapp import BootApp
from bootserver.dhcp.pool import PoolConfig
from bootserver.dhcp.server import DhcpConfig, DhcpServer
from bootserver.dhcp.static import StaticLookup, StaticPolicy, static_config
from bootserver.firststage import populate
from bootserver.http import App, HttpLimits, HttpServer, Response
from bootserver.machine import Machine
from bootserver.policy import EFI_BINARIES, Policy, PolicyConfig
from bootserver.ra import RaResponder
from bootserver.tftp import TftpLimits, TftpServer
from homecloud.control.http import ControlApp
from homecloud.control.identity import ClientIdentity, load_admin_token
from homecloud.control.seen import SeenStore
from homecloud.control.service import known_roles
from homecloud.core.errors import HomecloudError
from homecloud.core.manifest import ImageStore
from homecloud.inventory.protocol import InventoryStore
from homecloud.inventory.yamlfile import YamlFileStore

log = logging.getLogger("homecloud.serve")


class ServeError(HomecloudError):
    """`hcboot serve` cannot start (interface, address, missing boot binaries...)."""


class Routes:
    """HTTP apps tried in order; the first answer (not None) wins."""

    def __init__(self, *apps: App) -> None:
        self.apps = apps

    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        for app in self.apps:
            resp = app.handle(method, path, client_ip, headers, body)
            if resp is not None:
                return resp
        return None


def interface_ipv4(ifname: str) -> ipaddress.IPv4Interface:
    """The first IPv4 address (with prefix) of ``ifname``."""
    r = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ServeError(f"interface {ifname}: {r.stderr.strip() or 'not found'}")
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                return ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
    raise ServeError(f"interface {ifname} has no IPv4 address (give it one, or pass --address)")


def interface_mtu(ifname: str) -> int | None:
    """The MTU of ``ifname`` (None: unknown)."""
    try:
        return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    except (OSError, ValueError):
        return None


def default_range(iface: ipaddress.IPv4Interface) -> tuple[str, str]:
    """The upper half of the interface's subnet, minus the broadcast address and the server."""
    hosts = [h for h in iface.network.hosts() if h != iface.ip]
    if len(hosts) < 2:
        raise ServeError(f"subnet {iface.network} too small for a DHCP pool: pass --range")
    half = hosts[len(hosts) // 2:]
    return str(half[0]), str(half[-1])


@dataclass(frozen=True)
class ServeOptions:
    interface: str
    mode: str
    state_dir: Path
    images: Path
    address: str | None = None
    range: tuple[str, str] | None = None
    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    lease_time: int = 3600
    # the provisioning/storage segment's MTU (jumbo frames: 9000): DHCP option 26 and the
    # nodes' hc.mtu= (their initramfs sets it on the boot NIC before AoE or DHCP); None: 1500
    mtu: int | None = None
    http_port: int = 80
    tftp_port: int = 69
    efi_binary: str = "ipxe.efi"
    bind_http: str | None = None  # default: the server address
    ipv6_ra: bool = True  # answer router solicitations (saves iPXE ~13 s), see bootserver/ra.py
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # caps, timeouts: docs/security.md
    tftp_limits: TftpLimits = field(default_factory=TftpLimits)  # docs/limits.md
    # the instance network (issue 11): DHCP only, static addresses for known instance MACs
    instance_interface: str | None = None
    instance_address: str | None = None  # ADDRESS/PREFIX; default: the interface's first IPv4
    instance_router: str | None = None
    instance_dns: tuple[str, ...] = ()
    instance_domain: str | None = None


def inventory_instances(store: InventoryStore) -> StaticLookup:
    """The instance network's lookup over the inventory: ``Inventory.instance_by_mac(mac)``
    (an ``Instance`` with ``.ip`` and ``.name``) -> ``(ip, name)``; None for a MAC that is no
    instance's or an instance without an address yet.  Read at every request: a new instance is
    answered as soon as the store has it (live reload)."""

    def lookup(mac: str) -> tuple[str, str | None] | None:
        inst = store.snapshot().inventory.instance_by_mac(mac)
        if inst is None or not inst.ip:
            return None
        return inst.ip, inst.name

    return lookup


class BootServer:
    """All of hcboot's servers for one interface."""

    def __init__(self, opts: ServeOptions, roles: list[str],
                 instance_lookup: StaticLookup | None = None) -> None:
        self.opts = opts
        if opts.address:
            iface = ipaddress.IPv4Interface(opts.address if "/" in opts.address
                                            else f"{opts.address}/24")
            if "/" not in opts.address:
                try:
                    iface = interface_ipv4(opts.interface)
                    if str(iface.ip) != opts.address:
                        iface = ipaddress.IPv4Interface(f"{opts.address}/{iface.network.prefixlen}")
                except ServeError:
                    pass
        else:
            iface = interface_ipv4(opts.interface)
        self.iface = iface
        server_ip = str(iface.ip)
        state = opts.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.inventory = YamlFileStore(state, roles)
        if self.inventory.last_error:
            raise ServeError(self.inventory.last_error)
        self.seen = SeenStore(state)
        images = ImageStore(opts.images)
        self.policy = Policy(PolicyConfig(server_ip, opts.http_port, opts.efi_binary,
                                          mtu=opts.mtu),
                             self.inventory, images, self._record_seen)
        self.identity = ClientIdentity(
            self._lease_mac, lambda: self.inventory.snapshot().inventory, opts.interface,
            (server_ip,), load_admin_token(state))
        self.app = BootApp(self.policy, state, self.identity.vouches)
        self.control = ControlApp(self.inventory, images, state, lambda: self.policy.http_base,
                                  self.identity.mac_of, self.identity.is_admin)
        self.tftp_root = state / "tftp"
        found = populate(self.tftp_root)
        if found.get("undionly.kpxe") is None and found.get("pxelinux.0") is None:
            log.warning("no first-stage boot binary found: only iPXE ROM clients can boot")
        pools: tuple[PoolConfig, ...] = ()
        if opts.mode == "full":
            start, end = opts.range or default_range(iface)
            pools = (PoolConfig(network=str(iface.network), start=start, end=end,
                                router=opts.router, dns=opts.dns, domain=opts.domain,
                                mtu=opts.mtu),)
        if opts.mtu is not None:
            have = interface_mtu(opts.interface)
            if have is not None and have < opts.mtu:
                log.warning("--mtu %d: interface %s has MTU %d; the nodes will send frames "
                            "it cannot take (raise it, and every switch port's, first)",
                            opts.mtu, opts.interface, have)
        self.dhcp = DhcpServer(DhcpConfig(
            interface=opts.interface, server_ip=server_ip, mode=opts.mode,  # type: ignore[arg-type]
            pools=pools, lease_time=opts.lease_time, lease_file=state / "leases.jsonl",
            router=opts.router, dns=opts.dns, domain=opts.domain), self.policy)
        self.instance_dhcp: DhcpServer | None = None
        if opts.instance_interface:
            if opts.instance_interface == opts.interface:
                raise ServeError(f"--instance-interface {opts.instance_interface} is the "
                                 "provisioning interface: instances need a network of their own")
            inst_cidr = opts.instance_address or str(interface_ipv4(opts.instance_interface))
            if "/" not in inst_cidr:
                raise ServeError(f"--instance-address {inst_cidr}: give ADDRESS/PREFIX")
            self.instance_dhcp = DhcpServer(
                static_config(opts.instance_interface, inst_cidr,
                              lease_file=state / "instance-leases.jsonl",
                              router=opts.instance_router, dns=opts.instance_dns,
                              domain=opts.instance_domain, lease_time=opts.lease_time),
                StaticPolicy(instance_lookup or inventory_instances(self.inventory)))
        self.tftp = TftpServer(self.tftp_root, server_ip, opts.tftp_port,
                               resolver=self.app.tftp_resolve, limits=opts.tftp_limits,
                               mac_of=self.identity.mac_of)
        self.http = HttpServer(opts.bind_http or server_ip, opts.http_port,
                               Routes(self.app, self.control), limits=opts.http_limits,
                               mac_of=self.identity.mac_of)
        self.ra = RaResponder(opts.interface) if opts.ipv6_ra else None
        self._stopped = threading.Event()
        self._done = threading.Event()

    def _record_seen(self, m: Machine) -> None:
        self.seen.record(m.mac, m.arch, m.vendor_class, m.user_class)

    def _lease_mac(self, ip: str) -> str | None:
        lease = self.dhcp.leases.by_ip.get(ip)
        return lease.mac if lease is not None else None

    def mac_of(self, ip: str) -> str | None:
        return self.identity.mac_of(ip)

    def start(self) -> None:
        self.inventory.watch(lambda snap: None)  # starts the store's poller (live reload)
        self.seen.start()
        self.http.start()
        self.tftp.start()
        self.dhcp.open()
        self.dhcp.start()
        if self.instance_dhcp is not None:
            self.instance_dhcp.open()
            self.instance_dhcp.start()
            log.info("instance DHCP on %s (%s): static addresses for known instance MACs only",
                     self.opts.instance_interface, self.instance_dhcp.config.server_ip)
        if self.ra is not None:
            self.ra.start()
        log.info("hcboot serving on %s (%s): DHCP %s, TFTP :%d, HTTP :%d, images %s",
                 self.opts.interface, self.iface, self.opts.mode, self.tftp.port,
                 self.http.port, self.opts.images)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.ra is not None:
            self.ra.stop()
        if self.instance_dhcp is not None:
            try:
                self.instance_dhcp.stop()
            except Exception:
                log.exception("stopping instance dhcp failed")
        for name, fn in (("dhcp", self.dhcp.stop), ("tftp", self.tftp.stop),
                         ("http", self.http.stop), ("inventory", self.inventory.close),
                         ("seen", self.seen.stop)):
            try:
                fn()
            except Exception:
                log.exception("stopping %s failed", name)
        log.info("hcboot stopped")
        self._done.set()

    def wait(self) -> None:
        self._done.wait()


def _parse_range(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    try:
        a, b = (str(ipaddress.IPv4Address(x.strip())) for x in value.split("-", 1))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not START-END (two IPv4 addresses)") from None
    return a, b


@click.command()
@click.option("--interface", "-i", required=True, envvar="HCBOOT_INTERFACE",
              help="Provisioning interface to serve (DHCP binds to it only).")
@click.option("--mode", type=click.Choice(["full", "proxy"]), default="proxy", show_default=True,
              help="full: hand out addresses too; proxy: only boot info beside another DHCP.")
@click.option("--address", help="This server's IPv4 on the interface (default: its first).")
@click.option("--range", "range_", help="Dynamic pool START-END (full mode; default: upper "
              "half of the interface's subnet).")
@click.option("--router", help="Option 3 handed out in full mode.")
@click.option("--dns", multiple=True, help="Option 6 (repeatable).")
@click.option("--domain", help="Option 15.")
@click.option("--lease-time", default=3600, show_default=True, type=click.IntRange(60))
@click.option("--mtu", type=click.IntRange(576, 65535), default=None,
              help="MTU of the provisioning/storage network (e.g. 9000 where every NIC and "
              "switch port carries jumbo frames): DHCP option 26 and hc.mtu= on the nodes' "
              "kernel command line, so AoE, DRBD and migrations use big frames.  Default: not "
              "sent (1500).")
@click.option("--http-port", default=80, show_default=True, type=click.IntRange(1, 65535))
@click.option("--tftp-port", default=69, show_default=True, type=click.IntRange(1, 65535))
@click.option("--tftp-max-sessions", default=TftpLimits.max_sessions, show_default=True,
              type=click.IntRange(1, 65535), help="TFTP transfers at once (docs/limits.md).")
@click.option("--tftp-max-per-client", default=TftpLimits.max_per_client, show_default=True,
              type=click.IntRange(1, 65535), help="TFTP transfers at once from one address.")
@click.option("--tftp-timeout", default=TftpLimits.timeout, show_default=True,
              type=click.FloatRange(0.1, 255), help="Seconds before an unacknowledged TFTP "
              "block is resent (when the client asks for no timeout, or one over the maximum).")
@click.option("--tftp-max-timeout", default=TftpLimits.max_timeout, show_default=True,
              type=click.IntRange(1, 255), help="Largest RFC 2349 timeout honoured; larger "
              "requests are declined.")
@click.option("--tftp-retries", default=TftpLimits.retries, show_default=True,
              type=click.IntRange(0, 100), help="TFTP retransmissions without progress before "
              "a transfer is dropped.")
@click.option("--tftp-max-windowsize", default=TftpLimits.max_windowsize, show_default=True,
              type=click.IntRange(1, 65535), help="Largest RFC 7440 windowsize granted.")
@click.option("--efi-binary", type=click.Choice(list(EFI_BINARIES)), default="ipxe.efi",
              show_default=True, help="First stage for UEFI x64 clients.")
@click.option("--ipv6-ra/--no-ipv6-ra", default=True, show_default=True,
              help="Answer IPv6 router solicitations with a no-op advertisement (no prefix, "
              "lifetime 0) so iPXE does not wait ~13 s for an IPv6 router.")
@click.option("--http-max-connections", type=click.IntRange(1), show_default=True,
              default=HttpLimits.max_connections, help="HTTP connections at once (over it a "
              "newcomer replaces the connection waiting longest for a request head; 503 when "
              "all are busy).")
@click.option("--http-max-per-client", type=click.IntRange(1), show_default=True,
              default=HttpLimits.max_per_client, help="HTTP connections from one address.")
@click.option("--http-head-timeout", type=click.FloatRange(0.1), show_default=True,
              default=HttpLimits.head_timeout, help="Seconds for a whole HTTP request head "
              "(request line + headers), else 408 and close.")
@click.option("--http-idle-timeout", type=click.FloatRange(0.1), show_default=True,
              default=HttpLimits.idle_timeout, help="Seconds a kept-alive HTTP connection "
              "waits for its next request.")
@click.option("--http-io-timeout", type=click.FloatRange(0.1), show_default=True,
              default=HttpLimits.io_timeout, help="Seconds an HTTP body read or response "
              "send may stall.")
@click.option("--instance-interface", envvar="HCBOOT_INSTANCE_INTERFACE",
              help="Instance network interface: DHCP there answers only instance MACs the "
              "inventory knows, with their static address and hostname (no boot options).")
@click.option("--instance-address", help="This server's ADDRESS/PREFIX on the instance "
              "network (default: the instance interface's first IPv4).")
@click.option("--instance-router", help="Option 3 for instances (none unless given).")
@click.option("--instance-dns", multiple=True, help="Option 6 for instances (repeatable).")
@click.option("--instance-domain", help="Option 15 for instances.")
@click.pass_obj
def serve(c: object, interface: str, mode: str, address: str | None, range_: str | None,
          router: str | None, dns: tuple[str, ...], domain: str | None, lease_time: int,
          mtu: int | None, http_port: int, tftp_port: int, tftp_max_sessions: int,
          tftp_max_per_client: int, tftp_timeout: float, tftp_max_timeout: int, tftp_retries: int,
          tftp_max_windowsize: int, efi_binary: str, ipv6_ra: bool,
          http_max_connections: int, http_max_per_client: int, http_head_timeout: float,
          http_idle_timeout: float, http_io_timeout: float, instance_interface: str | None,
          instance_address: str | None, instance_router: str | None,
          instance_dns: tuple[str, ...], instance_domain: str | None) -> None:
    """Serve DHCP/ProxyDHCP, TFTP and HTTP boot on INTERFACE until SIGTERM."""
    state_dir: Path = c.state_dir  # type: ignore[attr-defined]
    images: Path = c.images  # type: ignore[attr-defined]
    opts = ServeOptions(interface=interface, mode=mode, state_dir=state_dir, images=images,
                        address=address, range=_parse_range(range_), router=router, dns=dns,
                        domain=domain, lease_time=lease_time, mtu=mtu, http_port=http_port,
                        tftp_port=tftp_port, efi_binary=efi_binary, ipv6_ra=ipv6_ra,
                        http_limits=HttpLimits(http_max_connections, http_max_per_client,
                                               http_head_timeout, http_idle_timeout,
                                               http_io_timeout),
                        tftp_limits=TftpLimits(
                            max_sessions=tftp_max_sessions, max_per_client=tftp_max_per_client,
                            timeout=tftp_timeout, max_timeout=tftp_max_timeout,
                            retries=tftp_retries, max_windowsize=tftp_max_windowsize),
                        instance_interface=instance_interface, instance_address=instance_address,
                        instance_router=instance_router, instance_dns=instance_dns,
                        instance_domain=instance_domain)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        srv = BootServer(opts, known_roles(images))
        srv.start()
    except (HomecloudError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=srv.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    srv.wait()
