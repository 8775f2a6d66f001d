"""DibProcess: on to the artifacts when DIB logs its success, its exit checked afterwards.

diskimage-builder itself runs in the integration tier; here a stand-in ``disk-image-create``
on PATH writes DIB-style timestamped lines, makes (or not) the tree and exits as told."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from builder.dib import DONE_LINE, DibProcess, DibRun
from builder.errors import BuildError, DibError
from builder.mirrors import Mirrors

TS = "2026-11-24 04:05:01.727 | "


def _dib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> DibRun:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "disk-image-create"
    fake.write_text("#!/bin/bash\nset -e\n" + body)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return DibRun(elements=["hc-base"], output=tmp_path / "dib" / "image",
                  log_path=tmp_path / "logs" / "b.log", elements_path=[tmp_path],
                  mirrors=Mirrors("http://m.invalid/d", "http://s.invalid/s"),
                  release="bookworm", image_type="raw", tree_out=tmp_path / "dib" / "tree")


def test_done_line_ends_the_wait_before_dib_exits(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = _dib(tmp_path, monkeypatch,
               f'mkdir -p "$HC_TREE_OUT"\necho "{TS}Running hooks"\n'
               f'echo "{TS}not yet: {DONE_LINE} (inside a line)"\n'
               f'echo "{TS}{DONE_LINE}"\nsleep 3\n')
    run.log_path.parent.mkdir()
    run.log_path.write_text(f"{TS}{DONE_LINE}\n")  # an earlier run's line does not count
    p = DibProcess(run)
    t0 = time.monotonic()
    p.wait_done(poll=0.02)
    assert time.monotonic() - t0 < 2.5 and p.proc.poll() is None
    assert p.finish() == run.tree_out


def test_failure_after_the_done_line_still_fails(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = _dib(tmp_path, monkeypatch,
               f'mkdir -p "$HC_TREE_OUT"\necho "{TS}{DONE_LINE}"\nsleep 0.3\nexit 3\n')
    p = DibProcess(run)
    p.wait_done(poll=0.02)
    with pytest.raises(DibError) as e:
        p.finish()
    assert e.value.returncode == 3


def test_failure_names_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _dib(tmp_path, monkeypatch,
               f'echo "{TS}dib-run-parts Running /tmp/in_target.d/install.d/10-hc-x"\n'
               f'echo "{TS}boom"\nexit 1\n')
    p = DibProcess(run)
    with pytest.raises(DibError) as e:
        p.wait_done(poll=0.02)
    assert e.value.script == "10-hc-x" and e.value.phase == "install.d"
    assert any("boom" in line for line in e.value.tail)


def test_success_without_the_tree_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _dib(tmp_path, monkeypatch, f'echo "{TS}{DONE_LINE}"\nsleep 0.5\n')
    p = DibProcess(run)
    p.wait_done(poll=0.02)
    with pytest.raises(BuildError, match="left no tree"):
        p.finish()


def test_abort_stops_dib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _dib(tmp_path, monkeypatch, "sleep 30\n")
    p = DibProcess(run)
    p.abort()
    assert p.proc.poll() is not None
