"""hcboot lab demo: an instance from the domu template on a running lab, pinged and
live-migrated while the config node pings it.

Every step is an ordinary hcboot command (``template import``, ``instance create``,
``instance migrate``) run as a subprocess against the lab's state and images, with the lab's
environment (``LabContext.env``: the SSH prefix into the lab's namespace); the pings run in the
lab's namespace from the config node's side of the instance bridge.  The ping measurement
(:func:`ping_gaps`) is shared with the e2e test (tests/e2e/test_instances.py)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from homecloud.core.errors import HomecloudError
from homecloud.lab.context import LabContext, current_lab_dir, read_context
from homecloud.lab.errors import LabError

#: cloud-config for the demo's instances: root takes the SSH keys (the image's cloud-init
#: would otherwise give root a "log in as the default user" stub)
USER_DATA = "#cloud-config\ndisable_root: false\n"

_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")


def lab_env(ctx: LabContext) -> dict[str, str]:
    return {**os.environ, **ctx.env(), "HC_INSTANCE_GATEWAY": ctx.inst_ip}


def hcboot(ctx: LabContext, *args: str, timeout: float = 3600,
           say: Callable[[str], None] | None = None) -> str:
    """``hcboot --state-dir S --images I ARGS`` for the lab; its output is echoed line by line
    to ``say``; a failure raises :class:`LabError` with the command and the output's tail."""
    argv = [sys.executable, "-m", "homecloud", "--state-dir", ctx.state_dir,
            "--images", ctx.images, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=lab_env(ctx))
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if say is not None:
            say(line.rstrip("\n"))
        if time.monotonic() > deadline:
            proc.kill()
            break
    rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise LabError(f"hcboot {' '.join(args)} exited {rc}:\n{tail}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PingStats:
    sent: int
    received: int
    longest_gap: float      # seconds between two consecutive replies (the pause, roughly)
    gap_end: float = 0.0    # Unix time of the reply that ended the longest gap (0: no gap)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def line(self) -> str:
        return (f"{self.sent} pings sent every 0.1 s, {self.received} answered, "
                f"{self.lost} lost, longest gap between replies {self.longest_gap:.2f} s")


def ping_gaps(output: str) -> PingStats:
    """Reads ``ping -D -i 0.1`` output: replies' timestamps, the longest gap, sent/received
    from ping's summary line."""
    stamps = [float(m.group(1)) for m in map(_REPLY.match, output.splitlines()) if m]
    gap, end = max(((b - a, b) for a, b in itertools.pairwise(stamps)), default=(0.0, 0.0))
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    if m is None:
        raise LabError(f"ping printed no summary:\n{output[-500:]}")
    return PingStats(int(m.group(1)), int(m.group(2)), gap, end)


def ping_binary() -> str:
    """The ping that runs inside the lab's namespace (the host's own binary); a clear error
    when it is missing: ``ip netns exec`` would only say "exec of ping failed" on every try."""
    found = shutil.which("ping")
    if found is None:
        raise LabError("ping is not installed on this machine (Debian: apt install "
                       "iputils-ping): the lab pings instances from the config node with it")
    return found


class Pinger:
    """``ping -D -i 0.1 IP`` from the config node (inside the lab's namespace) until stopped.
    Its output goes to a temporary file, not a pipe: a pipe nobody reads fills after ~800
    lines (80 s) and ping then blocks, blind to the rest of a long migration."""

    def __init__(self, ctx: LabContext, ip: str) -> None:
        ping_binary()
        self.out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen([*ctx.exec_prefix(), "ping", "-n", "-D", "-i", "0.1", ip],
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> PingStats:
        self.proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        self.proc.wait(timeout=30)
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return ping_gaps(text)


def wait_ping(ctx: LabContext, ip: str, timeout: float) -> float:
    """Seconds until ``ip`` answers one ping from the config node."""
    ping_binary()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = subprocess.run([*ctx.exec_prefix(), "ping", "-n", "-c", "1", "-W", "2", ip],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return time.monotonic() - t0
        time.sleep(2)
    raise LabError(f"{ip} did not answer ping from the config node within {timeout:.0f} s")


def instance_doc(ctx: LabContext, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(hcboot(ctx, "instance", "show", name, "--json"))
    return doc


def migrate_pinged(ctx: LabContext, name: str, ip: str, to: str | None,
                   say: Callable[[str], None]) -> PingStats:
    """``hcboot instance migrate NAME`` while the config node pings the instance."""
    pinger = Pinger(ctx, ip)
    try:
        time.sleep(1)
        hcboot(ctx, "instance", "migrate", name, *(["--to", to] if to else []), say=say)
        time.sleep(2)
    finally:
        stats = pinger.stop()
    return stats


def run_demo(ctx: LabContext, say: Callable[[str], None], name: str = "demo1",
             template: str = "domu", ssh_keys: Sequence[Path] = ()) -> PingStats:
    """Template (imported if missing), instance, ping, live migration with its ping gap."""
    t0 = time.monotonic()
    templates = json.loads(hcboot(ctx, "template", "list", "--json"))
    if not any(t.get("role") == template or t.get("name") == template for t in templates):
        say(f"importing template {template}")
        hcboot(ctx, "template", "import", template, say=say)
    keys = list(ssh_keys) or [Path(ctx.ssh_key + ".pub")]
    ud = Path(ctx.lab_dir) / "demo-user-data"
    ud.write_text(USER_DATA)
    existing = json.loads(hcboot(ctx, "instance", "list", "--json"))
    if not any(i.get("name") == name for i in existing):
        hcboot(ctx, "instance", "create", name, "--template", template, "--user-data", str(ud),
               *[a for k in keys for a in ("--ssh-key", str(k))], say=say)
    doc = instance_doc(ctx, name)
    ip, host = str(doc["ip"]), str(doc.get("host"))
    say(f"{name} on {host} at {ip}: waiting for its answer to ping")
    took = wait_ping(ctx, ip, timeout=900)
    say(f"{name} answers ping ({took:.1f} s)")
    stats = migrate_pinged(ctx, name, ip, None, say)
    say(f"{name} migrated from {host}: {stats.line()}")
    say(f"demo done in {time.monotonic() - t0:.1f} s")
    return stats


@click.command()
@click.option("--name", default="demo1", show_default=True, help="The instance's name.")
@click.option("--template", default="domu", show_default=True, help="Role of the template.")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(path_type=Path),
              help="Public key file for the instance (default: the lab's key).")
def demo(name: str, template: str, ssh_keys: tuple[Path, ...]) -> None:
    """On the running lab: an instance from the domu template (imported if needed), pinged,
    then live-migrated while the config node pings it; prints the lost pings and the pause."""
    lab_dir = current_lab_dir()
    d = os.environ.get("HC_LAB_DIR")
    where = Path(d) if d else (Path(lab_dir) if lab_dir else None)
    if where is None:
        raise click.ClickException("no running lab (hcboot lab up)")
    t0 = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - t0:7.1f}s] {text}")

    try:
        run_demo(read_context(where), say, name, template, ssh_keys)
    except HomecloudError as exc:
        raise click.ClickException(str(exc)) from None
