"""bootserver.tftp without sockets: the path rule, the confined open, option negotiation and
the resolver-before-filesystem order (the network side is tests/integration/test_tftp_server.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootserver import tftp
from bootserver.tftp import (
    MAX_BLKSIZE,
    TftpNotFound,
    TftpPathError,
    TftpServer,
    negotiate_options,
    normalize_tftp_path,
    open_confined,
)


@pytest.mark.parametrize(("raw", "want"), [
    ("pxelinux.0", "pxelinux.0"),
    ("/pxelinux.0", "pxelinux.0"),  # PXE ROMs often send a leading slash
    ("//boot//x86_64/./vmlinuz", "boot/x86_64/vmlinuz"),
    ("pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
    ("/etc/passwd", "etc/passwd"),  # absolute names are relative to the root
    ("images/hnode/20260101/vmlinuz", "images/hnode/20260101/vmlinuz"),
    ("a b~", "a b~"),
    ("...", "..."),  # a name, not a parent reference
])
def test_normalize_accepts(raw: str, want: str) -> None:
    assert normalize_tftp_path(raw) == want


@pytest.mark.parametrize("raw", [
    "", "/", "//", ".", "./", "..", "../x", "/../x", "a/../b", "a/..", "a/../../etc/passwd",
    "a\\b", "..\\..\\x", "a\x00b", "pxelinux.0\x00.png", "a\nb", "a\tb", "a\x7fb",
    "caf\u00e9", "x" * 2000,
])
def test_normalize_refuses(raw: str) -> None:
    with pytest.raises(TftpPathError):
        normalize_tftp_path(raw)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """<tmp>/srv/tftp (the root) next to <tmp>/srv/tftp2 (a sibling sharing its prefix)."""
    root = tmp_path / "srv" / "tftp"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    sib = tmp_path / "srv" / "tftp2"
    sib.mkdir()
    (sib / "secret").write_bytes(b"secret\n")
    (tmp_path / "outside").write_bytes(b"outside\n")
    os.symlink("sub/inner.txt", root / "link-in")
    os.symlink("sub", root / "dirlink-in")
    os.symlink(str(tmp_path / "outside"), root / "link-out")
    os.symlink("../tftp2/secret", root / "sib-file")
    os.symlink("../tftp2", root / "sib-dir")
    os.symlink("/etc", root / "etc-dir")
    os.mkfifo(root / "fifo")
    return root


def _read(root: Path, rel: str) -> bytes:
    fd = open_confined(Path(os.path.realpath(root)), rel)
    with os.fdopen(fd, "rb") as f:
        return f.read()


@pytest.mark.parametrize(("rel", "want"), [
    ("hello.txt", b"hello\n"),
    ("/hello.txt", b"hello\n"),
    ("sub/inner.txt", b"inner\n"),
    ("link-in", b"inner\n"),  # symlinks that stay inside are followed
    ("dirlink-in/inner.txt", b"inner\n"),
])
def test_open_confined_serves(tree: Path, rel: str, want: bytes) -> None:
    assert _read(tree, rel) == want


@pytest.mark.parametrize("rel", [
    "link-out", "sib-file", "sib-dir/secret", "etc-dir/passwd", "../tftp2/secret",
    "sub/../../tftp2/secret",
])
def test_open_confined_refuses_escapes(tree: Path, rel: str) -> None:
    with pytest.raises(TftpPathError):
        _read(tree, rel)


@pytest.mark.parametrize("rel", ["missing", "sub", "fifo", "hello.txt/x", "/tftp2/secret"])
def test_open_confined_not_found(tree: Path, rel: str) -> None:
    # "/tftp2/secret" is <root>/tftp2/secret (absent), never the sibling directory; the FIFO
    # is opened non-blocking and refused (no hang).
    with pytest.raises(TftpNotFound):
        _read(tree, rel)


def test_open_confined_sibling_prefix_absolute(tree: Path) -> None:
    # tftpy serves a name starting with the root path as an absolute path: we never do.
    sibling = str(tree.parent / "tftp2" / "secret")
    with pytest.raises(TftpNotFound):
        _read(tree, sibling)


def test_root_itself_a_symlink(tree: Path, tmp_path: Path) -> None:
    os.symlink(tree, tmp_path / "root-link")
    assert _read(tmp_path / "root-link", "sub/inner.txt") == b"inner\n"


@pytest.mark.parametrize(("requested", "want"), [
    ({"blksize": "1468"}, {"blksize": 1468}),
    ({"blksize": "512"}, {"blksize": 512}),
    ({"blksize": "8"}, {"blksize": 8}),
    ({"blksize": "65464"}, {"blksize": 65464}),
    ({"blksize": "65465"}, {"blksize": MAX_BLKSIZE}),  # RFC 2348 max, not tftpy's 65536
    ({"blksize": "99999999999999999999"}, {"blksize": MAX_BLKSIZE}),
    ({"blksize": "7"}, {}),
    ({"blksize": "0"}, {}),
    ({"blksize": "-5"}, {}),
    ({"blksize": "abc"}, {}),  # tftpy raises ValueError here and its thread dies
    ({"BLKSIZE": "1024"}, {"blksize": 1024}),  # option names are case-insensitive
    ({"tsize": "0"}, {"tsize": 0}),
    ({"tsize": "0", "blksize": "1468"}, {"tsize": 0, "blksize": 1468}),
    ({"timeout": "5"}, {"timeout": 5}),
    ({"timeout": "0"}, {}),
    ({"timeout": "256"}, {}),
    ({"windowsize": "8"}, {"windowsize": 8}),  # RFC 7440
    ({"windowsize": "1000"}, {"windowsize": tftp.MAX_WINDOWSIZE}),  # lowered to the maximum
    ({"windowsize": "64", "blksize": "65464"}, {"windowsize": 2, "blksize": 65464}),  # bytes
    ({"windowsize": "0"}, {}),
    ({"windowsize": "65536"}, {}),
    ({"timeout": "255"}, {}),  # RFC 2349: not honoured -> declined, never another value
    ({"timeout": str(tftp.MAX_TIMEOUT)}, {"timeout": tftp.MAX_TIMEOUT}),
    ({"blksize": "\u0661\u0662\u0663"}, {}),  # int() takes Arabic-Indic digits; RFC: ASCII
    ({"multicast": ""}, {}),
])
def test_negotiate_options(requested: dict[str, str], want: dict[str, int]) -> None:
    assert negotiate_options(requested) == want


# -- resolver order and the BytesIO pitfall (no sockets: open_for is what an RRQ calls) ----------

def _served(server: TftpServer, name: str, ip: str = "192.0.2.9") -> bytes:
    f = server.open_for(name, ip)
    try:
        # tftpy reads .name when it unlocks: what we hand it must be a real file, not BytesIO.
        assert hasattr(f, "name") and hasattr(f, "fileno")
        return f.read()
    finally:
        f.close()


def test_resolver_runs_before_filesystem(tree: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "vmlinuz").write_bytes(b"kernel\n")
    calls: list[tuple[str, str]] = []

    def resolver(path: str, client_ip: str) -> bytes | Path | None:
        calls.append((path, client_ip))
        if path == "hello.txt":  # exists on disk: tftpy's dyn_file_func would never see it
            return b"from resolver\n"
        if path.startswith("pxelinux.cfg/01-"):
            return f"DEFAULT {path[16:]} for {client_ip}\n".encode()
        if path == "images/hnode/1/vmlinuz":
            return store / "vmlinuz"
        if path == "rel":
            return Path("sub/inner.txt")
        if path == "rel-out":
            return Path("link-out")
        return None

    s = TftpServer(tree, "127.0.0.1", 0, resolver)
    assert _served(s, "/hello.txt") == b"from resolver\n"
    assert calls[0] == ("hello.txt", "192.0.2.9")  # normalised name and client IP
    assert _served(s, "pxelinux.cfg/01-52-54-00-12-34-56") == (
        b"DEFAULT 52-54-00-12-34-56 for 192.0.2.9\n")
    assert _served(s, "images/hnode/1/vmlinuz") == b"kernel\n"
    assert _served(s, "rel") == b"inner\n"
    assert _served(s, "sub/inner.txt") == b"inner\n"  # None -> filesystem
    with pytest.raises(tftp._Refused) as e:
        s.open_for("rel-out", "192.0.2.9")  # relative resolver paths are confined too
    assert e.value.code == tftp.ERR_ACCESS
    with pytest.raises(tftp._Refused) as e:
        s.open_for("../hello.txt", "192.0.2.9")  # refused before the resolver is asked
    assert e.value.code == tftp.ERR_ACCESS
    assert ("../hello.txt", "192.0.2.9") not in calls


def test_resolver_errors_are_tftp_errors(tree: Path, tmp_path: Path) -> None:
    def resolver(path: str, client_ip: str) -> bytes | Path | None:
        if path == "boom":
            raise RuntimeError("template exploded")
        if path == "gone":
            return tmp_path / "does-not-exist"
        if path == "dir":
            return tmp_path
        return None

    s = TftpServer(tree, "127.0.0.1", 0, resolver)
    for name, code in [("boom", tftp.ERR_UNDEFINED), ("gone", tftp.ERR_NOT_FOUND),
                       ("dir", tftp.ERR_NOT_FOUND), ("missing", tftp.ERR_NOT_FOUND),
                       ("link-out", tftp.ERR_ACCESS)]:
        with pytest.raises(tftp._Refused) as e:
            s.open_for(name, "192.0.2.9")
        assert e.value.code == code, name


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        TftpServer(tmp_path / "nope", "127.0.0.1", 0)
