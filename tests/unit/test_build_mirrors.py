"""Mirrors from fake apt sources (one-line and deb822), env and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import MirrorError
from builder.mirrors import find_mirrors, read_apt_sources, resolve_mirrors

DEB822 = """Types: deb
# a comment
URIs: http://main.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://sec.invalid/debian-security
Suites: bookworm-security
Components: main
"""

THIRD_PARTY = """Types: deb
URIs: https://vendor.invalid/node_20.x
Suites: nodistro
Components: main
"""


def etc(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_deb822(tmp_path: Path) -> None:
    e = etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    m = resolve_mirrors(env={}, etc_apt=e)
    assert (m.main, m.security) == ("http://main.invalid/debian",
                                    "http://sec.invalid/debian-security")


def test_third_party_source_first_is_not_taken_for_debian(tmp_path: Path) -> None:
    e = etc(tmp_path, {"sources.list.d/a-vendor.sources": THIRD_PARTY,
                       "sources.list.d/debian.sources": DEB822})
    assert resolve_mirrors(env={}, etc_apt=e).main == "http://main.invalid/debian"


def test_one_line_format_with_options_and_comments(tmp_path: Path) -> None:
    e = etc(tmp_path, {"sources.list": (
        "# deb http://old.invalid/debian buster main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian/ bookworm main contrib\n"
        "deb-src http://m.invalid/debian bookworm main\n"
        "deb http://s.invalid/debian-security bookworm-security main\n")})
    m = resolve_mirrors(env={}, etc_apt=e)
    assert m.main == "http://m.invalid/debian"  # trailing slash dropped
    assert m.security == "http://s.invalid/debian-security"


def test_legacy_security_suite(tmp_path: Path) -> None:
    e = etc(tmp_path, {"sources.list": "deb http://m.invalid/debian buster main\n"
                                       "deb http://s.invalid/ buster/updates main\n"})
    assert find_mirrors(read_apt_sources(e)) == ("http://m.invalid/debian", "http://s.invalid/")


def test_disabled_and_other_suffixes_ignored(tmp_path: Path) -> None:
    e = etc(tmp_path, {
        "sources.list.d/x.list.disabled": "deb http://no.invalid/debian bookworm main\n",
        "sources.list.d/d.sources": DEB822.replace("Types: deb\n# a", "Enabled: no\nTypes: deb\n#"),
        "sources.list.d/e.sources": DEB822})
    assert resolve_mirrors(env={}, etc_apt=e).main == "http://main.invalid/debian"


def test_env_and_options_override(tmp_path: Path) -> None:
    e = etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    env = {"HC_DEBIAN_MIRROR": "http://env.invalid/debian",
           "HC_DEBIAN_SECURITY_MIRROR": "http://env.invalid/sec"}
    m = resolve_mirrors(env=env, etc_apt=e)
    assert (m.main, m.security) == ("http://env.invalid/debian", "http://env.invalid/sec")
    m = resolve_mirrors("http://opt.invalid/d", None, env=env, etc_apt=e)
    assert (m.main, m.security) == ("http://opt.invalid/d", "http://env.invalid/sec")
    assert m.dib_env()["DIB_DEBIAN_SECURITY_MIRROR"] == "http://env.invalid/sec"


def test_missing_mirrors_are_errors(tmp_path: Path) -> None:
    e = etc(tmp_path, {})
    with pytest.raises(MirrorError, match="HC_DEBIAN_MIRROR"):
        resolve_mirrors(env={}, etc_apt=e)
    e2 = etc(tmp_path / "b", {"sources.list": "deb http://m.invalid/debian bookworm main\n"})
    with pytest.raises(MirrorError, match="HC_DEBIAN_SECURITY_MIRROR"):
        resolve_mirrors(env={}, etc_apt=e2)
    with pytest.raises(MirrorError, match="not an http"):
        resolve_mirrors("ftp.invalid", "http://s.invalid", env={}, etc_apt=e)
