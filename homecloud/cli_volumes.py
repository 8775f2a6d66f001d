"""hcboot template ... / hcboot volume ...: templates and volumes on the storage nodes (click
only; the work is homecloud.control.volumes).

Every long action prints timestamped steps, then a final result; a failure names the storage
node, the target and what the node reported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from homecloud.control.contracts import Origin
from homecloud.control.service import ControlService
from homecloud.control.volstatus import (
    ReplicaState,
    status_doc,
    stray_doc,
    strays,
    verify_volumes,
    volume_status,
)
from homecloud.control.volumes import Volumes, template_doc, volume_doc
from homecloud.core.errors import HomecloudError
from homecloud.core.model import Inventory, VolumeExport
from homecloud.inventory.schema import parse_size

T = TypeVar("T")


def _volumes(ctx: click.Context) -> Volumes:
    """The volume API over the inventory of hcboot's state directory (``ctx.obj``: hcboot's
    context, with ``state_dir``, ``images`` and ``control()``)."""
    c: Any = ctx.obj
    svc: ControlService = c.control()
    return Volumes(svc.store, c.state_dir, c.images)


def step(text: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {text}")


def _fail(exc: HomecloudError) -> click.ClickException:
    return click.ClickException(str(exc))


def _size(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}{unit}"
    return f"{n}B"


def _listing(fetch: Callable[[], Sequence[T]], as_json: bool, doc: Callable[[T], object],
             empty: str, line: Callable[[T], str]) -> None:
    """The body of a list command: ``fetch()`` the items, then print their ``doc`` as JSON, the
    ``empty`` message, or a ``line`` each."""
    try:
        items = fetch()
    except HomecloudError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps([doc(i) for i in items], indent=1))
        return
    if not items:
        click.echo(empty)
        return
    for i in items:
        click.echo(line(i))


# ----------------------------------------------------------------------------- templates


@click.group()
def template() -> None:
    """Templates: read-only base volumes made from a build, on every storage node."""


@template.command("import")
@click.argument("spec", metavar="ROLE[/BUILD]")
@click.option("--timeout", default=1800, show_default=True, help="Seconds to wait for the"
              " storage nodes.")
@click.pass_context
def template_import(ctx: click.Context, spec: str, timeout: int) -> None:
    """Make a template of ROLE's current (or BUILD) published rootfs on every storage node."""
    role, _, build = spec.partition("/")
    try:
        t = _volumes(ctx).import_template(role, build or None, step, timeout=timeout)
    except HomecloudError as exc:
        raise _fail(exc) from None
    step(f"template {t.name}: ready on {', '.join(t.snodes) or 'no storage node'}")


@template.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def template_list(ctx: click.Context, as_json: bool) -> None:
    """Templates, where they are present and their clones."""
    _listing(lambda: _volumes(ctx).templates(), as_json, template_doc,
             "no templates (hcboot template import ROLE)",
             lambda t: f"{t.name:40} {_size(t.size):>7}  on: {', '.join(t.snodes) or '-'}  "
                       f"clones: {', '.join(t.clones) or '-'}")


@template.command("remove")
@click.argument("name")
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the"
              " storage nodes.")
@click.pass_context
def template_remove(ctx: click.Context, name: str, timeout: int) -> None:
    """Remove template NAME (refused while volumes cloned from it exist)."""
    try:
        _volumes(ctx).remove_template(name, step, timeout=timeout)
    except HomecloudError as exc:
        raise _fail(exc) from None
    step(f"template {name}: removed")


# ------------------------------------------------------------------------------- volumes


@click.group()
def volume() -> None:
    """Volumes: thin volumes on the storage nodes, exported read-write to the hnodes.

    Not redundant yet: one storage node keeps each volume (replication is issue 12)."""


@volume.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def volume_list(ctx: click.Context, as_json: bool) -> None:
    """Volumes: target, size, origin, storage node."""
    _listing(lambda: _volumes(ctx).volumes(), as_json, volume_doc, "no volumes",
             lambda v: f"{v.name:24} {v.target!s:9} {_size(v.size):>7}  "
                       f"{volume_doc(v)['origin'] or 'empty':40}"
                       f" on {', '.join(v.snodes or ('all',))}")


@volume.command("create")
@click.argument("name")
@click.option("--size", default="0", help="Size (e.g. 10G); at least the origin's.")
@click.option("--from", "origin", default="", metavar="template:NAME|volume:NAME|ROLE",
              help="Clone a template (or the newest template of a role) or copy a volume;"
              " empty if not given.")
@click.option("--replicas", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: kept on two storage nodes, in step by DRBD (protocol C); the first "
              "exports it.")
