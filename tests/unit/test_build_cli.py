"""hcbuild CLI and DIB log parsing without running diskimage-builder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder import cli, paths
from builder.dib import DibRun, element_of, failing_script, tail
from builder.elements import ElementLibrary
from builder.errors import DibError, ProfileError
from builder.mirrors import Mirrors
from builder.pipeline import Options, Result
from builder.tree import dpkg_packages

LOG = """\
2026-11-24 04:04:52.821 | dib-run-parts Running /tmp/dib_build.X/hooks/root.d/08-debootstrap
2026-11-24 04:05:01.727 | dib-run-parts 08-debootstrap completed
2026-11-24 04:05:01.727 | dib-run-parts Running /tmp/in_target.d/install.d/50-hc-xen-dom0-services
2026-11-24 04:05:01.800 | + systemctl enable hc-nope.service
2026-11-24 04:05:01.801 | Failed to enable unit: Unit file hc-nope.service does not exist.
"""


def test_failing_script_is_the_unfinished_one(tmp_path: Path) -> None:
    lines = LOG.splitlines()
    assert failing_script(lines) == ("install.d", "50-hc-xen-dom0-services")
    assert failing_script(lines[:2]) == (None, None)
    lib = ElementLibrary()
    closure = lib.closure(["hc-base", "hc-xen-dom0"])
    assert element_of("50-hc-xen-dom0-services", "install.d", closure) == "hc-xen-dom0"
    assert element_of("99-unknown", "install.d", closure) is None
    f = tmp_path / "log"
    f.write_text("x\n" * 100 + LOG)
    assert tail(f, 3) == LOG.splitlines()[-3:]


def test_dib_argv_and_env() -> None:
    run = DibRun(elements=["debian-minimal", "hc-base"], output=Path("/o/image"),
                 log_path=Path("/o/log"), elements_path=[Path("/e")],
                 mirrors=Mirrors("http://m.invalid/d", "http://s.invalid/s"), release="bookworm",
                 packages=["a", "b"], env={"HC_X": "1"}, image_type="raw", root_label="hc-root")
    assert run.argv() == ["disk-image-create", "-a", "amd64", "-t", "raw", "-o", "/o/image",
                          "--root-label", "hc-root", "-p", "a,b", "debian-minimal", "hc-base"]
    env = run.environ({"PATH": "/usr/bin"})
    assert env["ELEMENTS_PATH"] == "/e"
    assert env["DIB_DISTRIBUTION_MIRROR"] == "http://m.invalid/d"
    assert env["DIB_DEBIAN_SECURITY_MIRROR"] == "http://s.invalid/s"
    assert env["DIB_RELEASE"] == "bookworm" and env["HC_X"] == "1"
    assert "/usr/sbin" in env["PATH"].split(":")
    assert run.image_path == Path("/o/image.raw")


def test_dib_error_is_reported_with_script_command_and_tail(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines = LOG.splitlines()

    def boom(role: str, opts: Options, progress: object) -> Result:
        raise DibError(["disk-image-create", "-t", "raw", "hc base"], 1, tmp_path / "x.log",
                       lines, element="hc-xen-dom0", script="50-hc-xen-dom0-services",
                       phase="install.d")

    monkeypatch.setattr("builder.pipeline.build_role", boom)
    r = CliRunner().invoke(cli.main, ["image", "hnode", "--out", str(tmp_path)])
    assert r.exit_code == 5
    out = r.output
    assert "in install.d/50-hc-xen-dom0-services (element hc-xen-dom0)" in out
    assert "disk-image-create -t raw 'hc base'" in out  # shlex.join
    assert f"full log: {tmp_path / 'x.log'}" in out
    assert "Failed to enable unit" in out


def test_profile_error_exit_code(tmp_path: Path) -> None:
    for name in ("elements", "profiles", "kernels"):
        shutil.copytree(paths.data_root() / name, tmp_path / name)
    f = tmp_path / "profiles" / "snode.yaml"
    f.write_text(f.read_text() + "pakages: [x]\n")
    pdir = str(tmp_path / "profiles")
    r = CliRunner().invoke(cli.main, ["show", "snode", "--profiles-dir", pdir])
    assert r.exit_code == ProfileError.exit_code
    assert f"{f}: pakages: unknown key (did you mean 'packages'?)" in r.output


def test_lint_names_a_role_element_acting_before_the_layer(tmp_path: Path) -> None:
    for name in ("elements", "profiles", "kernels"):
        shutil.copytree(paths.data_root() / name, tmp_path / name)
    pdir = str(tmp_path / "profiles")
    r = CliRunner().invoke(cli.main, ["lint", "--profiles-dir", pdir])
    assert r.exit_code == 0, r.output
    el = tmp_path / "elements" / "hc-xen-dom0"
    (el / "pre-install.d").mkdir()
    early = el / "pre-install.d" / "20-hc-xen-early"
    early.write_text((el / "install.d" / "50-hc-xen-dom0-services").read_text())
    early.chmod(0o755)
    r = CliRunner().invoke(cli.main, ["lint", "--profiles-dir", pdir])
    assert r.exit_code == 1
    assert f"{early}: hc-xen-dom0: script in pre-install.d: role-level elements act" in r.output


def test_show_and_list() -> None:
    r = CliRunner().invoke(cli.main, ["show", "hnode", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["resolved"]["boot"]["kind"] == "xen"
    assert "smap=0" in doc["resolved"]["boot"]["xen_cmdline"]
    assert doc["resolved"]["element_closure"][-4:] == [
        "hc-xen-dom0", "hc-build-layers", "no-final-image", "hc-tree-output"]
    r = CliRunner().invoke(cli.main, ["show", "snode"])
    assert yaml.safe_load(r.output)["root"] == "ram"
    r = CliRunner().invoke(cli.main, ["list", "--out", "/nonexistent"])
    assert r.exit_code == 0 and "hnode" in r.output and "snode" in r.output
    r = CliRunner().invoke(cli.main, ["lint"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli.main, ["image"])
    assert r.exit_code == 2


def test_dpkg_status_parsing(tmp_path: Path) -> None:
    st = tmp_path / "var/lib/dpkg/status"
    st.parent.mkdir(parents=True)
    st.write_text("Package: b\nStatus: install ok installed\nVersion: 2\n\n"
                  "Package: a\nStatus: install ok installed\nVersion: 1:1.0\n\n"
                  "Package: gone\nStatus: deinstall ok config-files\nVersion: 3\n")
    assert dpkg_packages(tmp_path) == ("a=1:1.0", "b=2")
