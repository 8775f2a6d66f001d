"""The lab's pure parts for issue 11: the instance network's names and MACs, the context file
(`hcboot lab env`, `hcboot --lab`), the admin keys file, the inventory the lab writes."""

from __future__ import annotations

import base64
import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from homecloud.cli import main
from homecloud.control.admin_keys import AdminKeyError, add_admin_key, read_admin_keys
from homecloud.inventory.yamlfile import YamlFileStore
from homecloud.lab import net
from homecloud.lab.context import (
    LabContext,
    clear_context,
    current_context,
    current_lab_dir,
    read_context,
    write_context,
)
from homecloud.lab.errors import LabError
from homecloud.lab.lab import Lab
from homecloud.lab.status import lab_mac


def _key(kind: str = "ssh-ed25519", body: bytes = b"\x11" * 32, comment: str = "me@lab") -> str:
    name = kind.encode()
    blob = len(name).to_bytes(4, "big") + name + len(body).to_bytes(4, "big") + body
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


@pytest.fixture(autouse=True)
def pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "run" / "lab-current.json"
    monkeypatch.setenv("HC_LAB_CURRENT", str(p))
    for var in ("HC_STATE_DIR", "HC_IMAGE_STORE", "HC_LAB_DIR"):
        monkeypatch.delenv(var, raising=False)
    return p


def make_ctx(tmp_path: Path) -> LabContext:
    lab = tmp_path / "my lab"
    lab.mkdir()
    return LabContext(lab_dir=str(lab), state_dir=str(lab / "hcboot"),
                      images=str(tmp_path / "images"), netns="hclab-abc123", bridge="hcbr0",
                      server_ip="198.51.100.1", inst_bridge="hcbr1", inst_ip="203.0.113.1",
                      ssh_key=str(lab / "ssh" / "id_ed25519"),
                      known_hosts=str(lab / "ssh" / "known_hosts"))


