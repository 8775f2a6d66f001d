"""bootserver.http.HttpServer against curl (and a raw-socket client) in namespaces.

Topology: namespace ``srv`` (192.0.2.1:80, the server, started by a tiny runner with
``ip netns exec``) -- veth -- namespace ``cli`` (192.0.2.2, every client).  The served files
live on the shared filesystem, so the test process replaces them while clients download.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootserver.http import HttpLimits, HttpServer, Response
from tests.support.netns import Lab, Netns, wait_for

REPO = Path(__file__).resolve().parents[2]
SRV_IP, CLI_IP = "192.0.2.1", "192.0.2.2"
BASE = f"http://{SRV_IP}"

RUNNER = r"""
import logging, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bootserver.http import HttpServer, Response
from tests.support.staticapp import StaticApp
logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")

class App:
    def __init__(self, root):
        self.static = StaticApp(root)

    def handle(self, method, path, client_ip, headers, body):
        if path == "/ready" and method == "POST":
            ctype = headers.get("CONTENT-TYPE", "-")
            return Response(content_type="text/plain",
                            body=f"ok {len(body)} {client_ip} {ctype} {body[:20]!r}\n".encode())
        if path.startswith("/boot.ipxe"):
            return Response(content_type="text/plain", headers={"Cache-Control": "no-store"},
                            body=f"#!ipxe\necho {client_ip} {method} {path}\n".encode())
        if path == "/boom":
            raise RuntimeError("app exploded")
        if path == "/gone":
            return Response(file=Path("/nonexistent/file"))
        if path == "/nocontent":
            return Response(status=204)
        return self.static.handle(method, path, client_ip, headers, body)

s = HttpServer(sys.argv[3], 80, App(Path(sys.argv[2])), max_body=4096)
s.start()
print("READY", flush=True)
while s.alive:
    time.sleep(0.1)
print("SERVER THREAD DIED", flush=True)
sys.exit(3)
"""

# Sends argv[2] (base64) to argv[1]:80, reads until the server closes (or 3 s of silence),
# prints what came back as base64.
RAW_CLIENT = r"""
import base64, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
s.sendall(base64.b64decode(sys.argv[2]))
chunks = []
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        chunks.append(d)
except socket.timeout:
    pass
