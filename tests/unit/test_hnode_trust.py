"""The SSH trust the config node serves to hnodes (``GET /trust/<mac>.json``, control/trust.py)
and the key facts an hnode reports (agents/report.py ``ssh_facts``): who gets which keys."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from homecloud.agents import hntrust
from homecloud.agents.report import ssh_facts
from homecloud.control.http import ControlApp
from homecloud.control.reports import Reports
from homecloud.core.manifest import ImageStore
from homecloud.core.model import Inventory, Nic, Node
from homecloud.inventory.protocol import update
from tests.support.memstore import MemoryStore

HN = {"hn1": ("52:54:00:4b:00:01", "198.51.100.11"), "hn2": ("52:54:00:4b:00:02", "198.51.100.12"),
      "hn3": ("52:54:00:4b:00:03", "198.51.100.13")}
SN = ("52:54:00:5a:00:01", "198.51.100.21")


def _pub(tmp: Path, name: str) -> str:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   capture_output=True)
    return " ".join(key.with_name(name + ".pub").read_text().split()[:2])


def _app(tmp: Path) -> tuple[ControlApp, MemoryStore]:
    store = MemoryStore()
    nodes = [Node(n, "hnode", (Nic(mac, ip=ip),)) for n, (mac, ip) in HN.items()]
    nodes.append(Node("sn1", "snode", (Nic(SN[0], ip=SN[1]),)))
    update(store, lambda inv: Inventory(nodes=tuple(nodes)))
    ip_mac = {ip: mac for mac, ip in [*HN.values(), SN]}
    app = ControlApp(store, ImageStore(tmp / "images"), tmp / "state", lambda: "http://x",
                     mac_of=ip_mac.get, is_admin=lambda ip, h: ip == "127.0.0.1")
    return app, store


def _get(app: ControlApp, mac: str, ip: str) -> tuple[int, str]:
    r = app.handle("GET", f"/trust/{mac}.json", ip, {}, b"")
    assert r is not None
    return r.status, bytes(r.body).decode()


def test_trust_document_for_an_hnode(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    (tmp_path / "state").mkdir()
    keys = {n: (_pub(tmp_path, f"{n}-host"), _pub(tmp_path, f"{n}-mig")) for n in ("hn2", "hn3")}
    reports = Reports(tmp_path / "state")
    reports.put(HN["hn2"][0], {"state": "dom0-up", "facts": {
        "ssh_host_key": keys["hn2"][0], "migration_key": keys["hn2"][1]}})
    # hn3 reported garbage for a key: it is left out, never copied into hn1's authorized_keys
    reports.put(HN["hn3"][0], {"state": "dom0-up", "facts": {
        "ssh_host_key": keys["hn3"][0], "migration_key": 'command="sh" ' + keys["hn3"][1]}})
    admin = _pub(tmp_path, "admin")
    (tmp_path / "state" / "ssh").mkdir()
    (tmp_path / "state" / "admin_keys").write_text(f"# the admins\n{admin} alice\n")
    status, body = _get(app, HN["hn1"][0], HN["hn1"][1])
    assert status == 200, body
    t = hntrust.parse_trust(body)
    cfg_pub = (tmp_path / "state" / "ssh" / "id_ed25519.pub").read_text().split()
    assert [k.bare for k in t.config_keys] == [" ".join(cfg_pub[:2])]
    assert [str(k) for k in t.admin_keys] == [f"{admin} alice"]
    assert [(p.name, p.address, p.host_key.bare, p.migration_key.bare) for p in t.peers] == \
        [("hn2", "198.51.100.12", *keys["hn2"])]
    # the config node's key is made once and kept
    status, body2 = _get(app, HN["hn1"][0], HN["hn1"][1])
    assert hntrust.parse_trust(body2).config_keys == t.config_keys


def test_trust_only_to_the_node_itself_and_only_for_hnodes(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    status, body = _get(app, HN["hn1"][0], HN["hn2"][1])   # hn2 asking for hn1's
    assert status == 403 and "198.51.100.12 is 52:54:00:4b:00:02, not 52:54:00:4b:00:01" in body
    status, body = _get(app, HN["hn1"][0], "198.51.100.99")
    assert status == 403
    assert app.handle("GET", f"/trust/{SN[0]}.json", SN[1], {}, b"") is None  # an snode: 404
    status, body = _get(app, HN["hn1"][0], "127.0.0.1")   # the admin may look
    assert status == 200 and json.loads(body)["version"] == 1


def test_a_bad_admin_key_file_is_a_clear_500(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    (tmp_path / "state" / "admin_keys").write_text("ssh-ed25519 nonsense\n")
    status, body = _get(app, HN["hn1"][0], HN["hn1"][1])
    assert status == 500 and "admin_keys" in body and "line 1" in body


def test_ssh_facts(tmp_path: Path) -> None:
    host, mig = _pub(tmp_path, "h"), _pub(tmp_path, "m")
    env = {"HC_SSH_HOST_KEY": str(tmp_path / "h.pub"), "HC_MIGRATION_KEY": str(tmp_path / "m.pub")}
    assert ssh_facts(env) == {"ssh_host_key": host, "migration_key": mig}
    assert ssh_facts({"HC_SSH_HOST_KEY": str(tmp_path / "none"),
                      "HC_MIGRATION_KEY": str(tmp_path / "none")}) == {}


def test_driver_ssh_argv_is_pinned_batch_and_prefixed(tmp_path: Path) -> None:
    from homecloud.control.hosts import SshHostDriver
    host = _pub(tmp_path, "h")
    d = SshHostDriver(tmp_path / "k", lambda n: host, tmp_path / "known",
                      prefix=["ip", "netns", "exec", "lab"],
                      address_of=lambda n: "198.51.100.77")
    node = Node("hn1", "hnode", (Nic(HN["hn1"][0], ip=HN["hn1"][1]),))
    argv = d.ssh_argv(node, ["hc-hnode-agent"])
    assert argv[:5] == ["ip", "netns", "exec", "lab", "ssh"]
    for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", "HostKeyAlias=hn1",
                f"UserKnownHostsFile={tmp_path}/known/hn1.known_hosts", "IdentitiesOnly=yes",
                "GlobalKnownHostsFile=/dev/null"):
        assert opt in argv, opt
    assert argv[-3:] == ["198.51.100.77", "--", "hc-hnode-agent"]
    assert (tmp_path / "known" / "hn1.known_hosts").read_text() == f"hn1 {host}\n"
