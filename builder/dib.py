"""The one module that runs diskimage-builder (``disk-image-create``).

A run is described by ``DibRun`` (elements, packages, environment, output); ``DibProcess``
runs it through the command funnel (``builder.run.spawn``), writes DIB's whole output to a log
file and, on failure, raises ``DibError`` naming the failing script and element (parsed from
the log), the command and the last lines of the log.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.elements import Element
from builder.errors import BuildError, DibError
from builder.mirrors import Mirrors
from builder.run import DEVNULL, STDOUT, log_tail, spawn

TAIL_LINES = 30
_RUNNING_RE = re.compile(r"dib-run-parts Running (\S+)/([a-z-]+\.d)/([0-9]{2}-\S+)\s*$")
_COMPLETED_RE = re.compile(r"dib-run-parts (\S+) completed\s*$")
_TS_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| ")


@dataclass(frozen=True)
class DibRun:
    elements: Sequence[str]
    output: Path  # DIB appends ".<image_type>"
    log_path: Path
    elements_path: Sequence[Path]
    mirrors: Mirrors
    release: str
    arch: str = "amd64"
    packages: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    image_type: str = "tar"  # "tar" or "raw" (a bare ext4 filesystem: no partition table)
    root_label: str = ""
    # with the element hc-tree-output: DIB makes no image and hands the finished tree here
    tree_out: Path | None = None

    def argv(self) -> list[str]:
        cmd = ["disk-image-create", "-a", self.arch, "-t", self.image_type, "-o", str(self.output)]
        if self.root_label:
            cmd += ["--root-label", self.root_label]
        if self.packages:
            cmd += ["-p", ",".join(self.packages)]
        return [*cmd, *self.elements]

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        # sudo must be on PATH even as root (FIELD-NOTES); DIB also needs /sbin tools
        path = env.get("PATH", "/usr/bin:/bin")
        for extra in ("/usr/sbin", "/sbin"):
            if extra not in path.split(":"):
                path += ":" + extra
        env["PATH"] = path
        env["ELEMENTS_PATH"] = ":".join(str(p) for p in self.elements_path)
        env["DIB_RELEASE"] = self.release
        env.update(self.mirrors.dib_env())
        env.update(self.env)
        if self.tree_out is not None:
            env["HC_TREE_OUT"] = str(self.tree_out)
        return env

    @property
    def image_path(self) -> Path:
        return self.output.with_name(f"{self.output.name}.{self.image_type}")

    @property
    def result(self) -> Path:
        """What a successful run leaves: the tree (``tree_out``) or the image."""
        return self.tree_out if self.tree_out is not None else self.image_path

    @property
    def made(self) -> bool:
        """The result is there (a directory for the tree, a file for the image)."""
        return self.result.is_dir() if self.tree_out is not None else self.result.is_file()


def failing_script(lines: Sequence[str]) -> tuple[str | None, str | None]:
    """(phase, script) of the last script DIB started and did not finish, else (None, None)."""
    running: list[tuple[str, str]] = []
    for raw in lines:
        line = _TS_RE.sub("", raw)
        m = _RUNNING_RE.search(line)
        if m:
            running.append((m.group(2), m.group(3)))
            continue
        m = _COMPLETED_RE.search(line)
        if m and running and running[-1][1] == m.group(1):
            running.pop()
    return running[-1] if running else (None, None)


def element_of(script: str, phase: str | None, elements: Sequence[Element]) -> str | None:
    for el in elements:
        if phase and script in el.scripts.get(phase, ()):
            return el.name
        if phase is None and any(script in names for names in el.scripts.values()):
            return el.name
    return None


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    return log_tail(path, n)


DONE_LINE = "Build completed successfully"  # DIB's last line; a `sleep 1` and its exit follow


class DibProcess:
    """A running ``disk-image-create``.

    ``wait_done`` returns as soon as DIB has logged that the build completed (its output is
    final: DIB then only sleeps a second before it exits) or it has ended; ``finish`` waits for
    the exit and raises DibError unless DIB succeeded and left its result; ``abort`` stops it."""

    def __init__(self, run: DibRun, known_elements: Sequence[Element] = ()) -> None:
        if shutil.which("disk-image-create") is None:
            raise BuildError("disk-image-create not found on PATH (pip install diskimage-builder)")
        self.run, self.known = run, known_elements
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        run.output.parent.mkdir(parents=True, exist_ok=True)
        self.argv = run.argv()
        with open(run.log_path, "ab") as log:
            log.write(f"# hcbuild: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.offset = log.tell()  # this run's lines start here
            # DIB dies (and runs its cleanup traps) when hcbuild dies, even by SIGKILL
            self.proc = spawn(
                self.argv,
                what="diskimage-builder",
                stdin=DEVNULL,
                stdout=log,
                stderr=STDOUT,
                env=run.environ(),
                cwd=run.output.parent,
                die_with_parent=True,
            )

    def _done_logged(self, carry: bytes) -> tuple[bool, bytes]:
        """(DONE_LINE seen, the unfinished last line) after reading what DIB logged since."""
        with open(self.run.log_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (carry + data).split(b"\n")
        for raw in lines[:-1]:
            if _TS_RE.sub("", raw.decode(errors="replace")).strip() == DONE_LINE:
                return True, b""
        return False, lines[-1]

    def wait_done(self, poll: float = 0.1) -> None:
        carry = b""
        try:
            while self.proc.poll() is None:
                done, carry = self._done_logged(carry)
                if done:
                    return
                time.sleep(poll)
        except BaseException:
            self.abort()
            raise
        self.finish()  # ended without the line: its exit status says how

    def finish(self) -> Path:
        try:
            rc = self.proc.wait()
        except BaseException:
            self.abort()
            raise
        run = self.run
        if rc != 0:
            lines = tail(run.log_path, 100000)
            phase, script = failing_script(lines)
            element = element_of(script, phase, self.known) if script else None
            raise DibError(
                self.argv,
                rc,
                run.log_path,
                tail(run.log_path),
                element=element,
                script=script,
                phase=phase,
            )
        if not run.made:
            what = "tree" if run.tree_out is not None else "image"
            raise BuildError(f"{run.result}: diskimage-builder succeeded but left no {what} "
                             f"there (DIB log: {run.log_path})")
        return run.result

    def abort(self) -> None:
        # SIGTERM: DIB's traps unmount and remove its build directory; SIGKILL after 60 s
        self.proc.stop(grace=60)
