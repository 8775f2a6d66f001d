"""Debian mirrors for diskimage-builder, derived from the build host's apt configuration.

Order of precedence: explicit option > ``HC_DEBIAN_MIRROR`` / ``HC_DEBIAN_SECURITY_MIRROR`` >
the host's apt sources (``/etc/apt/sources.list``, ``sources.list.d/*.list`` one-line format and
``sources.list.d/*.sources`` deb822).  The main mirror is the first ``deb`` source that carries a
plain release suite (``bookworm``, ``stable``, ...); the security mirror is the first carrying a
``<suite>-security`` (or legacy ``<suite>/updates``) suite.  Nothing here knows a host name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.errors import MirrorError

ENV_MAIN = "HC_DEBIAN_MIRROR"
ENV_SECURITY = "HC_DEBIAN_SECURITY_MIRROR"
_URL_RE = re.compile(r"^(https?|file)://\S+$")


@dataclass(frozen=True)
class AptSource:
    types: tuple[str, ...]
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: str  # file the entry came from


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str

    def dib_env(self) -> dict[str, str]:
        return {"DIB_DISTRIBUTION_MIRROR": self.main, "DIB_DEBIAN_SECURITY_MIRROR": self.security}


def _parse_one_line(text: str, origin: str) -> list[AptSource]:
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # deb [arch=amd64 signed-by=...] URI suite comp...
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("deb", "deb-src"):
            continue
        out.append(
            AptSource((parts[0],), parts[1], (parts[2],), tuple(parts[3:]), origin)
        )
    return out


def _parse_deb822(text: str, origin: str) -> list[AptSource]:
    out: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key: str | None = None
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" not in raw:
                continue
            k, v = raw.split(":", 1)
            key = k.strip().lower()
            fields[key] = v.strip()
        if not fields.get("uris") or fields.get("enabled", "yes").lower() == "no":
            continue
        types = tuple(fields.get("types", "deb").split())
        suites = tuple(fields.get("suites", "").split())
        comps = tuple(fields.get("components", "").split())
        for uri in fields["uris"].split():
            out.append(AptSource(types, uri, suites, comps, origin))
    return out


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every apt source of the host, in apt's reading order."""
    sources: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources += _parse_one_line(main.read_text(errors="replace"), str(main))
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list" and f.is_file():
                sources += _parse_one_line(f.read_text(errors="replace"), str(f))
            elif f.suffix == ".sources" and f.is_file():
                sources += _parse_deb822(f.read_text(errors="replace"), str(f))
    return sources


def _is_security(suite: str) -> bool:
    return suite.endswith("-security") or suite.endswith("/updates")


def _is_release(suite: str) -> bool:
    return "-" not in suite and "/" not in suite


def find_mirrors(sources: list[AptSource]) -> tuple[str | None, str | None]:
    """(main URI, security URI) among Debian sources; None where nothing fits.

    The main mirror is preferably the source carrying the release suite the security suite
    belongs to (``bookworm`` for ``bookworm-security``), so a third-party repository with a
    release-like suite name is not taken for Debian.
    """
    debs = [
        s for s in sources if "deb" in s.types and (not s.components or "main" in s.components)
    ]
    security: str | None = None
    release: str | None = None
    for s in debs:
        sec = [x for x in s.suites if _is_security(x)]
        if sec:
            security = s.uri
            release = re.split(r"-security$|/updates$", sec[0])[0]
            break
    main: str | None = None
    if release:
        main = next((s.uri for s in debs if release in s.suites), None)
    if main is None:
        main = next((s.uri for s in debs if any(_is_release(x) for x in s.suites)), None)
    return main, security


def _check(url: str, what: str) -> str:
    if not _URL_RE.match(url):
        raise MirrorError(f"{what}: {url!r} is not an http(s):// or file:// URL")
    return url.rstrip("/")


def resolve_mirrors(
    main: str | None = None,
    security: str | None = None,
    env: Mapping[str, str] | None = None,
    etc_apt: Path = Path("/etc/apt"),
) -> Mirrors:
    env = os.environ if env is None else env
    main = main or env.get(ENV_MAIN) or None
    security = security or env.get(ENV_SECURITY) or None
    if not (main and security):
        host_main, host_sec = find_mirrors(read_apt_sources(etc_apt))
        main = main or host_main
        security = security or host_sec
    if not main:
        raise MirrorError(
            f"no Debian mirror: none in {etc_apt}/sources.list(.d) and {ENV_MAIN} is unset"
        )
    if not security:
        raise MirrorError(
            f"no Debian security mirror: no '<suite>-security' source in {etc_apt}/sources.list(.d)"
            f" and {ENV_SECURITY} is unset"
        )
    return Mirrors(_check(main, ENV_MAIN), _check(security, ENV_SECURITY))
