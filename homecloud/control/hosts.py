"""The control service's :class:`~homecloud.control.contracts.HostDriver` over SSH.

Every call is one ``ssh root@NODE hc-hnode-agent`` with a JSON request on stdin and a JSON answer
on stdout (:mod:`homecloud.agents.hostproto`).  The SSH side is strict: the config node's key
(``<state-dir>/ssh/id_ed25519``, made by :func:`ensure_config_key`), the node's host key pinned
from its report (a per-node known_hosts file written for each call, ``HostKeyAlias`` = node
name, so a changed key is refused and never learned), ``BatchMode`` (no prompt ever),
connect and action timeouts.  ``prefix`` is an argv put before ``ssh``: in the lab the nodes
live in a network namespace (``["ip", "netns", "exec", NS]``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from homecloud.agents.hostproto import (
    AGENT_COMMAND,
    DomainSpec,
    Request,
    parse_answer,
    request_json,
)
from homecloud.agents.protocol import ProtocolError
from homecloud.control.contracts import (
    DomainInfo,
    HostError,
    HostFacts,
    MigrationResult,
    Progress,
)
from homecloud.core.files import atomic_write
from homecloud.core.model import Node

KEY_NAME = "id_ed25519"
TAIL = 8

#: a node's pinned host key ("ssh-ed25519 AAAA...") or None when it has not reported one
HostKeyOf = Callable[[Node], "str | None"]


def ensure_config_key(state_dir: Path) -> Path:
    """The config node's SSH key (``<state-dir>/ssh/id_ed25519``), made once; its path."""
    d = Path(state_dir) / "ssh"
    key = d / KEY_NAME
    if not key.is_file():
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hc-config", "-f", str(key)]
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise HostError(f"{shlex.join(argv)}: exit code {r.returncode}: "
                            f"{_tail(r.stdout + r.stderr)}")
    return key


def host_key_from_reports(reports: dict[str, dict[str, Any]]) -> HostKeyOf:
    """A :data:`HostKeyOf` reading the ``ssh_host_key`` fact of the nodes' reports (by MAC:
    ``homecloud.control.reports.read_reports``)."""
    def of(node: Node) -> str | None:
        rep = reports.get(node.mac) or {}
        facts = rep.get("facts") if isinstance(rep, dict) else None
        key = facts.get("ssh_host_key") if isinstance(facts, dict) else None
        return key if isinstance(key, str) and key else None
    return of


def _tail(text: str, n: int = TAIL) -> str:
    return " | ".join(text.strip().splitlines()[-n:]) or "no output"


