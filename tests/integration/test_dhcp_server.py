"""bootserver.dhcp.DhcpServer on real sockets in network namespaces, with the real policy.

The server runs in this process, in a thread: its sockets are created while this thread has
entered the server's namespace (setns), and a socket stays in the namespace it was created in.
Its policy is hcboot's own (bootserver.policy.Policy over a real inventory file, an image store
with a published image, and the seen-machines store), so boot files are what hcboot would hand
out.  Clients: scapy (as a DHCP client on a raw interface, conf.checkIPaddr=False) and busybox
udhcpc in a subprocess inside the client namespace, plain UDP sockets created the same setns way,
and dnsmasq as the real address-handing DHCP server next to our ProxyDHCP.

Topologies use 192.0.2.0/24 and 198.51.100.0/24 inside throw-away namespaces only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.leases import LeaseTable
from bootserver.dhcp.options import MessageType as MT
from bootserver.dhcp.pool import PoolConfig
from bootserver.dhcp.server import DhcpConfig, DhcpServer
from bootserver.machine import BootFile, Machine
from bootserver.policy import Policy, PolicyConfig
from homecloud.control.seen import SeenStore
from homecloud.core.manifest import BootInfo, ImageStore
from homecloud.inventory.protocol import update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.dhcp import UdpClient, entered, req
from tests.support.images import publish
from tests.support.netns import Lab, Netns, wait_for

REPO = Path(__file__).resolve().parents[2]
SRV_IP = "192.0.2.1"
ROLE = "hnode"
UEFI_LOADER = "ipxe.efi"  # PolicyConfig's default --efi-binary
POISON = "52:54:00:de:ad:00"


class BootPolicy(Policy):
    """hcboot's policy (inventory default_role ``hnode``, a published ``hnode`` image), except
    that one MAC makes ``boot_file`` raise: the real policy cannot be made to fail on demand, and
    the server's handling of a failing policy is what that MAC tests."""

    POISON = POISON

    def boot_file(self, machine: Machine) -> BootFile | None:
        if machine.mac == self.POISON:
            raise RuntimeError("policy exploded")
        return super().boot_file(machine)

    seen: SeenStore

    def seen_arch(self, mac: str) -> int | None:
        """The architecture the seen store recorded for ``mac`` (KeyError if never seen)."""
        return {s.mac: s.arch for s in self.seen.all()}[mac]


def real_policy(tmp: Path, server_ip: str = SRV_IP) -> BootPolicy:
    images = tmp / "images"
    if not (images / ROLE).exists():
        publish(images, ROLE, {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
                BootInfo(cmdline="console=ttyS0"))
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    inv = YamlFileStore(state, [ROLE])
    update(inv, lambda i: i.with_default_role(ROLE))  # every MAC boots hnode
    seen = SeenStore(state)
    pol = BootPolicy(PolicyConfig(server_ip), inv, ImageStore(images),
                     lambda m: seen.record(m.mac, m.arch, m.vendor_class, m.user_class))
    pol.seen = seen
    return pol


@dataclass
class Running:
    server: DhcpServer
    policy: BootPolicy
    lab: Lab
    srv: Netns
    cli: Netns
    tmp: Path
    extra: dict[str, Netns] = field(default_factory=dict)


def start_server(ns: Netns, cfg: DhcpConfig, policy: Policy) -> DhcpServer:
    srv = DhcpServer(cfg, policy)
    with entered(ns):
        srv.open()
    srv.start()
    return srv


def full_config(tmp: Path, **kw: Any) -> DhcpConfig:
    return DhcpConfig(interface="eth0", server_ip=SRV_IP, mode="full",
                      pools=(PoolConfig("192.0.2.0/24", "192.0.2.100", "192.0.2.199",
                                        router=SRV_IP, dns=(SRV_IP,)),
                             PoolConfig("198.51.100.0/24", "198.51.100.50", "198.51.100.99")),
                      lease_time=600, lease_file=tmp / "leases.jsonl", **kw)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Running]:
    """srv (192.0.2.1 on eth0, our server in full mode) -- veth -- cli (eth0, no address)."""
    with Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "eth0", cli, "eth0")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        policy = real_policy(tmp_path)
        server = start_server(srv, full_config(tmp_path), policy)
        try:
            yield Running(server, policy, lab, srv, cli, tmp_path)
        finally:
            server.stop()


