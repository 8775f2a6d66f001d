"""The storage agent's DRBD side (homecloud.agents.replicate) against a stand-in for drbdadm,
LVM and /proc/drbd: the drbd kernel module cannot load on this machine (no modules in the
sandbox's kernel), so the real thing runs only inside the lab's snode VMs (tests/e2e).  The
stand-in keeps each minor's state the way DRBD 8.4 moves it for the commands it is given, and
writes /proc/drbd in the kernel's format (the reader is tested on real text in test_drbd)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from homecloud.agents import drbd as D
from homecloud.agents.common import AgentError, CommandError
from homecloud.agents.poolproto import DrbdHost, DrbdLink, VolumeExport
from homecloud.agents.replicate import Replicator
from homecloud.core.ids import Target

pytestmark = pytest.mark.unit

HOSTS = (DrbdHost("snode1", "198.51.100.11"), DrbdHost("snode2", "198.51.100.12"))


def vol(primary: bool, identical: bool = True, minor: int = 3) -> VolumeExport:
    return VolumeExport(Target(10, 0), "rw", (), "web", 1 << 30, "template", "domu-b1",
                        drbd=DrbdLink(minor, 7800 + minor, primary, identical, HOSTS))


class FakeDrbd:
    """drbdadm-84, lvcreate/lvremove and /proc/drbd for one snode."""

    def __init__(self, tmp: Path, peer_after: int | None = 2) -> None:
        self.proc = tmp / "proc_drbd"
        self.dev = tmp / "dev"
        (self.dev / "hc").mkdir(parents=True)
        self.calls: list[list[str]] = []
        self.md: set[str] = set()
        self.up: dict[str, dict[str, str]] = {}
        self.minor = {"hc3": 3}
        self.peer_after = peer_after   # polls of /proc/drbd until the peer connects
        self.polls = 0
        self.now = 0.0
        self.params = tmp / "params"            # the module as loaded: default helper
        self.params.mkdir()
        (self.params / "usermode_helper").write_text("/sbin/drbdadm\n")
        self.write()

    def write(self) -> None:
        lines = ["version: 8.4.11 (api:1/proto:86-101)", "srcversion: 0"]
        for res, st in sorted(self.up.items()):
            lines.append(f" {self.minor[res]}: cs:{st['cs']} ro:{st['ro']} ds:{st['ds']} C "
                         "r-----")
            lines.append("    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f "
                         "oos:0")
        self.proc.write_text("\n".join(lines) + "\n")

    def sleep(self, s: float) -> None:
        self.now += s
        self.polls += 1
        for st in self.up.values():
            if self.peer_after is not None and self.polls >= self.peer_after \
                    and st["cs"] == "WFConnection":
                st.update(cs="Connected", ro=st["ro"].split("/")[0] + "/Secondary",
                          ds="Inconsistent/Inconsistent")
        self.write()

    def run(self, argv: Sequence[str]) -> str:
        a = list(argv)
        self.calls.append(a)
        if a[0] == "lvcreate":
            (self.dev / "hc" / a[a.index("-n") + 1]).write_text("")
            return ""
        if a[0] == "modprobe":
            assert a[1] == "drbd" and a[2].startswith("usermode_helper="), a
            self.params.mkdir(parents=True, exist_ok=True)
            (self.params / "usermode_helper").write_text(a[2].split("=", 1)[1] + "\n")
            self.write()
            return ""
        if a[0] == "lvremove":
            (self.dev / a[-1]).unlink()
            return ""
        assert a[0] == "/usr/lib/drbd/drbdadm-84" and a[1] == "-c", a
        conf = Path(a[2]).read_text()
        assert "usage-count no;" in conf
        verb, res = a[3], a[-1]
        assert f"resource {res} " in conf
        if verb == "dump-md":
            if res not in self.md:
                raise CommandError(a, 255, "No valid meta data found\n")
            return "version \"v08\";\n"
        if verb == "create-md":
            self.md.add(res)
        elif verb == "adjust":
            self.up.setdefault(res, {"cs": "WFConnection", "ro": "Secondary/Unknown",
                                     "ds": "Inconsistent/DUnknown"})
        elif verb == "new-current-uuid":
            assert "--clear-bitmap" in a and self.up[res]["cs"] == "Connected"
            self.up[res]["ds"] = "UpToDate/UpToDate"
        elif verb == "primary":
            st = self.up[res]
            st["ro"] = "Primary/" + st["ro"].split("/")[1]
        elif verb == "secondary":
            st = self.up[res]
            st["ro"] = "Secondary/" + st["ro"].split("/")[1]
        elif verb == "down":
            del self.up[res]
        self.write()
        return ""

    def replicator(self, tmp: Path, host: str = "snode1") -> Replicator:
        return Replicator("hc", "pool", tmp / "run", lambda _t: None, runner=self.run,
                          hostname=host, proc_drbd=self.proc, sleep=self.sleep,
                          clock=lambda: self.now, connect_wait=30, dev=self.dev,
                          server="http://198.51.100.1", mac="52:54:00:4c:53:01",
                          module_params=self.params)

    def verbs(self) -> list[str]:
        return [c[3] if c[0].endswith("drbdadm-84") else c[0] for c in self.calls]


def test_a_new_identical_pair_becomes_primary_without_a_full_sync(tmp_path: Path) -> None:
    fake = FakeDrbd(tmp_path)
    rep = fake.replicator(tmp_path)
    assert rep.ensure(vol(primary=True)) == "/dev/drbd3"
    assert fake.verbs() == ["lvcreate", "dump-md", "create-md", "adjust",   # up, waiting
                            "adjust", "new-current-uuid", "primary"]        # then connected
    conf = (tmp_path / "run" / "drbd" / "homecloud.conf").read_text()
    assert "resource hc3 {" in conf and "device /dev/drbd3;" in conf
    assert "disk /dev/hc/v-web;" in conf and "meta-disk /dev/hc/m-web;" in conf
    assert "address ipv4 198.51.100.12:7803;" in conf
    st = rep.states()["web"]
    assert (st.connection, st.role, st.disk, st.peer_disk) == ("Connected", "Primary",
                                                               "UpToDate", "UpToDate")
    fake.calls.clear()               # a second pass: already there, nothing but adjust
    assert rep.ensure(vol(primary=True)) == "/dev/drbd3"
    assert fake.verbs() == ["adjust"]
    # a restarted agent remembers the resource (it can still take it down)
    again = fake.replicator(tmp_path)
    assert set(again.known) == {"web"}
    again.teardown("web")
    assert fake.verbs()[-2:] == ["down", "lvremove"]
    assert not (fake.dev / "hc" / "m-web").exists() and again.known == {}


def test_the_replica_comes_up_secondary_and_exports_nothing(tmp_path: Path) -> None:
    fake = FakeDrbd(tmp_path)
    fake.proc.unlink()             # the module not loaded yet: the agent loads it
    assert fake.replicator(tmp_path, "snode2").ensure(vol(primary=False)) is None
    assert fake.verbs() == ["lvcreate", "modprobe", "dump-md", "create-md", "adjust"]


def test_a_primary_whose_replica_never_connects_fails_naming_it(tmp_path: Path) -> None:
    fake = FakeDrbd(tmp_path, peer_after=None)
    with pytest.raises(AgentError, match=r"volume web: its replica on snode2 did not connect "
                                         r"within 30s \(DRBD minor 3: WFConnection, disk "
                                         r"Inconsistent\)"):
        fake.replicator(tmp_path).ensure(vol(primary=True))
    assert "primary" not in fake.verbs()


def test_data_that_may_be_stale_is_not_promoted(tmp_path: Path) -> None:
    """Not a new pair (a copy: not identical): an Inconsistent side is never made primary."""
    fake = FakeDrbd(tmp_path)
    with pytest.raises(AgentError, match="will not become primary with its disk Inconsistent"):
        fake.replicator(tmp_path).ensure(vol(primary=True, identical=False))
    assert "primary" not in fake.verbs()


def test_a_host_that_is_neither_side_is_refused(tmp_path: Path) -> None:
    fake = FakeDrbd(tmp_path)
    with pytest.raises(AgentError, match="this snode's host name 'snode9' is neither of its "
                                         "DRBD hosts"):
        fake.replicator(tmp_path, "snode9").ensure(vol(primary=True))
    assert fake.calls == []


def test_teardown_of_a_volume_never_replicated_is_nothing(tmp_path: Path) -> None:
    fake = FakeDrbd(tmp_path)
    fake.replicator(tmp_path).teardown("plain")
    assert fake.calls == []


def test_the_module_runs_our_fence_peer_helper_and_it_knows_where_to_ask(tmp_path: Path) -> None:
    """drbd loaded with usermode_helper= hc-drbd-helper (fencing asks the config node), the
    helper's fence.json written; a module loaded before with another helper is switched."""
    fake = FakeDrbd(tmp_path)
    fake.proc.unlink()                         # the module is not loaded yet
    r = fake.replicator(tmp_path)
    r.ensure(vol(True))
    assert ["modprobe", "drbd", f"usermode_helper={D.HELPER}"] in fake.calls
    doc = json.loads((tmp_path / "run" / "drbd" / "fence.json").read_text())
    assert doc == {"server": "http://198.51.100.1", "mac": "52:54:00:4c:53:01"}
    (fake.params / "usermode_helper").write_text("/sbin/drbdadm\n")
    r.ensure(vol(True))
    assert (fake.params / "usermode_helper").read_text() == D.HELPER
    assert "fencing resource-and-stonith;" in r.conf.read_text()


def test_leaving_hands_every_resource_over_cleanly(tmp_path: Path) -> None:
    """A clean shutdown of the snode: its primaries become secondary, then every resource is
    taken down (the peer sees its primary leave in step, not a lost connection)."""
    fake = FakeDrbd(tmp_path)
    r = fake.replicator(tmp_path)
    r.ensure(vol(True))
    fake.calls.clear()
    r.leave()
    assert fake.verbs() == ["secondary", "down"]
    assert fake.up == {}


def test_only_a_machine_going_down_hands_over() -> None:
    from homecloud.agents.storage import system_stopping

    def says(state: str, code: int = 0):  # type: ignore[no-untyped-def]
        def run(argv: Sequence[str]) -> str:
            assert list(argv) == ["systemctl", "is-system-running"]
            if code:
                raise CommandError(argv, code, state + "\n")
            return state + "\n"
        return run
    assert system_stopping(says("stopping", 1))
    assert not system_stopping(says("running"))
    assert not system_stopping(says("degraded", 1))
