"""The control side's own cost of the instance lifecycle, without Xen or LVM: ``create`` (with
start), ``migrate`` and ``destroy`` through the real YAML inventory store (fsync'd writes, flock)
with the in-memory HostDriver/VolumeApi doubles of the unit tests, so what is measured is the
bookkeeping an instance action adds on top of the hosts' and the snodes' work.  Also N creates
at once from N threads, each with its own store handle (as N hcboot processes).

    python3 bench/bench_instances.py [--instances 20] [--rounds 3]

Prints medians of the rounds; no root, no network."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from homecloud.control.instances import InstanceService  # noqa: E402
from homecloud.inventory.protocol import update  # noqa: E402
from homecloud.inventory.yamlfile import YamlFileStore  # noqa: E402
from tests.support.instdoubles import (  # noqa: E402
    DOMU,
    FakeHost,
    FakeHosts,
    FakeVolumes,
    lab_inventory,
)


def world(state: Path) -> tuple[FakeHosts, FakeVolumes]:
    update(YamlFileStore(state), lambda _inv: lab_inventory(2))
    vols = FakeVolumes(DOMU)
    return FakeHosts(FakeHost("hnode1", 1 << 20), FakeHost("hnode2", 1 << 20),
                     volumes=vols), vols


def one_round(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        hosts, vols = world(state)
        svc = InstanceService(YamlFileStore(state), hosts, vols)
        t = time.perf_counter()
        for i in range(n):
            svc.create(f"vm{i}", "domu", 64)
        create = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for i in range(n):
            svc.migrate(f"vm{i}")
        migrate = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for i in range(n):
            svc.destroy(f"vm{i}")
        destroy = (time.perf_counter() - t) / n
        svcs = [InstanceService(YamlFileStore(state), hosts, vols) for _ in range(n)]
        threads = [threading.Thread(target=svcs[i].create, args=(f"c{i}", "domu", 64))
                   for i in range(n)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        parallel = time.perf_counter() - t
        got = YamlFileStore(state).snapshot().inventory.instances
        assert len({i.mac for i in got}) == n == len({i.ip for i in got})
    return {"create_ms": create * 1e3, "migrate_ms": migrate * 1e3,
            "destroy_ms": destroy * 1e3, "parallel_creates_s": parallel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rounds = [one_round(a.instances) for _ in range(a.rounds)]
    print(f"{a.instances} instances, median of {a.rounds} rounds (YAML store, in-memory hosts)")
    for key in rounds[0]:
        vals = [r[key] for r in rounds]
        print(f"  {key:20} {statistics.median(vals):8.2f}   "
              f"({', '.join(f'{v:.2f}' for v in vals)})")


if __name__ == "__main__":
    main()
