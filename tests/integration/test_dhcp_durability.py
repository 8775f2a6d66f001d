"""Lease durability of the real `hcboot serve` process: kill -9 in the middle of a burst of DHCP
exchanges, and a state directory on a file system that fills up.

srv namespace: bridge br0 192.0.2.1/24 with hcboot serve (full mode); cli namespace: a veth
into the bridge, packet-level clients on a plain UDP socket (requests pre-built with the codec).
The full file system is a small tmpfs mounted by the test (and unmounted after it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootserver.dhcp import codec
from bootserver.dhcp.options import MessageType as MT
from homecloud.core.manifest import BootInfo
from tests.support.dhcp import UdpClient, init_reboot, req, selecting
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns

SRV = "192.0.2.1"
RANGE = "192.0.2.100-192.0.2.250"


@dataclass
class Rig:
    lab: Lab
    srv: Netns
    cli: Netns
    state: Path
    images: Path
    logs: Path
    served: Served | None = None
    starts: int = 0

    def start(self) -> Served:
        self.starts += 1
        self.served = start_hcboot(self.lab, self.srv, "br0", SRV, self.state, self.images,
                                   "--range", RANGE, "--no-ipv6-ra",
                                   log=self.logs / f"hcboot-{self.starts}.log")
        return self.served

    def kill9(self) -> None:
        assert self.served is not None
        os.kill(self.served.proc.pid, signal.SIGKILL)  # by PID: the python process itself
        self.served.proc.wait(10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    logs = tmp_path / "logs"
    logs.mkdir()
    with Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.bridge(srv, "br0", f"{SRV}/24")
        lab.port(srv, "br0", cli, "eth0")
        yield Rig(lab, srv, cli, tmp_path / "state", images, logs)


def journal(state: Path) -> dict[str, str]:
    """mac -> ip of the bound records in the lease journal (later records win), checking on the
    way that no address is bound to two MACs at once."""
    by_mac: dict[str, str] = {}
    raw = (state / "leases.jsonl").read_bytes()
    for line in raw.split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line after kill -9
        if rec["event"] == "bound":
            by_mac[rec["mac"]] = rec["ip"]
        elif rec["event"] == "released" and by_mac.get(rec["mac"]) == rec["ip"]:
            del by_mac[rec["mac"]]
    return by_mac


def dora(c: UdpClient, mac: str, xid: int) -> codec.DhcpPacket:
    off = c.exchange(req(MT.DISCOVER, mac, xid, pxe=False), xid)
    assert off.message_type == MT.OFFER, (mac, off)
    return c.exchange(selecting(mac, xid + 1, SRV, off.yiaddr, pxe=False), xid + 1)


def check_bindings(c: UdpClient, acked: dict[str, str], xid: int) -> None:
    """Every ACKed MAC is offered and re-acknowledged its address (DISCOVER, then INIT-REBOOT),
    and no address belongs to two MACs."""
    for k, (mac, ip) in enumerate(sorted(acked.items())):
        x = xid + 2 * k
        off = c.exchange(req(MT.DISCOVER, mac, x, pxe=False), x)
        assert off.message_type == MT.OFFER and off.yiaddr == ip, (mac, ip, off.yiaddr)
        ack = c.exchange(init_reboot(mac, x + 1, ip, pxe=False), x + 1)
        assert ack.message_type == MT.ACK and ack.yiaddr == ip, (mac, ip, ack)
    assert len(set(acked.values())) == len(acked), "an address was given to two MACs"


def test_kill_9_mid_burst_keeps_every_acked_lease(rig: Rig) -> None:
    acked: dict[str, str] = {}  # every ACK any client ever received
    rounds, per_round = 3, 40
    with UdpClient(rig.cli) as c:
        for rnd in range(rounds):
            rig.start()
            macs = [f"52:54:00:77:{rnd:02x}:{i:02x}" for i in range(per_round)]
            base = 0x100000 * (rnd + 1)
            for i, mac in enumerate(macs):
                c.send(req(MT.DISCOVER, mac, base + i, pxe=False))
            offers = {p.mac: p.yiaddr for p in c.drain(1.0) if p.message_type == MT.OFFER}
            missing = [m for m in macs if m not in offers]
            assert not missing, f"DISCOVERs not answered: {missing}"
            reqs = [selecting(m, base + 0x1000 + i, SRV, offers[m], pxe=False)
                    for i, m in enumerate(macs)]
            half = per_round // 2
            for data in reqs[:half]:
                c.send(data)
            got = 0
            while got < 5:  # ACKs are flowing: now the second half, and kill -9 right after
                c.sock.settimeout(5)
                p = codec.decode(c.sock.recv(65536))
                if p.message_type == MT.ACK:
                    assert p.mac is not None
                    acked[p.mac] = p.yiaddr
                    got += 1
            for data in reqs[half:]:
                c.send(data)
            rig.kill9()
            for p in c.drain(0.5):  # whatever left before the kill
                if p.message_type == MT.ACK:
                    assert p.mac is not None
                    acked[p.mac] = p.yiaddr
            print(f"round {rnd}: {len(acked)} ACKed so far")
            on_disk = journal(rig.state)
            lost = {m: ip for m, ip in acked.items() if on_disk.get(m) != ip}
            assert not lost, f"ACKed but not in the journal after kill -9: {lost}"
        rig.start()
        check_bindings(c, acked, 0x900000)
        # the clients that never saw an ACK can still get addresses, none of them taken
        everyone = dict(acked)
        for rnd in range(rounds):
            for i in range(per_round):
                mac = f"52:54:00:77:{rnd:02x}:{i:02x}"
                if mac not in everyone:
                    ack = dora(c, mac, 0xA00000 + 0x100 * rnd + 2 * i)
                    assert ack.message_type == MT.ACK
                    everyone[mac] = ack.yiaddr
        assert len(set(everyone.values())) == len(everyone) == rounds * per_round
        assert journal(rig.state) == everyone
    assert len(acked) >= rounds * 5


# --- a full file system ---------------------------------------------------------------------------

@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "16m") -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "hctfull", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def fill(fs: Path) -> Path:
    """Write a file until the file system is full (ENOSPC); returns it."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return filler


