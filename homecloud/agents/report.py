"""hc-node-report: say on the console and to the config node that this node is up.

On a Xen dom0 (``/proc/xen/capabilities`` says ``control_d``) it waits until ``xl info`` works
(xenstored, xen-init-dom0 and xenconsoled are up), prints ``hc-node: dom0 up (xen X.Y, N MB
free)`` and ``hc-node: <role> ready``, and posts a ``dom0-up`` report with the facts (Xen
version, total and free memory, running domains); if ``xl info`` never works it prints
``HC-ERROR: hc-node: xl info failed ...`` and posts ``failed``.  Anywhere else it prints
``hc-node: <role> ready`` and posts ``ready`` (kernel release and memory as facts).

The report (homecloud.agents.protocol) goes to ``<hc.server>/report/<hc.mac>``, both from the
kernel command line, retried every 2 s because DHCP may still be in progress.  Settings:
``HC_NODE_REPORT_XL_WAIT`` (seconds, 180), ``HC_NODE_REPORT_POST_TRIES`` (30),
``HC_CMDLINE`` (/proc/cmdline), ``HC_CONSOLE`` (/dev/console or none), ``HC_XL`` (the xl
binary; default the newest /usr/lib/xen-*/bin/xl, else xl on PATH), ``HC_XEN_CAPS``
(/proc/xen/capabilities).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from homecloud.agents.common import (
    AgentError,
    Output,
    cmdline_args,
    env_int,
    post_report,
    run,
)
from homecloud.agents.protocol import Fact, ProtocolError, Report, make_report

XEN_CAPS = "/proc/xen/capabilities"
XL_LIST_TIMEOUT = 5


def parse_xl_info(text: str) -> dict[str, str]:
    """``key : value`` lines of ``xl info``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip():
            out.setdefault(k.strip(), v.strip())
    return out


def parse_xl_list(text: str) -> list[str]:
    """Domain names of ``xl list`` (its first column after the header)."""
    names = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if f:
            names.append(f[0])
    return names


def _int(v: str | None) -> int | None:
    return int(v) if v is not None and v.strip().isdigit() else None


def dom0_facts(info: Mapping[str, str], domains: Sequence[str]) -> dict[str, Fact]:
    facts: dict[str, Fact] = {}
    if "xen_major" in info and "xen_minor" in info:
        facts["xen_version"] = f"{info['xen_major']}.{info['xen_minor']}"
    for key, fact in (("total_memory", "total_memory_mb"), ("free_memory", "free_memory_mb")):
        n = _int(info.get(key))
        if n is not None:
            facts[fact] = n
    facts["domains"] = ",".join(domains)
    facts["domain_count"] = len(domains)
    return facts


def meminfo_facts(text: str) -> dict[str, Fact]:
    """Total and available memory (MB) from /proc/meminfo."""
    facts: dict[str, Fact] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        n = _int(v.split()[0] if v.split() else None)
        if n is None:
            continue
        if k == "MemTotal":
            facts["total_memory_mb"] = n // 1024
        elif k == "MemAvailable":
            facts["free_memory_mb"] = n // 1024
    return facts


def is_dom0(caps: str = XEN_CAPS) -> bool:
    try:
        return "control_d" in Path(caps).read_text()
    except OSError:
        return False


def ssh_facts(env: Mapping[str, str]) -> dict[str, Fact]:
    """An hnode's public SSH host key and migration key (elements/hc-xen-dom0 makes both at
    boot), for the config node to pin and to hand to the other hnodes (docs/security.md)."""
    facts: dict[str, Fact] = {}
    for fact, var, default in (
            ("ssh_host_key", "HC_SSH_HOST_KEY", "/etc/ssh/ssh_host_ed25519_key.pub"),
            ("migration_key", "HC_MIGRATION_KEY", "/var/lib/hc/hnode/migration_key.pub")):
        try:
            words = Path(env.get(var) or default).read_text().split()
        except OSError:
            continue
        if len(words) >= 2:
            facts[fact] = f"{words[0]} {words[1]}"
    return facts


