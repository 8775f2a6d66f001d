"""hcboot instance ... / hcboot node drain|undrain: the instance lifecycle's command line.

Click only (parsing, timestamped steps, messages, exit codes); every command calls
:class:`homecloud.control.instances.InstanceService`.  The service is built by
:data:`FACTORY` when set (tests, the lab), else by :func:`default_service` from the state
directory: the YAML inventory, the hnodes' SSH driver and the snodes' volumes."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from homecloud.control.allocate import InstanceNetwork
from homecloud.control.contracts import HostError
from homecloud.control.hosts import SshHostDriver, ensure_config_key, host_key_from_reports
from homecloud.control.instances import DEFAULT_MEMORY_MB, InstanceService, describe
from homecloud.control.instbase import Settings
from homecloud.control.reports import read_reports
from homecloud.control.service import known_roles
from homecloud.control.volumes import Volumes
from homecloud.core.errors import HomecloudError
from homecloud.core.model import Node
from homecloud.inventory.schema import parse_size
from homecloud.inventory.yamlfile import YamlFileStore

#: builds the service from the root context's object (``state_dir``, ``images``); None: default
FACTORY: Callable[[Any], InstanceService] | None = None


def settings_from_env() -> Settings:
    """``HC_INSTANCE_NETWORK`` (CIDR), ``HC_INSTANCE_GATEWAY`` (the config node's address on it,
    ``none`` for none), ``HC_INSTANCE_BRIDGE`` (dom0's bridge); defaults: the lab's."""
    d = InstanceNetwork()
    gw = os.environ.get("HC_INSTANCE_GATEWAY", d.gateway or "none")
    net = InstanceNetwork(cidr=os.environ.get("HC_INSTANCE_NETWORK", d.cidr),
                          gateway=None if gw.lower() == "none" else gw,
                          bridge=os.environ.get("HC_INSTANCE_BRIDGE", d.bridge))
    return Settings(network=net)


def default_service(obj: Any) -> InstanceService:
    """The production wiring: the YAML inventory; the hnodes' SSH driver
    (:class:`homecloud.control.hosts.SshHostDriver`: the config node's key, host keys pinned
    from the nodes' reports, ``HC_SSH_PREFIX`` as the argv prefix, e.g. the lab's
    ``ip netns exec NS``); the snodes' volumes (:class:`homecloud.control.volumes.Volumes`)."""
    state_dir, images = Path(obj.state_dir), Path(obj.images)
    store = YamlFileStore(state_dir, known_roles(images))

    def host_key_of(node: Node) -> str | None:  # the reports as they are now, not at start
        return host_key_from_reports(read_reports(state_dir))(node)

    hosts = SshHostDriver(ensure_config_key(state_dir), host_key_of, state_dir / "ssh" / "known",
                          prefix=shlex.split(os.environ.get("HC_SSH_PREFIX", "")))
    return InstanceService(store, hosts, Volumes(store, state_dir, images), settings_from_env())


def _service() -> InstanceService:
    obj = click.get_current_context().find_root().obj
    return FACTORY(obj) if FACTORY is not None else default_service(obj)


def step(msg: str) -> None:
    """One timestamped step of an action."""
    click.echo(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]}  {msg}")


@contextmanager
def action(what: str) -> Iterator[None]:
    """Times the action, prints its final result; errors become messages and exit status 1."""
    t0 = time.monotonic()
    try:
        yield
    except (HomecloudError, HostError) as exc:
        step(f"FAILED after {time.monotonic() - t0:.1f} s: {what}")
        raise click.ClickException(str(exc)) from None
    step(f"done in {time.monotonic() - t0:.1f} s: {what}")


def _disk_size(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value) << 30 if value.strip().isdigit() else parse_size(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: want GiB (10) or a size (10G, 512M)",
                                 param_hint="--disk-size") from None


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read the {what}: {exc}") from None


@click.group()
def instance() -> None:
    """Instances: Xen guests made from templates, their disks on the storage nodes."""


@instance.command()
@click.argument("name")
@click.option("--template", "-t", required=True, help="A template's name or a role (its newest).")
@click.option("--memory", type=click.IntRange(64), default=DEFAULT_MEMORY_MB, show_default=True,
              help="MiB.")
@click.option("--vcpus", type=click.IntRange(1, 128), default=1, show_default=True)
@click.option("--disk-size", help="GiB (or 10G, 512M); default the template's size.")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(path_type=Path),
              help="A public key file (lines of keys); repeatable.")
@click.option("--user-data", type=click.Path(path_type=Path),
              help="cloud-init user-data: #cloud-config (merged) or a script.")
@click.option("--on", help="The hnode to start it on (default: placement).")
@click.option("--no-start", is_flag=True, help="Create the volume only; start later.")
@click.option("--replicas", type=click.IntRange(1, 2), default=None,
              help="2: the volume on two snodes, in step by DRBD; 1: on one.  Default: 2 "
                   "when two snodes have a volume pool.")
