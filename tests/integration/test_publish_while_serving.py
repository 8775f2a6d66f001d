"""Publishing while nodes download: 50 concurrent downloads of an artifact through hcboot's HTTP
while hcbuild's store publishes new builds; every download is exactly one build's bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from builder.store import RoleStore
from homecloud.core.manifest import BootInfo, Manifest, artifact_for
from tests.support.hcboot import start_hcboot
from tests.support.netns import Lab

SERVER = "192.0.2.1"
SIZE = 16 << 20


def _publish(rs: RoleStore, build_id: str) -> str:
    tmp = rs.new_tmp_dir(build_id)
    data = os.urandom(SIZE)
    (tmp / "kernel").write_bytes(data)
    (tmp / "initrd").write_bytes(b"initrd " + build_id.encode())
    m = Manifest(role=rs.role, build_id=build_id, build_key="k" * 64,
                 created="2026-11-24T00:00:00Z",
                 artifacts={n: artifact_for(tmp / n) for n in ("kernel", "initrd")},
                 boot=BootInfo(kind="linux", cmdline="console=ttyS0"))
    (tmp / "manifest.json").write_text(m.to_json())
    rs.publish(tmp, build_id)
    return hashlib.sha256(data).hexdigest()


def test_50_downloads_during_publish_get_old_or_new(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rs = RoleStore(images, "hnode")
    shas = {_publish(rs, "20261124T000000Z-aaaa")}
    out = tmp_path / "dl"
    out.mkdir()
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        start_hcboot(lab, ns, "br0", SERVER, tmp_path / "state", images, "--range",
                     "192.0.2.100-192.0.2.150")
        url = f"http://{SERVER}/images/hnode/current/kernel"
        # staggered starts: downloads begin before, between and after the two publishes
        script = (f"for i in $(seq 50); do curl -sf --limit-rate 12M -o {out}/k$i {url} & "
                  "sleep 0.02; done; wait")
        p = subprocess.Popen(ns.cmd("sh", "-c", script))
        try:
            time.sleep(0.3)
            shas.add(_publish(rs, "20261124T000001Z-bbbb"))
            time.sleep(0.3)
            shas.add(_publish(rs, "20261124T000002Z-cccc"))
            rs.gc(keep=3)
            assert p.wait(120) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    seen = set()
    for f in sorted(out.iterdir()):
        assert f.stat().st_size == SIZE, f"{f.name}: short file"
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        assert sha in shas, f"{f.name}: bytes of no published build"
        seen.add(sha)
    assert len(list(out.iterdir())) == 50
    assert len(seen) >= 2, "no download overlapped a publish"
