"""Generation identifiers as the real drbdmeta writes and prints them (issue 12): metadata on
loop devices (drbdmeta works on metadata offline: no drbd kernel module, no network), set to the
states two replicas reach, read back with ``get-gi`` and compared by homecloud.agents.drbd_gi."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.agents import drbd_gi as gi
from homecloud.agents.drbd_gi import parse_gi, relation

A, B, C = "1111111111111110", "2222222222222220", "3333333333333330"


def drbdmeta(dev: str, *cmd: str) -> str:
    # minor 200: no /dev/drbd200 is attached on this host (no drbd module): offline metadata
    r = subprocess.run(["drbdmeta", "--force", "/dev/drbd200", "v08", dev, "flex-external",
                        *cmd], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


@pytest.fixture()
def two_mds(tmp_path: Path) -> Iterator[tuple[str, str]]:
    loops: list[str] = []
    try:
        for name in ("snode1", "snode2"):
            f = tmp_path / f"{name}-md.img"
            f.write_bytes(b"")
            subprocess.run(["truncate", "-s", "8M", str(f)], check=True)
            r = subprocess.run(["losetup", "-f", "--show", str(f)], capture_output=True,
                               text=True, check=True)
            loops.append(r.stdout.strip())
            drbdmeta(loops[-1], "create-md")
        yield loops[0], loops[1]
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], check=False)


def read(dev: str) -> gi.GenerationIds:
    return parse_gi(drbdmeta(dev, "get-gi"), what=dev)


def test_fresh_metadata_on_both_sides(two_mds: tuple[str, str]) -> None:
    one, two = two_mds
    assert relation(read(one), read(two)) == gi.BOTH_NEW


@pytest.mark.parametrize(("local", "peer", "want"), [
    (f"{A}:{B}", f"{A}:{C}", gi.IDENTICAL),
    (f"{B}:{A}", f"{A}:0", gi.LOCAL_AHEAD),        # this side wrote while the peer was away
    (f"{B}:{A}", f"{C}:{A}", gi.SPLIT_BRAIN),      # both wrote since they parted at A
    (f"{A}:0", f"{B}:0", gi.UNRELATED),
])
def test_states_written_by_drbdmeta(two_mds: tuple[str, str], local: str, peer: str,
                                    want: str) -> None:
    one, two = two_mds
    drbdmeta(one, "set-gi", f"{local}:0:0:1:1:0:0:0:0:0")
    drbdmeta(two, "set-gi", f"{peer}:0:0:1:1:0:0:0:0:0")
    mine, theirs = read(one), read(two)
    assert mine.text().split(":")[:2] == [u.rjust(16, "0") for u in local.split(":")]
    assert relation(mine, theirs) == want
