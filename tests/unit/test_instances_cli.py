"""``hcboot instance ...`` and ``hcboot node drain|undrain`` through click's CliRunner: the
timestamped steps, the final result, and the error paths (messages naming the node, exit 1).

The service runs on the real YAML inventory in a temporary state directory; the hosts and the
volumes are the in-memory doubles (tests/support/instdoubles.py: the real ones need Xen and LVM,
which only run inside QEMU here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from homecloud import cli_instances
from homecloud.cli import main
from homecloud.control.instances import InstanceService
from homecloud.inventory.protocol import update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.instdoubles import DOMU, FakeHost, FakeHosts, FakeVolumes, lab_inventory

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhomecloudtestkey admin@config"
STEP = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d  ")


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        update(YamlFileStore(self.state), lambda _inv: lab_inventory())
        self.volumes = FakeVolumes(DOMU)
        self.h1, self.h2 = FakeHost("hnode1", 2048), FakeHost("hnode2", 2048)
        self.hosts = FakeHosts(self.h1, self.h2, volumes=self.volumes)

    def factory(self, obj: Any) -> InstanceService:
        assert Path(obj.state_dir) == self.state  # the CLI's --state-dir reaches the service
        return InstanceService(YamlFileStore(obj.state_dir), self.hosts, self.volumes)

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["--state-dir", str(self.state), *args],
                                  catch_exceptions=False)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    lab = Lab(tmp_path)
    monkeypatch.setattr(cli_instances, "FACTORY", lab.factory)
    return lab


def test_create_prints_timestamped_steps_and_the_result(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "key.pub").write_text(f"# mine\n{KEY}\n")
    (tmp_path / "ud").write_text("#!/bin/sh\ntrue\n")
    r = lab.run("instance", "create", "web1", "--template", "domu", "--memory", "256",
                "--ssh-key", str(tmp_path / "key.pub"), "--user-data", str(tmp_path / "ud"),
                "--disk-size", "3", "--on", "hnode1")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(STEP.match(line) for line in lines), r.output
    assert "placed web1 on hnode1" in r.output
    assert re.search(r"done in \d+\.\d s: create web1$", lines[-1])
    assert "web1: running on hnode1, 203.0.113.10 (0a:48:43:00:00:01)" in r.output
    spec = lab.h1.specs["web1"]
    assert KEY in spec.seed["user-data"] and "x-shellscript" in spec.seed["user-data"]
    assert lab.volumes.exports[f"web1-{spec.uuid[:8]}"].size == 3 << 30

    r = lab.run("instance", "list", "--json")
    doc = json.loads(r.output)
    assert [(d["name"], d["state"], d["host"]) for d in doc] == [("web1", "running", "hnode1")]
    r = lab.run("instance", "list")
    assert "web1" in r.output and "203.0.113.10" in r.output
    r = lab.run("instance", "show", "web1")
    assert "state:       running" in r.output and "ssh_keys:    1 key(s)" in r.output


def test_error_paths_name_what_is_at_fault(lab: Lab) -> None:
    r = lab.run("instance", "show", "nope")
    assert r.exit_code == 1 and "Error: no instance named 'nope'" in r.output
    r = lab.run("instance", "create", "Bad_Name", "-t", "domu")
    assert r.exit_code == 1 and "instance name 'Bad_Name' is not valid" in r.output
    assert "FAILED after" in r.output
    r = lab.run("instance", "create", "web1", "-t", "domu", "--disk-size", "lots")
    assert r.exit_code == 2 and "--disk-size" in r.output
    r = lab.run("instance", "create", "web1", "-t", "domu", "--ssh-key", "/nonexistent/k")
    assert r.exit_code == 1 and "/nonexistent/k: cannot read the SSH key" in r.output
    r = lab.run("instance", "migrate", "web1", "--cleanup", "--to", "hnode2")
    assert r.exit_code == 2 and "--cleanup takes no --to" in r.output

    assert lab.run("instance", "create", "web1", "-t", "domu", "--memory", "256",
                   "--on", "hnode1").exit_code == 0
    lab.hosts.fail["migrate"] = "refused"
    r = lab.run("instance", "migrate", "web1")
    assert r.exit_code == 1
    assert "hnode1: xl migrate web1 hnode2: ssh: Host key verification failed" in r.output
    assert "state now error" in r.output
    r = lab.run("instance", "show", "web1", "--json")
    doc = json.loads(r.output)
    assert doc["state"] == "error" and "Host key verification failed" in doc["last_error"]
    assert "stop-force" in doc["actions"] and "cleanup" in doc["actions"]
    r = lab.run("instance", "migrate", "web1", "--cleanup")
    assert r.exit_code == 0 and "web1: running on hnode1" in r.output

    lab.h2.up = False
    r = lab.run("instance", "migrate", "web1", "--to", "hnode2")
    assert r.exit_code == 1
    assert "on hnode2: down (hnode2: ssh root@198.51.100.22: connection timed out)" in r.output


def test_lifecycle_through_the_cli(lab: Lab) -> None:
    assert lab.run("instance", "create", "web1", "-t", "domu", "--memory", "256",
                   "--on", "hnode1").exit_code == 0
    r = lab.run("instance", "copy", "web1", "web2")
    assert r.exit_code == 1 and "cannot copy while running" in r.output
    assert lab.run("instance", "reboot", "web1").exit_code == 0
    assert lab.run("instance", "stop", "web1").exit_code == 0
    r = lab.run("instance", "copy", "web1", "web2", "--no-start")
    assert r.exit_code == 0 and "web2: stopped" in r.output
    assert lab.run("instance", "start", "web1", "--on", "hnode2").exit_code == 0
    r = lab.run("instance", "migrate", "web1", "--to", "hnode1")
    assert r.exit_code == 0 and "web1 migrated hnode2 -> hnode1" in r.output
    r = lab.run("node", "drain", "hnode1")
    assert r.exit_code == 0 and "hnode1 drained: 1 instance(s) moved" in r.output
    r = lab.run("instance", "start", "web2", "--on", "hnode1")
    assert r.exit_code == 1 and "on hnode1: drained" in r.output
    assert lab.run("node", "undrain", "hnode1").exit_code == 0
    assert lab.run("instance", "start", "web2", "--on", "hnode1").exit_code == 0
    assert lab.run("instance", "stop", "web2", "--force").exit_code == 0
    r = lab.run("instance", "destroy", "web2")
    assert r.exit_code == 0 and "MAC 0a:48:43:00:00:02 and address 203.0.113.11 are free" \
        in r.output
    r = lab.run("node", "drain", "sn1")
    assert r.exit_code == 1 and "sn1: snode, not an hnode" in r.output
    assert [i.name for i in YamlFileStore(lab.state).snapshot().inventory.instances] == ["web1"]


def test_default_service_wires_the_driver_and_the_volumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without FACTORY the CLI wires the real SSH driver and volume API
    # (homecloud.control.hosts.SshHostDriver, homecloud.control.volumes.Volumes); stand-ins
    # record how it constructs them (the real ones need Xen and LVM, which only run in QEMU)
    made: dict[str, Any] = {}

    def ssh_driver(key: Path, host_key_of: Any, known_dir: Path, prefix: Any = ()) -> Any:
        made["driver"] = (key, known_dir, list(prefix))
        return FakeHosts()

    def volumes(store: Any, state_dir: Path, images: Path) -> FakeVolumes:
        made["volumes"] = (state_dir, images)
        return FakeVolumes(DOMU)

    monkeypatch.setattr(cli_instances, "SshHostDriver", ssh_driver)
    monkeypatch.setattr(cli_instances, "ensure_config_key",
                        lambda d: Path(d) / "ssh" / "id_ed25519")
    monkeypatch.setattr(cli_instances, "Volumes", volumes)
    monkeypatch.setenv("HC_SSH_PREFIX", "ip netns exec hcl-test")
    r = CliRunner().invoke(main, ["--state-dir", str(tmp_path), "instance", "list"])
    assert r.exit_code == 0, r.output
    assert "no instances" in r.output
    assert made["driver"] == (tmp_path / "ssh" / "id_ed25519", tmp_path / "ssh" / "known",
                              ["ip", "netns", "exec", "hcl-test"])
    assert made["volumes"] == (tmp_path, tmp_path / "images")