SCAPY_DORA = r"""
import json, sys
from scapy.all import conf, Ether, IP, UDP, BOOTP, DHCP, srp1, mac2str
conf.checkIPaddr = False
conf.verb = 0
iface, mac = sys.argv[1], sys.argv[2]
def opts(pkt):
    return {k: (v.decode(errors="replace") if isinstance(v, bytes) else v)
            for k, v in (x for x in pkt[DHCP].options if isinstance(x, tuple))}
base = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / IP(src="0.0.0.0", dst="255.255.255.255") / \
    UDP(sport=68, dport=67)
boot = BOOTP(chaddr=mac2str(mac), xid=0x5CA9, flags=0x8000)
pxe = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
       ("pxe_client_architecture", b"\x00\x00"), ("param_req_list", [1, 3, 6, 43, 60, 66, 67])]
offer = srp1(base / boot / DHCP(options=[("message-type", "discover")] + pxe + ["end"]),
             iface=iface, timeout=5)
o = opts(offer)
ack = srp1(base / boot / DHCP(options=[("message-type", "request"),
                                       ("server_id", o["server_id"]),
                                       ("requested_addr", offer[BOOTP].yiaddr)] + pxe + ["end"]),
           iface=iface, timeout=5)
a = opts(ack)
print(json.dumps({"offer": offer[BOOTP].yiaddr, "offer_type": o["message-type"],
                  "ack": ack[BOOTP].yiaddr, "ack_type": a["message-type"],
                  "siaddr": ack[BOOTP].siaddr, "file": ack[BOOTP].file.rstrip(b"\0").decode(),
                  "vendor": a.get("vendor_class_id"), "server_id": a["server_id"],
                  "mask": a["subnet_mask"], "lease": a["lease_time"],
                  "src": offer[IP].src, "dst": offer[IP].dst}))
"""