print(base64.b64encode(b"".join(chunks)).decode())
"""


@dataclass
class Env:
    lab: Lab
    srv: Netns
    cli: Netns
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path
    work: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("http")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    rnd = random.Random(2)
    (root / "big.bin").write_bytes(rnd.randbytes(3_000_000))
    (root / "hello.txt").write_bytes(b"hello over http\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "sub" / "a b.txt").write_bytes(b"space\n")
    (base / "secret").write_bytes(b"SECRET\n")
    os.symlink(base / "secret", root / "link-out")
    work = base / "work"
    work.mkdir()
    log = base / "server.log"
    lab = Lab()
    try:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "eth0", cli, "eth0")
        lab.addr(srv, "eth0", f"{SRV_IP}/24")
        lab.addr(cli, "eth0", f"{CLI_IP}/24")
        proc = lab.popen([sys.executable, "-c", RUNNER, str(REPO), str(root), SRV_IP],
                         ns=srv, log=log)
        wait_for(lambda: "READY" in log.read_text() or proc.poll() is not None, 15,
                 what="HTTP runner READY")
        assert proc.poll() is None, log.read_text()
        yield Env(lab, srv, cli, proc, log, root, work)
    finally:
        lab.close()


@dataclass
class Reply:
    rc: int
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str


def curl(env: Env, path: str, *extra: str, url: str | None = None) -> Reply:
    out, hdr = env.work / "curl.out", env.work / "curl.hdr"
    for f in (out, hdr):
        f.unlink(missing_ok=True)
    r = env.cli.run("curl", "-sS", "--max-time", "30", "-D", str(hdr), "-o", str(out), *extra,
                    url or f"{BASE}{path}", check=False)
    status, headers = 0, {}
    if hdr.exists():
        blocks = [b for b in hdr.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
        if blocks:
            lines = blocks[-1].split("\r\n")
            status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
    body = out.read_bytes() if out.exists() else b""
    return Reply(r.returncode, status, headers, body, r.stderr)


def raw(env: Env, request: bytes) -> bytes:
    r = env.cli.run(sys.executable, "-c", RAW_CLIENT, SRV_IP, base64.b64encode(request).decode())
    return base64.b64decode(r.stdout.strip())


def assert_alive(env: Env) -> None:
    assert env.proc.poll() is None, env.log_text()[-3000:]
    r = curl(env, "/hello.txt")
    assert (r.status, r.body) == (200, b"hello over http\n")


# -- GET / HEAD / Range -------------------------------------------------------------------------

def test_get_file(env: Env) -> None:
    r = curl(env, "/big.bin")
    want = (env.root / "big.bin").read_bytes()
    assert r.status == 200 and r.rc == 0
    assert r.headers["content-length"] == str(len(want))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes" and "etag" in r.headers
    assert sha(r.body) == sha(want)
    r = curl(env, "/hello.txt")
    assert (r.status, r.body, r.headers["content-type"]) == (
        200, b"hello over http\n", "text/plain")
    r = curl(env, "/empty.bin")
    assert (r.status, r.body, r.headers["content-length"]) == (200, b"", "0")
    r = curl(env, "/sub/a%20b.txt")
    assert (r.status, r.body) == (200, b"space\n")


def test_head(env: Env) -> None:
    r = curl(env, "/big.bin", "-I")
    assert r.status == 200 and r.headers["content-length"] == "3000000"
    # no body on the wire: the connection carries the headers only
    got = raw(env, b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3000000" in head
    assert rest == b""
    # two HEADs then a GET on one keep-alive connection stay in step
    got = raw(env, b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 ") == 3 and b"404 Not Found" in got
    assert got.endswith(b"\r\n\r\nhello over http\n")


@pytest.mark.parametrize(("rng", "first", "last"), [
    ("100-199", 100, 199), ("0-0", 0, 0), ("2999000-", 2999000, 2999999),
    ("-500", 2999500, 2999999), ("2999990-5000000", 2999990, 2999999),
])
def test_range(env: Env, rng: str, first: int, last: int) -> None:
    want = (env.root / "big.bin").read_bytes()
    r = curl(env, "/big.bin", "-r", rng)
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/3000000"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.body == want[first:last + 1]


def test_range_edge_cases(env: Env) -> None:
    r = curl(env, "/big.bin", "-r", "3000000-")
    assert r.status == 416 and r.headers["content-range"] == "bytes */3000000"
    r = curl(env, "/big.bin", "-r", "0-1,5-6")  # multi-range: the whole file
    assert r.status == 200 and len(r.body) == 3000000
    etag = curl(env, "/big.bin", "-I").headers["etag"]
    r = curl(env, "/big.bin", "-r", "0-9", "-H", f"If-Range: {etag}")
    assert r.status == 206 and len(r.body) == 10
    r = curl(env, "/big.bin", "-r", "0-9", "-H", 'If-Range: "stale"')
    assert r.status == 200 and len(r.body) == 3000000
    r = curl(env, "/boot.ipxe", "-r", "0-6")  # bytes bodies range too
    assert r.status == 206 and r.body == b"#!ipxe\n"


# -- errors ----------------------------------------------------------------------------------------

def test_not_found_and_refusals(env: Env) -> None:
    assert curl(env, "/missing").status == 404
    assert curl(env, "/sub").status == 404  # directories are not listed
    assert curl(env, "/link-out").status == 404  # StaticApp: symlink leading outside
    assert curl(env, "/gone").status == 404  # the app's file vanished
    for path in ["/../secret", "/sub/../../secret", "/%2e%2e/secret", "/sub/%2E%2E/%2e%2e/x",
                 "/a%00b", "/a%5c..%5csecret"]:
        r = curl(env, path, "--path-as-is")
        assert r.status == 400 and b"SECRET" not in r.body, path
    for target in [b"/a\\b", b"../secret", b"/caf\xc3\xa9", b"*"]:
        got = raw(env, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 400 "), (target, got[:80])


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "get", "BREW"])
def test_method_not_allowed(env: Env, method: str) -> None:
    r = curl(env, "/hello.txt", "-X", method)
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize("request_bytes", [pytest.param(b, id=repr(b[:30])) for b in [
    b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / HTTP/x.y\r\n\r\n", b"GET /hello.txt HTTP/1.1\r\nNoColonHeader\r\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n",  # TLS hello
    b"GET /hello.txt\r\n\r\n",  # HTTP/0.9
]])
def test_bad_requests(env: Env, request_bytes: bytes) -> None:
    got = raw(env, request_bytes)
    assert got.startswith(b"HTTP/1.1 400 ") or got.startswith(b"HTTP/1.0 400 "), got[:120]
    assert_alive(env)


def test_app_exception_is_500(env: Env) -> None:
    assert curl(env, "/boom").status == 500
    assert_alive(env)
    assert "app failed on GET /boom" in env.log_text()


# -- dynamic content, POST, keep-alive ------------------------------------------------------

def test_dynamic_with_query(env: Env) -> None:
    r = curl(env, "/boot.ipxe?mac=52:54:00:12:34:56")
    assert r.status == 200 and r.headers["cache-control"] == "no-store"
    assert r.body == f"#!ipxe\necho {CLI_IP} GET /boot.ipxe?mac=52:54:00:12:34:56\n".encode()
    r = curl(env, "/nocontent")
    assert r.status == 204 and r.body == b"" and "content-length" not in r.headers


def test_post_readiness(env: Env) -> None:
    r = curl(env, "/ready", "-d", "node=52:54:00:12:34:56&state=up")
    assert r.status == 200
    assert r.body == (f"ok 31 {CLI_IP} application/x-www-form-urlencoded "
                      "b'node=52:54:00:12:34:'\n").encode()
    r = curl(env, "/ready", "-X", "POST")  # no body at all
    assert r.status == 200 and r.body.startswith(b"ok 0 ")
    r = curl(env, "/ready", "--data-binary", "x" * 5000)  # max_body is 4096
    assert r.status == 413
    r = curl(env, "/ready", "-H", "Transfer-Encoding: chunked", "-d", "abc")
    assert r.status == 411
    r = curl(env, "/hello.txt", "-d", "x")  # StaticApp does not take POSTs
    assert r.status == 404
    # Expect: 100-continue (curl sends it for bodies > 1 MiB; force it here)
    r = curl(env, "/ready", "-H", "Expect: 100-continue", "--data-binary", "y" * 3000)
    assert r.status == 200 and r.body.startswith(b"ok 3000 ")
    assert_alive(env)


def test_keep_alive(env: Env) -> None:
    r = env.cli.run("curl", "-sS", "-v", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                    f"{BASE}/hello.txt", f"{BASE}/missing", f"{BASE}/big.bin")
    assert r.stderr.count("Re-using existing connection") == 2, r.stderr
    assert "HTTP/1.1 404" in r.stderr


# -- atomic replace while serving -----------------------------------------------------------

def _versions(n: int, size: int) -> list[bytes]:
    rnd = random.Random(3)
    return [rnd.randbytes(size) for _ in range(n)]


def _publish(root: Path, name: str, data: bytes, tag: int) -> None:
    tmp = root / f".{name}.tmp{tag}"
    tmp.write_bytes(data)
    os.replace(tmp, root / name)


def test_concurrent_downloads_during_atomic_replace(env: Env) -> None:
    versions = _versions(6, 4 << 20)
    hashes = {sha(v): i for i, v in enumerate(versions)}
    _publish(env.root, "pub.bin", versions[0], 0)
    stop = threading.Event()
    replaced = [0]

    def replacer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            _publish(env.root, "pub.bin", versions[i % len(versions)], i)
            replaced[0] = i

    t = threading.Thread(target=replacer)
    args: list[str] = []
    for i in range(50):
        args += ["-o", str(env.work / f"pub-{i}"), f"{BASE}/pub.bin"]
    t.start()
    try:
        r = env.cli.run("curl", "-sS", "--fail", "--max-time", "120", "-Z", "--parallel-max",
                        "50", "--parallel-immediate", *args, timeout=180)
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stderr
    seen = []
    for i in range(50):
        data = (env.work / f"pub-{i}").read_bytes()
        h = sha(data)
        assert h in hashes, f"download {i}: {len(data)} bytes match no published version"
        seen.append(hashes[h])
    assert replaced[0] > 1  # the file really was replaced while they ran
    print(f"50 downloads during {replaced[0]} replacements saw versions {sorted(set(seen))}")


def test_slow_download_keeps_its_version(env: Env) -> None:
    old, new = _versions(2, 8 << 20)
    _publish(env.root, "slow.bin", old, 0)
    out = env.work / "slow.out"
    p = subprocess.Popen(env.cli.cmd("curl", "-sS", "--fail", "--limit-rate", "4M",
                                     "-o", str(out), f"{BASE}/slow.bin"),
                         stderr=subprocess.PIPE)
    try:
        # replace as soon as the transfer is under way (about 2 s long at 4 MB/s)
        wait_for(lambda: out.exists() and out.stat().st_size > 0, 20, what="download started")
        _publish(env.root, "slow.bin", new, 1)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert sha(out.read_bytes()) == sha(old)
    assert sha(curl(env, "/slow.bin").body) == sha(new)


def test_logs_name_client_and_path(env: Env) -> None:
    curl(env, "/hello.txt")
    assert f"HTTP {CLI_IP}: GET /hello.txt -> 200 16 bytes" in env.log_text()
    assert "SERVER THREAD DIED" not in env.log_text()


def test_start_stop_in_process_with_idle_keepalive() -> None:
    """Lifecycle through the API itself (loopback of the test process): stop() returns and
    frees the port even while a keep-alive connection sits idle."""
    import socket

    from bootserver.http import HttpServer, Response

    class One:
        def handle(self, method: str, path: str, client_ip: str, headers: object,
                   body: bytes) -> Response | None:
            return Response(body=b"one\n") if path == "/one" else None

    srv = HttpServer("127.0.0.1", 0, One())  # type: ignore[arg-type]
    srv.start()
    assert srv.port != 0 and srv.alive
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    c.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while not got.endswith(b"one\n"):
        got += c.recv(4096)
    assert got.startswith(b"HTTP/1.1 200 ")
    srv.stop()  # the connection above is still open and idle
    assert not srv.alive
    assert c.recv(4096) == b""  # the server closed it
    c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()


def test_log_lines_start_with_the_client_mac(caplog: pytest.LogCaptureFixture) -> None:
    """With ``mac_of`` every line about a client starts with its MAC (looked up once per
    connection), ``unknown-mac`` when the lookup has no answer (loopback of the test process)."""
    import socket

    from bootserver.http import HttpServer, Response

    class One:
        def handle(self, method: str, path: str, client_ip: str, headers: object,
                   body: bytes) -> Response | None:
            return Response(body=b"one\n") if path == "/one" else None

    asked: list[str] = []
    known = {"127.0.0.1": "52:54:00:aa:bb:cc"}

    def mac_of(ip: str) -> str | None:
        asked.append(ip)
        return known.get(ip)

    srv = HttpServer("127.0.0.1", 0, One(), mac_of=mac_of)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="homecloud.http")
    srv.start()
    try:
        for path, want in ((b"/one", b"one\n"), (b"/two", b"not found\n")):
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            c.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while d := c.recv(4096):
                got += d
            c.close()
            assert got.count(want) == 2, got
            known.clear()  # the second connection's client is unknown
    finally:
        srv.stop()
    text = caplog.text
    assert text.count("52:54:00:aa:bb:cc: HTTP 127.0.0.1: GET /one -> 200 4 bytes") == 2, text
    assert text.count("unknown-mac: HTTP 127.0.0.1: GET /two -> 404") == 2, text
    assert asked == ["127.0.0.1", "127.0.0.1"]  # once per connection, not per line


# ---------------------------------------------------------------- limits, in process on loopback

class _Blocking:
    """/block waits until ``release`` is set (a request that keeps its connection busy)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def handle(self, method: str, path: str, client_ip: str, headers: object,
               body: bytes) -> Response | None:
        if path == "/block":
            self.entered.release()
            self.release.wait(30)
        return Response(body=b"one\n") if path in ("/one", "/block") else None


