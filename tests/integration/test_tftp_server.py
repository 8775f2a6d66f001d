"""bootserver.tftp.TftpServer against real clients (curl, tftp-hpa, raw UDP) in namespaces.

Topology: namespace ``srv`` (192.0.2.1, the server, started by a tiny runner with
``ip netns exec``) -- veth -- namespace ``cli`` (192.0.2.2, every client).  Nothing binds a real
interface.  tftp-hpa 5.2's client speaks plain RFC 1350 (no blksize/tsize options), so the
option tests use curl and a raw-UDP client.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Lab, Netns, wait_for

REPO = Path(__file__).resolve().parents[2]
SRV_IP, CLI_IP = "192.0.2.1", "192.0.2.2"

RUNNER = r"""
import logging, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bootserver.tftp import TftpServer
logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
root, store = Path(sys.argv[2]), Path(sys.argv[3])
BIG = bytes(range(256)) * 1500 + b"tail"

def resolver(path, client_ip):
    if path == "dyn/hello.txt":
        return f"dynamic for {client_ip}\n".encode()
    if path == "dyn/big.bin":
        return BIG
    if path == "dyn/image.bin":
        return store / "image.bin"
    if path == "dyn/rel":
        return Path("hello.txt")
    if path == "shadowed.txt":
        return b"from resolver\n"
    if path.startswith("pxelinux.cfg/01-"):
        return f"DEFAULT hnode\nLABEL hnode\n  APPEND mac={path[16:]}\n".encode()
    if path == "dyn/boom":
        raise RuntimeError("resolver exploded")
    return None

s = TftpServer(root, sys.argv[4], 69, resolver)
s.start()
print("READY", flush=True)
while s.alive:
    time.sleep(0.1)
print("SERVER THREAD DIED", flush=True)
sys.exit(3)
"""

# A raw UDP client: reads [{"pkt": hex, "wait": s, "then": [hex...], "abort": bool}, ...] as
# JSON on stdin, sends each from a fresh socket, prints the first reply to each (hex, or null)
# as JSON; "then" packets go to the replying transfer port (the session), then "abort" sends
# an ERR there as pxelinux does after a tsize probe.
RAW_CLIENT = r"""
import json, socket, struct, sys
host = sys.argv[1]
out = []
for item in json.load(sys.stdin):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 0))
    s.sendto(bytes.fromhex(item["pkt"]), (host, 69))
    s.settimeout(item.get("wait", 1.0))
    try:
        data, addr = s.recvfrom(70000)
        out.append(data.hex())
        for pkt in item.get("then", []):
            s.sendto(bytes.fromhex(pkt), addr)
        if item.get("abort"):
            s.sendto(struct.pack("!HH", 5, 0) + b"abort\0", addr)
    except socket.timeout:
        out.append(None)
    s.close()
