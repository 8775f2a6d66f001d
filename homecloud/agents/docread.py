"""The strict reader under the agents' JSON documents (homecloud.agents.protocol and its pool
part homecloud.agents.poolproto): :class:`ProtocolError` naming the field at fault, :class:`Obj`
(typed getters, no key left unread) and the field rules the documents share (names, sha256,
URLs).  Standard library only: this module ships into the node images."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from homecloud.core.errors import HomecloudError
from homecloud.core.ids import BadMac, BadTarget, Target, normalize_mac

SHA_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
K = TypeVar("K", bound=Hashable)


class ProtocolError(HomecloudError, ValueError):
    """A plan or report that is not valid; ``field`` is the path of the value at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Obj:
    """One JSON object being read: typed getters that name the field, and a check that no key
    is left unread."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(where, f"must be an object, got {jtype(value)}")
        self.d: dict[str, Any] = value
        self.where = where
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def raw(self, key: str, required: bool = True) -> object:
        self.seen.add(key)
        if key not in self.d:
            if required:
                raise ProtocolError(self.at(key), "missing")
            return None
        return self.d[key]

    def text(self, key: str, *, required: bool = True, default: str = "",
            nullable: bool = False, max_len: int = 1024) -> Any:
        v = self.raw(key, required)
        if v is None and (nullable or not required):
            return None if nullable else default
        if not isinstance(v, str):
            raise ProtocolError(self.at(key), f"must be a string, got {jtype(v)}")
        if len(v) > max_len:
            raise ProtocolError(self.at(key), f"longer than {max_len} characters")
        return v

    def integer(self, key: str, *, required: bool = True, default: int = 0, lo: int = 0,
            hi: int | None = None) -> int:
        v = self.raw(key, required)
        if v is None and not required:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(self.at(key), f"must be an integer, got {jtype(v)}")
        if v < lo or (hi is not None and v > hi):
            raise ProtocolError(self.at(key), f"{v} out of range ({lo}..{hi if hi else ''})")
        return v

    def choice(self, key: str, choices: tuple[str, ...]) -> Any:
        v = self.text(key)
        if v not in choices:
            raise ProtocolError(self.at(key), f"{v!r} is not one of {', '.join(choices)}")
        return v

    def items(self, key: str, *, required: bool = True) -> list[Any]:
        v = self.raw(key, required)
        if v is None and not required:
            return []
        if not isinstance(v, list):
            raise ProtocolError(self.at(key), f"must be a list, got {jtype(v)}")
        return v

    def mac(self, key: str) -> str:
        v = self.text(key)
        try:
            return normalize_mac(v)
        except BadMac as exc:
            raise ProtocolError(self.at(key), str(exc)) from None

    def target(self, key: str) -> Target:
        v = self.text(key)
        try:
            return Target.parse(v)
        except BadTarget as exc:
            raise ProtocolError(self.at(key), str(exc)) from None

    def done(self) -> None:
        extra = sorted(set(self.d) - self.seen)
        if extra:
            raise ProtocolError(self.at(extra[0]), "unknown key")


def jtype(v: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)


def load_json(text: str | bytes, what: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(what, f"not valid JSON: {exc}") from None


def read_name(o: Obj, key: str) -> str:
    v: str = o.text(key, max_len=128)
    if not NAME_RE.fullmatch(v):
        raise ProtocolError(o.at(key), f"{v!r} is not a name (letters, digits, . _ -; not"
                                       " starting with . _ -)")
    return v


def read_sha(o: Obj, key: str) -> str:
    sha: str = o.text(key)
    if not SHA_RE.fullmatch(sha):
        raise ProtocolError(o.at(key), "not 64 hex digits")
    return sha


def read_url(o: Obj, key: str) -> str:
    url: str = o.text(key, max_len=4096)
    if not re.match(r"^(https?|file)://\S+$", url):
        raise ProtocolError(o.at(key), f"not an http(s) or file URL: {url!r}")
    return url


def first_places(keys: Sequence[K], at: str, field: str, said: Callable[[K, int], str]
                 ) -> dict[K, int]:
    """Each key's index in the list at ``at``; a key seen twice is a ProtocolError at
    ``at[i].field`` saying ``said(key, first index)``."""
    seen: dict[K, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise ProtocolError(f"{at}[{i}].{field}", said(k, seen[k]))
        seen[k] = i
    return seen
