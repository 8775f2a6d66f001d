"""hcboot: the config node's command line (click only: parsing, messages, exit codes).

The composition root: every command calls the control service (``homecloud.control.service``)
or a tool (``homecloud.aoe``, ``homecloud.lab``, ``homecloud.serve``); nothing imports this."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from homecloud.aoe.cli import aoe
from homecloud.cli_instances import instance, node
from homecloud.cli_volumes import template, verify, volume, volumes_status
from homecloud.control.service import ControlService
from homecloud.core.errors import HomecloudError
from homecloud.core.ids import normalize_mac
from homecloud.core.paths import default_image_store, default_state_dir
from homecloud.lab.cli import lab
from homecloud.lab.context import current_context
from homecloud.serve import serve

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HomecloudError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, state_dir: Path, images: Path) -> None:
        self.state_dir = state_dir
        self.images = images

    def control(self) -> ControlService:
        return ControlService.open(self.state_dir, self.images)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="HC_STATE_DIR",
              default=None, help="State directory (inventory, leases, seen machines). "
              "Env HC_STATE_DIR; default /var/lib/homecloud.")
@click.option("--images", type=click.Path(path_type=Path), envvar="HC_IMAGE_STORE", default=None,
              help="Image store written by hcbuild. Env HC_IMAGE_STORE; default STATE_DIR/images.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("--lab", "use_lab", is_flag=True, help="Use the running lab's state and images "
              "(the context the last `hcboot lab up` wrote; see `hcboot lab env`).")
@click.pass_context
def main(ctx: click.Context, state_dir: Path | None, images: Path | None, verbose: int,
         use_lab: bool) -> None:
    """hcboot: boot every machine of a homecloud from the network, by MAC address."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if use_lab:
        lab_ctx = fail_cleanly(current_context)()
        state_dir, images = Path(lab_ctx.state_dir), Path(lab_ctx.images)
        # the lab's SSH prefix (its netns) and instance gateway for the instance commands
        for k, v in {**lab_ctx.env(), "HC_INSTANCE_GATEWAY": lab_ctx.inst_ip}.items():
            os.environ.setdefault(k, v)
    sd = state_dir or default_state_dir()
    ctx.obj = Ctx(sd, images or (sd / "images" if state_dir else default_image_store()))


@main.command()
@click.argument("mac")
@click.argument("role")
@click.option("--hostname", help="Host name handed out by DHCP and on the kernel command line.")
@click.option("--ip", help="Static IPv4 address (full DHCP mode).")
@click.option("--cmdline", default=None, help="Extra kernel arguments for this node.")
@click.option("--loader", type=click.Choice(["ipxe", "pxelinux"]), default=None,
              help="Override the image's boot loader for this node.")
@pass_ctx
@fail_cleanly
def assign(c: Ctx, mac: str, role: str, hostname: str | None, ip: str | None,
           cmdline: str | None, loader: str | None) -> None:
    """Give machine MAC the role ROLE (takes effect at its next boot, no restart)."""
    node = c.control().assign(mac, role, hostname, ip, cmdline, loader)
    click.echo(f"{node.mac} -> {node.role} ({node.name})")


@main.command()
@click.argument("node")
@pass_ctx
@fail_cleanly
def unassign(c: Ctx, node: str) -> None:
    """Remove NODE (a node name or the MAC of one of its NICs) from the inventory."""
    gone = c.control().unassign(node)
    click.echo(f"{gone.mac} unassigned ({gone.name})")


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    d = max(0, time.time() - t)
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else \
        time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


@main.command()
@click.option("--unassigned", is_flag=True,
              help="Only machines that asked to boot but have no role.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@fail_cleanly
def nodes(c: Ctx, unassigned: bool, as_json: bool) -> None:
    """List assigned nodes (with their last report) or unassigned machines seen booting."""
    svc = c.control()
    if unassigned:
        rows = svc.unassigned()
        if as_json:
            click.echo(json.dumps([s.__dict__ for s in rows], indent=1))
            return
        if not rows:
            click.echo("no unassigned machines seen")
            return
        click.echo(f"{'MAC':17}  {'ARCH':>4}  {'FIRST SEEN':>12}  {'LAST SEEN':>12}  VENDOR CLASS")
        for s in rows:
            click.echo(f"{s.mac:17}  {s.arch if s.arch is not None else '-':>4}  "
                       f"{_ago(s.first_seen):>12}  {_ago(s.last_seen):>12}  "
                       f"{s.vendor_class or '-'}")
        return
    rows_ = svc.nodes()
    if as_json:
        click.echo(json.dumps([r.to_doc() for r in rows_], indent=1))
        return
    if not rows_:
        click.echo("no nodes assigned (hcboot assign MAC ROLE)")
        return
    click.echo(f"{'NAME':12}  {'ROLE':8}  {'MAC':17}  {'IP':15}  STATE")
    for st in rows_:
        n, r = st.node, st.report or {}
        state = f"{r.get('state')} ({_ago(r.get('time'))})" if r else "-"
        click.echo(f"{n.name:12}  {n.role:8}  {n.mac:17}  {n.ip or '-':15}  {state}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--server", default="http://CONFIG-NODE", show_default=True,
              help="Base URL shown in image sources.")
@pass_ctx
@fail_cleanly
def exports(c: Ctx, as_json: bool, server: str) -> None:
    """Show the AoE export plan: target, source image, storage nodes, allowed consumers."""
    plan = c.control().exports(server)
    if as_json:
        click.echo(json.dumps([p.to_doc() for p in plan], indent=1))
        return
    if not plan:
        click.echo("no exports in the inventory")
        return
    for p in plan:
        src = p.source
        what = (f"image {src['role']}/{src.get('build_id', '?')}/{src['artifact']}"
                if src["kind"] == "image" else f"volume {src['name']} ({src['size']} bytes)")
        click.echo(f"{p.export.target!s:8} {p.export.mode}  {what}")
        click.echo(f"         snodes: {', '.join(p.snode_macs) or '(none assigned)'}")
        click.echo(f"         allow:  {', '.join(p.allow) or '(no consumer assigned yet)'}")
        if p.problem:
            click.echo(f"         PROBLEM: {p.problem}")


@main.command()
@click.argument("mac")
@click.option("--pxelinux", is_flag=True, help="Show the pxelinux config instead of iPXE.")
@click.option("--server-ip", default="192.0.2.1", show_default=True)
@click.option("--http-port", default=80, show_default=True)
@pass_ctx
@fail_cleanly
def render(c: Ctx, mac: str, pxelinux: bool, server_ip: str, http_port: int) -> None:
    """Print the boot script machine MAC would get now."""
    from bootserver.policy import Policy, PolicyConfig

    svc = c.control()
    svc.inventory()  # a broken inventory is an error here, not an empty one
    pol = Policy(PolicyConfig(server_ip, http_port), svc.store, svc.image_store())
    m = normalize_mac(mac)
    out = pol.pxelinux_config(m) if pxelinux else pol.ipxe_script(m)
    if out is None:
        raise click.ClickException(f"{m}: no boot configuration (unassigned or no image)")
    click.echo(out, nl=False)


main.add_command(aoe)
main.add_command(serve)
main.add_command(instance)
main.add_command(node)
main.add_command(lab)  # a tool: the composition root is the only module that imports it
main.add_command(template)
main.add_command(volume)
main.add_command(volumes_status)
main.add_command(verify)

if __name__ == "__main__":  # pragma: no cover
    main()
