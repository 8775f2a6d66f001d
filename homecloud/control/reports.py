"""Readiness reports that nodes POST to ``/report/<mac>`` (storage node exports ready, dom0 up).

Stored in ``<state-dir>/reports.json`` (atomic writes) and shown by ``hcboot nodes``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from homecloud.core.files import atomic_write, locked

REPORTS_NAME = "reports.json"
#: the states the storage agent reports (homecloud.agents.storage)
STORAGE_STATES = ("exports-ready", "exports-error", "storage-error", "leaving")


class Reports:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / REPORTS_NAME
        self.lock_path = Path(state_dir) / ".reports.lock"
        self._lock = threading.Lock()

    def put(self, mac: str, doc: dict[str, Any]) -> None:
        """Record ``doc`` (a ``homecloud.agents.protocol`` report document) for ``mac``."""
        state, now = str(doc.get("state", "unknown"))[:64], time.time()
        with self._lock, locked(self.lock_path):
            cur = read_reports(self.path.parent)
            old = cur.get(mac)
            hist = old.get("states") if isinstance(old, dict) else None
            if not isinstance(hist, dict):
                hist = {}
            # every state with the time it was last reported: one node sends several
            # ("exports-ready" from the storage agent, then "ready" from hc-node-report)
            hist = {**{k: v for k, v in hist.items() if k != state}, state: now}
            if len(hist) > 16:
                hist = dict(sorted(hist.items(), key=lambda kv: kv[1])[-16:])
            cur[mac] = {"state": state, "time": now, "detail": doc.get("detail"),
                        "states": hist}
            for key in ("facts", "exports"):
                if doc.get(key):
                    cur[mac][key] = doc[key]
            # the storage agent's last word (exports, the pool's volumes), kept across other
            # agents' reports of the same node (hc-node-report's "ready")
            if state in STORAGE_STATES:
                cur[mac]["storage"] = {"time": now, "state": state, "detail": doc.get("detail"),
                                       "facts": doc.get("facts") or {},
                                       "exports": doc.get("exports") or [],
                                       "volumes": doc.get("volumes") or []}
            elif isinstance(old, dict) and isinstance(old.get("storage"), dict):
                cur[mac]["storage"] = old["storage"]
            atomic_write(self.path, json.dumps(cur, indent=1, sort_keys=True) + "\n")


def read_reports(state_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads((Path(state_dir) / REPORTS_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
