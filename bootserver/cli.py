"""hcboot: the config node's command line (click only: parsing, messages, exit codes)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from bootserver.errors import HcbootError
from bootserver.exports import plan_all
from bootserver.inventory import InventoryFile
from bootserver.machine import BadMac, normalize_mac
from bootserver.reports import read_reports
from bootserver.seen import read_seen
from builder.manifest import ImageStore, ManifestError
from builder.paths import default_image_store, default_state_dir, profiles_dir

F = TypeVar("F", bound=Callable[..., Any])


def known_roles(store: Path | None = None) -> list[str]:
    """Roles are the profiles shipped with homecloud plus any role published in the store."""
    roles = {p.stem for p in profiles_dir().glob("*.yaml")}
    if store is not None:
        roles.update(ImageStore(store).roles())
    return sorted(roles)


def fail_cleanly(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (HcbootError, ManifestError, BadMac) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, state_dir: Path, images: Path) -> None:
        self.state_dir = state_dir
        self.images = images

    def inventory(self) -> InventoryFile:
        return InventoryFile(self.state_dir, known_roles(self.images))


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="HC_STATE_DIR",
              default=None, help="State directory (inventory, leases, seen machines). "
              "Env HC_STATE_DIR; default /var/lib/homecloud.")
@click.option("--images", type=click.Path(path_type=Path), envvar="HC_IMAGE_STORE", default=None,
              help="Image store written by hcbuild. Env HC_IMAGE_STORE; default STATE_DIR/images.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.pass_context
def main(ctx: click.Context, state_dir: Path | None, images: Path | None, verbose: int) -> None:
    """hcboot: boot every machine of a homecloud from the network, by MAC address."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    node = c.inventory().assign(mac, role, hostname, ip, cmdline, loader)
    click.echo(f"{node.mac} -> {node.role}" + (f" ({node.hostname})" if node.hostname else ""))


@main.command()
@click.argument("mac")
@pass_ctx
@fail_cleanly
def unassign(c: Ctx, mac: str) -> None:
    """Remove machine MAC from the inventory."""
    if not c.inventory().unassign(mac):
        raise click.ClickException(f"{normalize_mac(mac)} is not assigned")
    click.echo(f"{normalize_mac(mac)} unassigned")


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
    inv = c.inventory().load()
    if unassigned:
        rows = [s for s in read_seen(c.state_dir) if inv.node(s.mac) is None]
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
    reports = read_reports(c.state_dir)
    if as_json:
        click.echo(json.dumps([{**n.to_doc(), "report": reports.get(n.mac)} for n in inv.nodes],
                              indent=1))
        return
    if not inv.nodes:
        click.echo("no nodes assigned (hcboot assign MAC ROLE)")
        return
    click.echo(f"{'MAC':17}  {'ROLE':8}  {'HOSTNAME':12}  {'IP':15}  STATE")
    for n in inv.nodes:
        r = reports.get(n.mac) or {}
        state = f"{r.get('state')} ({_ago(r.get('time'))})" if r else "-"
        click.echo(f"{n.mac:17}  {n.role:8}  {n.hostname or '-':12}  {n.ip or '-':15}  {state}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--server", default="http://CONFIG-NODE", show_default=True,
              help="Base URL shown in image sources.")
@pass_ctx
@fail_cleanly
def exports(c: Ctx, as_json: bool, server: str) -> None:
    """Show the AoE export plan: target, source image, storage nodes, allowed consumers."""
    plan = plan_all(c.inventory().load(), ImageStore(c.images), server)
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
        click.echo(f"{p.export.target:8} {p.export.mode}  {what}")
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
    from bootserver.inventory import InventoryWatcher
    from bootserver.policy import Policy, PolicyConfig

    pol = Policy(PolicyConfig(server_ip, http_port), InventoryWatcher(c.inventory()),
                 ImageStore(c.images))
    m = normalize_mac(mac)
    out = pol.pxelinux_config(m) if pxelinux else pol.ipxe_script(m)
    if out is None:
        raise click.ClickException(f"{m}: no boot configuration (unassigned or no image)")
    click.echo(out, nl=False)


def _attach_optional() -> None:
    """Sub-command groups that live in their own modules."""
    try:
        from bootserver.aoe.cli import aoe
    except ImportError:  # pragma: no cover - during development only
        pass
    else:
        main.add_command(aoe)
    try:
        from bootserver.serve import serve
    except ImportError:  # pragma: no cover
        pass
    else:
        main.add_command(serve)
    try:
        from bootserver.lab.cli import lab
    except ImportError:  # pragma: no cover
        pass
    else:
        main.add_command(lab)


_attach_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