def _loopback_server(**limits: float) -> tuple[HttpServer, _Blocking]:
    app = _Blocking()
    srv = HttpServer("127.0.0.1", 0, app, limits=HttpLimits(**limits))  # type: ignore[arg-type]
    srv.start()
    return srv, app


def _read_all(c: socket.socket, limit: float = 20) -> bytes:
    """Everything until the server closes (functional limit: ``limit`` s)."""
    c.settimeout(limit)
    got = b""
    try:
        while d := c.recv(65536):
            got += d
    except ConnectionResetError:
        pass
    return got


def test_request_head_deadline_is_not_per_recv() -> None:
    """A head trickled one byte per 0.2 s never trips a per-recv timeout, but the 1 s deadline
    for the whole head ends it with 408; a silent connection gets the same."""
    srv, _ = _loopback_server(head_timeout=1.0)
    try:
        port = srv.port
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET /one HTTP/1.1\r\n")
        closed = False
        for byte in b"X-Slow: " + b"a" * 200:  # 40 s of trickle at most (functional limit)
            try:
                c.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            ready = select.select([c], [], [], 0.2)[0]
            if ready:
                break
        got = _read_all(c)
        assert closed or got.startswith(b"HTTP/1.1 408 "), got[:100]
        assert _read_all(silent).startswith(b"HTTP/1.1 408 ")
        c.close()
        silent.close()
    finally:
        srv.stop()


