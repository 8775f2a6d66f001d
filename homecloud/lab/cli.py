"""``hcboot lab``: a whole homecloud in QEMU on this machine (click only)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

import click

from homecloud.core.errors import HomecloudError
from homecloud.inventory.schema import parse_size
from homecloud.lab.context import current_lab_dir, read_context
from homecloud.lab.demo import demo
from homecloud.lab.errors import LabError
from homecloud.lab.lab import Lab
from homecloud.lab.net import ETHERNET_MTU
from homecloud.lab.status import DEFAULT_INST_NET, DEFAULT_MTU, DEFAULT_NET, format_table

DETACH = b"\x1d"  # Ctrl-]


def _lab_dir(ctx: click.Context, given: Path | None) -> Path:
    """--state-dir, else $HC_LAB_DIR, else <hcboot --state-dir>/lab when hcboot's state dir was
    given, else the current lab (the one the last `lab up` made), else <default state>/lab."""
    if given is not None:
        return given
    env = os.environ.get("HC_LAB_DIR")
    if env:
        return Path(env)
    root = ctx.find_root()
    obj: Any = root.obj
    explicit = root.params.get("state_dir") is not None
    if not explicit:
        cur = _run(current_lab_dir)
        if cur is not None:
            return Path(cur)
    return Path(obj.state_dir) / "lab" if obj is not None else Path("/var/lib/homecloud/lab")


def _images(ctx: click.Context, given: Path | None) -> Path | None:
    if given is not None:
        return given
    obj: Any = ctx.find_root().obj
    return Path(obj.images) if obj is not None else None


state_dir_opt = click.option(
    "--state-dir", "lab_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Lab directory (lab.json, logs, disks). Env HC_LAB_DIR; default <hcboot state>/lab.")


def _run(fn: Any) -> Any:
    try:
        return fn()
    except HomecloudError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def lab() -> None:
    """A virtual homecloud in QEMU (TCG): hcboot serve, storage nodes, Xen hosts, in an
    isolated network namespace."""


@lab.command()
@click.option("--hnodes", default=2, show_default=True, type=click.IntRange(0, 50),
              help="Xen hosts (two by default: live migration needs two).")
@click.option("--snodes", default=2, show_default=True, type=click.IntRange(1, 9))
@state_dir_opt
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Image store to boot from (default: hcboot's --images).")
@click.option("--no-build", is_flag=True, help="Do not run `hcbuild image --all` first.")
@click.option("--timeout", default=1800, show_default=True, type=click.IntRange(10),
              help="Seconds to wait for every node to be ready.")
@click.option("--disk-size", default="8G", show_default=True,
              help="Size of each storage-node disk (raw, sparse).")
@click.option("--network", default=DEFAULT_NET, show_default=True,
              help="Server address and prefix on the lab bridge (a documentation range).")
@click.option("--sequential", "hnode_start", flag_value="exports-ready", default=True,
              help="Start the hnodes once every snode exports (the default).")
@click.option("--staggered", "hnode_start", flag_value="snodes-ready",
              help="Start the hnodes once every snode's system is up: Xen and dom0's kernel "
              "boot while the snodes set up their disks and fetch the hnode root.")
@click.option("--parallel", "hnode_start", flag_value="with-snodes",
              help="Start the hnodes with the snodes (they wait for the root export).")
@click.option("--instance-network", default=DEFAULT_INST_NET, show_default=True,
              help="Server address and prefix on the instance bridge (the hnodes' NIC 2).")
@click.option("--mtu", type=click.IntRange(ETHERNET_MTU, 65535), default=DEFAULT_MTU,
              show_default=True,
              help="MTU of the provisioning/storage bridge and its taps (hcboot serve --mtu: "
              "the nodes use it; 1500 for no jumbo frames).")
@click.option("--snode-memory", type=click.IntRange(256), default=None,
              help="MB per storage node (default 2048: its RAM root must fit in half).")
@click.option("--hnode-memory", type=click.IntRange(512), default=None,
              help="MB per Xen host (default 2048; 1536 each when more than one).")
@click.pass_context
def up(ctx: click.Context, hnodes: int, snodes: int, lab_dir: Path | None, images: Path | None,
       no_build: bool, timeout: int, disk_size: str, network: str, snode_memory: int | None,
       hnode_memory: int | None, instance_network: str, hnode_start: str, mtu: int) -> None:
    """Build missing images, start hcboot and the nodes, follow them until ready."""
    try:
        size = parse_size(disk_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--disk-size") from None
    lb = Lab(_lab_dir(ctx, lab_dir), _images(ctx, images), say=click.echo)
    try:
        rows = lb.up(snodes=snodes, hnodes=hnodes, build=not no_build, timeout=timeout,
                     disk_size=size, network=network, snode_memory=snode_memory,
                     hnode_memory=hnode_memory, instance_network=instance_network,
                     hnode_start=hnode_start, mtu=mtu)
    except HomecloudError as exc:
        hint = ("" if "lab down` first" in str(exc) else
                "\n(whatever the lab started stays until `hcboot lab down`)")
        raise click.ClickException(f"{exc}{hint}") from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the lab is left as it is; `hcboot lab down` removes it",
                   err=True)
        sys.exit(130)
    click.echo("")
    click.echo(format_table(rows))
    bad = [r.name for r in rows if not r.done]
    if bad:
        raise click.ClickException(f"not ready: {', '.join(bad)} (serial logs in "
                                   f"{lb.vms_dir}; hcboot lab console NODE)")
    click.echo(f"\nall {len(rows)} nodes ready. hcboot lab console NODE | lab ssh NODE | "
               "lab status | lab down\nother hcboot commands against this lab: "
               "eval \"$(hcboot lab env)\", or hcboot --lab COMMAND")


@lab.command()
@state_dir_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, lab_dir: Path | None, as_json: bool) -> None:
    """Show the lab's nodes: MAC, role, address, state, boot seconds."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    doc = _run(lb.summary)
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    if not doc["nodes"] and not doc["netns_exists"]:
        click.echo(f"no lab in {doc['dir']} (hcboot lab up)")
        return
    srv = doc["server"]
    click.echo(f"lab {doc['dir']}: {doc['phase']}; namespace {doc['netns']} "
               f"({'present' if doc['netns_exists'] else 'absent'}); hcboot serve "
               f"{'running' if srv['running'] else 'stopped'} at {srv['address']} "
               f"({doc['bridges']['provisioning']}) and {srv['instance_address']} "
               f"({doc['bridges']['instance']}, instances)")
    click.echo(format_table(_run(lb.status)))