def test_full_disk_means_no_ack_then_heals(rig: Rig, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        rig.state = fs / "state"
        served = rig.start()
        with UdpClient(rig.cli) as c:
            first = dora(c, "52:54:00:88:00:00", 0x1000)
            assert first.message_type == MT.ACK
            filler = fill(fs)
            macs = [f"52:54:00:88:01:{i:02x}" for i in range(60)]
            for i, mac in enumerate(macs):
                c.send(req(MT.DISCOVER, mac, 0x2000 + i, pxe=False))
            offers = {p.mac: p.yiaddr for p in c.drain(1.0)}
            # offers are in memory: still answered on a full disk
            assert sorted(offers) == macs  # type: ignore[type-var]
            for i, mac in enumerate(macs):
                c.send(selecting(mac, 0x3000 + i, SRV, offers[mac], pxe=False))
            replies = c.drain(2.0)
            assert all(p.message_type == MT.ACK for p in replies), replies  # silence, not NAK
            acked_full = {str(p.mac): p.yiaddr for p in replies}
            assert all(offers[m] == ip for m, ip in acked_full.items())
            silent = [m for m in macs if m not in acked_full]
            print(f"disk full: {len(acked_full)} ACKed (room left in the journal's last page),"
                  f" {len(silent)} not acknowledged")
            assert silent, "the disk never filled up for the journal"
            on_disk = journal(rig.state)
            assert all(on_disk.get(m) == ip for m, ip in acked_full.items())
            assert not any(m in on_disk for m in silent)
            log = served.log_text()
            assert f"lease file {rig.state / 'leases.jsonl'}" in log and "ENOSPC" in log
            assert "NOT acknowledging" in log and silent[0] in log
            filler.unlink()  # room again: the clients' retransmissions are acknowledged
            for i, mac in enumerate(silent):
                ack = c.exchange(selecting(mac, 0x4000 + i, SRV, offers[mac], pxe=False),
                                 0x4000 + i)
                assert ack.message_type == MT.ACK and ack.yiaddr == offers[mac]
            rig.kill9()
            rig.start()
            everyone = {"52:54:00:88:00:00": first.yiaddr, **acked_full,
                        **{m: offers[m] for m in silent}}
            check_bindings(c, everyone, 0x5000)
            assert journal(rig.state) == everyone
            rig.lab.stop(rig.served.proc)  # type: ignore[union-attr]
