"""The hnode agent: what the config node asks a Xen host to do, over SSH.

The config node's key may run only this agent (authorized_keys ``restrict,command=...``, see
:mod:`homecloud.agents.hntrust` and docs/security.md).  The SSH command it sends selects the
mode (``SSH_ORIGINAL_COMMAND``; anything else is refused, so the key gives no shell):

- ``hc-hnode-agent``: one JSON request on stdin, one JSON answer on stdout
  (:mod:`homecloud.agents.hostproto`): facts, list, start, prepare (stage a migration
  target: volume seen, seed and xl config written), shutdown, destroy, reboot, migrate, cleanup;
- ``hc-hnode-agent console NAME``: ``xl console NAME`` on the session's terminal.

``migrate-gate`` is the forced command of the other hnodes' migration keys: it runs only
``xl migrate-receive`` (with the flags ``xl migrate`` itself sends), nothing else.

Failures are answers, never tracebacks: ``{"ok": false, "error": ..., "command": ...,
"tail": ...}`` naming the command and its output tail.  Exit status 0 when ok, 1 on a failed
action, 2 on a refused or malformed request.

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from homecloud.agents import hntrust, xlcfg
from homecloud.agents.common import AgentError, CommandError, cmdline_args, http_get, run
from homecloud.agents.hostproto import (
    AGENT_COMMAND,
    MAX_REQUEST_BYTES,
    NAME_RE,
    Answer,
    DomainSpec,
    Request,
    answer_json,
    parse_request,
)
from homecloud.agents.protocol import ProtocolError

STATE_DIR = Path("/var/lib/hc/hnode")  # keys, pinned peers (persist for the boot: RAM root)
RUN_DIR = Path("/run/hc/hnode")  # per-domain xl configs and seed images
MIGRATION_KEY = "migration_key"  # in STATE_DIR (+ .pub): this host's key for xl migrate -s
PEERS_KNOWN_HOSTS = "peers_known_hosts"  # in STATE_DIR: the other hnodes' pinned host keys
XEN_CAPS = Path("/proc/xen/capabilities")  # "control_d" in a dom0
SEED_SIZE_KB = 1024
AOE_WAIT = 30.0
SUFFIXES = ("", "--incoming", "--migratedaway")


class Refused(AgentError):
    """A request this agent will not run (wrong SSH command, bad JSON); exit status 2."""


class Failed(AgentError):
    """An action that failed: the command and its output tail go into the answer."""

    def __init__(self, message: str, command: str = "", tail: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.tail = tail


@dataclass
class Config:
    state: Path = STATE_DIR
    run: Path = RUN_DIR
    etherd: Path = xlcfg.ETHERD
    console_logs: Path = Path("/var/log/xen/console")  # xenconsoled's guest-NAME.log files
    xl: str | None = None  # None: looked up (find_xl)
    node: str = field(default_factory=socket.gethostname)
    aoe_wait: float = AOE_WAIT
    xen_caps: Path = XEN_CAPS
    guest_cpuid: str = ""  # xl cpuid mask for every guest (xlcfg.check_cpuid); "" = none

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """From ``HC_HNODE_*``; the guest cpuid mask from ``HC_HNODE_GUEST_CPUID``, else
        ``hc.guest_cpuid=`` on the kernel command line (the inventory's node cmdline)."""
        cpuid = env.get("HC_HNODE_GUEST_CPUID")
        if cpuid is None:
            cl = cmdline_args(env.get("HC_CMDLINE") or "/proc/cmdline")
            cpuid = cl.get("hc.guest_cpuid", "")
        return cls(guest_cpuid=cpuid, state=Path(env.get("HC_HNODE_STATE", str(STATE_DIR))),
                   run=Path(env.get("HC_HNODE_RUN", str(RUN_DIR))),
                   etherd=Path(env.get("HC_HNODE_ETHERD", str(xlcfg.ETHERD))),
                   xl=env.get("HC_HNODE_XL") or None,
                   node=env.get("HC_HNODE_NAME") or socket.gethostname(),
                   aoe_wait=float(env.get("HC_HNODE_AOE_WAIT", AOE_WAIT)),
                   xen_caps=Path(env.get("HC_HNODE_XEN_CAPS", str(XEN_CAPS))))


def find_xl(cfg: Config) -> str:
    """The xl binary: ``HC_HNODE_XL``, Debian's ``/usr/lib/xen-*/bin/xl``, or ``xl`` on PATH."""
    if cfg.xl:
        if not os.access(cfg.xl, os.X_OK):
            raise Failed(f"{cfg.node}: xl not executable: {cfg.xl}")
        return cfg.xl
    found = sorted(glob.glob("/usr/lib/xen-*/bin/xl")) or [p for p in [shutil.which("xl")] if p]
    if not found:
        raise Failed(f"{cfg.node}: xl not installed (no /usr/lib/xen-*/bin/xl, no xl on PATH):"
                     " not a Xen host")
    return found[-1]


def require_dom0(cfg: Config) -> None:
    """xl works only in a Xen dom0: say so plainly instead of xl's libxc errors."""
    try:
        caps = cfg.xen_caps.read_text()
    except OSError as exc:
        raise Failed(f"{cfg.node}: not a Xen dom0: {cfg.xen_caps}: {exc.strerror} (no "
                     "hypervisor, or xenfs not mounted)") from None
    if "control_d" not in caps:
        raise Failed(f"{cfg.node}: not a Xen dom0: {cfg.xen_caps} has no control_d "
                     f"({caps.strip()!r})")


def _xl(cfg: Config, *args: str, timeout: float = 120) -> str:
    require_dom0(cfg)
    argv = [find_xl(cfg), *args]
    try:
        return run(argv, timeout=timeout)
    except CommandError as exc:
        raise Failed(f"{cfg.node}: {exc}", shlex.join(argv), "\n".join(exc.tail)) from None


# ---------------------------------------------------------------------------- reading xl


def parse_xl_info(text: str) -> dict[str, str]:
    """``key : value`` lines of ``xl info``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out.setdefault(k.strip(), v.strip())
    return out


def parse_xl_list(text: str) -> list[dict[str, Any]]:
    """The rows of ``xl list -v`` (or plain ``xl list``): name, domid, memory, vcpus, state,
    uuid (``-v`` only)."""
    rows: list[dict[str, Any]] = []
    for line in text.splitlines()[1:]:
        w = line.split()
        if len(w) < 6 or not w[1].isdigit():
            continue
        # plain: Name ID Mem VCPUs State Time(s); -v adds UUID Reason-Code Security-Label
        uuid = w[6] if len(w) > 6 and re.fullmatch(r"[0-9a-f-]{36}", w[6]) else ""
        rows.append({"name": w[0], "domid": int(w[1]), "memory_mb": int(w[2]),
                     "vcpus": int(w[3]), "state": w[4], "uuid": uuid})
    return rows


def domains(cfg: Config) -> list[dict[str, Any]]:
    return [d for d in parse_xl_list(_xl(cfg, "list", "-v")) if d["domid"] != 0]


def _present(cfg: Config, name: str) -> dict[str, Any] | None:
    return next((d for d in domains(cfg) if d["name"] == name), None)


def bridges(sysfs: Path = Path("/sys/class/net")) -> list[str]:
    return sorted(p.parent.name for p in sysfs.glob("*/bridge"))


def aoe_targets(etherd: Path) -> list[str]:
    try:
        return sorted(p.name for p in etherd.iterdir() if re.fullmatch(r"e\d+\.\d+", p.name))
    except OSError:
        return []


def facts(cfg: Config) -> dict[str, Any]:
    info = parse_xl_info(_xl(cfg, "info"))
    try:
        version = f"{info['xen_major']}.{info['xen_minor']}"
        total, free = int(info["total_memory"]), int(info["free_memory"])
    except (KeyError, ValueError) as exc:
        raise Failed(f"{cfg.node}: xl info without {exc}", "xl info",
                     "\n".join(f"{k}: {v}" for k, v in list(info.items())[:20])) from None
    return {"node": cfg.node, "xen_version": version, "total_memory_mb": total,
            "free_memory_mb": free, "domains": domains(cfg), "bridges": bridges(),
            "aoe_targets": aoe_targets(cfg.etherd)}


# ---------------------------------------------------------------------------- actions


def domain_files(cfg: Config, name: str) -> tuple[Path, Path]:
    """The xl config and the seed image ``start`` writes for ``name``."""
    return cfg.run / f"{name}.cfg", cfg.run / f"{name}-seed.img"


def make_seed(spec: DomainSpec, image: Path) -> None:
    """A vfat image labelled ``cidata`` holding the NoCloud files (mkfs.vfat + mcopy)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    tmp = image.with_name(image.name + ".tmp")
    tmp.unlink(missing_ok=True)
    files = tmp.with_name(image.name + ".d")
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir()
    try:
        run(["mkfs.vfat", "-C", "-n", "CIDATA", str(tmp), str(SEED_SIZE_KB)], timeout=60)
        for fname, text in sorted(spec.seed.items()):
            (files / fname).write_text(text)
            run(["mcopy", "-o", "-i", str(tmp), str(files / fname), f"::{fname}"], timeout=60)
    except CommandError as exc:
        tmp.unlink(missing_ok=True)
        raise Failed(f"seed image for {spec.name}: {exc}", shlex.join(exc.argv),
                     "\n".join(exc.tail)) from None
    finally:
        shutil.rmtree(files, ignore_errors=True)
    os.replace(tmp, image)


def wait_aoe(cfg: Config, spec: DomainSpec) -> Path:
    dev = xlcfg.aoe_device(spec, cfg.etherd)
    deadline = time.monotonic() + cfg.aoe_wait
    while not dev.exists():
        # what aoe-discover does: ask the aoe driver to broadcast a query config
        with contextlib.suppress(OSError):
            (cfg.etherd / "discover").write_text("1\n")
        if time.monotonic() > deadline:
            raise Failed(f"{cfg.node}: AoE target {spec.disk} not seen ({dev} missing after "
                         f"{cfg.aoe_wait:.0f} s): is it exported to this host's MAC?",
                         "", "\n".join(aoe_targets(cfg.etherd)))
        time.sleep(0.5)
    return dev


def stage(cfg: Config, spec: DomainSpec) -> Path:
    """What a domain needs on this host besides its memory: the root volume seen over AoE,
    the seed image and the xl config (both at the same paths on every hnode, so the config a
    migration source sends names files that exist on the target).  Returns the config."""
    existing = _present(cfg, spec.name)
    if existing is not None:
        raise Failed(f"{cfg.node}: domain {spec.name} already runs (domid {existing['domid']})")
    wait_aoe(cfg, spec)
    cfg_path, seed = domain_files(cfg, spec.name)
    try:  # rendered first: a bad hc.guest_cpuid leaves no seed behind
        text = xlcfg.render(spec, seed, cfg.etherd, cpuid=cfg.guest_cpuid)
    except ValueError as exc:
        raise Failed(f"{cfg.node}: {exc} (hc.guest_cpuid on its kernel command line)") from None
    make_seed(spec, seed)
    cfg_path.write_text(text)
    return cfg_path


def prepare(cfg: Config, spec: DomainSpec) -> dict[str, Any]:
    """Stage ``spec`` on a migration target: ``xl migrate-receive`` then finds the disks the
    source's config names (the seed image is local to each host)."""
    cfg_path, seed = domain_files(cfg, spec.name)
    stage(cfg, spec)
    return {"name": spec.name, "config": str(cfg_path), "seed": str(seed),
            "disk": str(xlcfg.aoe_device(spec, cfg.etherd))}


def start(cfg: Config, spec: DomainSpec) -> dict[str, Any]:
    cfg_path = stage(cfg, spec)
    _xl(cfg, "create", str(cfg_path), timeout=300)
    info = _present(cfg, spec.name)
    if info is None:
        raise Failed(f"{cfg.node}: xl create {cfg_path} returned but {spec.name} is not listed")
    return info


def shutdown(cfg: Config, name: str, timeout: int) -> dict[str, Any]:
    if _present(cfg, name) is None:
        return {"name": name, "present": False}
    _xl(cfg, "shutdown", "-w", name, timeout=timeout)
    return {"name": name, "present": False}


def destroy(cfg: Config, name: str) -> dict[str, Any]:
    if _present(cfg, name) is not None:
        _xl(cfg, "destroy", name)
    return {"name": name, "present": False}


def reboot(cfg: Config, name: str) -> dict[str, Any]:
    if _present(cfg, name) is None:
        raise Failed(f"{cfg.node}: no domain {name} to reboot")
    _xl(cfg, "reboot", name)
    return {"name": name}


def migrate_ssh_command(cfg: Config) -> str:
    """The ``xl migrate -s`` command: SSH with this host's migration key, the peers' pinned
    host keys only, no prompts.  xl appends ``HOST xl migrate-receive``."""
    key, known = cfg.state / MIGRATION_KEY, cfg.state / PEERS_KNOWN_HOSTS
    return shlex.join(["ssh", "-i", str(key), "-l", "root", "-o", "IdentitiesOnly=yes",
                       "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                       "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                       "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15"])


_WHY = re.compile(r"error|fail|did not|didn't|timed out|cannot|unable|refused|denied|"
                  r"permission|not found|no such|abort|freez", re.IGNORECASE)


def migration_failure_lines(output: str, limit: int = 40) -> list[str]:
    """What explains a failed ``xl migrate``: both ends' error lines (the receiver's stderr
    comes back through the SSH transport), in order, and the last lines; at most ``limit``."""
    lines = [ln.rstrip() for ln in output.strip().splitlines() if ln.strip()]
    keep = [i for i, ln in enumerate(lines) if _WHY.search(ln)]
    keep += list(range(max(0, len(lines) - 3), len(lines)))
    picked = [lines[i] for i in sorted(set(keep))]
    return picked[-limit:] or ["no output"]


def guest_suspend_lines(console_log: Path, limit: int = 6) -> list[str]:
    """The guest kernel's last words on freezing and suspending (``Freezing of tasks failed
    after 20 seconds`` says why a guest did not suspend) from xenconsoled's log of it."""
    try:
        with console_log.open("rb") as f:
            f.seek(max(0, console_log.stat().st_size - 65536))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    hits = [ln.strip() for ln in text.splitlines()
            if re.search(r"freez|suspend|refusing|blocked for more", ln, re.IGNORECASE)]
    return hits[-limit:]


def migrate(cfg: Config, name: str, target: str, timeout: int) -> dict[str, Any]:
    if _present(cfg, name) is None:
        raise Failed(f"{cfg.node}: no domain {name} to migrate")
    for p in (cfg.state / MIGRATION_KEY, cfg.state / PEERS_KNOWN_HOSTS):
        if not p.is_file():
            raise Failed(f"{cfg.node}: {p} missing: migration trust not set up")
    # no -v: what an operator types (bench_migration.py's floor); errors print without it
    argv = [find_xl(cfg), "migrate", "-s", migrate_ssh_command(cfg), name, target]
    t0 = time.monotonic()
    try:
        out = run(argv, timeout=timeout)
    except CommandError as exc:
        guest = guest_suspend_lines(cfg.console_logs / f"guest-{name}.log")
        raise Failed(f"{cfg.node}: migration of {name} to {target} failed after "
                     f"{time.monotonic() - t0:.0f} s (exit code {exc.code}): "
                     + " | ".join(migration_failure_lines(exc.output, 8))
                     + (f"; the guest's console: {' | '.join(guest)}" if guest else ""),
                     shlex.join(argv),
                     "\n".join(migration_failure_lines(exc.output) + guest)) from None
    seconds = time.monotonic() - t0
    return {"name": name, "source": cfg.node, "target": target, "seconds": round(seconds, 3),
            "log_tail": "\n".join(out.strip().splitlines()[-10:])}


def cleanup(cfg: Config, name: str) -> dict[str, Any]:
    """Destroy ``NAME--incoming`` / ``NAME--migratedaway`` leftovers and a stopped ``NAME``'s
    files; a running ``NAME`` is left alone (stop it first)."""
    removed: list[str] = []
    present = {d["name"] for d in domains(cfg)}
    for suffix in SUFFIXES[1:]:
        if name + suffix in present:
            _xl(cfg, "destroy", name + suffix)
            removed.append(name + suffix)
    if name not in present:
        for p in domain_files(cfg, name):
            if p.exists():
                p.unlink()
                removed.append(str(p))
    return {"name": name, "removed": removed, "running": name in present}


#: the read-only queries, and how much they step back on dom0's CPU: the config node asks the
#: target's facts right after ``xl migrate`` returns, while dom0 still wires up the guest's
#: vif (hotplug, netback) and the guest answers its first pings; a query's cold Python start
#: at normal priority there stretched the measured pause (docs/instances.md)
QUERIES = ("facts", "list")
QUERY_NICE = 10


def handle(cfg: Config, req: Request) -> dict[str, Any]:
    if req.action in QUERIES:
        with contextlib.suppress(OSError):
            os.nice(QUERY_NICE)
    if req.action == "facts":
        return facts(cfg)
    if req.action == "list":
        return {"domains": domains(cfg)}
    if req.action == "start":
        assert req.domain is not None  # the reader guarantees it
        return start(cfg, req.domain)
    if req.action == "prepare":
        assert req.domain is not None
        return prepare(cfg, req.domain)
    if req.action == "shutdown":
        return shutdown(cfg, req.name, req.timeout)
    if req.action == "destroy":
        return destroy(cfg, req.name)
    if req.action == "reboot":
        return reboot(cfg, req.name)
    if req.action == "migrate":
        return migrate(cfg, req.name, req.target, req.timeout)
    return cleanup(cfg, req.name)


# ---------------------------------------------------------------------------- SSH modes


def agent_mode(original: str | None, via_ssh: bool = True) -> tuple[str, str]:
    """What the config node's key asked for: ``("serve", "")`` or ``("console", NAME)``;
    :class:`Refused` for anything else (a shell, another command).  Run by hand on the node
    (not through SSH) it serves a request from stdin."""
    if original is None and not via_ssh:
        return "serve", ""
    try:
        words = shlex.split(original or "")
    except ValueError:
        words = []
    if words == [AGENT_COMMAND]:
        return "serve", ""
    if len(words) == 3 and words[:2] == [AGENT_COMMAND, "console"] and NAME_RE.match(words[2]):
        return "console", words[2]
    raise Refused(f"refused: this key runs only {AGENT_COMMAND!r}, not {original!r}")


#: the flags ``xl migrate`` puts around ``migrate-receive`` (xl_migrate.c): -t (tty), -v...,
#: -e (no daemon) before it; -d (debug), -p (paused), -r (COLO) after it
_PRE_FLAGS = re.compile(r"^-(t|e|v{1,8})$")
_POST_FLAGS = ("-d", "-p")


def migrate_receive_argv(original: str | None, xl: str) -> list[str]:
    """The command a peer's migration key may run: ``xl [-t] [-v..] [-e] migrate-receive
    [-d] [-p]``, with ``xl`` this host's binary; :class:`Refused` for anything else."""
    try:
        words = shlex.split(original or "")
    except ValueError:
        words = []
    if words[:1] != ["xl"] or "migrate-receive" not in words:
        raise Refused(f"refused: a migration key runs only 'xl migrate-receive', not "
                      f"{original!r}")
    i = words.index("migrate-receive")
    pre, post = words[1:i], words[i + 1:]
    if not all(_PRE_FLAGS.match(w) for w in pre) or not all(w in _POST_FLAGS for w in post):
        raise Refused(f"refused: unexpected arguments to xl migrate-receive: {original!r}")
    return [xl, *pre, "migrate-receive", *post]


def serve(cfg: Config, stdin: TextIO, stdout: TextIO) -> int:
    action = "?"
    try:
        text = stdin.read(MAX_REQUEST_BYTES + 1)
        req = parse_request(text)
        action = req.action
        result = handle(cfg, req)
        stdout.write(answer_json(Answer(action=action, ok=True, result=result)))
        return 0
    except ProtocolError as exc:
        stdout.write(answer_json(Answer(action=action, ok=False, result={},
                                        error=f"{cfg.node}: bad request: {exc}")))
        return 2
    except Failed as exc:
        stdout.write(answer_json(Answer(action=action, ok=False, result={}, error=str(exc),
                                        command=exc.command, tail=exc.tail)))
        return 1
    except (AgentError, OSError) as exc:
        stdout.write(answer_json(Answer(action=action, ok=False, result={},
                                        error=f"{cfg.node}: {action}: {exc}")))
        return 1


AGENT_BIN = "/usr/local/sbin/hc-hnode-agent"


def trust_source(args: Sequence[str], env: Mapping[str, str]) -> str:
    """The trust document's place: the argument (a file or an http URL), else
    ``<hc.server>/trust/<hc.mac>.json`` from the kernel command line (as the plan's URL)."""
    if len(args) == 1:
        return args[0]
    if args:
        raise Refused("usage: hc-hnode-agent trust [FILE|URL]")
    cl = cmdline_args(env.get("HC_CMDLINE") or "/proc/cmdline")
    server, mac = cl.get("hc.server", "").rstrip("/"), cl.get("hc.mac", "")
    if not server or not mac:
        raise Failed("no hc.server/hc.mac on the kernel command line: no trust to fetch")
    return f"{server}/trust/{mac}.json"


#: seconds ``trust`` asks an unreachable config node again (every TRUST_RETRY s) before failing
TRUST_WAIT = 120.0
TRUST_RETRY = 2.0


def trust(cfg: Config, args: Sequence[str], env: Mapping[str, str]) -> int:
    """``hc-hnode-agent trust [FILE|URL]``: install the trust document (authorized_keys, the
    peers' known hosts) and make the migration key if there is none; prints its public half
    (for the node's report)."""
    # the migration key first: the node reports it even while the trust cannot be fetched
    key = hntrust.ensure_migration_key(cfg.state / MIGRATION_KEY)
    src = trust_source(args, env)
    # at boot this runs before the network is online (its Python start, from the AoE root
    # through squashfs, overlaps DHCP): an unreachable config node is asked again
    deadline = time.monotonic() + float(env.get("HC_TRUST_WAIT", TRUST_WAIT))
    while True:
        try:
            raw = http_get(src, timeout=20) if src.startswith("http") else Path(src).read_bytes()
            break
        except (OSError, AgentError) as exc:
            if not src.startswith("http") or time.monotonic() >= deadline:
                raise Failed(f"trust document {src}: {exc}") from None
            time.sleep(TRUST_RETRY)
    try:
        doc = hntrust.parse_trust(raw)
    except ProtocolError as exc:
        raise Failed(f"trust document {src}: {exc}") from None
    agent = env.get("HC_HNODE_AGENT", AGENT_BIN)
    auth = Path(env.get("HC_HNODE_AUTHORIZED_KEYS", "/root/.ssh/authorized_keys"))
    hntrust.install(doc, auth, cfg.state / PEERS_KNOWN_HOSTS, agent, f"{agent} migrate-gate")
    print(key.bare)
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    cfg = Config.from_env(env)
    mode = args[0] if args else "agent"
    original = env.get("SSH_ORIGINAL_COMMAND")
    try:
        if mode == "trust":
            return trust(cfg, args[1:], env)
        if mode == "migrate-gate":
            xl = find_xl(cfg)
            rcv = migrate_receive_argv(original, xl)
            os.execv(rcv[0], rcv)
        if mode != "agent":
            raise Refused(f"usage: hc-hnode-agent [agent|migrate-gate], not {mode!r}")
        what, name = agent_mode(original, via_ssh="SSH_CONNECTION" in env)
        if what == "console":
            xl = find_xl(cfg)
            os.execv(xl, [xl, "console", name])
    except (Refused, Failed, CommandError, OSError, ValueError) as exc:
        if mode == "agent":
            sys.stdout.write(answer_json(Answer(action="?", ok=False, result={},
                                                error=f"{cfg.node}: {exc}")))
        print(f"hc-hnode-agent: {cfg.node}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, Refused) else 1
    return serve(cfg, sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