# --- names ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _environ_restored() -> Iterator[None]:
    """`hcboot --lab` exports the lab's variables into its own process (for the commands it
    runs); invoked in-process here, they must not leak into later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_tap_names_fit_ifnamsiz_and_differ() -> None:
    assert net.tap_names("hnode1") == ("tap-hnode1", "tapi-hnode1")
    names = {t for i in range(1, 256) for r in ("snode", "hnode")
             for t in net.tap_names(f"{r}{i}")}
    assert len(names) == 2 * 2 * 255 and max(map(len, names)) <= net.IFNAME_MAX
    with pytest.raises(LabError, match="longer than 15"):
        net.tap_names("averyverylongname")


def test_instance_nic_macs() -> None:
    assert lab_mac("hnode", 1) == "52:54:00:4c:48:01"
    assert lab_mac("hnode", 1, 2) == "52:54:00:4c:c8:01"
    assert lab_mac("snode", 2, 2) == "52:54:00:4c:d3:02"
    assert lab_mac("hnode", 255, 2) != lab_mac("hnode", 255)
    with pytest.raises(LabError, match="NIC 1 or 2"):
        lab_mac("hnode", 1, 3)


def test_labnet_defaults_two_networks() -> None:
    n = net.LabNet("hclab-x")
    assert (n.bridge, n.server_ip, n.inst_bridge, n.inst_ip) == (
        "hcbr0", "198.51.100.1", "hcbr1", "203.0.113.1")
    assert n.bridge_mac != n.inst_bridge_mac


def test_lab_inventory_gives_hnodes_an_instance_nic(tmp_path: Path) -> None:
    lb = Lab(tmp_path / "lab", tmp_path / "images", say=lambda s: None)
    lb.hcboot_dir.mkdir(parents=True)
    lb._write_inventory(2, 2)
    inv = YamlFileStore(lb.hcboot_dir).snapshot().inventory
    h1 = next(n for n in inv.nodes if n.name == "hnode1")
    assert [(c.mac, c.purpose, c.ip) for c in h1.nics] == [
        ("52:54:00:4c:48:01", "provisioning", "198.51.100.21"),
        ("52:54:00:4c:c8:01", "instance", None)]
    assert h1.mac == "52:54:00:4c:48:01"  # boots from NIC 1
    # started with the snodes: waits for its root; root on the serial console (lab only);
    # guests without AVX (it faults under TCG's emulated SVM)
    assert h1.cmdline == "hc.autologin=1 hc.aoe_wait=900 hc.guest_cpuid=host,avx=0,avx2=0"
    s1 = next(n for n in inv.nodes if n.name == "snode1")
    # the lab's snode disks are new sparse files: zeros, a RAID1 in sync as made
    assert s1.cmdline == "hc.autologin=1 hc.md_assume_clean=1"
    assert len(s1.nics) == 1  # storage nodes stay off the instance network
    # the root export's allow-list holds provisioning MACs only (never an instance NIC)
    allowed = inv.consumer_macs(inv.exports[0])
    assert "52:54:00:4c:c8:01" not in allowed and "52:54:00:4c:48:02" in allowed


# --- context -------------------------------------------------------------------------------------

def test_context_roundtrip_pointer_and_clear(tmp_path: Path, pointer: Path) -> None:
    c = make_ctx(tmp_path)
    path = write_context(c)
    assert read_context(Path(c.lab_dir)) == c
    assert current_lab_dir() == Path(c.lab_dir) and current_context() == c
    assert json.loads(path.read_text())["format"] == 1
    clear_context(Path(c.lab_dir))
    assert not path.exists() and not pointer.exists() and current_lab_dir() is None
    with pytest.raises(LabError, match="no current lab"):
        current_context()


def test_clear_leaves_another_labs_pointer(tmp_path: Path, pointer: Path) -> None:
    c = make_ctx(tmp_path)
    write_context(c)
    clear_context(tmp_path / "another")
    assert current_lab_dir() == Path(c.lab_dir)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.pop("netns"), "missing or not a string: netns"),
    (lambda d: d.update(format=9), "format 9"),
    (lambda d: d.update(extra="x"), "unknown keys: extra"),
    (lambda d: d.update(ssh_key=3), "ssh_key"),
])
def test_context_reader_is_strict(tmp_path: Path, edit, msg: str) -> None:  # type: ignore[no-untyped-def]
    c = make_ctx(tmp_path)
    path = write_context(c)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(LabError, match=msg) as e:
        read_context(Path(c.lab_dir))
    assert str(path) in str(e.value)


def test_context_env_and_ssh_argv(tmp_path: Path) -> None:
    c = make_ctx(tmp_path)
    env = c.env()
    assert env["HC_STATE_DIR"] == c.state_dir and env["HC_IMAGE_STORE"] == c.images
    assert env["HC_LAB_DIR"] == c.lab_dir
    assert shlex.split(env["HC_SSH_PREFIX"]) == ["ip", "netns", "exec", "hclab-abc123"]
    argv = c.ssh_argv("198.51.100.21", "xl", "info")
    assert argv[:5] == ["ip", "netns", "exec", "hclab-abc123", "ssh"]
    assert argv[-3:] == ["root@198.51.100.21", "xl", "info"]
    assert "BatchMode=yes" in argv and f"UserKnownHostsFile={c.known_hosts}" in argv
    # the exports survive a shell round trip (the lab dir has a space in it)
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in c.shell_exports().splitlines())
    assert {k: shlex.split(v)[0] for k, v in exported.items()} == env


def test_lab_env_command_and_global_lab_flag(tmp_path: Path) -> None:
    c = make_ctx(tmp_path)
    write_context(c)
    r = CliRunner().invoke(main, ["lab", "env"])
    assert r.exit_code == 0, r.output
    assert f"export HC_STATE_DIR={shlex.quote(c.state_dir)}" in r.output
    r = CliRunner().invoke(main, ["lab", "env", "--json"])
    assert json.loads(r.output)["netns"] == "hclab-abc123"
    # hcboot --lab: the lab's state dir, with the inventory `lab up` writes
    lb = Lab(Path(c.lab_dir), Path(c.images), say=lambda s: None)
    assert lb.hcboot_dir == Path(c.state_dir)
    lb.hcboot_dir.mkdir(parents=True)
    lb._write_inventory(1, 2)
    r = CliRunner().invoke(main, ["--lab", "nodes", "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(n["hostname"] for n in json.loads(r.output)) == ["hnode1", "hnode2", "snode1"]


def test_lab_env_without_a_lab_says_so(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["lab", "env", "--state-dir", str(tmp_path / "nolab")])
    assert r.exit_code != 0 and "no lab context" in r.output
    r = CliRunner().invoke(main, ["--lab", "nodes"])
    assert r.exit_code != 0 and "no current lab" in r.output


# --- admin keys ----------------------------------------------------------------------------------

def test_admin_keys_add_read_idempotent(tmp_path: Path) -> None:
    assert read_admin_keys(tmp_path) == ()
    k1, k2 = _key(), _key(body=b"\x22" * 32, comment="other")
    assert add_admin_key(tmp_path, k1 + "\n")
    assert not add_admin_key(tmp_path, _key(comment="same key, other comment"))
    assert add_admin_key(tmp_path, k2)
    assert read_admin_keys(tmp_path) == (k1, k2)
    (tmp_path / "admin_keys").write_text(f"# admins\n\n{k1}\n")
    assert read_admin_keys(tmp_path) == (k1,)


@pytest.mark.parametrize("line,msg", [
    ("ssh-ed25519", "not 'TYPE BASE64"),
    ('command="x" ' + _key(), "unknown key type"),
    ("ssh-ed25519 !!!notbase64", "not base64"),
    (_key("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1), "not a ssh-ed25519 key"),
])
def test_admin_keys_reader_names_file_and_line(tmp_path: Path, line: str, msg: str) -> None:
    (tmp_path / "admin_keys").write_text(f"{_key()}\n{line}\n")
    with pytest.raises(AdminKeyError, match=msg) as e:
        read_admin_keys(tmp_path)
    assert str(tmp_path / "admin_keys") in str(e.value) and "line 2" in str(e.value)
    with pytest.raises(AdminKeyError):
        add_admin_key(tmp_path / "fresh", line)


def test_lab_up_refuses_an_unknown_hnode_start(tmp_path: Path) -> None:
    lb = Lab(tmp_path / "lab", tmp_path / "images", say=lambda s: None)
    with pytest.raises(LabError, match="'soon': not one of with-snodes, snodes-ready, "
                                       "exports-ready"):
        lb.up(hnode_start="soon")
    assert not (tmp_path / "lab").exists()          # refused before anything was made
