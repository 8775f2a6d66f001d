"""bootserver.clientlog: the MAC that starts every log line about a client."""

from __future__ import annotations

import logging

import pytest

from bootserver import clientlog

MAC = "52:54:00:12:34:56"
log = logging.getLogger("homecloud.test")


def test_known_mac_prefixes_each_line_and_rides_on_the_record(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "homecloud.test"):
        clientlog.for_mac(log, MAC).info("dhcp: %s from %s", "DISCOVER", MAC)
    rec = caplog.records[-1]
    assert rec.getMessage() == f"{MAC}: dhcp: DISCOVER from {MAC}"
    assert rec.mac == MAC  # type: ignore[attr-defined]
    assert rec.name == "homecloud.test"


def test_mac_of_is_asked_lazily_once_and_unknown_is_said(
        caplog: pytest.LogCaptureFixture) -> None:
    asked: list[str] = []

    def mac_of(ip: str) -> str | None:
        asked.append(ip)
        return {"192.0.2.7": MAC}.get(ip)

    quiet = clientlog.for_client(log, "192.0.2.7", mac_of)
    quiet.debug("not emitted")  # below the level: no lookup
    assert asked == []
    with caplog.at_level(logging.INFO, "homecloud.test"):
        quiet.info("HTTP %s: GET %s", "192.0.2.7", "/x")
        quiet.warning("HTTP %s: again", "192.0.2.7")
        clientlog.for_client(log, "192.0.2.8", mac_of).info("HTTP %s: GET /y", "192.0.2.8")
    assert asked == ["192.0.2.7", "192.0.2.8"]
    got = [r.getMessage() for r in caplog.records]
    assert got == [f"{MAC}: HTTP 192.0.2.7: GET /x", f"{MAC}: HTTP 192.0.2.7: again",
                   "unknown-mac: HTTP 192.0.2.8: GET /y"]
    assert caplog.records[-1].client_ip == "192.0.2.8"  # type: ignore[attr-defined]


def test_failing_lookup_and_percent_signs_do_not_break_the_line(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(ip: str) -> str | None:
        raise KeyError(ip)

    with caplog.at_level(logging.INFO, "homecloud.test"):
        clientlog.for_client(log, "192.0.2.9", broken).info("TFTP %s: RRQ %s", "192.0.2.9", "a")
        clientlog.for_mac(log, "odd%sname").info("x %d", 1)
    assert [r.getMessage() for r in caplog.records] == [
        "unknown-mac: TFTP 192.0.2.9: RRQ a", "odd%sname: x 1"]


def test_without_mac_of_lines_are_unchanged() -> None:
    assert clientlog.for_client(log, "192.0.2.7", None) is log