def find_xl(override: str = "") -> str:
    """``override`` (HC_XL), else the newest /usr/lib/xen-*/bin/xl, else xl on PATH."""
    if override:
        return override
    for x in [*sorted(glob.glob("/usr/lib/xen-*/bin/xl"), reverse=True), "/usr/sbin/xl"]:
        if os.access(x, os.X_OK):
            return x
    return shutil.which("xl") or ""


def wait_xl_info(wait: int, out: Output, xl_override: str = "",
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """The output of ``xl info`` once it works, "" if it never did within ``wait`` seconds."""
    last = ""
    for _ in range(max(1, wait)):
        xl = find_xl(xl_override)
        if xl:
            try:
                return run([xl, "info"], timeout=30)
            except AgentError as exc:
                last = str(exc)
        sleep(1)
    if last:
        out.log(f"last try: {last}")
    return ""


def post(server: str, report: Report, tries: int, out: Output,
         sleep: Callable[[float], None] = time.sleep) -> bool:
    last = ""
    for i in range(max(1, tries)):
        try:
            post_report(server, report, timeout=5)
            return True
        except AgentError as exc:
            last = str(exc)
        if i + 1 < tries:
            sleep(2)
    out.console(f"hc-node: could not report {report.state} to {server} after {tries} tries"
                f" ({last})", prefix=False)
    return False


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(__doc__, file=sys.stderr if args not in (["-h"], ["--help"]) else sys.stdout)
        return 0 if args in (["-h"], ["--help"]) else 2
    env = os.environ if env is None else env
    out = Output("hc-node", env.get("HC_CONSOLE") or "/dev/console")
    try:
        xl_wait = env_int(env, "HC_NODE_REPORT_XL_WAIT", 180)
        tries = env_int(env, "HC_NODE_REPORT_POST_TRIES", 30)
    except AgentError as exc:
        out.console(f"HC-ERROR: hc-node: {exc}", prefix=False)
        return 2
    cl = cmdline_args(env.get("HC_CMDLINE") or "/proc/cmdline")
    role, server, mac = cl.get("hc.role") or "node", cl.get("hc.server", ""), cl.get("hc.mac", "")
    server = server.rstrip("/")

    def say(line: str) -> None:
        out.console(line, prefix=False)

    rc = 0
    if is_dom0(env.get("HC_XEN_CAPS") or XEN_CAPS):
        info_text = wait_xl_info(xl_wait, out, env.get("HC_XL", ""))
        if not info_text:
            say(f"HC-ERROR: hc-node: xl info failed after {xl_wait}s (xenstored, xen-init-dom0?)")
            state, detail, facts, rc = "failed", f"xl info failed after {xl_wait}s", {}, 1
        else:
            info = parse_xl_info(info_text)
            ver = dom0_facts(info, []).get("xen_version", "?")
            free = info.get("free_memory", "?")
            say(f"hc-node: dom0 up (xen {ver}, {free} MB free)")   # first: the lab waits for it
            say(f"hc-node: {role} ready")
            try:   # xl list needs xenstored (xl info does not): a short wait, then without
                domains = parse_xl_list(run([find_xl(env.get("HC_XL", "")), "list"],
                                            timeout=XL_LIST_TIMEOUT))
            except AgentError as exc:
                out.log(str(exc))
                domains = []
            facts = {**dom0_facts(info, domains), **ssh_facts(env)}
            state, detail = "dom0-up", f"xen {ver}, {free} MB free"
    else:
        say(f"hc-node: {role} ready")
        release = os.uname().release
        try:
            facts = meminfo_facts(Path("/proc/meminfo").read_text())
        except OSError:
            facts = {}
        facts["kernel"] = release
        state, detail = "ready", release
    if not server or not mac:
        say("hc-node: no hc.server/hc.mac on the kernel command line: not reporting")
        return rc
    try:
        report = make_report(mac, state, detail, {**facts, "role": role})
    except (ProtocolError, ValueError) as exc:
        say(f"HC-ERROR: hc-node: cannot make the report: {exc}")
        return 1
    post(server, report, tries, out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
