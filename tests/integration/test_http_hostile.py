"""The real ``hcboot serve`` against hostile HTTP clients, in a test namespace.

Traversal: request targets sent raw (a Python socket client and ``curl --path-as-is``, so no
client normalises the ``..`` away): raw and percent-encoded ``..``, double encoding
(``%252e%252e``), encoded slashes and backslashes, NUL, absolute-form targets.  Each gets 400 or
404, and a secret planted outside the served trees (beside the state directory, in it, at the
image store's root) never comes back.  The path is decoded once: ``%256bernel`` names a file
called ``%6bernel``, not the kernel.

Slow clients: 200 connections that send a request head one byte every 2 s (slowloris), while
curl fetches an 8 MiB kernel, once below the caps (every slow client is answered 408 and
dropped at the head deadline) and once with small caps from the slow clients' own address (the
newcomers replace the slow ones).

Topology: namespace ``srv`` (bridge br0 = 192.0.2.1/24, hcboot serve --mode full) and client
namespaces on the bridge: ``cli1`` (192.0.2.10-13, the slow clients and one curl) and ``cli2``
(192.0.2.20, another curl).
"""

from __future__ import annotations

import base64
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
from tests.support.abuse import SLOW_CLIENTS
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns, wait_for

SERVER = "192.0.2.1"
SLOW_IPS = ("192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13")
OTHER_IP = "192.0.2.20"
KERNEL = random.Random(13).randbytes(8 << 20)
SECRET = b"HC-SECRET-7f3c1e"
ART = "/images/pxetest/current"

# argv: server, base64 of a JSON list of base64 requests.  One connection per request; prints
# a JSON list of the base64 replies (read until the server closes, or 5 s of silence).
RAW_CLIENT = r"""
import base64, json, socket, sys
out = []
for req in json.loads(base64.b64decode(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    s.sendall(base64.b64decode(req))
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except (socket.timeout, ConnectionError):
        pass
    s.close()
    out.append(base64.b64encode(got).decode())
print(json.dumps(out))
"""



@dataclass
class World:
    lab: Lab
    served: Served
    cli1: Netns
    cli2: Netns
    work: Path


@pytest.fixture()
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    flags: tuple[str, ...] = getattr(request, "param", ())
    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": KERNEL, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    state = tmp_path / "state"
    state.mkdir()
    for place in (tmp_path, state, images, images / "pxetest"):
        (place / "secret.txt").write_bytes(SECRET + b"\n")
    work = tmp_path / "work"
    work.mkdir()
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        cli1, cli2 = lab.netns("cli1"), lab.netns("cli2")
        lab.port(ns, "br0", cli1, "eth0")
        lab.port(ns, "br0", cli2, "eth0")
        for ip in SLOW_IPS:
            lab.addr(cli1, "eth0", f"{ip}/24")
        lab.addr(cli2, "eth0", f"{OTHER_IP}/24")
        served = start_hcboot(lab, ns, "br0", SERVER, state, images,
                              "--range", "192.0.2.100-192.0.2.150", *flags)
        yield World(lab, served, cli1, cli2, work)


def raw_requests(w: World, requests: list[bytes]) -> list[bytes]:
    arg = base64.b64encode(json.dumps([base64.b64encode(r).decode() for r in requests])
                           .encode()).decode()
    r = w.cli2.run(sys.executable, "-c", RAW_CLIENT, SERVER, arg, timeout=120)
    return [base64.b64decode(x) for x in json.loads(r.stdout)]


def status_of(reply: bytes) -> int:
    head = reply.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) >= 2 and head[1].isdigit() else 0


TRAVERSALS = [
    f"{ART}/../../../secret.txt", f"{ART}/../../secret.txt", "/../secret.txt",
    "/images/../secret.txt", "/images/pxetest/../secret.txt",
    f"{ART}/%2e%2e/%2e%2e/%2e%2e/secret.txt", f"{ART}/%2E%2E/secret.txt", "/%2e%2e/secret.txt",
    f"{ART}/.%2e/.%2e/secret.txt",
    f"{ART}/%252e%252e/%252e%252e/%252e%252e/secret.txt", "/images/pxetest/%252e%252e/secret.txt",
    "/images/%252e%252e/%252e%252e/secret.txt", "/images/pxetest/%252e%252e/kernel",
    f"{ART}/..%2f..%2f..%2fsecret.txt", f"{ART}/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/images%2fpxetest%2fcurrent%2fkernel", "/images/pxetest/..%252f..%252fsecret.txt",
    f"{ART}/%5c..%5c..%5csecret.txt", f"{ART}/..%5csecret.txt",
    f"{ART}/kernel%00", f"{ART}/%00/../secret.txt", "/images/pxetest/%c0%ae%c0%ae/secret.txt",
    "/firststage/..%2f..%2fsecret.txt", "/firststage/%2e%2e", "/boot/..%2fsecret.txt.ipxe",
    "/plan/%2e%2e.json", "/plan/..%2f..%2fsecret.txt.json", "/secret.txt", "//secret.txt",
    "/images//secret.txt", f"{ART}/%256bernel",
]
RAW_TARGETS = [
    *(t.encode() for t in TRAVERSALS),
    f"{ART}\\..\\..\\..\\secret.txt".encode(), b"/images\\..\\secret.txt",
    f"{ART}/kernel\x00/../../../secret.txt".encode(), b"/\x00secret.txt",
    f"http://{SERVER}{ART}/../../../secret.txt".encode(),
    f"http://{SERVER}/%2e%2e/secret.txt".encode(),
    f"http://{SERVER}{ART}/%252e%252e/%252e%252e/secret.txt".encode(),
    b"http://evil.example/../secret.txt", b"../secret.txt", b"secret.txt", b"*",
]


