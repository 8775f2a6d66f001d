"""hcboot serve's defaults as documented: proxy mode (CLI and systemd unit, issue 13 item 8)
and the HTTP limits, whose flags and defaults docs/security.md lists."""

from __future__ import annotations

import re
from pathlib import Path

import click

from bootserver.http import HttpLimits
from homecloud.serve import serve

ROOT = Path(__file__).resolve().parents[2]


def _option(name: str) -> click.Option:
    for p in serve.params:
        if isinstance(p, click.Option) and f"--{name}" in p.opts:
            return p
    raise AssertionError(f"hcboot serve has no --{name}")


def test_proxy_is_the_default_mode_of_cli_and_unit() -> None:
    assert _option("mode").default == "proxy"
    unit = (ROOT / "systemd" / "hcboot.service").read_text()
    assert "Environment=HCBOOT_MODE=proxy" in unit and "--mode ${HCBOOT_MODE}" in unit


def test_http_limit_flags_match_defaults_and_docs() -> None:
    lim = HttpLimits()
    doc = (ROOT / "docs" / "security.md").read_text()
    for flag, value, shown in (
            ("http-max-connections", lim.max_connections, f"{lim.max_connections}"),
            ("http-max-per-client", lim.max_per_client, f"{lim.max_per_client}"),
            ("http-head-timeout", lim.head_timeout, f"{lim.head_timeout:g} s"),
            ("http-idle-timeout", lim.idle_timeout, f"{lim.idle_timeout:g} s"),
            ("http-io-timeout", lim.io_timeout, f"{lim.io_timeout:g} s")):
        assert _option(flag).default == value, flag
        row = next((line for line in doc.splitlines() if f"`--{flag} " in line), None)
        assert row is not None, f"docs/security.md lists no --{flag}"
        assert re.search(rf"\| {re.escape(shown)} \|", row), (flag, shown, row)