@lab.command()
@state_dir_opt
@click.option("--json", "as_json", is_flag=True, help="The context document instead.")
@click.pass_context
def env(ctx: click.Context, lab_dir: Path | None, as_json: bool) -> None:
    """Print the running lab's context as shell exports: eval "$(hcboot lab env)" and every
    hcboot command uses the lab's state and images (HC_SSH_PREFIX: run SSH in its namespace)."""
    c = _run(lambda: read_context(_lab_dir(ctx, lab_dir)))
    if as_json:
        click.echo(json.dumps(c.to_doc(), indent=1, sort_keys=True))
        return
    click.echo(f"# homecloud lab {c.lab_dir}: config node {c.server_ip} on {c.bridge}, "
               f"{c.inst_ip} on {c.inst_bridge}, namespace {c.netns}")
    click.echo(c.shell_exports(), nl=False)


@lab.command(context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@state_dir_opt
@click.option("--user", default="root", show_default=True)
@click.pass_context
def ssh(ctx: click.Context, node: str, command: tuple[str, ...], lab_dir: Path | None,
        user: str) -> None:
    """SSH to NODE (a lab node's name or MAC, an instance's name, or an address) with the lab's
    key, from inside the lab's namespace; runs COMMAND if given.  Instances take the lab's key
    when created with it (hcboot lab demo does); their user is ``debian`` unless their
    user-data lets root in (the demo's does)."""
    d = _lab_dir(ctx, lab_dir)
    c = _run(lambda: read_context(d))
    host = node
    if not _is_ipv4(node):
        lb = Lab(d)
        _run(lb.load)
        inst = lb.inventory().instance(node)
        if inst is not None:  # an instance of the lab: its address on the instance network
            host = inst.ip
        else:
            n = _run(lambda: lb.node(node))
            host = n.get("ip") or ""
        if not host:
            raise click.ClickException(f"{node}: no address in the lab's records (lab status)")
    argv = c.ssh_argv(host, *command, user=user, tty=not command and sys.stdin.isatty())
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise click.ClickException(f"{' '.join(argv[:6])}...: {exc}") from None


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


@lab.command()
@click.argument("node")
@state_dir_opt
@click.pass_context
def console(ctx: click.Context, node: str, lab_dir: Path | None) -> None:
    """Attach to NODE's serial console (Ctrl-] detaches)."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    n = _run(lambda: (lb.load(), lb.node(node))[1])
    sock_path = n.get("serial_sock")
    if not sock_path or not Path(sock_path).exists():
        raise click.ClickException(f"{node}: no console socket (is its VM running?)")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
    except OSError as exc:
        raise click.ClickException(f"{node}: cannot attach to {sock_path}: {exc}") from None
    click.echo(f"attached to {n['name']} ({n['mac']}); Ctrl-] detaches; log {n['serial_log']}",
               err=True)
    _relay(s)
    click.echo(f"\ndetached from {n['name']}", err=True)


def _relay(s: socket.socket) -> None:
    fd = sys.stdin.fileno()
    out = sys.stdout.buffer
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        while True:
            r, _, _ = select.select([s, fd], [], [])
            if s in r:
                data = s.recv(65536)
                if not data:
                    return
                out.write(data)
                out.flush()
            if fd in r:
                data = os.read(fd, 1024)
                if not data:
                    return
                if DETACH in data:
                    data = data.split(DETACH, 1)[0]
                    if data:
                        s.sendall(data)
                    return
                s.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        s.close()


@lab.command()
@state_dir_opt
@click.option("--keep-disks", is_flag=True, help="Keep the storage nodes' disk files.")
@click.pass_context
def down(ctx: click.Context, lab_dir: Path | None, keep_disks: bool) -> None:
    """Stop every VM and server the lab started, remove its namespace (idempotent)."""
    lb = Lab(_lab_dir(ctx, lab_dir), say=click.echo)
    done = _run(lambda: lb.down(keep_disks=keep_disks))
    for d in done:
        click.echo(f"stopped {d}")
    click.echo("lab down" if done else "nothing to stop: lab down")


@lab.command("add-node")
@click.option("--role", default="hnode", show_default=True)
@state_dir_opt
@click.option("--timeout", default=1200, show_default=True, type=click.IntRange(10))
@click.option("--memory", type=click.IntRange(256), default=None, help="MB (default by role).")
@click.option("--assign-after", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds to leave the machine unassigned once hcboot has seen it.")
@click.pass_context
def add_node(ctx: click.Context, role: str, lab_dir: Path | None, timeout: int,
             memory: int | None, assign_after: float) -> None:
    """Power on a new machine (fresh MAC), assign it ROLE when hcboot sees it, follow it."""
    lb = Lab(_lab_dir(ctx, lab_dir), say=click.echo)
    st, secs = _run(lambda: lb.add_node(role, timeout=timeout, memory=memory,
                                              assign_after=assign_after))
    click.echo("")
    click.echo(format_table([st]))
    if secs is None:
        raise click.ClickException(f"{st.name} did not reach {role}'s ready state: {st.state}")
    click.echo(f"\n{st.name}: assignment to {st.state}: {secs:.1f} s")


@lab.command()
@click.argument("node")
@state_dir_opt
@click.pass_context
def reset(ctx: click.Context, node: str, lab_dir: Path | None) -> None:
    """Reboot NODE (QEMU monitor system_reset)."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    _run(lambda: lb.reset_node(node))
    click.echo(f"{node}: reset")


@lab.command()
@click.argument("node")
@state_dir_opt
@click.pass_context
def kill(ctx: click.Context, node: str, lab_dir: Path | None) -> None:
    """Power NODE off hard (SIGKILL to its QEMU: no shutdown); `lab start` powers it on."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    pid = _run(lambda: lb.kill_node(node))
    click.echo(f"{time.strftime('%H:%M:%S')} {node}: killed (QEMU pid {pid}, SIGKILL)")


@lab.command()
@click.argument("node")
@state_dir_opt
@click.pass_context
def start(ctx: click.Context, node: str, lab_dir: Path | None) -> None:
    """Power a killed NODE on again (same machine: MAC, disks); it boots from the network."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    pid = _run(lambda: lb.start_node(node))
    click.echo(f"{time.strftime('%H:%M:%S')} {node}: started (QEMU pid {pid}); "
               "`hcboot lab status` follows its boot")


@lab.command()
@state_dir_opt
@click.option("--target", default="e1.0", show_default=True, help="AoE target eSHELF.SLOT.")
@click.option("--role", default="hnode", show_default=True,
              help="Role whose current build the export must serve.")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="Compare N sectors only (default: read everything, compare sha256).")
@click.pass_context
def verify(ctx: click.Context, lab_dir: Path | None, target: str, role: str,
           sample: int | None) -> None:
    """hcboot aoe verify of TARGET from inside the lab's namespace (on its bridge)."""
    lb = Lab(_lab_dir(ctx, lab_dir))
    doc = _run(lb.summary)
    if not doc["netns_exists"]:
        raise click.ClickException(f"no lab is up in {doc['dir']} (hcboot lab up)")
    argv = [sys.executable, "-m", "homecloud", "aoe", "verify", "--netns", doc["netns"],
            "--interface", lb.net.bridge, "--target", target, "--role", role,
            "--images", str(doc["images"])]
    if sample:
        argv += ["--sample", str(sample)]
    click.echo("$ " + " ".join(argv[1:]), err=True)
    sys.exit(subprocess.run(argv).returncode)


lab.add_command(demo)
__all__ = ["LabError", "lab"]
