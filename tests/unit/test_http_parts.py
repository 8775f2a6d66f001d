"""bootserver.http without sockets: request-path cleaning, Range parsing, Response, Headers and
StaticApp (the network side is tests/integration/test_http_server.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootserver.http import (
    UNSATISFIABLE,
    BadRequestPath,
    Headers,
    Response,
    clean_request_path,
    parse_range,
)
from tests.support.staticapp import StaticApp


@pytest.mark.parametrize(("target", "want"), [
    ("/", "/"),
    ("/boot/52:54:00:12:34:56.ipxe", "/boot/52:54:00:12:34:56.ipxe"),
    ("/a%20b", "/a b"),
    ("/boot.ipxe?mac=52%3A54", "/boot.ipxe?mac=52%3A54"),  # query passed raw
    ("/x?", "/x"),
    ("http://192.0.2.1:8080/images/k?x=1", "/images/k?x=1"),
    ("http://192.0.2.1", "/"),
    ("/a/./b", "/a/./b"),
    ("/a..b/..c", "/a..b/..c"),  # names containing dots are fine
    ("/%252e%252e/x", "/%2e%2e/x"),  # decoded once: a literal "%2e%2e", no ".." segment
    ("/a%25/b", "/a%/b"),
])
def test_clean_request_path_accepts(target: str, want: str) -> None:
    assert clean_request_path(target) == want


@pytest.mark.parametrize("target", [
    "*", "x", "", "../etc/passwd", "/../etc/passwd", "/a/../../etc/passwd", "/a/..",
    "/%2e%2e/etc/passwd", "/%2E%2E/x", "/a/%2e%2e", "/a\\b", "/a%5cb", "/a%00b", "/a\x00b",
    "/a%0ab", "/a b\r", "/caf\u00e9", "/a%ffb", "/a%3fb", "/a#frag",
    "/images%2frole%2fcurrent%2fkernel", "/a%2F..%2Fb", "/a%2f", "http://h/../etc/passwd",
    "http://h/a/%2e%2e/b", "/a/%2e%2E/b?x=1", "/a/.%2e/b", "/a/%2e./b",
])
def test_clean_request_path_refuses(target: str) -> None:
    with pytest.raises(BadRequestPath):
        clean_request_path(target)


@pytest.mark.parametrize(("header", "size", "want"), [
    ("bytes=0-99", 1000, (0, 99)),
    ("bytes=2-5", 1000, (2, 5)),
    ("bytes=500-", 1000, (500, 999)),
    ("bytes=999-", 1000, (999, 999)),
    ("bytes=900-5000", 1000, (900, 999)),  # last clamped
    ("bytes=-100", 1000, (900, 999)),  # suffix
    ("bytes=-5000", 1000, (0, 999)),  # suffix longer than the file: all of it
    ("BYTES = 1-2", 1000, (1, 2)),
    ("bytes=1000-", 1000, UNSATISFIABLE),
    ("bytes=1000-2000", 1000, UNSATISFIABLE),
    ("bytes=-0", 1000, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=-1", 0, UNSATISFIABLE),
    ("bytes=5-2", 1000, None),  # invalid: ignored, whole file
    ("bytes=0-1,5-6", 1000, None),  # multi-range: whole file
    ("items=0-1", 1000, None),
    ("bytes=a-b", 1000, None),
    ("bytes=-", 1000, None),
    ("bytes=1", 1000, None),
    ("bytes=+1-2", 1000, None),
    ("", 1000, None),
])
def test_parse_range(header: str, size: int, want: object) -> None:
    assert parse_range(header, size) == want


def test_response_defaults_and_validation(tmp_path: Path) -> None:
    r = Response(body=b"x")
    assert (r.status, r.content_type, r.file, dict(r.headers)) == (
        200, "application/octet-stream", None, {})
    Response(status=204)
    Response(file=tmp_path / "f", headers={"Cache-Control": "no-cache"})
    with pytest.raises(ValueError, match="not both"):
        Response(body=b"x", file=tmp_path / "f")
    with pytest.raises(ValueError, match="CR, LF"):
        Response(headers={"X-Evil": "a\r\nSet-Cookie: x"})
    with pytest.raises(ValueError, match="CR, LF"):
        Response(content_type="text/plain\nX: y")
    with pytest.raises(ValueError, match="set by the server"):
        Response(headers={"content-length": "5"})
    with pytest.raises(ValueError, match="out of range"):
        Response(status=99)


def test_headers_case_insensitive() -> None:
    h = Headers([("Content-Type", "text/plain"), ("X-A", "1"), ("x-a", "2")])
    assert h["content-type"] == h["CONTENT-TYPE"] == "text/plain"
    assert h["X-a"] == "1, 2"
    assert "content-TYPE" in h and "nope" not in h and 5 not in h
    assert len(h) == 2 and list(h) == ["Content-Type", "X-A"]
    assert h.get("missing") is None


def test_static_app(tmp_path: Path) -> None:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "k.bin").write_bytes(b"k")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "www2").mkdir()
    (tmp_path / "www2" / "s").write_text("s")
    os.symlink(tmp_path / "secret", root / "out")
    os.symlink("../www2", root / "sib")
    os.symlink("sub/k.bin", root / "in")
    app = StaticApp(root)

    def get(path: str, method: str = "GET") -> Response | None:
        return app.handle(method, path, "192.0.2.2", Headers([]), b"")

    r = get("/a.txt")
    assert r is not None and r.file == root.resolve() / "a.txt" and r.content_type == "text/plain"
    assert get("/a.txt", "HEAD") is not None
    assert get("/a.txt?x=1") is not None
    r = get("/in")
    assert r is not None and r.file == root.resolve() / "sub" / "k.bin"
    for path in ["/", "/sub", "/sub/", "/missing", "/out", "/sib/s"]:
        assert get(path) is None, path
    assert get("/a.txt", "POST") is None


def test_http_limits_are_validated() -> None:
    from bootserver.http import HttpLimits

    assert HttpLimits().max_connections >= HttpLimits().max_per_client >= 1
    for bad in ({"max_connections": 0}, {"max_per_client": 0}, {"head_timeout": 0},
                {"idle_timeout": -1}, {"io_timeout": 0}):
        with pytest.raises(ValueError, match="HTTP"):
            HttpLimits(**bad)  # type: ignore[arg-type]