def test_keep_alive_idle_timeout_and_pipelining() -> None:
    srv, _ = _loopback_server(idle_timeout=1.0)
    try:
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        req = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        c.sendall(req + req)  # pipelined: both answered on the kept-alive connection
        got = _read_all(c)  # then the idle connection is closed by the server
        assert got.count(b"HTTP/1.1 200 ") == 2 and got.endswith(b"one\n"), got
        c.close()
    finally:
        srv.stop()


def test_cap_replaces_the_longest_waiting_head_reader() -> None:
    """Per-client cap 2: two connections that never finish a head are held; a third client
    with a real request takes the place of the older one (closed without a reply) and is
    served; the newer slow one is still open."""
    srv, _ = _loopback_server(max_per_client=2, head_timeout=30.0)
    try:
        port = srv.port
        old = socket.create_connection(("127.0.0.1", port), timeout=5)
        old.sendall(b"GET /one HTTP/1.1\r\n")
        time.sleep(0.2)  # ordering only: "old" is the older head reader
        new = socket.create_connection(("127.0.0.1", port), timeout=5)
        new.sendall(b"GET /one HTTP/1.1\r\n")
        time.sleep(0.2)
        real = socket.create_connection(("127.0.0.1", port), timeout=5)
        real.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(real).startswith(b"HTTP/1.1 200 ")
        assert _read_all(old) == b""  # dropped for the newcomer, no reply
        new.setblocking(False)
        with pytest.raises(BlockingIOError):
            new.recv(1)  # still open, still waiting
        for s in (old, new, real):
            s.close()
    finally:
        srv.stop()


