"""The NoCloud seed (homecloud/control/seed.py): golden files for each user-data shape, the
merged documents parsed back as cloud-init would read them, and the refusals."""

from __future__ import annotations

import email
import os
from pathlib import Path

import pytest
import yaml

from homecloud.agents.hostproto import SEED_FILES
from homecloud.control.seed import SeedError, network_config, render
from homecloud.core.model import Instance

GOLDEN = Path(__file__).parent / "golden" / "seed"
K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhomecloudtestkeyone admin@config"
K2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQChomecloudtestkeytwo user@laptop"


def inst(user_data: str = "", keys: tuple[str, ...] = (K1,)) -> Instance:
    return Instance(name="web1", template="domu-20261204T101500Z", memory_mb=384, vcpus=1,
                    disk_size=2 << 30, mac="0a:48:43:00:00:05", ip="203.0.113.14",
                    uuid="5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5", volume="web1-5f0c1d2e",
                    state="stopped", ssh_keys=keys, user_data=user_data)


def check_golden(case: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = GOLDEN / case / name
        if os.environ.get("HC_REGEN_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"{path} missing: run with HC_REGEN_GOLDEN=1"
        assert text == path.read_text(), f"{case}/{name} differs from its golden file"


CLOUD_CONFIG = """#cloud-config
packages: [nginx]
ssh_authorized_keys:
  - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQChomecloudtestkeytwo user@laptop
runcmd:
  - [systemctl, enable, --now, nginx]
"""
SCRIPT = "#!/bin/sh\necho \"hello from $(hostname)\" > /root/hello\n"


@pytest.mark.parametrize("case,user_data", [
    ("keys-only", ""), ("cloud-config", CLOUD_CONFIG), ("script", SCRIPT),
])
def test_seed_golden(case: str, user_data: str) -> None:
    files = render(inst(user_data))
    assert set(files) <= set(SEED_FILES)
    check_golden(case, files)


def test_meta_data_and_network_config() -> None:
    files = render(inst())
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5", "local-hostname": "web1"}
    assert yaml.safe_load(files["network-config"]) == {
        "version": 2, "ethernets": {"id0": {"match": {"macaddress": "0a:48:43:00:00:05"},
                                            "dhcp4": True}}}
    v1 = yaml.safe_load(network_config(inst(), 1))
    assert v1["config"][0]["mac_address"] == "0a:48:43:00:00:05"
    assert v1["config"][0]["subnets"] == [{"type": "dhcp"}]
    with pytest.raises(SeedError, match="network-config version 3"):
        network_config(inst(), 3)


def test_cloud_config_merge_keeps_theirs_and_adds_ours_once() -> None:
    ud = render(inst(CLOUD_CONFIG, (K1, K2, K1)))["user-data"]
    assert ud.startswith("#cloud-config\n")
    doc = yaml.safe_load(ud)
    assert doc["ssh_authorized_keys"] == [K2, K1]
    assert doc["packages"] == ["nginx"]
    assert doc["runcmd"] == [["systemctl", "enable", "--now", "nginx"]]
    one = yaml.safe_load(render(inst("#cloud-config\nssh_authorized_keys: " + K2))["user-data"])
    assert one["ssh_authorized_keys"] == [K2, K1]


def test_script_goes_multipart_as_cloud_init_reads_it() -> None:
    ud = render(inst(SCRIPT))["user-data"]
    msg = email.message_from_string(ud)
    assert msg.is_multipart()
    parts = [(p.get_content_type(), p.get_payload()) for p in msg.walk()
             if not p.is_multipart()]
    assert [t for t, _ in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert yaml.safe_load(parts[0][1])["ssh_authorized_keys"] == [K1]
    assert parts[1][1].rstrip("\n") == SCRIPT.rstrip("\n")


def test_other_cloud_init_formats_go_multipart() -> None:
    ud = render(inst("#include\nhttp://203.0.113.1/extra.cfg\n"))["user-data"]
    types = [p.get_content_type() for p in email.message_from_string(ud).walk()
             if not p.is_multipart()]
    assert types == ["text/cloud-config", "text/x-include-url"]


def test_no_keys_is_still_valid_cloud_config() -> None:
    assert yaml.safe_load(render(inst("", ()))["user-data"]) == {"ssh_authorized_keys": []}


@pytest.mark.parametrize("user_data,why", [
    ("#cloud-config\npackages: [nginx\n", "not valid YAML"),
    ("#cloud-config\n- a\n- b\n", "must be a mapping, got list"),
    ("#cloud-config\nssh_authorized_keys: {a: 1}\n", "must be a list of strings"),
    ("hello world\n", "starts with 'hello world': not something cloud-init runs"),
])
def test_bad_user_data_refused_naming_the_instance(user_data: str, why: str) -> None:
    with pytest.raises(SeedError) as e:
        render(inst(user_data))
    assert "instance web1" in str(e.value) and why in str(e.value)
