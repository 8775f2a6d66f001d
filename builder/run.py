"""The one funnel for every external command hcbuild runs.

``run`` runs a command to its end (text in and out; ``run_bytes`` for binary data), ``spawn``
starts one and hands back a ``Process`` (diskimage-builder, which is watched while it runs),
``run_pipeline`` runs ``a | b | c``.  A failure raises ``CommandError`` carrying the command
(shown with ``shlex.join``), its exit status in words (127: not found) and the last lines of its
output or log.  With ``progress`` and ``step`` the run gets its timed step line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from builder.errors import CommandError

if TYPE_CHECKING:
    from builder.progress import Progress

TAIL_LINES = 30
DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT

Out = TypeVar("Out", str, bytes)
File = int | IO[Any] | None


def exit_words(returncode: int, cmd: Sequence[str]) -> str:
    """A command's exit status in words: ``exit code 127: zstd not found``."""
    name = cmd[0] if cmd else "?"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 127:
        return f"exit code 127: {name} not found"
    if returncode == 126:
        return f"exit code 126: {name} cannot be executed"
    return f"exit code {returncode}"


def output_tail(text: str | bytes, n: int = TAIL_LINES) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text.rstrip("\n").splitlines()[-n:] if text.strip() else []


def log_tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a (possibly large) log file; [] when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-n:]


def failure(cmd: Sequence[str], returncode: int, what: str, output: str | bytes = "",
            log_path: Path | None = None, note: str = "") -> CommandError:
    """The error of a failed command: ``<what>: <exit status>: <command>``, with the tail of
    ``output`` (or else of ``log_path``)."""
    tail = output_tail(output)
    if not tail and log_path is not None:
        tail = log_tail(log_path)
    words = note or exit_words(returncode, cmd)
    return CommandError(cmd, returncode, f"{what}: {words}", log_path=log_path, tail=tail)


@dataclass(frozen=True)
class Completed(Generic[Out]):
    """A command that has ended: its exit code and what it wrote (when captured)."""

    cmd: list[str]
    what: str
    returncode: int
    stdout: Out
    stderr: Out

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error(self, note: str = "") -> CommandError:
        """The CommandError for this run, with the tail of its output (stdout then stderr;
        only stderr when stdout is binary data)."""
        out: str | bytes = self.stderr
        if isinstance(self.stdout, str) and isinstance(self.stderr, str):
            out = self.stdout + ("\n" if self.stdout and not self.stdout.endswith("\n") else "")
            out += self.stderr
        return failure(self.cmd, self.returncode, self.what, out, note=note)

    def check(self) -> Completed[Out]:
        if not self.ok:
            raise self.error()
        return self


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The child gets SIGTERM (and runs its cleanup traps) when hcbuild dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Process:
    """A command started by ``spawn`` (the funnel's Popen)."""

    def __init__(self, cmd: list[str], what: str, popen: subprocess.Popen[Any]) -> None:
        self.cmd, self.what, self.popen = cmd, what, popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        return self.popen.communicate(input, timeout)

    def stop(self, grace: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; its exit code."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.terminate()
        try:
            return self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def error(self, output: str | bytes = "", log_path: Path | None = None) -> CommandError:
        rc = self.popen.returncode
        return failure(self.cmd, -1 if rc is None else rc, self.what, output, log_path)


def spawn(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    stdin: File = DEVNULL,
    stdout: File = None,
    stderr: File = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    text: bool = False,
    die_with_parent: bool = False,
) -> Process:
    """Start ``cmd``; CommandError (127 when the program is not found) if it cannot start."""
    argv = [os.fspath(a) for a in cmd]
    try:
        popen: subprocess.Popen[Any] = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr,
            env=dict(env) if env is not None else None, cwd=cwd, text=text,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    except FileNotFoundError as exc:
        if exc.filename not in (None, argv[0]):  # the working directory
            raise failure(argv, 126, what, note=f"cannot start in {exc.filename}: "
                          f"{exc.strerror}") from exc
        raise failure(argv, 127, what) from exc
    except PermissionError as exc:
        raise failure(argv, 126, what, note=f"cannot start: {exc.strerror}") from exc
    return Process(argv, what, popen)


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    what: str,
    *,
    text: bool,
    check: bool,
    capture: bool,
    merge_stderr: bool,
    input: str | bytes | None,
    stdout: File,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float | None,
    tick: tuple[float, Callable[[], None]] | None,
) -> Completed[Any]:
    empty: str | bytes = "" if text else b""
    try:
        proc = spawn(
            cmd, what=what, env=env, cwd=cwd, text=text,
            stdin=PIPE if input is not None else DEVNULL,
            stdout=PIPE if capture else stdout,
            stderr=STDOUT if merge_stderr else PIPE,
        )
    except CommandError as exc:  # it did not start: 127 not found, 126 cannot be run
        if check:
            raise
        said = str(exc) if text else str(exc).encode()
        return Completed(exc.cmd, what, exc.returncode, empty, said)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = input
    while True:
        wait = tick[0] if tick else None
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            wait = left if wait is None else min(wait, left)
        try:
            out, err = proc.communicate(pending, timeout=wait)
            break
        except subprocess.TimeoutExpired:
            pending = None  # sent with the first call
            if deadline is not None and time.monotonic() >= deadline:
                proc.popen.kill()
                out, err = proc.communicate()
                raise failure(proc.cmd, proc.popen.returncode, what, err or out or empty,
                              note=f"timed out after {timeout:g} s") from None
            if tick:
                tick[1]()
        except BaseException:
            proc.stop(grace=5)
            raise
    done: Completed[Any] = Completed(proc.cmd, what, proc.popen.returncode,
                                     out if out is not None else empty,
                                     err if err is not None else empty)
    return done.check() if check else done


