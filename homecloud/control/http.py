"""The control plane's HTTP routes on the config node (beside the boot routes of
``bootserver.bootapp``; ``hcboot serve`` chains both apps on one server).

Routes:
    GET  /plan/<mac>.json|.txt              a storage node's export plan (txt: for shell agents)
    POST /report/<mac>                      a node reports its state (JSON {"state": ...})
    GET  /nodes.json                        assigned nodes, seen machines and reports
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from bootserver.http import Response
from homecloud.control.exports import plan_for, plan_text
from homecloud.control.reports import Reports, read_reports
from homecloud.control.seen import read_seen
from homecloud.core.ids import BadMac, normalize_mac
from homecloud.core.manifest import ImageStore
from homecloud.inventory.protocol import InventoryStore

log = logging.getLogger("homecloud.control.http")

_PLAN = re.compile(r"^/plan/([^/]+)\.(json|txt)$")
_REPORT = re.compile(r"^/report/([^/]+)$")
MAX_REPORT = 64 * 1024


def _text(body: str, ctype: str = "text/plain; charset=utf-8", status: int = 200) -> Response:
    return Response(status=status, content_type=ctype, body=body.encode())


class ControlApp:
    def __init__(self, inventory: InventoryStore, store: ImageStore, state_dir: Path,
                 http_base: Callable[[], str]) -> None:
        self.inventory = inventory
        self.store = store
        self.state_dir = Path(state_dir)
        self.http_base = http_base
        self.reports = Reports(self.state_dir)

    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        path = path.split("?", 1)[0]
        if method in ("GET", "HEAD"):
            m = _PLAN.match(path)
            if m:
                return self._plan(m.group(1), m.group(2))
            if path == "/nodes.json":
                return _text(json.dumps(self.nodes_doc(), indent=1) + "\n", "application/json")
        if method == "POST":
            m = _REPORT.match(path)
            if m:
                return self._report(m.group(1), body, client_ip)
        return None

    def _plan(self, raw_mac: str, kind: str) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        plan = plan_for(mac, self.inventory.snapshot().inventory, self.store, self.http_base())
        if plan is None:
            log.warning("%s: asked for a storage plan but is not a storage node", mac)
            return None
        if kind == "txt":
            return _text(plan_text(plan))
        return _text(json.dumps(plan, indent=1) + "\n", "application/json")

    def _report(self, raw_mac: str, body: bytes, client_ip: str) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        if len(body) > MAX_REPORT:
            return _text("report too large\n", status=413)
        try:
            doc = json.loads(body or b"{}")
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("%s: malformed report from %s: %s", mac, client_ip, exc)
            return _text(f"bad report: {exc}\n", status=400)
        self.reports.put(mac, doc)
        log.info("%s: reports state %s (%s)", mac, doc.get("state"), doc.get("detail") or "")
        return _text("ok\n")

    def nodes_doc(self) -> dict[str, object]:
        inv = self.inventory.snapshot().inventory
        return {
            "nodes": [{"name": n.name, "role": n.role, "mac": n.mac, "ip": n.ip}
                      for n in inv.nodes],
            "seen": [s.__dict__ for s in read_seen(self.state_dir)],
            "reports": read_reports(self.state_dir),
        }
