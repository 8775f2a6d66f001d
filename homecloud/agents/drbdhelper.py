"""hc-drbd-helper: the drbd module's usermode helper on a storage node (issue 12).

The storage agent loads drbd with ``usermode_helper=/usr/local/sbin/hc-drbd-helper``, so the
kernel runs this (instead of drbdadm) on DRBD's events, as ``hc-drbd-helper EVENT RESOURCE``
with ``DRBD_PEER_ADDRESS`` in its environment.  One event matters:

``fence-peer``: this snode is (or is becoming) the primary of a replicated volume and cannot
reach its peer.  Every resource runs with ``fencing resource-and-stonith``: DRBD freezes the
volume's I/O (no write is acknowledged) until this helper answers.  It asks the config node,
the arbiter that sees both snodes (``POST /fence/<mac>``, the volume's DRBD minor):

- the config node's inventory names this snode the volume's primary: it records the peer as
  *outdated* (never promoted while it misses writes) and says so; the helper exits 4 ("peer
  outdated") and DRBD resumes I/O: from now on only this side has the writes;
- it names the peer the primary (the config node took this snode for dead and promoted the
  peer): refused; the helper exits 1 and the I/O stays frozen.  This side acknowledges
  nothing more, so two diverged primaries never both serve; the hnodes' aoe driver moves to the
  peer's export, and a person (or the agent, once the plan says replica) takes this side down;
- the config node cannot be reached: asked again every second, for up to RETRY_FOR seconds
  (the writes wait: acknowledging them without the arbiter could lose them if the peer is
  promoted meanwhile); then exit 1 (I/O stays frozen, ``drbdadm resume-io`` after a decision).

Any other event is logged and answered 0.  Where to ask is in ``<HC_RUN>/drbd/fence.json``
(``{"server": URL, "mac": MAC}``), written by the storage agent.  Lines go to the kernel log
(beside DRBD's own) and to stderr.

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

FENCE_FILE = "drbd/fence.json"
EXIT_PEER_OUTDATED = 4      # DRBD 8.4: "peer's disk successfully outdated"
EXIT_FAILED = 1             # anything but 3..7: fencing failed, I/O stays frozen
RETRY_FOR = 3600.0
RESOURCE_RE = re.compile(r"^(?:hc|minor-)(\d{1,7})$")

Post = Callable[[str, bytes, float], tuple[int, bytes]]


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536)


def _log(line: str) -> None:
    text = f"hc-drbd-helper: {line}"
    print(text, file=sys.stderr, flush=True)
    try:
        with open("/dev/kmsg", "w") as k:
            k.write(text[:900] + "\n")
    except OSError:
        pass


def fence(resource: str, env: Mapping[str, str], post: Post = _post,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = _log,
          retry_for: float = RETRY_FOR) -> int:
    m = RESOURCE_RE.match(resource)
    if not m:
        log(f"fence-peer {resource}: not a homecloud resource name (hcMINOR): fencing fails")
        return EXIT_FAILED
    minor = int(m.group(1))
    where = Path(env.get("HC_RUN") or "/run/hc-storage") / FENCE_FILE
    try:
        cfg = json.loads(where.read_text())
        server, mac = str(cfg["server"]).rstrip("/"), str(cfg["mac"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"fence-peer {resource}: cannot read {where}: {exc}: fencing fails, I/O stays "
            "frozen")
        return EXIT_FAILED
    url = f"{server}/fence/{mac}"
    body = json.dumps({"minor": minor, "resource": resource,
                       "peer": env.get("DRBD_PEER_ADDRESS", "")}).encode()
    log(f"fence-peer {resource}: peer {env.get('DRBD_PEER_ADDRESS', '?')} lost; asking "
        f"the config node ({url})")
    deadline = clock() + retry_for
    said = False
    while True:
        try:
            status, raw = post(url, body, 5.0)
        except (OSError, ValueError) as exc:
            status, raw = 0, str(exc).encode()
        if status == 200:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
            if isinstance(doc, dict) and doc.get("verdict") == "outdated":
                log(f"fence-peer {resource}: {doc.get('why', 'the peer is outdated')}; I/O "
                    "resumes")
                return EXIT_PEER_OUTDATED
            log(f"fence-peer {resource}: unexpected answer {raw[:200]!r}: fencing fails")
            return EXIT_FAILED
        if status in (403, 404, 409):
            log(f"fence-peer {resource}: refused ({status}): "
                f"{raw.decode(errors='replace').strip()[:300]}; I/O stays frozen")
            return EXIT_FAILED
        if clock() >= deadline:
            log(f"fence-peer {resource}: no answer from the config node for {retry_for:g}s "
                f"(last: {status or ''} {raw.decode(errors='replace').strip()[:200]}); I/O "
                "stays frozen")
            return EXIT_FAILED
        if not said:
            log(f"fence-peer {resource}: config node not answering "
                f"({status or ''} {raw.decode(errors='replace').strip()[:200]}); asking "
                "again every second, writes wait")
            said = True
        sleep(1.0)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    environ = os.environ if env is None else env
    if len(args) < 2:
        print("usage: hc-drbd-helper EVENT RESOURCE (run by the drbd module)", file=sys.stderr)
        return 2
    event, resource = args[0], args[1]
    if event == "fence-peer":
        return fence(resource, environ)
    _log(f"{event} {resource} (peer {environ.get('DRBD_PEER_ADDRESS', '?')}): nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