class SshHostDriver:
    def __init__(self, key: Path, host_key_of: HostKeyOf, known_dir: Path,
                 prefix: Sequence[str] = (), user: str = "root", port: int = 22,
                 connect_timeout: int = 10, action_timeout: float = 600,
                 ssh: str = "ssh",
                 address_of: Callable[[Node], str | None] | None = None) -> None:
        """``address_of(node)``: where to reach a node whose inventory entry has no static
        address (its DHCP lease); default: the provisioning NIC's ``ip``."""
        self.key = Path(key)
        self.host_key_of = host_key_of
        self.known_dir = Path(known_dir)
        self.prefix = list(prefix)
        self.user, self.port = user, port
        self.connect_timeout = connect_timeout
        self.action_timeout = action_timeout
        self.ssh = ssh
        self.address_of = address_of

    # ------------------------------------------------------------------ SSH

    def _address(self, node: Node) -> str:
        addr = self.address_of(node) if self.address_of else None
        if addr:
            return addr
        if not node.ip:
            raise HostError(f"{node.name}: no address on its provisioning NIC {node.mac}")
        return node.ip

    def _known_hosts(self, node: Node) -> Path:
        key = self.host_key_of(node)
        if not key:
            raise HostError(f"{node.name} ({node.mac}): no SSH host key reported yet: refusing "
                            "to connect to an unpinned host")
        words = key.split()
        if len(words) < 2 or "\n" in key:
            raise HostError(f"{node.name}: reported SSH host key is malformed: {key[:60]!r}")
        self.known_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.known_dir / f"{node.name}.known_hosts"
        atomic_write(path, f"{node.name} {words[0]} {words[1]}\n")
        return path

    def ssh_argv(self, node: Node, command: Sequence[str], tty: bool = False) -> list[str]:
        """The full argv (prefix included) that runs ``command`` on ``node``'s agent."""
        known = self._known_hosts(node)
        return [*self.prefix, self.ssh, "-i", str(self.key), "-l", self.user,
                "-p", str(self.port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={node.name}",
                "-o", "UpdateHostKeys=no", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "LogLevel=ERROR",
                "-t" if tty else "-T", self._address(node), "--", *command]

    def call(self, node: Node, req: Request, timeout: float | None = None) -> dict[str, Any]:
        """Run one request on ``node``'s agent; its result, or :class:`HostError` naming the
        node, the action, the failing command and its output tail."""
        argv = self.ssh_argv(node, [AGENT_COMMAND])
        limit = timeout if timeout is not None else self.action_timeout
        try:
            r = subprocess.run(argv, input=request_json(req), capture_output=True, text=True,
                               errors="replace", timeout=limit)
        except subprocess.TimeoutExpired:
            raise HostError(f"{node.name}: {req.action} {req.name}: no answer after {limit:.0f} s"
                            f" ({shlex.join(argv[-3:])})") from None
        except FileNotFoundError:
            raise HostError(f"{node.name}: cannot run {argv[0]}") from None
        if r.returncode == 255:
            # ssh itself failed (refused key, changed host key, unreachable)
            raise HostError(f"{node.name}: {req.action}: ssh to {self._address(node)} failed "
                            f"(exit code 255): {_tail(r.stderr)}")
        if not r.stdout.strip():
            raise HostError(f"{node.name}: {req.action}: no answer from the agent "
                            f"(exit code {r.returncode}): {_tail(r.stderr)}")
        try:
            ans = parse_answer(r.stdout)
        except ProtocolError as exc:
            raise HostError(f"{node.name}: {req.action}: unreadable answer ({exc}): "
                            f"{_tail(r.stdout + r.stderr)}") from None
        if not ans.ok:
            extra = f"; command: {ans.command}" if ans.command not in ans.error else ""
            tail = _tail(ans.tail) if ans.tail else ""
            extra += f"; output: {tail}" if tail and tail not in ans.error else ""
            raise HostError(f"{node.name}: {req.action}: {ans.error}{extra}")
        return dict(ans.result)

    # ------------------------------------------------------------------ HostDriver

    def facts(self, node: Node) -> HostFacts:
        res = self.call(node, Request("facts"), timeout=120)
        try:
            return HostFacts(node=str(res["node"]), xen_version=str(res["xen_version"]),
                             total_memory_mb=int(res["total_memory_mb"]),
                             free_memory_mb=int(res["free_memory_mb"]),
                             domains=tuple(_domain(d) for d in res["domains"]),
                             bridges=tuple(str(b) for b in res["bridges"]),
                             aoe_targets=tuple(str(t) for t in res["aoe_targets"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise HostError(f"{node.name}: facts: malformed result ({exc!r}): "
                            f"{json.dumps(res)[:200]}") from None

    def domains(self, node: Node) -> tuple[DomainInfo, ...]:
        res = self.call(node, Request("list"), timeout=120)
        return tuple(_domain(d) for d in res.get("domains", []))

    def start(self, node: Node, spec: DomainSpec, progress: Progress) -> DomainInfo:
        progress(f"{node.name}: xl create {spec.name} (root volume {spec.disk})")
        info = _domain(self.call(node, Request("start", name=spec.name, domain=spec)))
        progress(f"{node.name}: {spec.name} running as domain {info.domid}")
        return info

    def prepare(self, node: Node, spec: DomainSpec, progress: Progress) -> None:
        progress(f"{node.name}: staging {spec.name} for the incoming migration (volume "
                 f"{spec.disk}, seed, xl config)")
        self.call(node, Request("prepare", name=spec.name, domain=spec))

    def shutdown(self, node: Node, name: str, timeout: float, progress: Progress) -> None:
        progress(f"{node.name}: xl shutdown -w {name}")
        t = max(1, int(timeout))
        self.call(node, Request("shutdown", name=name, timeout=t), timeout=t + 30)
        progress(f"{node.name}: {name} shut down")

    def destroy(self, node: Node, name: str, progress: Progress) -> None:
        progress(f"{node.name}: xl destroy {name}")
        self.call(node, Request("destroy", name=name), timeout=120)

    def reboot(self, node: Node, name: str, progress: Progress) -> None:
        progress(f"{node.name}: xl reboot {name}")
        self.call(node, Request("reboot", name=name), timeout=120)

    def migrate(self, source: Node, name: str, target: Node,
                progress: Progress) -> MigrationResult:
        addr = self._address(target)
        progress(f"{source.name}: xl migrate {name} to {target.name} ({addr})")
        t = int(self.action_timeout)
        t0 = time.monotonic()
        res = self.call(source, Request("migrate", name=name, target=addr, timeout=t),
                        timeout=t + 30)
        seconds = float(res.get("seconds", time.monotonic() - t0))
        progress(f"{name} runs on {target.name} ({seconds:.1f} s)")
        return MigrationResult(source=source.name, target=target.name, seconds=seconds,
                               log_tail=str(res.get("log_tail", "")))

    def console(self, node: Node, name: str) -> int:
        argv = self.ssh_argv(node, [AGENT_COMMAND, "console", name], tty=True)
        return subprocess.call(argv)

    def cleanup(self, node: Node, name: str, progress: Progress) -> None:
        res = self.call(node, Request("cleanup", name=name), timeout=120)
        for what in res.get("removed", []):
            progress(f"{node.name}: removed {what}")


def _domain(d: object) -> DomainInfo:
    if not isinstance(d, dict):
        raise HostError(f"not a domain: {d!r}")
    try:
        return DomainInfo(name=str(d["name"]), domid=int(d["domid"]),
                          memory_mb=int(d["memory_mb"]), vcpus=int(d["vcpus"]),
                          state=str(d["state"]), uuid=str(d.get("uuid", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise HostError(f"malformed domain {d!r}: {exc!r}") from None