@click.option("--timeout", default=600, show_default=True)
@click.pass_context
def volume_create(ctx: click.Context, name: str, size: str, origin: str, replicas: int,
                  timeout: int) -> None:
    """Create volume NAME and wait until its storage node serves it (with --replicas 2, also
    until the second storage node keeps its replica)."""
    vols = _volumes(ctx)
    try:
        nbytes = parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    try:
        kind, _, oname = origin.partition(":")
        if not origin:
            o = Origin("empty")
        elif kind == "volume" and oname:
            o = Origin("volume", oname)
        else:
            o = Origin("template", vols.resolve_template(oname if kind == "template"
                                                         else origin).name)
        e = vols.create(name, nbytes, o, step, timeout=timeout, replicas=replicas)
    except HomecloudError as exc:
        raise _fail(exc) from None
    rep = f", replicated on {' and '.join(e.snodes or ())}" if e.replicated else ""
    step(f"volume {name}: ready at {e.target} ({_size(e.size)}{rep})")


@volume.command("delete")
@click.argument("name")
@click.option("--timeout", default=300, show_default=True)
@click.pass_context
def volume_delete(ctx: click.Context, name: str, timeout: int) -> None:
    """Delete volume NAME: stop its export, delete it on its storage node, free its slot."""
    try:
        _volumes(ctx).delete(name, step, timeout=timeout)
    except HomecloudError as exc:
        raise _fail(exc) from None
    step(f"volume {name}: deleted")


@volume.command("resolve")
@click.argument("name")
@click.option("--keep", required=True, metavar="SNODE",
              help="The snode whose data is kept; the other side's writes since the split "
                   "are thrown away.")
@click.option("--timeout", default=300, show_default=True)
@click.pass_context
def volume_resolve(ctx: click.Context, name: str, keep: str, timeout: int) -> None:
    """After a split brain of replicated volume NAME (`hcboot volumes` shows both sides'
    generation identifiers): keep SNODE's data, resync the other side from it."""
    try:
        _volumes(ctx).resolve(name, keep, step, timeout=timeout)
    except HomecloudError as exc:
        raise _fail(exc) from None
    step(f"volume {name}: resolved in favour of {keep}")


# ------------------------------------------------------------------ what the storage holds


def _snapshot(ctx: click.Context) -> tuple[Inventory, dict[str, Any]]:
    v = _volumes(ctx)
    try:
        return v.inventory(), v.reports()
    except HomecloudError as exc:
        raise _fail(exc) from None


def _replica_text(r: ReplicaState) -> str:
    age = "never reported" if r.report_age is None else f"{r.report_age:.0f}s ago"
    text = f"{r.snode}: {r.export}{'' if r.present else ', not in its pool'} ({age})"
    if r.drbd is not None:
        d = r.drbd
        text += (f" drbd{d.get('minor')} {d.get('connection')} {d.get('role')}/"
                 f"{d.get('peer_role')} {d.get('disk')}/{d.get('peer_disk')}")
        if d.get("synced_percent") is not None:
            text += f" synced {d['synced_percent']}%"
        if d.get("out_of_sync_kib"):
            text += f" out-of-sync {d['out_of_sync_kib']} KiB"
    return text + (f": {r.detail[:120]}" if r.detail else "")


@click.command("volumes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def volumes_status(ctx: click.Context, as_json: bool) -> None:
    """Every volume as the storage nodes last reported it: its health (ok, degraded, failed,
    unknown), each replica's export state and how old that report is, the instance that uses
    it, and what the snodes hold that the inventory does not name.

    A replicated volume (volume create --replicas 2) shows both snodes with DRBD's connection,
    roles, disk states, resync progress and out-of-sync KiB."""
    inv, reports = _snapshot(ctx)
    now = time.time()
    st, stray = volume_status(inv, reports, now), strays(inv, reports)
    if as_json:
        click.echo(json.dumps({"volumes": [status_doc(v) for v in st],
                               "strays": [stray_doc(s) for s in stray]}, indent=1))
        return
    if not st:
        click.echo("no volumes")
    for v in st:
        click.echo(f"{v.name:24} {v.target:9} {_size(v.size):>7}  {v.health:9} "
                   f"{('instance ' + v.instance) if v.instance else 'no instance':22} "
                   f"{v.origin or 'empty'}")
        for r in v.replicas:
            click.echo(f"    {_replica_text(r)}")
        for p in v.problems:
            click.echo(f"    ! {p}")
    for s in stray:
        click.echo(f"not in the inventory: {s.kind} {s.name} on {s.snode} ({_size(s.size)})"
                   + (", being deleted" if s.deleting else ""))


@click.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check the storage against the inventory, from the storage agents' last reports:
    volumes whose export failed or is missing, stale reports, templates missing on an snode
    with a pool, and volumes or templates an snode holds that the inventory does not name.
    Exit code 1 when anything is wrong (each problem on a line), 0 when all is as recorded."""
    inv, reports = _snapshot(ctx)
    problems = verify_volumes(inv, reports, time.time())
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, indent=1))
    else:
        for p in problems:
            click.echo(p)
        nvol = sum(1 for e in inv.exports if isinstance(e, VolumeExport))
        click.echo(f"verify: {len(problems)} problem(s) in {nvol} volume(s) and "
                   f"{len(inv.templates)} template(s)" if problems else
                   f"verify: ok ({nvol} volume(s), {len(inv.templates)} template(s), as the "
                   "inventory says)")
    if problems:
        ctx.exit(1)
