"""bootserver.tftp under abuse and at its limits, with real sockets and real clients.

* A flood of 500 requests that are never acknowledged (400 with spoofed source addresses that
  nobody answers, sent through a raw socket, and 100 from open UDP sockets of a real host that
  read nothing), all asking for timeout=255, while tftp-hpa and curl on another host still get
  their file; the caps are reached and logged, no cap is exceeded, and every session expires.
  Topology: namespace ``srv`` with bridge br0 (192.0.2.1, the server runner) and two client
  namespaces on it, ``flood`` (192.0.2.2) and ``good`` (192.0.2.3).  Nothing binds a real
  interface; spoofed sources are 192.0.2.100-.199, which exist nowhere.
* Protocol details on loopback in this process (a TftpServer on 127.0.0.1): refusals at both
  caps with an RFC 1350 error, the timeout option declined above the maximum, retransmission and
  expiry, duplicate ACKs (no Sorcerer's Apprentice), RFC 7440 windows and their restart.
* RFC 7440 with a client that negotiates it (atftp), including block-number rollover.
* ``hcboot serve --tftp-*`` flags reach the server.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bootserver.tftp import TftpLimits, TftpServer, parse_error, parse_oack
from tests.support.abuse import FLOODER
from tests.support.netns import Lab, Netns, wait_for

REPO = Path(__file__).resolve().parents[2]
SRV_IP, FLOOD_IP, GOOD_IP = "192.0.2.1", "192.0.2.2", "192.0.2.3"
SPOOFED = [f"192.0.2.{100 + i}" for i in range(100)]  # assigned nowhere
LIMITS = {"max_sessions": 40, "max_per_client": 4, "timeout": 1.0, "max_timeout": 2,
          "retries": 2, "max_windowsize": 16}

RUNNER = r"""
import json, logging, sys, time
from pathlib import Path
from typing import Any
sys.path.insert(0, sys.argv[1])
from bootserver.tftp import TftpLimits, TftpServer
logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
s = TftpServer(Path(sys.argv[2]), sys.argv[3], 69, limits=TftpLimits(**json.loads(sys.argv[4])))
s.start()
print("READY", flush=True)
last = None
while s.alive:
    now = dict(s.counters, active=s.active_sessions)
    if now != last:
        print("STATS " + json.dumps(now), flush=True)
        last = now
    time.sleep(0.05)
