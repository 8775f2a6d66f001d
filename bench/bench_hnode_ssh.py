#!/usr/bin/env python3
"""What the SSH path to the hnode agents costs, on veths between test namespaces.

Run as root from the repository root::

    python3 bench/bench_hnode_ssh.py [--calls 20] [--stream-mib 64] [--runs 3]

Builds the world of tests/integration/test_hnode_ssh.py (a config-node namespace with a bridge,
two hnode namespaces each with a real ``sshd -D``, authorized_keys from ``hc-hnode-agent trust``)
and measures (medians):

* ``ssh true``: one admin-key SSH session running ``true`` (connect + key exchange + auth);
* ``facts``: ``SshHostDriver.facts()`` = an SSH session into the forced command, the Python
  agent starting, a (stand-in) ``xl info`` and ``xl list``, JSON both ways;
* ``migrate stream``: ``SshHostDriver.migrate()`` with a stand-in xl whose ``migrate`` pipes
  ``--stream-mib`` MiB through ``xl migrate -s``'s SSH command into the target's
  ``migrate-gate`` -> stand-in ``xl migrate-receive`` (``cat > /dev/null``): the transport's
  MB/s between two hnodes (real xl adds its own protocol; under TCG the emulated NIC, ~2 MB/s,
  is the limit, not SSH).

Xen cannot run here, hence the stand-in xl.  Namespaces are removed and sshd stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from homecloud.agents import hntrust  # noqa: E402
from homecloud.control.hosts import SshHostDriver, ensure_config_key  # noqa: E402
from homecloud.core.model import Nic, Node  # noqa: E402
from tests.support.netns import Lab  # noqa: E402
from tests.support.sshd import keygen, start_sshd  # noqa: E402

LAUNCHER = REPO / "elements" / "hc-xen-dom0" / "static" / "usr" / "local" / "sbin" / \
    "hc-hnode-agent"
ADDR = {"hn1": "198.51.100.11", "hn2": "198.51.100.12"}
MAC = {"hn1": "52:54:00:4b:00:01", "hn2": "52:54:00:4b:00:02"}
XL = r"""#!/bin/sh
d=$(dirname "$0")
case "$1" in
  info) printf 'xen_major : 4\nxen_minor : 17\ntotal_memory : 4095\nfree_memory : 3012\n' ;;
  list) printf 'Name ID Mem VCPUs State Time(s)\nDomain-0 0 512 1 r----- 1.0\n'
        printf 'web1 3 384 1 -b---- 2.0\n' ;;
  migrate) head -c "$(cat "$d/stream_bytes")" /dev/zero | sh -c "exec $3 $5 xl migrate-receive" ;;
  migrate-receive) cat > /dev/null ;;
esac
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--stream-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hc-bench-ssh-") as t, Lab() as lab:
        tmp = Path(t)
        cn = lab.netns("cn")
        br = lab.bridge(cn, "br0", "198.51.100.1/24")
        cfg_key = ensure_config_key(tmp / "cn")
        admin = tmp / "admin"
        keygen(admin, "admin")
        hosts = {}
        for name in ("hn1", "hn2"):
            ns = lab.netns(name)
            lab.port(cn, br, ns, "eth0")
            lab.addr(ns, "eth0", f"{ADDR[name]}/24")
            d = tmp / name
            d.mkdir()
            (d / "xl").write_text(XL)
            (d / "xl").chmod(0o755)
            (d / "caps").write_text("control_d\n")
            (d / "stream_bytes").write_text(str(a.stream_mib << 20))
            sshd = start_sshd(lab, ns, ADDR[name], d / "sshd")
            mig = hntrust.ensure_migration_key(d / "state" / "migration_key")
            hosts[name] = (d, sshd, mig)
        for name, (d, sshd, _mig) in hosts.items():
            peers = [{"name": p, "address": ADDR[p], "host_key": hosts[p][1].host_key,
                      "migration_key": hosts[p][2].bare} for p in hosts if p != name]
            doc = {"version": 1, "peers": peers,
                   "config_keys": [cfg_key.with_suffix(".pub").read_text().strip()],
                   "admin_keys": [admin.with_suffix(".pub").read_text().strip()]}
            (d / "trust.json").write_text(json.dumps(doc))
            agent = (f"/usr/bin/env PYTHONPATH={REPO} HC_HNODE_NAME={name} "
                     f"HC_HNODE_STATE={d / 'state'} HC_HNODE_XL={d / 'xl'} "
                     f"HC_HNODE_XEN_CAPS={d / 'caps'} {sys.executable} {LAUNCHER}")
            subprocess.run([sys.executable, str(LAUNCHER), "trust", str(d / "trust.json")],
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                "HC_HNODE_STATE": str(d / "state"), "HC_HNODE_AGENT": agent,
                                "HC_HNODE_AUTHORIZED_KEYS": str(sshd.authorized_keys)},
                           check=True, capture_output=True)
        node = {n: Node(n, "hnode", (Nic(MAC[n], ip=ADDR[n]),)) for n in hosts}
        drv = SshHostDriver(cfg_key, lambda n: hosts[n.name][1].host_key, tmp / "known",
                            prefix=cn.cmd())
        known = tmp / "admin_known"
        known.write_text(f"{ADDR['hn1']} {hosts['hn1'][1].host_key}\n")
        ssh_true = cn.cmd("ssh", "-i", str(admin), "-l", "root", "-o", "BatchMode=yes",
                          "-o", f"UserKnownHostsFile={known}", "-o", "IdentitiesOnly=yes",
                          ADDR["hn1"], "true")
        res: dict[str, list[float]] = {"ssh_true_s": [], "facts_s": [], "migrate_mb_s": []}
        for _ in range(a.calls):
            t0 = time.perf_counter()
            subprocess.run(ssh_true, check=True, capture_output=True)
            res["ssh_true_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            drv.facts(node["hn1"])
            res["facts_s"].append(time.perf_counter() - t0)
        for _ in range(a.runs):
            r = drv.migrate(node["hn1"], "web1", node["hn2"], lambda s: None)
            res["migrate_mb_s"].append(a.stream_mib * 1.048576 / r.seconds)
        med = {k: statistics.median(v) for k, v in res.items()}
        if a.json:
            print(json.dumps({"runs": res, "median": med}, indent=1))
        else:
            print(f"ssh true (admin key), median of {a.calls}: {med['ssh_true_s'] * 1000:.0f} ms")
            print(f"driver.facts() over SSH, median of {a.calls}: {med['facts_s'] * 1000:.0f} ms")
            print(f"migration stream {a.stream_mib} MiB over pinned SSH, median of {a.runs}: "
                  f"{med['migrate_mb_s']:.0f} MB/s "
                  f"({', '.join(f'{x:.0f}' for x in res['migrate_mb_s'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
