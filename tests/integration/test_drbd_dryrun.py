"""The storage agent's DRBD steps (issue 12) through the real drbdadm-84 in dry-run mode
(``-d``: it parses the resource file, picks this host's ``on`` section and prints the drbdsetup
and drbdmeta calls it would make).  The host kernel has no drbd module, so nothing reaches a
kernel here: the lab's snodes are where resources run.  Root: a UTS namespace per call gives
drbdadm the snode's host name."""

from __future__ import annotations

import subprocess
from pathlib import Path

from homecloud.agents.drbd import (
    DRBDADM,
    GLOBAL_CONF,
    DrbdStatus,
    Replica,
    ResourceSpec,
    Want,
    render,
    resolve_split_brain_steps,
    steps,
)

SPEC = ResourceSpec("v-web1-4db1f152", 10, 7810, (
    Replica("snode1", "198.51.100.11", "/dev/hc/v-web1-4db1f152",
            meta="/dev/hc/v-web1-4db1f152-md"),
    Replica("snode2", "198.51.100.12", "/dev/hc/v-web1-4db1f152",
            meta="/dev/hc/v-web1-4db1f152-md")))


def dry_run(conf: Path, host: str, cmd: list[str]) -> list[str]:
    """``cmd`` (a step: drbdadm-84 -c FILE SUB... RES) as drbdadm would carry it out on
    ``host``: the drbdsetup / drbdmeta lines it prints."""
    assert cmd[:3] == [DRBDADM, "-c", "/etc/drbd.conf"], cmd
    argv = [DRBDADM, "-d", "-c", str(conf), *cmd[3:]]
    r = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                        *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r.stdout.splitlines()


def test_every_step_is_what_drbdadm_carries_out(tmp_path: Path) -> None:
    conf = tmp_path / "drbd.conf"
    conf.write_text(GLOBAL_CONF + render(SPEC))
    new = steps(Want(SPEC, primary=True, identical=True), None, has_metadata=False)
    create_md, adjust = (dry_run(conf, "snode1", c) for c in new)
    assert create_md == ["drbdmeta 10 v08 /dev/hc/v-web1-4db1f152-md flex-external create-md "
                         "--force"]
    joined = "\n".join(adjust)
    # external metadata: the replicated device is the whole volume
    assert "attach 10 /dev/hc/v-web1-4db1f152 /dev/hc/v-web1-4db1f152-md flexible" in joined
    assert "--on-io-error=detach" in joined and "--c-max-rate=40M" in joined
    # a primary that loses its peer freezes I/O and asks the config node (fence-peer)
    assert "--fencing=resource-and-stonith" in joined
    # snode1's own address first: the section picked by host name; a dead peer is noticed
    # within ping-int + ping-timeout (3 s + 1.5 s)
    assert ("connect v-web1-4db1f152 ipv4:198.51.100.11:7810 ipv4:198.51.100.12:7810 "
            "--protocol=C --ping-int=3 --ping-timeout=15 --timeout=25 "
            "--after-sb-0pri=disconnect --after-sb-1pri=disconnect "
            "--after-sb-2pri=disconnect --rr-conflict=disconnect") in joined
    assert "allow-two-primaries" not in joined
    # on snode2 the same file gives its own side
    assert "connect v-web1-4db1f152 ipv4:198.51.100.12:7810 ipv4:198.51.100.11:7810" in \
        "\n".join(dry_run(conf, "snode2", new[1]))
    fresh = DrbdStatus(10, "Connected", "Secondary", "Secondary", "Inconsistent",
                       "Inconsistent", "C")
    later = steps(Want(SPEC, primary=True, identical=True), fresh, has_metadata=True)
    assert [dry_run(conf, "snode1", c) for c in later[1:]] == [
        ["/usr/lib/drbd/drbdsetup-84 new-current-uuid 10 --clear-bitmap"],
        ["/usr/lib/drbd/drbdsetup-84 primary 10"]]
    discard = resolve_split_brain_steps(SPEC, keep_here=False)
    out = [dry_run(conf, "snode2", c) for c in discard]
    assert out[0] == ["/usr/lib/drbd/drbdsetup-84 secondary 10"]
    assert out[1][0].endswith("--rr-conflict=disconnect --discard-my-data")