def test_traversal_sent_raw_never_leaves_the_served_tree(world: World) -> None:
    ok = raw_requests(world, [f"GET {ART}/kernel HTTP/1.1\r\nHost: x\r\nConnection: close"
                              "\r\n\r\n".encode()])[0]
    assert status_of(ok) == 200 and ok.endswith(KERNEL[-4096:])  # the control case
    reqs = [b"GET " + t + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            for t in RAW_TARGETS]
    replies = raw_requests(world, reqs)
    for target, reply in zip(RAW_TARGETS, replies, strict=True):
        assert status_of(reply) in (400, 404), (target, reply[:200])
        assert SECRET not in reply and KERNEL[:4096] not in reply, target
    # HEAD and POST through the same targets
    for method in (b"HEAD", b"POST"):
        reqs = [method + b" " + t + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n" for t in RAW_TARGETS[:12]]
        for target, reply in zip(RAW_TARGETS, raw_requests(world, reqs), strict=False):
            assert status_of(reply) in (400, 404), (method, target, reply[:200])
    log = world.served.log_text()
    # decoded once, the double-encoded dots reach the app as the literal "%2e%2e": a 404 there
    assert f"GET {ART}/%2e%2e/%2e%2e/%2e%2e/secret.txt -> 404" in log
    assert f"GET {ART}/%6bernel -> 404" in log  # %256b is "%6b", not "k"
    assert world.served.proc.poll() is None


def test_traversal_with_curl_path_as_is(world: World) -> None:
    out = world.work / "curl.out"
    for path in TRAVERSALS:
        out.unlink(missing_ok=True)
        r = world.cli2.run("curl", "-sS", "--path-as-is", "--max-time", "10", "-o", str(out),
                           "-w", "%{http_code}", f"http://{SERVER}{path}", check=False)
        assert r.stdout in ("400", "404"), (path, r.stdout, r.stderr)
        assert not out.exists() or SECRET not in out.read_bytes(), path
    r = world.cli2.run("curl", "-sS", "--fail", "--path-as-is", "-o", str(out),
                       f"http://{SERVER}{ART}/kernel")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(KERNEL).digest()


def _slow_clients(w: World, srcs: tuple[str, ...], count: int, limit: float) -> \
        tuple[subprocess.Popen[bytes], Path]:
    log = w.work / "slow.log"
    p = w.lab.popen([sys.executable, "-c", SLOW_CLIENTS, ",".join(srcs), SERVER, str(count),
                     "2", str(limit)], ns=w.cli1, log=log)
    wait_for(lambda: b"OPENED" in log.read_bytes() or p.poll() is not None, 60,
             what="slow clients connected")
    assert p.poll() is None, log.read_text()
    return p, log


def _fetch_kernel(ns: Netns, out: Path, *extra: str) -> None:
    r = ns.run("curl", "-sS", "--fail", "--max-time", "60", *extra, "-o", str(out),
               f"http://{SERVER}{ART}/kernel", check=False, timeout=90)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(KERNEL).digest()


def _summary(p: subprocess.Popen[bytes], log: Path, limit: float) -> dict[str, object]:
    p.wait(limit + 30)
    lines = log.read_text().splitlines()
    assert lines and lines[-1].startswith("{"), "\n".join(lines[-20:])
    doc: dict[str, object] = json.loads(lines[-1])
    print("slow clients:", doc)
    return doc


@pytest.mark.parametrize("world", [("--http-head-timeout", "6")], indirect=True)
def test_slow_heads_are_dropped_at_the_deadline_while_a_client_downloads(world: World) -> None:
    # 200 slow clients from 4 addresses: under both caps (256 overall, 64 per client), so each
    # is held until its head deadline
    limit = 90.0
    p, log = _slow_clients(world, SLOW_IPS, 200, limit)
    _fetch_kernel(world.cli2, world.work / "k-other")
    _fetch_kernel(world.cli1, world.work / "k-same", "--interface", SLOW_IPS[0])
    doc = _summary(p, log, limit)
    assert doc["closed"] == 200, doc  # the server closed every slow connection
    assert doc["status"] == {"HTTP/1.1 408 Request Timeout": 200}, doc
    assert "request head not complete within 6 s -> 408" in world.served.log_text()
    _fetch_kernel(world.cli2, world.work / "k-after")


@pytest.mark.parametrize("world", [("--http-max-connections", "48", "--http-max-per-client",
                                    "24", "--http-head-timeout", "8")], indirect=True)
def test_slow_clients_over_the_caps_cannot_lock_out_a_real_one(world: World) -> None:
    # 200 slow clients from ONE address, far over the per-client cap of 24: each newcomer
    # replaces the slow connection that waited longest, and a real client from that same
    # address or another one still gets the kernel
    limit = 90.0
    p, log = _slow_clients(world, SLOW_IPS[:1], 200, limit)
    _fetch_kernel(world.cli1, world.work / "k-same", "--interface", SLOW_IPS[0])
    _fetch_kernel(world.cli2, world.work / "k-other")
    doc = _summary(p, log, limit)
    assert doc["closed"] == 200, doc
    status = doc["status"]
    assert isinstance(status, dict)
    assert set(status) <= {"HTTP/1.1 408 Request Timeout", "closed without reply"}, doc
    assert status.get("closed without reply", 0) >= 200 - 24, doc  # replaced by newcomers
    text = world.served.log_text()
    assert "per-client cap 24: dropped a connection head" in text
    assert world.served.proc.poll() is None