@contextlib.contextmanager
def _step(progress: Progress | None, step: str | None) -> Iterator[None]:
    if progress is not None and step:
        with progress.step(step):
            yield
    else:
        yield


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    check: bool = True,
    capture: bool = True,
    merge_stderr: bool = False,
    input: str | None = None,
    stdout: File = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    tick: tuple[float, Callable[[], None]] | None = None,
    progress: Progress | None = None,
    step: str | None = None,
) -> Completed[str]:
    """Run ``cmd`` to its end, text in and out.

    ``what`` says what the command is for (it starts the error message).  ``check``: a non-zero
    exit raises CommandError (else the result says it; a program not found is exit code 127).
    ``capture``: stdout is returned (else it goes to ``stdout``, by default hcbuild's);
    stderr is always captured for the error's tail unless ``merge_stderr`` sends it to stdout.
    ``timeout``: the command is killed after that many seconds and CommandError says so.
    ``tick`` = (seconds, fn): ``fn`` is called that often while the command runs."""
    with _step(progress, step):
        return _run(cmd, what, text=True, check=check, capture=capture,
                    merge_stderr=merge_stderr, input=input, stdout=stdout, env=env, cwd=cwd,
                    timeout=timeout, tick=tick)


def run_bytes(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> Completed[bytes]:
    """``run`` for binary data: ``input`` bytes in, stdout and stderr bytes out."""
    return _run(cmd, what, text=False, check=check, capture=True, merge_stderr=False,
                input=input, stdout=None, env=env, cwd=cwd, timeout=timeout, tick=None)


def run_pipeline(
    cmds: Sequence[Sequence[str | os.PathLike[str]]],
    *,
    what: str,
    stdout: File,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``cmds[0] | cmds[1] | ...`` with the last one writing to ``stdout``.

    Each command's stderr is kept; if any fails, CommandError names the last failing one that
    was not merely killed by SIGPIPE (a broken pipe follows the real failure further down)."""
    procs: list[Process] = []
    with contextlib.ExitStack() as files:
        errs = [files.enter_context(tempfile.TemporaryFile()) for _ in cmds]
        try:
            prev: File = DEVNULL
            for i, (cmd, err) in enumerate(zip(cmds, errs, strict=True)):
                last = i == len(cmds) - 1
                p = spawn(cmd, what=what, stdin=prev, stdout=stdout if last else PIPE,
                          stderr=err, env=env, cwd=cwd)
                if procs and procs[-1].popen.stdout is not None:
                    procs[-1].popen.stdout.close()  # the reader holds it: SIGPIPE reaches us
                procs.append(p)
                prev = p.popen.stdout
            for p in procs:
                p.wait()
        except BaseException:
            for p in procs:
                p.stop(grace=5)
            raise
        finally:
            for p in procs:
                if p.popen.stdout is not None:
                    p.popen.stdout.close()
        failed = [(p, e) for p, e in zip(procs, errs, strict=False) if p.popen.returncode != 0]
        if not failed:  # what they said on the way goes where it went without the funnel
            for e in errs:
                e.seek(0)
                said = e.read()
                if said:
                    sys.stderr.write(said.decode(errors="replace"))
            return
        real = [(p, e) for p, e in failed if p.popen.returncode != -signal.SIGPIPE]
        p, e = (real or failed)[-1]
        e.seek(0)
        chain = " | ".join(c.cmd[0] for c in procs)
        raise failure(p.cmd, p.popen.returncode, f"{what} ({chain})", e.read())
