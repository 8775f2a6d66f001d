"""hcbuild stops what an element left running in the image tree (root: chroot)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from builder.progress import Progress
from builder.tree import chroot_processes, stop_chroot_processes


def _chrooted_sleeper(tree: Path, ignore_term: bool) -> int:
    """A child whose root directory is ``tree`` (a daemon an element started in the chroot)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.chroot(tree)
            os.chdir("/")
            os.write(w, b"x")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid


def _reap(pid: int) -> bool:
    """True if ``pid`` (our child) has ended."""
    for _ in range(50):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return True
        if done:
            return True
        time.sleep(0.1)
    return False


def test_processes_left_in_the_tree_are_stopped(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    other = tmp_path / "tree-other"  # a sibling with the same prefix is not the tree
    other.mkdir()
    a = _chrooted_sleeper(tree, ignore_term=False)
    b = _chrooted_sleeper(tree / "sub", ignore_term=True)
    c = _chrooted_sleeper(other, ignore_term=False)
    try:
        assert sorted(chroot_processes(tree)) == sorted([a, b])
        stop_chroot_processes(tree, Progress(), grace=1.0)
        assert _reap(a) and _reap(b)  # b ignored SIGTERM: SIGKILL
        assert chroot_processes(tree) == []
        assert chroot_processes(other) == [c]
    finally:
        for pid in (a, b, c):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)


def test_nothing_to_stop(tmp_path: Path) -> None:
    stop_chroot_processes(tmp_path, Progress())
    stop_chroot_processes(tmp_path / "missing", Progress())
