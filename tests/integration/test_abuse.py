"""The real ``hcboot serve`` under abuse on two protocols at once (issue 13, item 5): 500 TFTP
requests that never acknowledge (400 from spoofed sources, 100 from open sockets, all asking
for timeout=255) plus 200 slow HTTP clients that never finish their request head, and
meanwhile a normal client still gets the kernel over TFTP and over HTTP, intact.

Everything runs inside namespaces made here; the flood's spoofed sources are addresses of the
test bridge's subnet that no namespace holds.  Functional timeouts only (no timing asserts)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from tests.support.abuse import FLOODER, SLOW_CLIENTS
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns, wait_for

SERVER = "192.0.2.1"
FLOOD_IP, SLOW_IPS, GOOD_IP = "192.0.2.2", ("192.0.2.10", "192.0.2.11", "192.0.2.12",
                                             "192.0.2.13"), "192.0.2.20"
SPOOFED = [f"192.0.2.{100 + i}" for i in range(100)]  # held by no namespace
KERNEL = random.Random(5).randbytes(4 << 20)
ART = "images/pxetest/current/kernel"


@dataclass
class World:
    lab: Lab
    served: Served
    flood: Netns
    slow: Netns
    good: Netns
    work: Path


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": KERNEL, "initrd": b"I" * 4096},
            BootInfo(cmdline="console=ttyS0"))
    with Lab() as lab:
        srv = lab.netns("srv")
        lab.bridge(srv, "br0", f"{SERVER}/24")
        flood, slow, good = lab.netns("flood"), lab.netns("slow"), lab.netns("good")
        for ns, addrs in ((flood, (FLOOD_IP,)), (slow, SLOW_IPS), (good, (GOOD_IP,))):
            lab.port(srv, "br0", ns, "eth0")
            for a in addrs:
                ns.run("ip", "addr", "add", f"{a}/24", "dev", "eth0")
        served = start_hcboot(lab, srv, "br0", SERVER, tmp_path / "state", images,
                              "--range", "192.0.2.150-192.0.2.199",
                              "--http-head-timeout", "20")
        work = tmp_path / "work"
        work.mkdir()
        yield World(lab, served, flood, slow, good, work)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tftp_flood_and_slow_http_clients_while_a_client_boots(world: World) -> None:
    slow_log = world.work / "slow.log"
    slow = world.lab.popen([sys.executable, "-c", SLOW_CLIENTS, ",".join(SLOW_IPS), SERVER,
                            "200", "2", "120"], ns=world.slow, log=slow_log)
    wait_for(lambda: b"OPENED" in slow_log.read_bytes() or slow.poll() is not None, 60,
             what="200 slow HTTP clients connected")
    assert slow.poll() is None, slow_log.read_text()
    flooder = subprocess.Popen(world.flood.cmd(sys.executable, "-c", FLOODER, SERVER,
                                               ",".join(SPOOFED), FLOOD_IP, ART),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flooder.stdout is not None
        seen = json.loads(flooder.stdout.readline())  # the flood has been sent
        # the normal client, while 200 heads trickle and the flood's sessions are alive
        tftp_out, http_out = world.work / "k.tftp", world.work / "k.http"
        t = world.good.run("curl", "-sS", "--max-time", "90", "--tftp-blksize", "1468",
                           "-o", str(tftp_out), f"tftp://{SERVER}/{ART}", check=False,
                           timeout=120)
        h = world.good.run("curl", "-sS", "--fail", "--max-time", "90", "-o", str(http_out),
                           f"http://{SERVER}/{ART}", check=False, timeout=120)
        assert t.returncode == 0, t.stderr
        assert h.returncode == 0, h.stderr
        assert _sha(tftp_out.read_bytes()) == _sha(KERNEL)
        assert _sha(http_out.read_bytes()) == _sha(KERNEL)
        assert slow.poll() is None  # the slow clients were still at it meanwhile
    finally:
        if flooder.stdin is not None:
            flooder.stdin.close()
        flooder.wait(30)
    # the flood met the caps: the open sockets got OACKs without timeout=255 or the cap's error
    replies = [bytes.fromhex(x) for x in seen if x is not None]
    assert replies
    assert all(r[:2] in (b"\x00\x06", b"\x00\x05") for r in replies)
    assert all(b"timeout\x00255" not in r for r in replies)
    log = world.served.log_text()
    assert "per-client cap reached" in log and FLOOD_IP in log
    slow.wait(150)
    doc = json.loads(slow_log.read_text().splitlines()[-1])
    assert doc["closed"] == 200, doc  # every slow head was ended by the server
    assert "Traceback" not in world.served.log_text()
    assert world.served.proc.poll() is None
