"""Lease journal (append-only JSON lines, torn last line) and pool allocation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bootserver.dhcp.leases import LeaseTable
from bootserver.dhcp.pool import Pool, PoolConfig, PoolConfigError


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def test_bind_is_journaled_and_replayed(tmp_path: Path) -> None:
    path = tmp_path / "leases.jsonl"
    clock = Clock()
    lt = LeaseTable(path, clock=clock)
    lt.open()
    lt.bind(MAC1, "192.0.2.10", 3600, "n1")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"event": "bound", "mac": MAC1, "ip": "192.0.2.10",
                                     "expires": clock.t + 3600, "hostname": "n1"}
    lt.close()
    again = LeaseTable(path, clock=clock)
    again.open()
    ls = again.lease_of(MAC1)
    assert ls is not None and ls.ip == "192.0.2.10" and ls.hostname == "n1"
    again.close()


def test_torn_last_line_is_skipped_and_logged(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "leases.jsonl"
    good = {"event": "bound", "mac": MAC1, "ip": "192.0.2.10", "expires": 2e6, "hostname": None}
    path.write_text(json.dumps(good) + "\n" + '{"event": "bound", "mac": "52:54:00:00:00:02", "i')
    lt = LeaseTable(path, clock=Clock())
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        lt.open()
    assert "torn last line 2" in caplog.text and str(path) in caplog.text
    assert lt.skipped_lines == [2]
    assert lt.lease_of(MAC1) is not None and lt.lease_of(MAC2) is None
    # the journal was rewritten whole: a new record starts on its own line
    lt.bind(MAC2, "192.0.2.11", 60)
    lt.close()
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["mac"] for r in recs] == [MAC1, MAC2]


def test_bad_middle_line_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "leases.jsonl"
    rec = {"event": "bound", "mac": MAC1, "ip": "192.0.2.10", "expires": 2e6}
    path.write_text("garbage\n" + json.dumps(rec) + "\n")
    lt = LeaseTable(path, clock=Clock())
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        lt.open()
    assert "bad line 1" in caplog.text
    assert lt.lease_of(MAC1) is not None
    lt.close()


def test_release_decline_and_compaction(tmp_path: Path) -> None:
    path = tmp_path / "leases.jsonl"
    clock = Clock()
    lt = LeaseTable(path, clock=clock)
    lt.open()
    lt.bind(MAC1, "192.0.2.10", 100)
    lt.bind(MAC2, "192.0.2.11", 100)
    assert lt.release(MAC1, "192.0.2.10")
    assert not lt.release(MAC1, "192.0.2.10")
    lt.decline(MAC2, "192.0.2.11", 600)
    assert not lt.is_free_for("192.0.2.11", MAC1)
    lt.close()
    assert len(path.read_text().splitlines()) == 4
    clock.t += 10
    again = LeaseTable(path, clock=clock)
    again.open()
    assert again.lease_of(MAC1) is None and again.lease_of(MAC2) is None
    assert not again.is_free_for("192.0.2.11", MAC1)  # the decline survives a restart
    assert len(path.read_text().splitlines()) == 1  # compacted: only the decline is left
    clock.t += 600
    assert again.is_free_for("192.0.2.11", MAC1)
    again.close()


def test_offers_reserve_expire_and_rebind_moves_ip() -> None:
    clock = Clock()
    lt = LeaseTable(None, clock=clock, offer_time=60)
    lt.offer(MAC1, "192.0.2.10")
    assert lt.offered_ip(MAC1) == "192.0.2.10"
    assert not lt.is_free_for("192.0.2.10", MAC2) and lt.is_free_for("192.0.2.10", MAC1)
    clock.t += 61
    assert lt.is_free_for("192.0.2.10", MAC2)
    assert lt.offered_ip(MAC1) is None
    lt.bind(MAC1, "192.0.2.10", 100)
    lt.bind(MAC1, "192.0.2.12", 100)
    assert "192.0.2.10" not in lt.by_ip and lt.by_ip["192.0.2.12"].mac == MAC1
    clock.t += 101  # expired leases free their address for others
    assert lt.is_free_for("192.0.2.12", MAC2)


def test_pool_next_fit_wraps_and_skips_taken() -> None:
    pool = Pool(PoolConfig("192.0.2.0/24", "192.0.2.10", "192.0.2.12"))
    taken: set[str] = set()

    def free(ip: str) -> bool:
        return ip not in taken

    got = []
    for _ in range(3):
        ip = pool.next_free(free)
        assert ip is not None
        taken.add(ip)
        got.append(ip)
    assert got == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert pool.next_free(free) is None
    taken.discard("192.0.2.11")
    assert pool.next_free(free) == "192.0.2.11"
    assert pool.contains("192.0.2.200") and not pool.in_range("192.0.2.200")
    assert not pool.usable("192.0.2.255") and pool.netmask == "255.255.255.0"


@pytest.mark.parametrize("cfg, needle", [
    (PoolConfig("192.0.2.0/24", "192.0.2.10", "198.51.100.5"), "not inside"),
    (PoolConfig("192.0.2.0/24", "192.0.2.20", "192.0.2.10"), "after end"),
    (PoolConfig("192.0.2.0/24", "192.0.2.0", "192.0.2.10"), "network or broadcast"),
    (PoolConfig("192.0.2.1/24", "192.0.2.10", "192.0.2.20"), "192.0.2.1/24"),
    (PoolConfig("192.0.2.0/24", "192.0.2.10", "192.0.2.20", router="x"), "192.0.2.0/24"),
])
def test_pool_config_errors(cfg: PoolConfig, needle: str) -> None:
    with pytest.raises(PoolConfigError, match=needle):
        Pool(cfg)


def test_journal_is_compacted_while_running(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import bootserver.dhcp.leases as leases_mod
    monkeypatch.setattr(leases_mod, "COMPACT_MIN", 10)
    path = tmp_path / "leases.jsonl"
    lt = LeaseTable(path, clock=Clock())
    lt.open()
    for i in range(25):  # the same two clients renewing over and over
        lt.bind(MAC1, "192.0.2.10", 100)
        lt.bind(MAC2, "192.0.2.11", 100 + i)
    lt.close()
    assert len(path.read_text().splitlines()) <= 11
    again = LeaseTable(path, clock=Clock())
    again.open()
    ls = again.lease_of(MAC2)
    assert ls is not None and ls.expires == Clock().t + 124  # the last bind survived
    again.close()
