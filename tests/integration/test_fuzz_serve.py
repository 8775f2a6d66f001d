"""A seeded mutational corpus thrown at a running `hcboot serve` (tests/support/mutate.py):
10,000 DHCP datagrams, 10,000 TFTP datagrams and 1,000 HTTP requests over raw sockets.  Then the
server must still be running, answer a valid DHCP, TFTP and HTTP request, and its log must hold
no traceback.

srv namespace: bridge br0 192.0.2.1/24 with hcboot serve (full mode); cli namespace: 192.0.2.50
on a veth into the bridge.  The seed is printed; set HC_FUZZ_SEED to replay a run.  Inputs that
once broke something are replayed first from tests/corpus/ (hex, one per line, ``proto hex``).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bootserver.dhcp import options as o
from bootserver.dhcp.options import MessageType as MT
from homecloud.core.manifest import BootInfo
from tests.support import mutate
from tests.support.dhcp import UdpClient, entered, req
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns

SRV = "192.0.2.1"
CLI = "192.0.2.50"
MAC = "52:54:00:f0:00:01"  # the MAC of the DHCP seeds, assigned a role
SEED = int(os.environ.get("HC_FUZZ_SEED", "20261204"))
N_DHCP, N_TFTP, N_HTTP = 10_000, 10_000, 1_000
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "serve.txt"
FUNCTIONAL_TIMEOUT = 60.0  # the server may first work off a backlog of fuzz packets
TFTP_FILES = ("undionly.kpxe", "pxelinux.0", "ldlinux.c32",
              f"pxelinux.cfg/01-{MAC.replace(':', '-')}")
SECRET = b"root:x:0:0:"  # /etc/passwd, where the traversal inputs aim
HTTP_PATHS = ("/healthz", f"/boot/{MAC}.ipxe", "/images/pxetest/current/kernel",
              "/firststage/ipxe.efi", "/nodes.json", f"/plan/{MAC}.json")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, Netns]]:
    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    with Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.bridge(srv, "br0", f"{SRV}/24")
        lab.port(srv, "br0", cli, "eth0")
        lab.addr(cli, "eth0", f"{CLI}/24")
        s = start_hcboot(lab, srv, "br0", SRV, tmp_path / "state", images,
                         "--range", "192.0.2.100-192.0.2.250", "--no-ipv6-ra")
        s.cli("assign", MAC, "pxetest")
        yield s, cli


def corpus(proto: str) -> list[bytes]:
    if not CORPUS.exists():
        return []
    out = []
    for line in CORPUS.read_text().splitlines():
        if line.startswith(proto + " "):
            out.append(bytes.fromhex(line.split(" ", 1)[1]))
    return out


def udp_socket(ns: Netns) -> socket.socket:
    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, 25, b"eth0")  # SO_BINDTODEVICE
        s.bind((CLI, 0))
    s.setblocking(False)
    return s


def fuzz_dhcp(cli: Netns, rng: random.Random) -> int:
    s = udp_socket(cli)
    sent = 0
    try:
        inputs = corpus("dhcp") + list(mutate.dhcp_mutations(rng, N_DHCP))
        for i, data in enumerate(inputs):
            dest = (SRV, 67) if i % 2 else ("255.255.255.255", 67)
            with contextlib.suppress(BlockingIOError, OSError):
                s.sendto(data, dest)  # EMSGSIZE for > 64 KiB mutants: the kernel refuses
                sent += 1
            if i % 200 == 199:
                time.sleep(0.02)  # pace: the server's receive buffer is big, not endless
    finally:
        s.close()
    return sent


def fuzz_tftp(cli: Netns, rng: random.Random) -> int:
    """From 200 source ports in turn; every DATA/OACK a session sends back is answered with an
    ERROR, so sessions end at once instead of retransmitting until they time out.  No DATA may
    carry /etc/passwd."""
    socks = [udp_socket(cli) for _ in range(200)]
    stop = struct.pack("!HH", 5, 0) + b"fuzz done\0"
    sent = 0

    def answer() -> None:
        for s in socks:
            for _ in range(64):
                try:
                    data, (host, port) = s.recvfrom(65536)
                except (BlockingIOError, OSError):
                    break
                assert SECRET not in data, f"TFTP served /etc/passwd: {data[:200]!r}"
                if port != 69:
                    with contextlib.suppress(OSError):
                        s.sendto(stop, (host, port))

    try:
        inputs = corpus("tftp") + list(mutate.tftp_mutations(rng, N_TFTP, TFTP_FILES))
        for i, data in enumerate(inputs):
            with contextlib.suppress(BlockingIOError, OSError):
                socks[i % len(socks)].sendto(data, (SRV, 69))
                sent += 1
            if i % len(socks) == len(socks) - 1:
                time.sleep(0.02)
                answer()
        time.sleep(0.5)
        answer()
    finally:
        for s in socks:
            s.close()
    return sent


def http_one(cli: Netns, data: bytes) -> bytes:
    with entered(cli):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    got = b""
    try:
        s.connect((SRV, 80))
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while len(got) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    finally:
        s.close()
    return got


def fuzz_http(cli: Netns, rng: random.Random) -> dict[str, int]:
    inputs = corpus("http") + list(mutate.http_mutations(rng, N_HTTP, HTTP_PATHS, SRV))
    statuses: dict[str, int] = {}
    with ThreadPoolExecutor(16) as pool:
        for data, got in zip(inputs, pool.map(lambda d: http_one(cli, d), inputs), strict=True):
            assert SECRET not in got, f"HTTP served /etc/passwd for {data[:200]!r}"
            line = got.split(b"\r\n", 1)[0][:12].decode(errors="replace") or "(closed)"
            statuses[line] = statuses.get(line, 0) + 1
    return statuses


def valid_dhcp(cli: Netns) -> None:
    deadline = time.monotonic() + FUNCTIONAL_TIMEOUT
    with UdpClient(cli) as c:
        xid = 0x7A11D
        while True:
            c.send(req(MT.DISCOVER, MAC, xid,
                       options={o.PARAMETER_REQUEST_LIST: bytes([1, 3, 6, 66, 67])}))
            try:
                off, _ = c.recv(xid, timeout=2)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no OFFER after the fuzzing"
        assert off.message_type == MT.OFFER and off.yiaddr.startswith("192.0.2.")
        assert off.file == b"undionly.kpxe"  # the real policy: MAC is assigned a role


def test_mutational_corpus_does_not_break_hcboot_serve(served: tuple[Served, Netns],
                                                       tmp_path: Path) -> None:
    s, cli = served
    rng = random.Random(SEED)
    print(f"HC_FUZZ_SEED={SEED}")
    n_dhcp = fuzz_dhcp(cli, rng)
    assert s.proc.poll() is None, f"hcboot died during the DHCP fuzzing:\n{s.log_text()[-3000:]}"
    n_tftp = fuzz_tftp(cli, rng)
    assert s.proc.poll() is None, f"hcboot died during the TFTP fuzzing:\n{s.log_text()[-3000:]}"
    statuses = fuzz_http(cli, rng)
    assert s.proc.poll() is None, f"hcboot died during the HTTP fuzzing:\n{s.log_text()[-3000:]}"
    print(f"sent {n_dhcp} DHCP, {n_tftp} TFTP datagrams; HTTP answers: {sorted(statuses.items())}")

    # still serving: DHCP, TFTP, HTTP
    valid_dhcp(cli)
    out = tmp_path / "undionly.kpxe"
    r = cli.run("curl", "-s", "--max-time", str(FUNCTIONAL_TIMEOUT), "-o", str(out),
                f"tftp://{SRV}/undionly.kpxe", check=False, timeout=FUNCTIONAL_TIMEOUT + 10)
    assert r.returncode == 0 and out.read_bytes() == Path(
        "/usr/lib/ipxe/undionly.kpxe").read_bytes(), r.stderr
    r = cli.run("curl", "-s", "--max-time", str(FUNCTIONAL_TIMEOUT), "-w", "\n%{http_code}",
                f"http://{SRV}/healthz", check=False, timeout=FUNCTIONAL_TIMEOUT + 10)
    assert r.stdout.endswith("\n200"), r.stdout
    assert s.proc.poll() is None
    log = s.log_text()
    print("log:", {k: log.count(k) for k in ("dhcp: dropping malformed", "dhcp: DISCOVER",
                                             "-> OFFER", "-> ACK", "-> NAK", "TFTP", "HTTP")})
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:log.index("Traceback") + 3000]
