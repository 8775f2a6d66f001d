"""DHCP on the instance network: ``hcboot serve``'s BootServer with a second interface, real
sockets in test namespaces, busybox udhcpc as the instance's DHCP client.

The server runs in this process (its sockets are created while this thread has entered the
server's namespace) so that the instance lookup can be injected: a dict behind the same typed
callable ``(mac) -> (ip, hostname) | None`` that ``homecloud.serve`` builds over the inventory's
instances.  Topology (inside throw-away namespaces only): the server namespace has a
provisioning bridge (198.51.100.1/24) and an instance bridge (203.0.113.1/24); client
namespaces hang on them by veths.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from homecloud.serve import BootServer, ServeOptions
from tests.support.dhcp import entered
from tests.support.images import publish
from tests.support.netns import Lab, Netns

PROV = "198.51.100.1"
INST = "203.0.113.1"
GUEST_IP = "203.0.113.50"


@dataclass
class Net:
    lab: Lab
    srv: Netns
    server: BootServer
    known: dict[str, tuple[str, str | None]]
    state: Path
    tmp: Path

    def client(self, tag: str, bridge: str) -> tuple[Netns, str]:
        ns = self.lab.netns(tag)
        self.lab.port(self.srv, bridge, ns, "eth0")
        return ns, ns.mac("eth0")


def _start(tmp: Path, router: str | None = None,
           dns: tuple[str, ...] = ()) -> Iterator[Net]:
    images = tmp / "images"
    publish(images, "hnode", {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    known: dict[str, tuple[str, str | None]] = {}
    with Lab() as lab:
        srv = lab.netns("srv")
        lab.bridge(srv, "hcbr0", f"{PROV}/24")
        lab.bridge(srv, "hcbr1", f"{INST}/24")
        opts = ServeOptions(interface="hcbr0", mode="full", state_dir=tmp / "state",
                            images=images, address=PROV,
                            range=("198.51.100.100", "198.51.100.150"), ipv6_ra=False,
                            instance_interface="hcbr1", instance_router=router,
                            instance_dns=dns)
        with entered(srv):
            server = BootServer(opts, ["hnode"], instance_lookup=known.get)
            server.start()
        try:
            yield Net(lab, srv, server, known, tmp / "state", tmp)
        finally:
            server.stop()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    yield from _start(tmp_path)


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Net]:
    yield from _start(tmp_path, router=INST, dns=(INST, "203.0.113.2"))


def udhcpc(n: Net, ns: Netns, tag: str, *extra: str, tries: int = 3) -> dict[str, str] | None:
    """One busybox udhcpc run (quit once bound, give up after ``tries`` DISCOVERs): the
    environment its script saw when it bound, or None if it got no lease."""
    out = n.tmp / f"{tag}.env"
    script = n.tmp / f"{tag}.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    script.chmod(0o755)
    r = ns.run("busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", str(tries), "-T",
               "1", "-s", str(script), *extra, check=False, timeout=30)
    if r.returncode != 0 or not out.exists():
        return None
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def journal(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_known_instance_gets_its_static_address_and_name_only(net: Net) -> None:
    ns, mac = net.client("guest", "hcbr1")
    net.known[mac] = (GUEST_IP, "web1")
    env = udhcpc(net, ns, "guest")
    assert env is not None, "the instance got no lease"
    assert env["ip"] == GUEST_IP and env["hostname"] == "web1"
    assert env["subnet"] == "255.255.255.0" and env["serverid"] == INST
    # nothing configured: no router, no DNS; an instance is not a PXE client: no boot options
    for key in ("router", "dns", "boot_file", "siaddr", "tftp", "bootfile", "domain"):
        assert key not in env, (key, env)
    inst_leases = journal(net.state / "instance-leases.jsonl")
    assert any(r.get("mac") == mac and r.get("ip") == GUEST_IP and r.get("event") == "bound"
               for r in inst_leases), inst_leases
    # the provisioning journal knows nothing of it
    assert not any(r.get("mac") == mac for r in journal(net.state / "leases.jsonl"))


def test_pxe_client_on_the_instance_network_gets_no_boot_file(net: Net) -> None:
    ns, mac = net.client("pxeguest", "hcbr1")
    net.known[mac] = ("203.0.113.51", "pxe1")
    env = udhcpc(net, ns, "pxeguest", "-V", "PXEClient:Arch:00000:UNDI:002001")
    assert env is not None and env["ip"] == "203.0.113.51"
    assert "boot_file" not in env and "siaddr" not in env, env


def test_unknown_mac_gets_nothing_then_an_answer_once_known(net: Net) -> None:
    ns, mac = net.client("stranger", "hcbr1")
    assert udhcpc(net, ns, "stranger1", tries=2) is None
    assert not any(r.get("mac") == mac for r in journal(net.state / "instance-leases.jsonl"))
    assert net.server.instance_dhcp is not None
    assert net.server.instance_dhcp.stats.replied == 0
    net.known[mac] = ("203.0.113.77", "late")  # the lookup is asked at every request
    env = udhcpc(net, ns, "stranger2")
    assert env is not None and env["ip"] == "203.0.113.77" and env["hostname"] == "late"


def test_router_and_dns_only_when_configured(routed: Net) -> None:
    ns, mac = routed.client("guest", "hcbr1")
    routed.known[mac] = (GUEST_IP, "db1")
    env = udhcpc(routed, ns, "routed")
    assert env is not None and env["ip"] == GUEST_IP
    assert env["router"] == INST and env["dns"].split() == [INST, "203.0.113.2"]


def test_provisioning_side_still_serves_pxe_from_its_pool(net: Net) -> None:
    """Both servers run at once; the instance server does not answer on the provisioning
    bridge (a MAC known as an instance still gets the provisioning pool's answer there)."""
    ns, mac = net.client("machine", "hcbr0")
    net.known[mac] = (GUEST_IP, "not-here")
    env = udhcpc(net, ns, "machine", "-V", "PXEClient:Arch:00000:UNDI:002001")
    assert env is not None
    assert env["ip"].startswith("198.51.100.1") and env["serverid"] == PROV
    assert env.get("hostname") != "not-here"


def test_instance_address_off_the_network_is_not_answered(net: Net) -> None:
    ns, mac = net.client("offnet", "hcbr1")
    net.known[mac] = ("192.0.2.9", "lost")
    assert udhcpc(net, ns, "offnet", tries=2) is None