def create(name: str, template: str, memory: int, vcpus: int, disk_size: str | None,
           ssh_keys: tuple[Path, ...], user_data: Path | None, on: str | None,
           no_start: bool, replicas: int | None) -> None:
    """Create instance NAME from a template and start it."""
    keys = [line for p in ssh_keys for line in _read(p, "SSH key").splitlines()
            if line.strip() and not line.startswith("#")]
    ud = _read(user_data, "user-data") if user_data else ""
    size = _disk_size(disk_size)
    with action(f"create {name}"):
        inst = _service().create(name, template, memory, vcpus, size, keys, ud, on,
                                 not no_start, step, replicas=replicas)
        step(f"{inst.name}: {inst.state}" + (f" on {inst.host}" if inst.host else "")
             + f", {inst.ip} ({inst.mac})")


@instance.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(as_json: bool) -> None:
    """List instances."""
    try:
        rows = _service().instances()
    except HomecloudError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([describe(i) for i in rows], indent=1))
        return
    if not rows:
        click.echo("no instances (hcboot instance create NAME --template domu)")
        return
    click.echo(f"{'NAME':16}  {'STATE':10}  {'HOST':10}  {'IP':15}  {'MAC':17}  MEM  CPU")
    for i in rows:
        click.echo(f"{i.name:16}  {i.state:10}  {i.host or '-':10}  {i.ip:15}  {i.mac:17}  "
                   f"{i.memory_mb:>4}  {i.vcpus:>3}" + ("  !" if i.last_error else ""))


@instance.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(name: str, as_json: bool) -> None:
    """Show instance NAME: its state, where it runs, and the last error."""
    try:
        doc = describe(_service().get(name))
    except HomecloudError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    for k, v in doc.items():
        if k == "ssh_keys":
            v = f"{len(v)} key(s)"
        elif isinstance(v, list):
            v = ", ".join(v) or "-"
        click.echo(f"{k + ':':12} {'-' if v in (None, '') else v}")


@instance.command()
@click.argument("name")
@click.option("--on", help="The hnode to start it on (default: placement).")
def start(name: str, on: str | None) -> None:
    """Start a stopped instance."""
    with action(f"start {name}"):
        inst = _service().start(name, on, step)
        step(f"{name} running on {inst.host} at {inst.ip}")


@instance.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="xl destroy instead of a clean shutdown.")
def stop(name: str, force: bool) -> None:
    """Stop an instance (clean shutdown; --force: hard stop)."""
    with action(f"stop {name}"):
        _service().stop(name, force, step)


@instance.command()
@click.argument("name")
def reboot(name: str) -> None:
    """Reboot an instance."""
    with action(f"reboot {name}"):
        _service().reboot(name, step)


@instance.command()
@click.argument("name")
def console(name: str) -> None:
    """Attach to an instance's console (xl console on its hnode; Ctrl-] leaves)."""
    try:
        rc = _service().console(name)
    except (HomecloudError, HostError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(rc)


@instance.command()
@click.argument("src")
@click.argument("new")
@click.option("--on", help="The hnode to start the copy on (default: placement).")
@click.option("--no-start", is_flag=True, help="Copy the volume only; start later.")
def copy(src: str, new: str, on: str | None, no_start: bool) -> None:
    """Make NEW from the stopped instance SRC (a copy of its disk, a new identity)."""
    with action(f"copy {src} -> {new}"):
        inst = _service().copy(src, new, on, not no_start, step)
        step(f"{inst.name}: {inst.state}" + (f" on {inst.host}" if inst.host else "")
             + f", {inst.ip} ({inst.mac})")


@instance.command()
@click.argument("name")
def destroy(name: str) -> None:
    """Destroy an instance: its domain, its volume, its MAC and address."""
    with action(f"destroy {name}"):
        _service().destroy(name, step)


@instance.command()
@click.argument("name")
@click.option("--to", help="The target hnode (default: placement).")
@click.option("--cleanup", is_flag=True,
              help="Do not migrate: find where the domain really is and repair the record.")
def migrate(name: str, to: str | None, cleanup: bool) -> None:
    """Live-migrate an instance to another hnode (or repair a failed migration)."""
    if cleanup and to:
        raise click.UsageError("--cleanup takes no --to")
    svc = _service()
    if cleanup:
        with action(f"cleanup {name}"):
            inst = svc.cleanup(name, step)
            step(f"{name}: {inst.state}" + (f" on {inst.host}" if inst.host else ""))
        return
    with action(f"migrate {name}"):
        res = svc.migrate(name, to, step)
        step(f"{name} migrated {res.source} -> {res.target} in {res.seconds:.1f} s")


@click.group()
def node() -> None:
    """Hardware nodes: drain (move every instance off) and undrain."""


@node.command()
@click.argument("hnode")
def drain(hnode: str) -> None:
    """Live-migrate every instance off HNODE and place nothing new there."""
    with action(f"drain {hnode}"):
        res = _service().drain(hnode, step)
        step(f"{hnode} drained: {len(res)} instance(s) moved")


@node.command()
@click.argument("hnode")
def undrain(hnode: str) -> None:
    """Let placement use HNODE again."""
    with action(f"undrain {hnode}"):
        _service().undrain(hnode)