print(json.dumps(out))
"""

BIG_DYN = bytes(range(256)) * 1500 + b"tail"


@dataclass
class Env:
    lab: Lab
    srv: Netns
    cli: Netns
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path
    store: Path
    work: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("tftp")
    root = base / "srv" / "tftp"
    (root / "sub").mkdir(parents=True)
    rnd = random.Random(1)
    (root / "big.bin").write_bytes(rnd.randbytes(1_500_000))
    (root / "exact.bin").write_bytes(rnd.randbytes(512 * 40))  # ends with an empty DATA
    (root / "empty.bin").write_bytes(b"")
    (root / "hello.txt").write_bytes(b"hello from disk\n")
    (root / "shadowed.txt").write_bytes(b"from disk\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (base / "srv" / "tftp2").mkdir()
    (base / "srv" / "tftp2" / "secret").write_bytes(b"SIBLING SECRET\n")
    (base / "secret").write_bytes(b"OUTSIDE SECRET\n")
    os.symlink("/etc/passwd", root / "link-out")
    os.symlink("/etc", root / "etc-dir")
    os.symlink("../tftp2", root / "sib")
    os.symlink("../tftp2/secret", root / "sib-file")
    os.symlink("sub/inner.txt", root / "link-in")
    store = base / "store"
    store.mkdir()
    (store / "image.bin").write_bytes(rnd.randbytes(300_001))
    work = base / "work"
    work.mkdir()
    log = base / "server.log"

    lab = Lab()
    try:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "eth0", cli, "eth0")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        lab.addr(cli, "eth0", f"{CLI_IP}/24")
        proc = lab.popen([sys.executable, "-c", RUNNER, str(REPO), str(root), str(store),
                          SRV_IP], ns=srv, log=log)
        wait_for(lambda: "READY" in log.read_text() or proc.poll() is not None, 15,
                 what="TFTP runner READY")
        assert proc.poll() is None, log.read_text()
        yield Env(lab, srv, cli, proc, log, root, store, work)
    finally:
        lab.close()


def curl(env: Env, name: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.cli.run("curl", "-sS", "-v", "--max-time", "30", *extra,
                       f"tftp://{SRV_IP}/{name}", "-o", str(out), check=False)


def raw(env: Env, items: list[dict[str, Any]]) -> list[bytes | None]:
    payload = json.dumps([{**i, "pkt": i["pkt"].hex(), "then": [p.hex() for p in i.get("then", [])]}
                          for i in items])
    r = subprocess.run(env.cli.cmd(sys.executable, "-c", RAW_CLIENT, SRV_IP), input=payload,
                       capture_output=True, text=True, timeout=120, check=True)
    return [bytes.fromhex(h) if h is not None else None for h in json.loads(r.stdout)]


def rrq(name: bytes | str, mode: bytes = b"octet", opcode: int = 1, **options: str) -> bytes:
    if isinstance(name, str):
        name = name.encode()
    opts = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
    return struct.pack("!H", opcode) + name + b"\0" + mode + b"\0" + opts


def oack_options(pkt: bytes) -> dict[str, str]:
    assert pkt[:2] == b"\x00\x06", pkt[:40]
    fields = pkt[2:].split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


def assert_alive_and_serving(env: Env) -> None:
    assert env.proc.poll() is None, env.log_text()[-3000:]
    out = env.work / f"alive-{time.monotonic_ns()}"
    r = curl(env, "big.bin", out, "--tftp-blksize", "1468")
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((env.root / "big.bin").read_bytes())
    out.unlink()


# -- downloads ---------------------------------------------------------------------------------

# blksize 8 only on exact.bin: big.bin would be 187,500 round trips
@pytest.mark.parametrize(("name", "blksize"), [
    ("big.bin", 512), ("big.bin", 1468), ("big.bin", 65464),
    ("exact.bin", 512), ("exact.bin", 1468), ("exact.bin", 8), ("exact.bin", 65464),
])
def test_curl_download(env: Env, name: str, blksize: int) -> None:
    out = env.work / f"curl-{name}-{blksize}"
    r = curl(env, name, out, "--tftp-blksize", str(blksize))
    assert r.returncode == 0, r.stderr
    want = (env.root / name).read_bytes()
    assert sha(out.read_bytes()) == sha(want)
    # RFC 2349: the OACK carries the real size; RFC 2348: the requested block size
    assert f"got option=(tsize) value=({len(want)})" in r.stderr, r.stderr
    if blksize != 512:  # curl only asks for a non-default size
        assert f"blksize parsed from OACK ({blksize})" in r.stderr, r.stderr


def test_empty_file(env: Env) -> None:
    # curl 7.88 rejects "tsize 0" in an OACK ("invalid tsize value"), so it gets the empty
    # file without options; tftp-hpa and the raw OACK check (test_option_negotiation_raw) too.
    out = env.work / "curl-empty"
    r = curl(env, "empty.bin", out, "--tftp-no-options")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b""


@pytest.mark.parametrize("name", ["big.bin", "exact.bin", "empty.bin", "hello.txt",
                                  "/sub/inner.txt"])
def test_tftp_hpa_download(env: Env, name: str) -> None:
    out = env.work / f"hpa-{name.strip('/').replace('/', '_')}"
    r = env.cli.run("tftp", "-m", "binary", SRV_IP, "-c", "get", name, str(out), check=False)
    assert "Error" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert sha(out.read_bytes()) == sha((env.root / name.lstrip("/")).read_bytes())


def test_block_number_rollover(env: Env) -> None:
    # more than 65535 blocks of 512 bytes: the 16-bit block number wraps to 0 (as tftp-hpa,
    # curl, iPXE and pxelinux expect)
    big = env.root / "rollover.bin"
    big.write_bytes(random.Random(5).randbytes(65536 * 512 + 1000))
    try:
        out = env.work / "rollover-hpa"
        env.cli.run("tftp", "-m", "binary", SRV_IP, "-c", "get", "rollover.bin", str(out))
        assert sha(out.read_bytes()) == sha(big.read_bytes())
        out.unlink()
    finally:
        big.unlink()


def test_concurrent_downloads(env: Env) -> None:
    procs = [subprocess.Popen(env.cli.cmd("curl", "-sS", "--max-time", "60", "--tftp-blksize",
                                          str(bs), f"tftp://{SRV_IP}/big.bin", "-o",
                                          str(env.work / f"par-{i}")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i, bs in enumerate([512, 1468, 1024, 4096, 1468, 512, 8192, 1468])]
    want = sha((env.root / "big.bin").read_bytes())
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert sha((env.work / f"par-{i}").read_bytes()) == want


def test_option_negotiation_raw(env: Env) -> None:
    size = (env.root / "big.bin").stat().st_size
    r = raw(env, [
        {"pkt": rrq("big.bin", tsize="0", blksize="1468"), "abort": True},
        {"pkt": rrq("big.bin", blksize="70000"), "abort": True},
        {"pkt": rrq("big.bin", BLKSIZE="1024", TSIZE="0"), "abort": True},
        {"pkt": rrq("big.bin", windowsize="8"), "abort": True},
        {"pkt": rrq("big.bin", blksize="4"), "abort": True},
        {"pkt": rrq("big.bin", blksize="abc"), "abort": True},
        {"pkt": rrq("big.bin"), "abort": True},
        {"pkt": rrq("big.bin", mode=b"NETASCII"), "abort": True},
        {"pkt": rrq("empty.bin", tsize="0"), "abort": True},
    ])
    assert all(p is not None for p in r)
    assert oack_options(r[0]) == {"tsize": str(size), "blksize": "1468"}
    assert oack_options(r[1]) == {"blksize": "65464"}  # RFC 2348 maximum
    assert oack_options(r[2]) == {"blksize": "1024", "tsize": str(size)}
    assert oack_options(r[3]) == {"windowsize": "8"}  # RFC 7440 (test_tftp_limits.py has more)
    # options we do not honour are not echoed: no OACK at all, DATA 1 of 512 bytes
    for p in r[4:8]:
        assert p is not None and p[:4] == b"\x00\x03\x00\x01" and len(p) == 4 + 512, p[:8]
    assert oack_options(r[8]) == {"tsize": "0"}
    assert_alive_and_serving(env)


# -- refusals ------------------------------------------------------------------------------------

SIBLING = "/".join(["srv", "tftp2", "secret"])


@pytest.mark.parametrize("name", [
    b"../secret", b"../../secret", b"../tftp2/secret", b"sub/../../tftp2/secret",
    b"/../secret", b"..\\secret", b"sub\\..\\..\\secret", b"link-out", b"etc-dir/passwd",
    b"sib/secret", b"sib-file", b"hello.txt\x00../../secret",
    b"caf\xc3\xa9", b"\xff\xfe", b"a\nb",
])
def test_traversal_refused(env: Env, name: bytes) -> None:
    (reply,) = raw(env, [{"pkt": rrq(name)}])
    assert reply is not None and reply[:2] == b"\x00\x05", reply
    code = struct.unpack("!H", reply[2:4])[0]
    assert code in (1, 2, 4), reply  # not found / access violation / illegal (bad mode, bytes)


def test_absolute_and_sibling_prefix_names_stay_in_root(env: Env) -> None:
    # "/etc/passwd" means <root>/etc/passwd; "<root>2/secret" (tftpy's startswith(root)
    # quirk would serve a name beginning with the root path) means <root>/<that path>.
    sibling_abs = str(env.root) + "2/secret"
    r = raw(env, [{"pkt": rrq("/etc/passwd")}, {"pkt": rrq(sibling_abs)},
                  {"pkt": rrq(str(env.root.parent / "tftp2" / "secret"))}])
    for reply in r:
        assert reply is not None and reply[:4] == b"\x00\x05\x00\x01", reply  # not found
    # the same through the real clients
    out = env.work / "abs-passwd"
    res = curl(env, "/etc/passwd", out)
    assert res.returncode != 0 and (not out.exists() or b"root:" not in out.read_bytes())
    res = env.cli.run("tftp", "-m", "binary", SRV_IP, "-c", "get", "../secret",
                      str(env.work / "hpa-secret"), check=False)
    assert "Error" in res.stdout + res.stderr
    hpa = env.work / "hpa-secret"
    assert not hpa.exists() or b"SECRET" not in hpa.read_bytes()


def test_symlink_inside_root_is_served(env: Env) -> None:
    out = env.work / "link-in"
    assert curl(env, "link-in", out).returncode == 0
    assert out.read_bytes() == b"inner\n"


def test_upload_refused(env: Env) -> None:
    before = sorted(p.name for p in env.root.rglob("*"))
    src = env.work / "upload.txt"
    src.write_bytes(b"should never land\n")
    r = env.cli.run("curl", "-sS", "-T", str(src), f"tftp://{SRV_IP}/upload.txt", check=False)
    assert r.returncode != 0
    r = env.cli.run("tftp", "-m", "binary", SRV_IP, "-c", "put", str(src), "upload2.txt",
                    check=False)
    assert "Error code 2" in r.stdout + r.stderr, r.stdout + r.stderr
    (reply,) = raw(env, [{"pkt": rrq("hello.txt", opcode=2)}])
    assert reply is not None and reply[:4] == b"\x00\x05\x00\x02", reply  # access violation
    (reply,) = raw(env, [{"pkt": rrq("new/dir/x", opcode=2, blksize="1468")}])
    assert reply is not None and reply[:4] == b"\x00\x05\x00\x02", reply
    assert sorted(p.name for p in env.root.rglob("*")) == before
    assert (env.root / "hello.txt").read_bytes() == b"hello from disk\n"
    assert_alive_and_serving(env)


def test_malformed_barrage_then_download(env: Env) -> None:
    rnd = random.Random(7)
    bad: list[bytes] = [
        b"", b"\x00", b"\x00\x01", b"\x00\x02", b"\xff\xff", b"\x00\x09garbage",
        b"\x00\x01no-nul-at-all", b"\x00\x01big.bin\x00",  # mode missing
        b"\x00\x01big.bin\x00octet",  # final NUL missing
        b"\x00\x01\x00octet\x00",  # empty name
        b"\x00\x01big.bin\x00octet\x00blksize\x00",  # option without value
        b"\x00\x01big.bin\x00octet\x00blksize\x00abc\x00",
        b"\x00\x01big.bin\x00octet\x00blksize\x00\x00\x00",
        b"\x00\x01big.bin\x00mail\x00", b"\x00\x01big.bin\x00\x00",
        b"\x00\x01big.bin\x00octet\x00" + b"x" * 3000 + b"\x00" + b"9" * 3000 + b"\x00",
        b"\x00\x01big.bin\x00octet\x00blksize\x00" + b"9" * 400 + b"\x00",
        b"\x00\x01" + b"A" * 60000 + b"\x00octet\x00",
        b"\x00\x01\xff\xfe\x00octet\x00",  # non-ASCII name
        b"\x00\x01big.bin\x00oct\xe9t\x00",
        b"\x00\x02up.txt\x00octet\x00",  # WRQ
        b"\x00\x03\x00\x01data on the request port",
        b"\x00\x04\x00\x01", b"\x00\x05\x00\x01oops\x00", b"\x00\x06blksize\x00512\x00",
        *(rnd.randbytes(rnd.randrange(1, 600)) for _ in range(150)),
        *(b"\x00\x01" + rnd.randbytes(rnd.randrange(0, 300)) for _ in range(100)),
    ]
    raw(env, [{"pkt": p, "wait": 0.01} for p in bad])
    assert_alive_and_serving(env)
    # garbage sent to a transfer's own port (after its OACK), then an abort
    junk = [b"", b"\x00", b"\x00\x04\x00", b"\x00\x09xx", b"\x00\x04\x01\xf4",  # future ACK
            b"\x00\x01big.bin\x00octet\x00", b"\x00\x03\x00\x01data", rnd.randbytes(999)]
    (reply,) = raw(env, [{"pkt": rrq("big.bin", blksize="1468"), "then": junk, "abort": True}])
    assert reply is not None and reply[:2] == b"\x00\x06"
    assert_alive_and_serving(env)
    log = env.log_text()
    assert "malformed request" in log and "dropped" in log
    assert "SERVER THREAD DIED" not in log and "Traceback" not in log


# -- dynamic content -------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "want"), [pytest.param(n, w, id=n) for n, w in [
    ("dyn/hello.txt", f"dynamic for {CLI_IP}\n".encode()),
    ("dyn/big.bin", BIG_DYN),
    ("shadowed.txt", b"from resolver\n"),  # the resolver wins over an existing file
    ("/shadowed.txt", b"from resolver\n"),
    ("dyn/rel", b"hello from disk\n"),  # relative Path: confined to the root
    ("pxelinux.cfg/01-52-54-00-12-34-56",
     b"DEFAULT hnode\nLABEL hnode\n  APPEND mac=52-54-00-12-34-56\n"),
]])
@pytest.mark.parametrize("blksize", [512, 1468])
def test_dynamic_bytes(env: Env, name: str, want: bytes, blksize: int) -> None:
    out = env.work / f"dyn-{name.strip('/').replace('/', '_')}-{blksize}"
    r = curl(env, name, out, "--tftp-blksize", str(blksize))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == want
    assert f"got option=(tsize) value=({len(want)})" in r.stderr
    # FIELD-NOTES: io.BytesIO from tftpy's dyn_file_func kills its thread after the transfer
    assert_alive_and_serving(env)


def test_dynamic_path_into_store(env: Env) -> None:
    out = env.work / "dyn-image"
    r = curl(env, "dyn/image.bin", out, "--tftp-blksize", "1468")
    assert r.returncode == 0, r.stderr
    assert sha(out.read_bytes()) == sha((env.store / "image.bin").read_bytes())
    out2 = env.work / "dyn-image-hpa"
    env.cli.run("tftp", "-m", "binary", SRV_IP, "-c", "get", "dyn/image.bin", str(out2))
    assert sha(out2.read_bytes()) == sha((env.store / "image.bin").read_bytes())
    assert_alive_and_serving(env)


def test_resolver_exception_is_an_error_not_a_crash(env: Env) -> None:
    (reply,) = raw(env, [{"pkt": rrq("dyn/boom")}])
    assert reply is not None and reply[:4] == b"\x00\x05\x00\x00", reply
    assert_alive_and_serving(env)
    assert "resolver failed for 'dyn/boom'" in env.log_text()


def test_logs_name_client_and_file(env: Env) -> None:
    assert_alive_and_serving(env)
    log = env.log_text()
    assert f"TFTP {CLI_IP}: RRQ big.bin" in log
    assert f"TFTP {CLI_IP}: sent big.bin (1500000 bytes, blksize 1468)" in log


def test_start_stop_in_process(tmp_path: Path) -> None:
    """Lifecycle through the API itself, on the test process's loopback."""
    import socket

    from bootserver.tftp import TftpServer

    (tmp_path / "f").write_bytes(b"x" * 700)
    with TftpServer(tmp_path, "127.0.0.1", 0) as srv:
        assert srv.port != 0 and srv.alive
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(rrq("f"), ("127.0.0.1", srv.port))
        data, addr = s.recvfrom(1024)
        assert data[:4] == b"\x00\x03\x00\x01" and len(data) == 516 and addr[1] != srv.port
        s.sendto(b"\x00\x04\x00\x01", addr)
        data, _ = s.recvfrom(1024)
        assert data == b"\x00\x03\x00\x02" + b"x" * 188
        s.sendto(b"\x00\x04\x00\x02", addr)
        s.close()
    assert not srv.alive
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", srv.port))  # the port is free again
    s.close()
