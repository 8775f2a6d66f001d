"""What the HTTP and TFTP servers serve: per-node boot scripts, artifacts, plans, reports.

Routes (HTTP):
    GET  /boot/<mac>.ipxe                   per-node iPXE script (unassigned: wait-and-retry)
    GET  /boot/<mac>.pxelinux               the pxelinux config the node would get (debugging)
    GET  /images/<role>/<build-id>/<file>   an artifact from the image store ("current" allowed)
    GET  /plan/<mac>.json                   a storage node's export plan (homecloud.agents.protocol)
    POST /report/<mac>                      a node reports its state (a protocol report document)
    GET  /nodes.json                        assigned nodes, seen machines and reports
    GET  /firststage/<name>                 first-stage binary (ipxe.efi for UEFI HTTP boot)
    GET  /healthz                           "ok"
TFTP (dynamic names, tried before the TFTP root):
    pxelinux.cfg/01-<mac>                   rendered pxelinux config (unassigned: not found)
    images/<role>/<build-id>/<file>         artifact from the image store
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from bootserver.exports import plan_for
from bootserver.firststage import SOURCES
from bootserver.http import Response
from bootserver.machine import BadMac, Machine, normalize_mac
from bootserver.policy import Policy, RenderError
from bootserver.reports import Reports, read_reports
from bootserver.seen import read_seen
from builder.manifest import CURRENT, ManifestError
from homecloud.agents.protocol import ProtocolError, parse_report, plan_json, report_doc

log = logging.getLogger("hcboot.app")

_BOOT = re.compile(r"^/boot/([^/]+)\.(ipxe|pxelinux)$")
_IMAGE = re.compile(r"^/?images/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)$")
_FIRST = re.compile(r"^/firststage/([A-Za-z0-9._-]+)$")
_PLAN = re.compile(r"^/plan/([^/]+)\.json$")
_REPORT = re.compile(r"^/report/([^/]+)$")
_PXECFG = re.compile(r"^/?pxelinux\.cfg/01-([0-9a-fA-F-]{17})$")
MAX_REPORT = 64 * 1024


def _text(body: str, ctype: str = "text/plain; charset=utf-8", status: int = 200) -> Response:
    return Response(status=status, content_type=ctype, body=body.encode())


class BootApp:
    def __init__(self, policy: Policy, state_dir: Path) -> None:
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.reports = Reports(self.state_dir)

    # ------------------------------------------------------------------ shared
    def artifact(self, role: str, build: str, name: str) -> Path | None:
        store = self.policy.store
        bid = store.current_id(role) if build == CURRENT else build
        if bid is None:
            return None
        try:
            return store.artifact_path(role, bid, name)
        except ManifestError as exc:
            log.error("image store: %s", exc)
            return None

    # ------------------------------------------------------------------ HTTP
    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        path = unquote(path.split("?", 1)[0])
        if method in ("GET", "HEAD"):
            return self._get(path, client_ip)
        if method == "POST":
            m = _REPORT.match(path)
            if m:
                return self._report(m.group(1), body, client_ip)
        return None

    def _get(self, path: str, client_ip: str) -> Response | None:
        if path == "/healthz":
            return _text("ok\n")
        m = _BOOT.match(path)
        if m:
            try:
                mac = normalize_mac(m.group(1))
            except BadMac:
                return None
            try:
                if m.group(2) == "ipxe":
                    if self.policy.resolve(mac) is None:
                        self.policy.record_seen(Machine(mac=mac, user_class="iPXE",
                                                        ip=client_ip))
                    script = self.policy.ipxe_script(mac)
                    log.info("%s: iPXE script served to %s", mac, client_ip)
                    return _text(script)
                cfg = self.policy.pxelinux_config(mac)
                return _text(cfg) if cfg is not None else None
            except RenderError as exc:
                log.error("%s: cannot render boot script: %s", mac, exc)
                return _text(f"#!ipxe\necho homecloud: {exc}\nsleep 30\nreboot\n", status=500)
        m = _FIRST.match(path)
        if m and m.group(1) in SOURCES:
            first = self.state_dir / "tftp" / m.group(1)
            return Response(status=200, content_type="application/efi", file=first) \
                if first.is_file() else None
        m = _IMAGE.match(path)
        if m:
            f = self.artifact(*m.groups())
            if f is None:
                return None
            ctype = "application/json" if f.name.endswith(".json") else "application/octet-stream"
            return Response(status=200, content_type=ctype, file=f)
        m = _PLAN.match(path)
        if m:
            try:
                mac = normalize_mac(m.group(1))
            except BadMac:
                return None
            plan = plan_for(mac, self.policy.inventory.current(), self.policy.store,
                            self.policy.http_base)
            if plan is None:
                log.warning("%s: asked for a storage plan but is not a storage node", mac)
                return None
            return _text(plan_json(plan), "application/json")
        if path == "/nodes.json":
            return _text(json.dumps(self.nodes_doc(), indent=1) + "\n", "application/json")
        return None

    def _report(self, raw_mac: str, body: bytes, client_ip: str) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        if len(body) > MAX_REPORT:
            return _text("report too large\n", status=413)
        try:
            rep = parse_report(body)
            if rep.node != mac:
                raise ProtocolError("report.node", f"{rep.node} is not the MAC of the URL ({mac})")
        except ProtocolError as exc:
            log.warning("%s: malformed report from %s: %s", mac, client_ip, exc)
            return _text(f"bad report: {exc}\n", status=400)
        self.reports.put(mac, report_doc(rep))
        log.info("%s: reports state %s (%s)", mac, rep.state, rep.detail)
        return _text("ok\n")

    def nodes_doc(self) -> dict[str, object]:
        inv = self.policy.inventory.current()
        return {
            "nodes": [n.to_doc() for n in inv.nodes],
            "seen": [s.__dict__ for s in read_seen(self.state_dir)],
            "reports": read_reports(self.state_dir),
        }

    # ------------------------------------------------------------------ TFTP
    def tftp_resolve(self, path: str, client_ip: str) -> bytes | Path | None:
        m = _PXECFG.match(path)
        if m:
            try:
                mac = normalize_mac("01-" + m.group(1))
            except BadMac:
                return None
            cfg = self.policy.pxelinux_config(mac)
            if cfg is not None:
                log.info("%s: pxelinux config served to %s", mac, client_ip)
            return cfg.encode() if cfg is not None else None
        m = _IMAGE.match(path)
        if m:
            return self.artifact(*m.groups())
        return None
