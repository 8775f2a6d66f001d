"""What both node agents need: the kernel command line, console lines, one command funnel,
HTTP with the standard library, and a backoff.  Standard library only (ships into images)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from homecloud.agents.protocol import Report, report_json
from homecloud.core.errors import HomecloudError

TAIL_LINES = 5


class AgentError(HomecloudError):
    """Something the agent cannot do, with what is at fault in the message."""


class CommandError(AgentError):
    """A command that failed: the command line (shlex.join), its exit code and output tail."""

    def __init__(self, argv: Sequence[str], code: int, output: str) -> None:
        self.argv = list(argv)
        self.code = code
        self.output = output
        self.tail = output.strip().splitlines()[-TAIL_LINES:]
        tail = " | ".join(self.tail) or "no output"
        super().__init__(f"{shlex.join(self.argv)}: exit code {code}: {tail}")


def run(argv: Sequence[str], *, timeout: float | None = 600,
        env: Mapping[str, str] | None = None) -> str:
    """Run ``argv`` (stdin from /dev/null, output captured); its output, or CommandError."""
    try:
        r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=timeout, env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        raise CommandError(argv, -1, f"{out}\ntimed out after {timeout}s") from None
    if r.returncode != 0:
        raise CommandError(argv, r.returncode, r.stdout)
    return r.stdout


def cmdline_args(path: str | Path) -> dict[str, str]:
    """``KEY=VALUE`` words of a kernel command line file (the first of each key wins)."""
    try:
        words = Path(path).read_text(errors="replace").split()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for w in words:
        k, eq, v = w.partition("=")
        if eq and k not in out:
            out[k] = v
    return out


def uptime() -> str:
    try:
        return Path("/proc/uptime").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


class Output:
    """Log lines on stdout; console lines (which people and tests match) also on a console."""

    def __init__(self, prefix: str, console: str = "/dev/console") -> None:
        self.prefix = prefix
        self.console_path = console

    def log(self, msg: str) -> None:
        print(f"{self.prefix}: [{uptime()}] {msg}", flush=True)

    def console(self, msg: str, prefix: bool = True) -> None:
        line = f"{self.prefix}: {msg}" if prefix else msg
        print(line, flush=True)
        if self.console_path != "none":
            try:
                with open(self.console_path, "w") as f:
                    f.write(line + "\n")
            except OSError:
                pass


def http_get(url: str, timeout: float) -> bytes:
    """The body of ``url`` (http, https or file); AgentError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data: bytes = r.read()
            return data
    except (OSError, ValueError) as exc:
        raise AgentError(f"GET {url}: {_why(exc)}") from None


def post_report(server: str, report: Report, timeout: float = 10) -> None:
    """POST ``report`` to ``<server>/report/<mac>``; AgentError naming the URL."""
    url = f"{server}/report/{report.node}"
    req = urllib.request.Request(url, data=report_json(report).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except (OSError, ValueError) as exc:
        raise AgentError(f"POST {url}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        body = b""
        with contextlib.suppress(OSError):
            body = exc.read()[:300]
        return f"HTTP {exc.code} {exc.reason}: {body.decode(errors='replace').strip()}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


class Backoff:
    """1 s, doubling up to ``cap``; back to 1 s after ``reset_after`` seconds of success."""

    def __init__(self, cap: float, reset_after: float = 30) -> None:
        self.cap = max(1.0, cap)
        self.reset_after = reset_after
        self.delay = 1.0

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return d

    def ran_for(self, seconds: float) -> None:
        if seconds >= self.reset_after:
            self.delay = 1.0


class Reporter:
    """An agent's last report, kept until the config node has it.  A POST that failed (the
    config node busy or restarting, a timeout on a loaded host) is sent again at the agent's
    next :meth:`again`, and a delivered one again every ``every`` seconds: the config node's
    picture of a node heals by itself instead of staying one lost POST behind for good (a CI
    lab run waited 30 minutes on a template a storage node held but had not managed to say).
    """

    def __init__(self, post: Callable[[Report], None], log: Callable[[str], None],
                 every: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.post, self.log, self.every, self.clock = post, log, every, clock
        self.last: Report | None = None
        self.sent_at: float | None = None     # when ``last`` was delivered; None: not yet
        self.failures = 0                     # failed POSTs of ``last`` in a row

    def send(self, report: Report) -> bool:
        """POST ``report`` (it becomes the one kept); True once the config node has it."""
        self.last, self.sent_at = report, None
        return self._post()

    def again(self) -> bool:
        """Send the kept report again if it has not arrived or is ``every`` seconds old."""
        if self.last is None:
            return True
        if self.sent_at is not None and self.clock() - self.sent_at < self.every:
            return True
        return self._post()

    def _post(self) -> bool:
        assert self.last is not None
        try:
            self.post(self.last)
        except AgentError as exc:
            self.failures += 1
            if self.failures == 1:
                self.log(f"warning: report {self.last.state}: {exc} (sent again at each poll"
                         " until it arrives)")
            return False
        if self.failures:
            self.log(f"report {self.last.state}: delivered after {self.failures} failed "
                     f"POST(s)")
        self.failures, self.sent_at = 0, self.clock()
        return True


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit():
        raise AgentError(f"{name}={raw}: not a whole number")
    return int(raw)


def die(out: Output, msg: str) -> int:
    out.console(f"ERROR: {msg}")
    return 2


def now() -> float:
    return time.monotonic()


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def exists_in_path(prog: str, env: Mapping[str, str] | None = None) -> bool:
    if "/" in prog:
        return os.access(prog, os.X_OK)
    path = (env or os.environ).get("PATH", os.defpath)
    return any(os.access(os.path.join(d, prog), os.X_OK) for d in path.split(":") if d)