def test_cap_with_every_connection_busy_answers_503() -> None:
    srv, app = _loopback_server(max_connections=2)
    try:
        port = srv.port
        busy = []
        for _ in range(2):
            b = socket.create_connection(("127.0.0.1", port), timeout=5)
            b.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            busy.append(b)
        for _ in range(2):
            assert app.entered.acquire(timeout=10)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _read_all(extra).startswith(b"HTTP/1.1 503 ")
        app.release.set()
        for b in busy:
            assert _read_all(b).startswith(b"HTTP/1.1 200 ")
            b.close()
        extra.close()
        again = socket.create_connection(("127.0.0.1", port), timeout=5)
        again.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(again).startswith(b"HTTP/1.1 200 ")  # the slots were freed
        again.close()
    finally:
        srv.stop()


def test_slow_bodies_have_a_deadline_and_give_way_to_newcomers() -> None:
    """A POST body trickled in is ended at the body deadline; over the per-client cap a
    newcomer takes the place of the oldest connection still waiting for its body."""
    srv, _ = _loopback_server(max_per_client=2, io_timeout=2.0)
    try:
        port = srv.port
        head = b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"
        old = socket.create_connection(("127.0.0.1", port), timeout=5)
        old.sendall(head)
        time.sleep(0.2)  # ordering only
        new = socket.create_connection(("127.0.0.1", port), timeout=5)
        new.sendall(head)
        time.sleep(0.2)
        real = socket.create_connection(("127.0.0.1", port), timeout=5)
        real.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(real).startswith(b"HTTP/1.1 200 ")
        assert _read_all(old) == b""  # replaced by the newcomer
        for _ in range(100):  # trickle: one byte per 0.2 s, at most 20 s (functional limit)
            try:
                new.sendall(b"c")
            except OSError:
                break
            if select.select([new], [], [], 0.2)[0]:
                break
        assert _read_all(new) == b""  # the body deadline closed it, nothing was dispatched
        for s in (old, new, real):
            s.close()
    finally:
        srv.stop()