def run_py(ns: Netns, script: str, *args: str, timeout: float = 60) -> dict[str, object]:
    r = ns.run(sys.executable, "-c", script, *args, timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- full mode ------------------------------------------------------------------------------------

def test_scapy_client_completes_dora(pair: Running) -> None:
    mac = pair.cli.mac("eth0")
    out = run_py(pair.cli, SCAPY_DORA, "eth0", mac)
    assert out["offer_type"] == 2 and out["ack_type"] == 5
    assert out["offer"] == out["ack"] == "192.0.2.100"
    assert out["siaddr"] == SRV_IP and out["file"] == "undionly.kpxe"
    assert out["vendor"] == "PXEClient" and out["server_id"] == SRV_IP
    assert out["mask"] == "255.255.255.0" and out["lease"] == 600
    assert out["src"] == SRV_IP and out["dst"] == "255.255.255.255"
    assert pair.policy.seen_arch(mac) == 0
    journal = (pair.tmp / "leases.jsonl").read_text()
    assert mac in journal and "192.0.2.100" in journal


def test_busybox_udhcpc_gets_lease_and_boot_file(pair: Running) -> None:
    """A third-party client (busybox udhcpc) against the server."""
    out = pair.tmp / "udhcpc.env"
    script = pair.tmp / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    script.chmod(0o755)
    pair.cli.run("busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "3", "-T", "2",
                 "-s", str(script), "-V", "PXEClient:Arch:00000:UNDI:002001", timeout=30)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["ip"].startswith("192.0.2.1") and env["subnet"] == "255.255.255.0"
    assert env["boot_file"] == "undionly.kpxe" and env["siaddr"] == SRV_IP
    assert env["serverid"] == SRV_IP and env["router"] == SRV_IP
    assert pair.server.leases.lease_of(pair.cli.mac("eth0")) is not None


def test_busybox_udhcpc_uefi_with_254_byte_client_identifier(
        pair: Running, caplog: pytest.LogCaptureFixture) -> None:
    """A real client with a legal 254-byte option 61 (which once made the reply too large and
    vanish) that names its UEFI architecture in option 60 only (udhcpc sends no option 93): it
    is bound, gets its identifier back, and the real policy gives it the UEFI loader."""
    out = pair.tmp / "udhcpc-uefi.env"
    script = pair.tmp / "udhcpc-uefi.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    script.chmod(0o755)
    cid = "00" + bytes(range(1, 254)).hex()
    caplog.set_level(logging.INFO, logger="homecloud.dhcp")
    pair.cli.run("busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "3", "-T", "2",
                 "-s", str(script), "-V", "PXEClient:Arch:00007:UNDI:003016",
                 "-x", f"0x3d:{cid}", timeout=30)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["ip"].startswith("192.0.2.1") and env["serverid"] == SRV_IP
    assert env["boot_file"] == UEFI_LOADER
    mac = pair.cli.mac("eth0")
    assert pair.policy.seen_arch(mac) == 7
    assert f"ACK {env['ip']} boot {UEFI_LOADER}" in caplog.text
    lease = pair.server.leases.lease_of(mac)
    assert lease is not None and lease.ip == env["ip"]


def test_busybox_udhcpc_renews_by_unicast_then_releases(pair: Running,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """RENEWING (RFC 2131 4.3.2): the client unicasts its REQUEST from its address to the
    server and gets the ACK by unicast; a RELEASE frees the lease on the server."""
    events = pair.tmp / "events"
    script = pair.tmp / "udhcpc-ev.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 ${{ip:-}}" >> {events}\n'
        '[ "$1" = bound ] || [ "$1" = renew ] || exit 0\n'
        'ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"\n')
    script.chmod(0o755)
    mac = pair.cli.mac("eth0")
    proc = pair.lab.popen(pair.cli.cmd("busybox", "udhcpc", "-f", "-i", "eth0", "-R",
                                       "-t", "3", "-T", "2", "-s", str(script)))
    try:
        wait_for(lambda: events.exists() and "bound 192.0.2." in events.read_text(),
                 timeout=20, what="udhcpc bound")
        ip = events.read_text().split("bound ", 1)[1].split()[0]
        proc.send_signal(signal.SIGUSR1)  # renew now
        caplog.set_level(logging.INFO, logger="homecloud.dhcp")
        wait_for(lambda: f"renew {ip}" in events.read_text(), timeout=20, what="udhcpc renew")
        assert f"REQUEST from {mac}" in caplog.text and f"ACK {ip}" in caplog.text
        assert f"to {ip}:68" in caplog.text  # unicast to the client's address
        lease = pair.server.leases.lease_of(mac)
        assert lease is not None and lease.ip == ip
    finally:
        proc.send_signal(signal.SIGUSR2)  # release
        time.sleep(0.5)
        pair.lab.stop(proc)
    wait_for(lambda: pair.server.leases.lease_of(mac) is None, timeout=10,
             what="lease released")
    assert '"released"' in (pair.tmp / "leases.jsonl").read_text()


def test_restart_keeps_leases(pair: Running) -> None:
    cli = UdpClient(pair.cli)
    try:
        mac = "52:54:00:00:10:01"
        for i in range(3):  # three clients so the one we follow is not on the first address
            other = f"52:54:00:00:10:1{i}"
            off = cli.exchange(req(MT.DISCOVER, other, 100 + i), 100 + i)
            cli.exchange(req(MT.REQUEST, other, 100 + i, options={
                o.SERVER_ID: o.ip_bytes(SRV_IP), o.REQUESTED_IP: o.ip_bytes(off.yiaddr)}), 100 + i)
        off = cli.exchange(req(MT.DISCOVER, mac, 1), 1)
        ack = cli.exchange(req(MT.REQUEST, mac, 1, options={
            o.SERVER_ID: o.ip_bytes(SRV_IP), o.REQUESTED_IP: o.ip_bytes(off.yiaddr)}), 1)
        assert ack.message_type == MT.ACK
        pair.server.stop()
        pair.server = start_server(pair.srv, full_config(pair.tmp), pair.policy)
        again = cli.exchange(req(MT.DISCOVER, mac, 2), 2)
        assert again.message_type == MT.OFFER and again.yiaddr == ack.yiaddr
        reboot = cli.exchange(req(MT.REQUEST, mac, 3, options={
            o.REQUESTED_IP: o.ip_bytes(ack.yiaddr)}), 3)  # INIT-REBOOT
        assert reboot.message_type == MT.ACK and reboot.yiaddr == ack.yiaddr
        nak = cli.exchange(req(MT.REQUEST, "52:54:00:00:10:99", 4, options={
            o.REQUESTED_IP: o.ip_bytes(ack.yiaddr)}), 4)  # someone else's address
        assert nak.message_type == MT.NAK
    finally:
        cli.close()


MALFORMED: list[tuple[str, bytes]] = []


def _malformed() -> list[tuple[str, bytes]]:
    good = bytearray(req(MT.DISCOVER, "52:54:00:ba:d0:01", 0xBAD))
    out = [("truncated", bytes(good[:100])), ("empty", b""), ("oversized", bytes(good) * 6)]
    no53 = DhcpPacket(op=1, xid=0xBAD, chaddr=bytes(6), options={12: b"x"})
    out.append(("no-53", codec.encode(no53)))
    overrun = bytes(good[:240]) + bytes((53, 1, 1, 12, 200)) + b"abc"
    out.append(("overrun", overrun))
    garbage = bytearray(good[:240]) + bytes((53, 1, 1, 52, 1, 3, 255))
    garbage[44:236] = bytes((7, 250)) * 96  # overloaded sname/file full of overruns
    out.append(("overload-garbage", bytes(garbage)))
    for hlen in (0, 17, 255):
        b = bytearray(good)
        b[2] = hlen
        out.append((f"hlen-{hlen}", bytes(b)))
    cookie = bytearray(good)
    cookie[236:240] = b"\0\0\0\0"
    out.append(("cookie", bytes(cookie)))
    out.append(("bad-53", bytes(good[:240]) + bytes((53, 1, 42, 255))))
    out.append(("random", os.urandom(300)))
    return out


def test_malformed_barrage_then_valid_discover(pair: Running,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cli = UdpClient(pair.cli)
    try:
        bad = _malformed()
        with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
            for _, data in bad:
                cli.send(data)
            # a PXE client whose policy call raises: logged, loop goes on
            cli.send(req(MT.DISCOVER, BootPolicy.POISON, 0xDEAD))
            off = cli.exchange(req(MT.DISCOVER, "52:54:00:00:20:01", 0x600D), 0x600D)
        assert off.message_type == MT.OFFER and off.yiaddr.startswith("192.0.2.")
        assert off.file == b"undionly.kpxe" and off.options[o.VENDOR_CLASS] == b"PXEClient"
        assert pair.server.stats.errors == 1
        assert pair.server.stats.malformed == len(bad)
        assert "52:54:00:ba:d0:01" in caplog.text and "policy exploded" in caplog.text
        assert BootPolicy.POISON in caplog.text
        assert pair.server._thread is not None and pair.server._thread.is_alive()
    finally:
        cli.close()


def test_burst_of_1000_discovers_is_answered(pair: Running) -> None:
    """A rack of 1000 new PXE machines (not in the inventory: the default role boots them)
    powering on at once.  Each is recorded as seen, in memory only: the seen store writes its
    file from its own thread, never from the DHCP thread."""
    macs = [f"52:54:01:00:{i >> 8:02x}:{i & 255:02x}" for i in range(1000)]
    cli = UdpClient(pair.cli)
    try:
        pkts = [req(MT.DISCOVER, mac, 0x10000 + i) for i, mac in enumerate(macs)]
        for p in pkts:
            cli.send(p)
        got: set[int] = set()
        files: set[bytes] = set()
        cli.sock.settimeout(10.0)
        with contextlib.suppress(TimeoutError, socket.timeout):
            while len(got) < 1000:
                data = cli.sock.recv(65536)
                got.add(struct.unpack_from("!I", data, 4)[0])
                files.add(codec.decode(data).file)
        assert len(got) >= 990, f"{len(got)} of 1000 DISCOVERs answered"
        assert files == {b"undionly.kpxe"}  # the real policy's BIOS loader for each
    finally:
        cli.close()


class CountingLeases(LeaseTable):
    """The real lease table, counting the fsyncs that sync() performs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fsyncs = 0

    def sync(self) -> None:
        if self.dirty:
            self.fsyncs += 1
        super().sync()


def test_burst_of_requests_all_acked_and_journaled(tmp_path: Path) -> None:
    """50 clients DISCOVER, then all REQUEST at once: every ACK leaves only after its lease is in
    the journal (one fsync may cover several: group commit)."""
    with Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "eth0", cli, "eth0")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        cfg = full_config(tmp_path)
        leases = CountingLeases(tmp_path / "leases.jsonl")
        server = DhcpServer(cfg, real_policy(tmp_path), leases=leases)
        with entered(srv):
            server.open()
        server.start()
        c = UdpClient(cli)
        try:
            macs = [f"52:54:00:00:40:{i:02x}" for i in range(50)]
            offers = {}
            for i, mac in enumerate(macs):
                offers[mac] = c.exchange(req(MT.DISCOVER, mac, 0x4000 + i), 0x4000 + i).yiaddr
            for i, mac in enumerate(macs):
                c.send(req(MT.REQUEST, mac, 0x5000 + i, options={
                    o.SERVER_ID: o.ip_bytes(SRV_IP), o.REQUESTED_IP: o.ip_bytes(offers[mac])}))
            acked = {}
            for _ in macs:
                data = c.sock.recv(65536)
                p = codec.decode(data)
                assert p.message_type == MT.ACK
                acked[p.mac] = p.yiaddr
            assert acked == offers
            journal = (tmp_path / "leases.jsonl").read_text()
            assert all(mac in journal for mac in macs)
            assert 1 <= leases.fsyncs <= 50
            print(f"50 ACKs, {leases.fsyncs} fsyncs")
        finally:
            c.close()
            server.stop()


def test_relayed_request_answered_by_unicast_to_relay(tmp_path: Path) -> None:
    """srv (192.0.2.1) -- veth -- relay (192.0.2.254 | 198.51.100.1) -- veth -- lan2."""
    with Lab() as lab:
        srv, relay = lab.netns("srv"), lab.netns("rly")
        lab.veth(srv, "eth0", relay, "eth0")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        lab.addr(relay, "eth0", "192.0.2.254/24")
        lan2 = lab.netns("lan2")  # the relay's client-side link (no dummy module here)
        lab.veth(relay, "eth1", lan2, "eth0")
        lab.addr(relay, "eth1", "198.51.100.1/24")
        srv.run("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.254")
        server = start_server(srv, full_config(tmp_path), real_policy(tmp_path))
        with entered(relay):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", 67))
        try:
            mac = "52:54:00:00:30:01"
            agent = bytes((1, 3)) + b"p17"
            sock.sendto(req(MT.DISCOVER, mac, 0x3E1, giaddr="198.51.100.1", hops=1,
                            options={o.RELAY_AGENT_INFO: agent}), (SRV_IP, 67))
            sock.settimeout(3)
            data, src = sock.recvfrom(65536)
            off = codec.decode(data)
            assert src == (SRV_IP, 67)
            assert off.message_type == MT.OFFER and off.giaddr == "198.51.100.1"
            assert off.yiaddr == "198.51.100.50" and off.options[o.RELAY_AGENT_INFO] == agent
            sock.sendto(req(MT.REQUEST, mac, 0x3E2, giaddr="198.51.100.1", hops=1, options={
                o.SERVER_ID: o.ip_bytes(SRV_IP), o.REQUESTED_IP: o.ip_bytes(off.yiaddr)}),
                (SRV_IP, 67))
            ack = codec.decode(sock.recvfrom(65536)[0])
            assert ack.message_type == MT.ACK and ack.yiaddr == "198.51.100.50"
            # too many hops: dropped
            sock.sendto(req(MT.DISCOVER, mac, 0x3E3, giaddr="198.51.100.1", hops=17),
                        (SRV_IP, 67))
            sock.settimeout(1)
            with pytest.raises(socket.timeout):
                sock.recvfrom(65536)
        finally:
            sock.close()
            server.stop()


# --- proxy mode next to dnsmasq -------------------------------------------------------------------

SCAPY_PROXY = r"""
import json, sys
from scapy.all import conf, Ether, IP, UDP, BOOTP, DHCP, srp, srp1, mac2str
conf.checkIPaddr = False
conf.verb = 0
iface, mac, with93 = sys.argv[1], sys.argv[2], sys.argv[3] == "93"
def opts(pkt):
    return {k: (v.decode(errors="replace") if isinstance(v, bytes) else v)
            for k, v in (x for x in pkt[DHCP].options if isinstance(x, tuple))}
base = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / IP(src="0.0.0.0", dst="255.255.255.255") / \
    UDP(sport=68, dport=67)
boot = BOOTP(chaddr=mac2str(mac), xid=0x9E0 + with93, flags=0x8000)
pxe = [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), (97, b"\x00" + bytes(range(16)))]
if with93:  # a UEFI x64 ROM; without it: firmware that names its architecture in option 60 only
    pxe.append(("pxe_client_architecture", b"\x00\x07"))
ans, _ = srp(base / boot / DHCP(options=[("message-type", "discover")] + pxe + ["end"]),
             iface=iface, timeout=4, multi=True)
offers = []
for _, r in ans:
    b, d = r[BOOTP], opts(r)
    offers.append({"src": r[IP].src, "yiaddr": b.yiaddr, "siaddr": b.siaddr,
                   "file": b.file.rstrip(b"\0").decode(), "type": d["message-type"],
                   "server_id": d.get("server_id"), "vendor": d.get("vendor_class_id"),
                   "opt43": "vendor_specific" in d,
                   "opt97": "pxe_client_machine_identifier" in d})
real = [x for x in offers if x["yiaddr"] != "0.0.0.0"][0]
ack = srp1(base / boot / DHCP(options=[("message-type", "request"),
                                       ("server_id", real["server_id"]),
                                       ("requested_addr", real["yiaddr"])] + pxe + ["end"]),
           iface=iface, timeout=5)
print(json.dumps({"offers": offers, "ack": ack[BOOTP].yiaddr,
                  "ack_type": opts(ack)["message-type"]}))
"""


def test_proxy_mode_next_to_dnsmasq(tmp_path: Path) -> None:
    """sw (bridge) with ports to dns (dnsmasq, 192.0.2.2), srv (our proxy, 192.0.2.1), cli."""
    with Lab() as lab:
        sw, dns, srv, cli = (lab.netns(t) for t in ("sw", "dns", "srv", "cli"))
        br = lab.bridge(sw)
        for ns in (dns, srv, cli):
            lab.port(sw, br, ns, "eth0")
        lab.addr(dns, "eth0", "192.0.2.2/24")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        dnsmasq = lab.popen(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                             "--interface=eth0", "--bind-interfaces", "--no-ping",
                             "--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,1h",
                             f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
                             "--pid-file=", "--log-dhcp"], ns=dns, log=tmp_path / "dnsmasq.log")
        wait_for(lambda: "67" in dns.run("ss", "-uln").stdout, what="dnsmasq on :67")
        policy = real_policy(tmp_path)
        cfg = DhcpConfig(interface="eth0", server_ip=SRV_IP, mode="proxy")
        server = start_server(srv, cfg, policy)
        try:
            mac = cli.mac("eth0")
            for with93 in ("93", "60-only"):
                out = run_py(cli, SCAPY_PROXY, "eth0", mac, with93)
                offers = out["offers"]
                assert isinstance(offers, list)
                ours = [x for x in offers if x["src"] == SRV_IP]
                theirs = [x for x in offers if x["src"] == "192.0.2.2"]
                assert len(ours) == 1 and len(theirs) == 1, offers
                p = ours[0]
                assert p["yiaddr"] == "0.0.0.0" and p["type"] == 2 and p["server_id"] == SRV_IP
                assert p["vendor"] == "PXEClient" and p["file"] == UEFI_LOADER, (with93, p)
                assert p["siaddr"] == SRV_IP and p["opt43"] and p["opt97"]
                assert 50 <= int(theirs[0]["yiaddr"].rsplit(".", 1)[1]) <= 60  # dnsmasq's range
                assert out["ack_type"] == 5 and out["ack"] == theirs[0]["yiaddr"]
                assert policy.seen_arch(mac) == 7
            # the client now has its address: PXE boot server REQUEST on port 4011
            lab.addr(cli, "eth0", f"{out['ack']}/24")
            c = UdpClient(cli, port=68)
            try:
                c.send(req(MT.REQUEST, mac, 0x4011, ciaddr=str(out["ack"]), options={
                    o.CLIENT_ARCH: b"\x00\x07", o.CLIENT_MACHINE_ID: b"\x00" + bytes(16)}),
                    (SRV_IP, 4011))
                ack, src = c.recv(0x4011)
                assert src == (SRV_IP, 4011)
                assert ack.message_type == MT.ACK and ack.yiaddr == "0.0.0.0"
                assert ack.file == UEFI_LOADER.encode() and ack.siaddr == SRV_IP
                assert ack.options[o.VENDOR_CLASS] == b"PXEClient"
                # option 60 only (no 93): still the UEFI loader
                c.send(req(MT.REQUEST, mac, 0x4013, pxe=False, ciaddr=str(out["ack"]), options={
                    o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016"}), (SRV_IP, 4011))
                ack60, _ = c.recv(0x4013)
                assert ack60.file == UEFI_LOADER.encode()
                # a BIOS ROM gets the BIOS loader from the same policy
                c.send(req(MT.REQUEST, mac, 0x4014, ciaddr=str(out["ack"])), (SRV_IP, 4011))
                bios, _ = c.recv(0x4014)
                assert bios.file == b"undionly.kpxe"
                # iPXE's ProxyDHCP REQUEST (user class "iPXE") gets its HTTP script
                c.send(req(MT.REQUEST, mac, 0x4012, ciaddr=str(out["ack"]), options={
                    o.USER_CLASS: b"iPXE"}), (SRV_IP, 4011))
                ipxe, _ = c.recv(0x4012)
                assert ipxe.options[o.BOOTFILE_NAME] == f"http://{SRV_IP}/boot/{mac}.ipxe".encode()
            finally:
                c.close()
            assert server.leases.by_mac == {}  # proxy mode never hands out addresses
            assert dnsmasq.poll() is None
        finally:
            server.stop()


def test_sockets_are_bound_to_the_interface(pair: Running) -> None:
    r = subprocess.run(pair.srv.cmd("ss", "-ulnp"), capture_output=True, text=True, check=True)
    assert "0.0.0.0%eth0:67" in r.stdout


def test_jumbo_mtu_reaches_the_initramfs_client(tmp_path: Path) -> None:
    """hcboot serve --mtu 9000: busybox udhcpc running the initramfs's own event script
    (builder/init/udhcpc.script, as the snodes' RAM-root initramfs runs it) gets option 26 and
    sets the link's MTU to 9000; its address and name servers as before."""
    script = tmp_path / "default.script"
    shutil.copy(REPO / "builder" / "init" / "udhcpc.script", script)
    script.chmod(0o755)
    resolv = tmp_path / "resolv.conf"
    with Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "eth0", cli, "eth0")
        srv.run("ip", "link", "set", "eth0", "mtu", "9000")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        server = start_server(srv, full_config(tmp_path, mtu=9000), real_policy(tmp_path))
        try:
            assert cli.run("cat", "/sys/class/net/eth0/mtu").stdout.strip() == "1500"
            out = cli.run("env", f"RESOLV_CONF={resolv}", "busybox", "udhcpc", "-f", "-q", "-n",
                          "-i", "eth0", "-t", "3", "-T", "2", "-s", str(script), timeout=30)
            assert "hc: dhcp eth0 192.0.2.1" in out.stdout, out.stdout + out.stderr
            assert cli.run("cat", "/sys/class/net/eth0/mtu").stdout.strip() == "9000"
            assert "192.0.2.1" in cli.run("ip", "-4", "-o", "addr", "show", "eth0").stdout
            assert resolv.read_text() == f"nameserver {SRV_IP}\n"
            # a full-size frame crosses (DF set: it would fail at 1500)
            cli.run("ping", "-c", "1", "-W", "5", "-M", "do", "-s", "8972", SRV_IP)
        finally:
            server.stop()
