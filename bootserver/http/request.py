"""The request side of the boot path's HTTP server, without sockets: request-target cleaning
(the path percent-decoded exactly once), single byte ranges, case-insensitive headers, and what
an app answers (:class:`Response`) through the :class:`App` protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from homecloud.core.errors import HomecloudError

ALLOWED_METHODS = ("GET", "HEAD", "POST")
DEFAULT_MAX_BODY = 1 << 20
NO_BODY_STATUSES = frozenset({204, 304})


class BadRequestPath(HomecloudError, ValueError):
    """A request target refused at the protocol layer (names the target)."""


@dataclass(frozen=True)
class Response:
    """What an App answers: ``body`` bytes or a ``file`` to stream (not both; neither = empty).

    ``headers`` are extra response headers; Content-Length, Content-Range and
    Transfer-Encoding are the server's and refused here."""

    status: int = 200
    content_type: str = "application/octet-stream"
    body: bytes | None = None
    file: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.body is not None and self.file is not None:
            raise ValueError("Response takes body or file, not both")
        if not 100 <= self.status <= 599:
            raise ValueError(f"Response status {self.status} out of range")
        for name, value in [("Content-Type", self.content_type), *self.headers.items()]:
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"Response header {name!r} contains CR, LF or NUL")
            if name.lower() in ("content-length", "content-range", "transfer-encoding"):
                raise ValueError(f"Response header {name!r} is set by the server")


class App(Protocol):
    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None: ...


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only request headers (repeated fields joined with ', ')."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._d: dict[str, tuple[str, str]] = {}
        for k, v in items:
            lk = k.lower()
            if lk in self._d:
                self._d[lk] = (self._d[lk][0], f"{self._d[lk][1]}, {v}")
            else:
                self._d[lk] = (k, v)

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d


def _has_ctl(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


def clean_request_path(target: str) -> str:
    """The path handed to the app for a request target (see module doc); BadRequestPath."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/"):
        raise BadRequestPath(f"request target {target[:80]!r} is not an absolute path")
    if "\\" in target or "#" in target or _has_ctl(target) or not target.isascii():
        raise BadRequestPath(f"bad characters in request target {target[:80]!r}")
    raw_path, sep, query = target.partition("?")
    if "%2f" in raw_path.lower():
        raise BadRequestPath(f"percent-encoded '/' in {raw_path[:80]!r}")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError as e:
        raise BadRequestPath(f"bad percent-encoding in {raw_path[:80]!r}") from e
    if "\\" in path or "?" in path or _has_ctl(path):
        raise BadRequestPath(f"bad characters in decoded path {path[:80]!r}")
    if ".." in path.split("/"):
        raise BadRequestPath(f"'..' segment in {raw_path[:80]!r}")
    return path + (f"?{query}" if sep and query else "")


UNSATISFIABLE = "unsatisfiable"


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single byte range ``(first, last)`` inclusive for ``size`` bytes, ``UNSATISFIABLE``
    (answer 416), or None (ignore the header and send everything: bad syntax, other units or
    several ranges, which RFC 9110 lets a server ignore)."""
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s or last_s):
        return None
    if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size - 1)
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    last = int(last_s) if last_s else size - 1
    return (first, min(last, size - 1))



def etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
