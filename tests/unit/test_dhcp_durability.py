"""Lease journal under write failures: no ACK for a lease that is not on disk, and the journal
heals by itself.

The failures are injected through LeaseTable's ``write``/``fsync`` parameters (a unit test cannot
fill a real disk without root; tests/integration/test_dhcp_durability.py does that on a real
tmpfs).  Everything else is real: real files, the real server state machine.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from bootserver.dhcp import leases as leases_mod
from bootserver.dhcp import options as o
from bootserver.dhcp.leases import LeaseFileError, LeaseTable
from bootserver.dhcp.options import MessageType as MT
from bootserver.dhcp.server import DhcpConfig, DhcpServer
from tests.unit.test_dhcp_server import CLIENT, POOLS, SERVER, Policy, parse, request

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


class Disk:
    """os.write / os.fsync with switchable faults.

    mode None: real; "enospc": write raises ENOSPC; "short": write stores the first half of the
    buffer, then returns 0 (what a file system that just filled up does); "trickle": at most 7
    bytes per call (legal short writes that must be retried); "eio-fsync": fsync raises EIO;
    "tmp-enospc": only writes to the compaction's temporary file fail."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.short_done = False

    def write(self, fd: int, data: memoryview) -> int:
        if self.mode == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.mode == "tmp-enospc" and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.mode == "short":
            if self.short_done:
                return 0
            self.short_done = True
            return os.write(fd, data[:len(data) // 2])
        if self.mode == "trickle":
            return os.write(fd, data[:7])
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.mode == "eio-fsync":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def table(path: Path, disk: Disk) -> LeaseTable:
    lt = LeaseTable(path, write=disk.write, fsync=disk.fsync)
    lt.open()
    return lt


def records(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"journal ends in a torn line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.splitlines()]


def reloaded(path: Path) -> LeaseTable:
    lt = LeaseTable(path)
    lt.open()
    lt.close()
    return lt


def test_enospc_on_append_raises_names_file_and_errno_and_binds_nothing(tmp_path: Path) -> None:
    path, disk = tmp_path / "leases.jsonl", Disk()
    lt = table(path, disk)
    lt.bind(MAC1, "192.0.2.10", 600)
    disk.mode = "enospc"
    with pytest.raises(LeaseFileError) as ei:
        lt.bind(MAC2, "192.0.2.11", 600)
    assert str(path) in str(ei.value) and "ENOSPC" in str(ei.value)
    assert ei.value.errno == errno.ENOSPC
    assert lt.lease_of(MAC2) is None  # not bound in memory either
    disk.mode = None  # room again: the next record goes through
    lt.bind(MAC3, "192.0.2.12", 600)
    lt.close()
    assert [r["mac"] for r in records(path)] == [MAC1, MAC3]
    again = reloaded(path)
    assert again.lease_of(MAC1) is not None and again.lease_of(MAC3) is not None


def test_short_write_is_cut_back_and_never_costs_the_next_record(tmp_path: Path) -> None:
    path, disk = tmp_path / "leases.jsonl", Disk()
    lt = table(path, disk)
    lt.bind(MAC1, "192.0.2.10", 600)
    disk.mode = "short"
    with pytest.raises(LeaseFileError, match="short write"):
        lt.bind(MAC2, "192.0.2.11", 600)
    assert records(path)[-1]["mac"] == MAC1  # the half line is gone
    assert not lt.broken
    disk.mode = None
    lt.bind(MAC3, "192.0.2.12", 600)
    lt.close()
    assert [r["mac"] for r in records(path)] == [MAC1, MAC3]


def test_legal_short_writes_are_completed(tmp_path: Path) -> None:
    path, disk = tmp_path / "leases.jsonl", Disk()
    lt = table(path, disk)
    disk.mode = "trickle"
    lt.bind(MAC1, "192.0.2.10", 600, "a-hostname-long-enough-for-many-7-byte-writes")
    lt.close()
    assert records(path)[0]["hostname"] == "a-hostname-long-enough-for-many-7-byte-writes"


def test_failed_fsync_breaks_the_journal_until_a_rewrite_succeeds(tmp_path: Path) -> None:
    """After a failed fsync a later fsync may succeed without the lost pages (Linux reports a
    writeback error once): the journal is rewritten whole before anything counts as durable."""
    path, disk = tmp_path / "leases.jsonl", Disk()
    lt = table(path, disk)
    lt.deferred_sync = True  # as in the serving loop (group commit)
    lt.bind(MAC1, "192.0.2.10", 600)
    lt.sync()
    lt.bind(MAC2, "192.0.2.11", 600)
    disk.mode = "eio-fsync"
    with pytest.raises(LeaseFileError, match="EIO"):
        lt.sync()
    assert lt.broken
    with pytest.raises(LeaseFileError, match="cannot rewrite"):
        lt.sync()  # still failing: still not durable
    assert not list(tmp_path.glob("*.tmp"))  # a failed rewrite leaves no temporary file behind
    disk.mode = None
    lt.sync()  # heals: the whole state rewritten (temporary file, fsync, rename, dir fsync)
    assert not lt.broken
    lt.bind(MAC3, "192.0.2.12", 600)
    lt.sync()
    lt.close()
    assert sorted(str(r["mac"]) for r in records(path)) == [MAC1, MAC2, MAC3]


def test_failed_compaction_keeps_the_journal_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The audit's bug: a failed rewrite dropped the file handle and every later record was
    silently not written."""
    monkeypatch.setattr(leases_mod, "COMPACT_MIN", 3)
    path, disk = tmp_path / "leases.jsonl", Disk()
    lt = table(path, disk)
    disk.mode = "tmp-enospc"
    with caplog.at_level(logging.ERROR, "homecloud.dhcp"):
        for i in range(20):  # renewals: the journal grows, the live state does not
            lt.bind(MAC1 if i % 2 else MAC2, "192.0.2.11" if i % 2 else "192.0.2.12", 600 + i)
    assert "compaction postponed" in caplog.text and str(path) in caplog.text
    lt.close()
    assert len(records(path)) == 20  # every record written although no rewrite succeeded
    again = reloaded(path)
    ls = again.lease_of(MAC1)
    assert ls is not None and ls.expires == lt.lease_of(MAC1).expires  # type: ignore[union-attr]


def test_open_on_a_full_disk_keeps_the_journal_and_cuts_its_torn_tail(tmp_path: Path) -> None:
    path, disk = tmp_path / "leases.jsonl", Disk()
    good = {"event": "bound", "mac": MAC1, "ip": "192.0.2.10", "expires": 4e9, "hostname": None}
    path.write_text(json.dumps(good) + "\n" + '{"event": "bound", "mac": "52:54:00:0')
    disk.mode = "tmp-enospc"  # the compaction at open fails
    lt = table(path, disk)
    assert lt.lease_of(MAC1) is not None
    disk.mode = None
    lt.bind(MAC2, "192.0.2.11", 600)
    lt.close()
    assert [r["mac"] for r in records(path)] == [MAC1, MAC2]


def test_torn_bytes_glued_to_a_record_do_not_cost_it(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A journal written by a version without the cut-back: half a record, then a whole one on
    the same line.  The whole one is kept."""
    path = tmp_path / "leases.jsonl"
    rec = {"event": "bound", "expires": 4e9, "hostname": None, "ip": "192.0.2.11", "mac": MAC2}
    path.write_text(json.dumps({"event": "bound", "mac": MAC1, "ip": "192.0.2.10",
                                "expires": 4e9}) + "\n"
                    + '{"event": "bound", "expires": 4e9, "hos' + json.dumps(rec) + "\n"
                    + '{"event": "bound", "mac": "52:54:00:00:00:03", "ip": "192.0.2.1')
    lt = LeaseTable(path)
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        lt.open()
    assert lt.lease_of(MAC1) is not None and lt.lease_of(MAC2) is not None
    assert lt.lease_of(MAC3) is None
    assert "bad line 2" in caplog.text and "torn last line 3" in caplog.text
    lt.close()


# --- the server: no ACK unless the lease is on disk ----------------------------------------------

def server(tmp_path: Path, disk: Disk) -> DhcpServer:
    cfg = DhcpConfig(interface="veth0", server_ip=SERVER, pools=POOLS,
                     lease_file=tmp_path / "leases.jsonl")
    lt = LeaseTable(cfg.lease_file, write=disk.write, fsync=disk.fsync)
    srv = DhcpServer(cfg, Policy(), leases=lt)
    srv.load()
    return srv


def _request(mac: str, ip: str, xid: int) -> bytes:
    return request(MT.REQUEST, mac, xid=xid, options={o.SERVER_ID: o.ip_bytes(SERVER),
                                                      o.REQUESTED_IP: o.ip_bytes(ip)})


@pytest.mark.parametrize("fault", ["enospc", "short", "eio-fsync"])
def test_no_ack_while_the_journal_cannot_be_written(tmp_path: Path, fault: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk()
    srv = server(tmp_path, disk)
    offer = parse(srv.handle(request(MT.DISCOVER, MAC1), CLIENT, 67))
    disk.mode = fault
    with caplog.at_level(logging.ERROR, "homecloud.dhcp"):
        assert srv.handle(_request(MAC1, offer.yiaddr, 1), CLIENT, 67) is None
    assert "NOT acknowledging" in caplog.text and MAC1 in caplog.text
    assert str(tmp_path / "leases.jsonl") in caplog.text
    assert {"enospc": "ENOSPC", "short": "ENOSPC", "eio-fsync": "EIO"}[fault] in caplog.text
    # offers are tentative and in memory: still answered
    assert parse(srv.handle(request(MT.DISCOVER, MAC2), CLIENT, 67)).message_type == MT.OFFER
    disk.mode = None  # room again: the client's retransmission is acknowledged
    ack = parse(srv.handle(_request(MAC1, offer.yiaddr, 2), CLIENT, 67))
    assert ack.message_type == MT.ACK and ack.yiaddr == offer.yiaddr
    srv.stop()
    assert reloaded(tmp_path / "leases.jsonl").lease_of(MAC1) is not None


def test_release_that_cannot_be_written_keeps_the_lease(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk()
    srv = server(tmp_path, disk)
    offer = parse(srv.handle(request(MT.DISCOVER, MAC1), CLIENT, 67))
    assert parse(srv.handle(_request(MAC1, offer.yiaddr, 1), CLIENT, 67)).message_type == MT.ACK
    disk.mode = "enospc"
    with caplog.at_level(logging.ERROR, "homecloud.dhcp"):
        srv.handle(request(MT.RELEASE, MAC1, ciaddr=offer.yiaddr), CLIENT, 67)
    assert "RELEASE" in caplog.text and "not recorded" in caplog.text
    assert srv.leases.lease_of(MAC1) is not None
    disk.mode = None
    srv.stop()