print("SERVER THREAD DIED", flush=True)
sys.exit(3)
"""



@dataclass
class Env:
    lab: Lab
    srv: Netns
    flood: Netns
    good: Netns
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path
    work: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        lines = [ln for ln in self.log_text().splitlines() if ln.startswith("STATS ")]
        return dict(json.loads(lines[-1][6:])) if lines else {}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("tftp-limits")
    root = base / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(random.Random(1).randbytes(3_000_000))
    work = base / "work"
    work.mkdir()
    log = base / "server.log"
    lab = Lab()
    try:
        srv, flood, good = lab.netns("srv"), lab.netns("flood"), lab.netns("good")
        lab.bridge(srv, "br0", f"{SRV_IP}/24")
        lab.port(srv, "br0", flood, "eth0")
        lab.port(srv, "br0", good, "eth0")
        lab.addr(flood, "eth0", f"{FLOOD_IP}/24")
        lab.addr(good, "eth0", f"{GOOD_IP}/24")
        proc = lab.popen([sys.executable, "-c", RUNNER, str(REPO), str(root), SRV_IP,
                          json.dumps(LIMITS)], ns=srv, log=log)
        wait_for(lambda: "READY" in log.read_text() or proc.poll() is not None, 15,
                 what="TFTP runner READY")
        assert proc.poll() is None, log.read_text()
        yield Env(lab, srv, flood, good, proc, log, root, work)
    finally:
        lab.close()


def test_flood_of_unacknowledged_requests(env: Env) -> None:
    want = sha((env.root / "big.bin").read_bytes())
    flooder = subprocess.Popen(env.flood.cmd(sys.executable, "-c", FLOODER, SRV_IP,
                                             ",".join(SPOOFED), FLOOD_IP),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # the normal clients start while the flood is going on
        wait_for(lambda: env.stats().get("requests", 0) >= 50, 30, what="flood under way")
        hpa_out, curl_out = env.work / "hpa.bin", env.work / "curl.bin"
        hpa = subprocess.Popen(env.good.cmd("tftp", "-m", "binary", SRV_IP, "-c", "get",
                                            "big.bin", str(hpa_out)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        curl = env.good.run("curl", "-sS", "--max-time", "60", "--tftp-blksize", "1468",
                            f"tftp://{SRV_IP}/big.bin", "-o", str(curl_out), check=False)
        hpa_text, _ = hpa.communicate(timeout=120)
        assert curl.returncode == 0, curl.stderr
        assert sha(curl_out.read_bytes()) == want
        assert "Error" not in hpa_text and hpa.returncode == 0, hpa_text
        assert sha(hpa_out.read_bytes()) == want
        assert flooder.stdout is not None
        seen = json.loads(flooder.stdout.readline())
    finally:
        if flooder.stdin is not None:
            flooder.stdin.close()
        flooder.wait(30)

    # every real flood socket got an OACK or the cap's error; no OACK carries timeout=255
    # (RFC 2349: a timeout the server will not honour is declined, never changed)
    replies = [bytes.fromhex(h) for h in seen if h is not None]
    assert replies
    oacks = [parse_oack(r) for r in replies if r[:2] == b"\x00\x06"]
    errors = [parse_error(r) for r in replies if r[:2] == b"\x00\x05"]
    assert oacks and all("timeout" not in o and o["blksize"] == "1468" for o in oacks)
    assert len(oacks) + len(errors) == len(replies)
    assert all(code == 0 and "too many transfers" in msg for code, msg in errors), errors

    wait_for(lambda: env.stats().get("completed", 0) >= 2, 10, what="both downloads logged")
    stats = env.stats()
    assert stats["peak_sessions"] == LIMITS["max_sessions"], stats  # reached, never exceeded
    assert stats["peak_per_client"] == LIMITS["max_per_client"], stats
    assert stats["evicted"] > 0, stats
    log = env.log_text()
    assert "session cap reached (40 transfers)" in log
    assert f"per-client cap reached (4 transfers from {FLOOD_IP}" in log
    # every flood session ends by itself: at most timeout 1 s x (retries 2 + 1) without an ACK
    wait_for(lambda: env.stats().get("active") == 0, 60, what="flood sessions expired")
    stats = env.stats()
    assert stats["expired"] > 0, stats
    assert "never acknowledged, session ended" in env.log_text()
    assert "Traceback" not in env.log_text()
    assert env.proc.poll() is None


# -- protocol details on loopback, in this process --------------------------------------------

@pytest.fixture
def lo(tmp_path: Path) -> Iterator[tuple[TftpServer, Path]]:
    (tmp_path / "f.bin").write_bytes(random.Random(2).randbytes(512 * 30 + 7))
    limits = TftpLimits(max_sessions=3, max_per_client=2, timeout=1.0, max_timeout=5,
                        retries=2, max_windowsize=8)
    with TftpServer(tmp_path, "127.0.0.1", 0, limits=limits) as srv:
        yield srv, tmp_path


def _sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def rrq(name: str, **opts: str) -> bytes:
    o = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in opts.items())
    return struct.pack("!H", 1) + name.encode() + b"\0octet\0" + o


def ack(n: int) -> bytes:
    return struct.pack("!HH", 4, n & 0xFFFF)


def recv_data(s: socket.socket) -> tuple[int, bytes, tuple[str, int]]:
    pkt, addr = s.recvfrom(70000)
    assert pkt[:2] == b"\x00\x03", pkt[:40]
    return struct.unpack("!H", pkt[2:4])[0], pkt[4:], addr


def _established(srv: TftpServer, n: int) -> list[tuple[socket.socket, tuple[str, int]]]:
    out = []
    for _ in range(n):
        s = _sock()
        s.sendto(rrq("f.bin", blksize="512"), ("127.0.0.1", srv.port))
        pkt, addr = s.recvfrom(2048)
        assert parse_oack(pkt) == {"blksize": "512"}
        s.sendto(ack(0), addr)
        assert recv_data(s)[0] == 1
        out.append((s, addr))
    return out


def download(s: socket.socket, first: tuple[int, bytes, tuple[str, int]], blksize: int) -> bytes:
    """Lock-step from an already received DATA ``first`` to the short block."""
    n, data, addr = first
    got = b""
    while True:
        got += data
        s.sendto(ack(n), addr)
        if len(data) < blksize:
            return got
        n, data, addr = recv_data(s)


def test_per_client_cap_refuses_with_an_error(lo: tuple[TftpServer, Path]) -> None:
    srv, _ = lo
    held = _established(srv, 2)  # acknowledged: never evicted
    s = _sock()
    s.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
    pkt, addr = s.recvfrom(2048)
    code, msg = parse_error(pkt)
    assert (code, addr[1]) == (0, srv.port) and "too many transfers from 127.0.0.1" in msg
    assert srv.counters["refused_client"] == 1
    for h, a in held:
        h.sendto(struct.pack("!HH", 5, 0) + b"bye\0", a)
        h.close()
    wait_for(lambda: srv.active_sessions == 0, 10, what="aborted sessions gone")
    s.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))  # room again
    assert recv_data(s)[0] == 1
    s.close()


def test_session_cap_refuses_with_an_error(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x" * 5000)
    limits = TftpLimits(max_sessions=2, max_per_client=10, timeout=1.0, retries=1)
    with TftpServer(tmp_path, "127.0.0.1", 0, limits=limits) as srv:
        held = _established(srv, 2)
        s = _sock()
        s.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
        code, msg = parse_error(s.recvfrom(2048)[0])
        assert code == 0 and "server busy (2 transfers)" in msg
        assert srv.counters["refused_busy"] == 1
        for h, _ in held:
            h.close()
        s.close()


def test_half_open_sessions_are_evicted_at_the_session_cap(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"y" * 3000)
    limits = TftpLimits(max_sessions=2, max_per_client=10, timeout=5.0, retries=1)
    with TftpServer(tmp_path, "127.0.0.1", 0, limits=limits) as srv:
        silent = [_sock() for _ in range(2)]  # RRQs never acknowledged (half-open)
        for q in silent:
            q.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
            assert recv_data(q)[0] == 1
        s = _sock()
        s.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
        assert download(s, recv_data(s), 512) == b"y" * 3000  # the new client is served
        assert srv.counters["evicted"] == 1
        code, msg = parse_error(silent[0].recvfrom(2048)[0])  # the oldest was told why
        assert code == 0 and "session cap" in msg
        for q in [*silent, s]:
            q.close()


def test_timeout_option_bounded_and_retransmission_then_expiry(
        lo: tuple[TftpServer, Path]) -> None:
    srv, _ = lo
    s = _sock()
    s.sendto(rrq("f.bin", timeout="255", tsize="0"), ("127.0.0.1", srv.port))
    first, _ = s.recvfrom(2048)
    assert parse_oack(first) == {"tsize": str(512 * 30 + 7)}  # 255 > 5: declined, not changed
    s2 = _sock()
    s2.sendto(rrq("f.bin", timeout="1"), ("127.0.0.1", srv.port))
    assert parse_oack(s2.recvfrom(2048)[0]) == {"timeout": "1"}  # honoured: echoed as asked
    # never ACKed: the OACK comes again `retries` (2) times, then the session ends
    copies = [first]
    s.settimeout(4)  # > the server's own timeout (1 s)
    with pytest.raises(TimeoutError):
        while True:
            copies.append(s.recvfrom(2048)[0])
    assert copies == [first] * 3
    wait_for(lambda: srv.active_sessions == 0, 10, what="sessions expired")
    assert srv.counters["expired"] == 2 and srv.counters["retransmits"] >= 4
    s.close()
    s2.close()


def test_duplicate_ack_is_not_answered(lo: tuple[TftpServer, Path]) -> None:
    srv, root = lo
    want = (root / "f.bin").read_bytes()
    s = _sock()
    s.sendto(rrq("f.bin", timeout="5"), ("127.0.0.1", srv.port))
    pkt, addr = s.recvfrom(2048)
    assert parse_oack(pkt) == {"timeout": "5"}
    s.sendto(ack(0), addr)
    _, d1, _ = recv_data(s)
    s.sendto(ack(1), addr)
    n, d2, _ = recv_data(s)
    assert n == 2
    s.sendto(ack(1), addr)  # duplicate: RFC 1123 4.2.3.1, no retransmission of DATA 2
    s.sendto(ack(0), addr)  # older still
    s.sendto(ack(9), addr)  # a block not sent yet
    s.settimeout(1.5)  # well under the negotiated 5 s retransmission timer
    with pytest.raises(TimeoutError):
        s.recvfrom(2048)
    s.settimeout(5)
    s.sendto(ack(2), addr)
    rest = download(s, recv_data(s), 512)
    assert d1 + d2 + rest == want
    s.close()


def test_windowsize_and_window_restart(lo: tuple[TftpServer, Path]) -> None:
    srv, root = lo
    want = (root / "f.bin").read_bytes()  # 30 full blocks of 512 and one of 7 bytes
    s = _sock()
    s.sendto(rrq("f.bin", windowsize="4"), ("127.0.0.1", srv.port))
    pkt, addr = s.recvfrom(2048)
    assert parse_oack(pkt) == {"windowsize": "4"}
    s.sendto(ack(0), addr)
    assert [recv_data(s)[0] for _ in range(4)] == [1, 2, 3, 4]
    s.sendto(ack(2), addr)  # RFC 7440: blocks 3 and 4 missed -> the window restarts at 3
    assert [recv_data(s)[0] for _ in range(4)] == [3, 4, 5, 6]
    s.sendto(ack(6), addr)
    assert [recv_data(s)[0] for _ in range(4)] == [7, 8, 9, 10]
    # no ACK: after the timeout (1 s) the whole unacknowledged window comes again
    assert [recv_data(s)[0] for _ in range(4)] == [7, 8, 9, 10]
    blocks: dict[int, bytes] = {}
    nxt = 7
    while True:
        s.sendto(ack(nxt - 1), addr)
        for _ in range(4):
            n, data, _ = recv_data(s)
            assert n == nxt
            blocks[n] = data
            nxt += 1
            if len(data) < 512:
                break
        if len(blocks[nxt - 1]) < 512:
            s.sendto(ack(nxt - 1), addr)
            break
    assert sorted(blocks) == list(range(7, 32))
    assert want[:512 * 6] + b"".join(blocks[b] for b in range(7, 32)) == want
    s.close()
    wait_for(lambda: srv.counters["completed"] == 1, 10, what="windowed transfer completed")


def test_windowsize_lowered_to_the_maximum(lo: tuple[TftpServer, Path]) -> None:
    srv, _ = lo
    s = _sock()
    s.sendto(rrq("f.bin", windowsize="500", blksize="1024"), ("127.0.0.1", srv.port))
    pkt, addr = s.recvfrom(2048)
    assert parse_oack(pkt) == {"windowsize": "8", "blksize": "1024"}  # the server's max, 8
    s.sendto(struct.pack("!HH", 5, 8) + b"no\0", addr)  # the client may refuse (RFC 2347)
    s.close()


# -- RFC 7440 with a real client that negotiates it -------------------------------------------

@pytest.mark.skipif(shutil.which("atftp") is None, reason="atftp (Debian package atftp) missing")
@pytest.mark.parametrize(("window", "blksize", "name"), [
    (8, 1468, "big.bin"), (16, 512, "big.bin"), (1, 1468, "big.bin"),
    (8, 512, "rollover.bin"),  # > 65535 blocks of 512: block numbers wrap inside windows
])
def test_atftp_windowsize(env: Env, window: int, blksize: int, name: str) -> None:
    path = env.root / name
    if not path.exists():
        path.write_bytes(random.Random(5).randbytes(65536 * 512 + 3000))
    out = env.work / f"atftp-{name}-{window}-{blksize}"
    r = env.good.run("atftp", "--option", f"blksize {blksize}", "--option",
                     f"windowsize {window}", "-g", "-r", name, "-l", str(out), SRV_IP,
                     check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sha(out.read_bytes()) == sha(path.read_bytes())
    size = path.stat().st_size
    line = (f"sent {name} ({size} bytes, blksize {blksize}, windowsize {window})" if window > 1
            else f"sent {name} ({size} bytes, blksize {blksize}) in")
    wait_for(lambda: line in env.log_text(), 10, what=line)
    out.unlink()


# -- hcboot serve's flags ----------------------------------------------------------------------

def test_hcboot_serve_tftp_flags(tmp_path: Path) -> None:
    from homecloud.core.manifest import BootInfo
    from tests.support.hcboot import start_hcboot
    from tests.support.images import publish

    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SRV_IP}/24")
        served = start_hcboot(lab, ns, "br0", SRV_IP, tmp_path / "state", images,
                              "--range", "192.0.2.100-192.0.2.150", "--tftp-max-sessions", "7",
                              "--tftp-max-per-client", "1", "--tftp-timeout", "1.5",
                              "--tftp-max-timeout", "3", "--tftp-retries", "4",
                              "--tftp-max-windowsize", "6")
        wait_for(lambda: "TFTP serving" in served.log_text(), 10, what="TFTP start line")
        assert ("at most 7 sessions, 1 per client; timeout 1.5 s, up to 3 s if asked, "
                "4 retries; windowsize up to 6" in served.log_text())
        cli = lab.netns("cli")
        lab.port(ns, "br0", cli, "eth0")
        lab.addr(cli, "eth0", "192.0.2.9/24")
        out = tmp_path / "k"
        r = cli.run("curl", "-sS", "--max-time", "30", "--tftp-blksize", "1468",
                    f"tftp://{SRV_IP}/images/pxetest/current/kernel", "-o", str(out),
                    check=False)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == b"K" * 4096
        # the flags act: windowsize lowered to 6, timeout 4 (> 3) declined
        raw = (struct.pack("!H", 1) + b"images/pxetest/current/kernel\0octet\0windowsize\0"
               b"64\0timeout\x004\0")
        code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.settimeout(5); s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], 69)); "
                "print(s.recvfrom(2048)[0].hex())")
        r = cli.run(sys.executable, "-c", code, raw.hex(), SRV_IP)
        assert parse_oack(bytes.fromhex(r.stdout.strip())) == {"windowsize": "6"}


def test_rollover_from_the_packet_cache(env: Env) -> None:
    # bootserver.tftp keeps ready DATA packets of files up to 32 MiB: the block numbers of a
    # cached file wrap too (70,000 blocks of 8 bytes; test_tftp_server covers the read path)
    path = env.root / "small-rollover.bin"
    path.write_bytes(random.Random(8).randbytes(70_000 * 8 + 3))
    out = env.work / "small-rollover.out"
    r = env.good.run("curl", "-sS", "--max-time", "120", "--tftp-blksize", "8",
                     f"tftp://{SRV_IP}/small-rollover.bin", "-o", str(out), check=False)
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha(path.read_bytes())


def test_a_failing_transfer_does_not_take_the_server_down(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection (the one stand-in here: no real input makes the server's own code raise,
    # which is the point): the first ACK handled raises; that transfer ends, the server serves on.
    (tmp_path / "f.bin").write_bytes(b"z" * 2000)
    with TftpServer(tmp_path, "127.0.0.1", 0) as srv:
        real = srv._on_ack
        calls: list[int] = []

        def boom(s: Any, number: int, now: float) -> None:
            calls.append(number)
            if len(calls) == 1:
                raise RuntimeError("injected")
            real(s, number, now)

        monkeypatch.setattr(srv, "_on_ack", boom)
        s = _sock()
        s.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
        n, _, addr = recv_data(s)
        s.sendto(ack(n), addr)
        wait_for(lambda: srv.active_sessions == 0, 10, what="failed transfer ended")
        assert srv.alive
        s2 = _sock()
        s2.sendto(rrq("f.bin"), ("127.0.0.1", srv.port))
        assert download(s2, recv_data(s2), 512) == b"z" * 2000
        s.close()
        s2.close()
