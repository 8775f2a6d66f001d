"""Log lines that name the client machine: one prefix, put on in one place.

Every line about one client starts with its MAC (``52:54:00:12:34:56: HTTP 192.0.2.7: GET ...``),
so ``grep MAC`` over hcboot's log follows one machine through DHCP, TFTP and HTTP.  The boot
path knows the MAC in DHCP (``chaddr``); HTTP and TFTP see only the client address and resolve
it through an injected ``mac_of(ip)`` (``homecloud.serve`` passes the control plane's
``ClientIdentity.mac_of``: the DHCP leases, then the inventory's static addresses).

* :func:`for_mac` -- the MAC is known: ``for_mac(log, mac).info("...")``.
* :func:`for_client` -- the MAC is looked up from ``ip`` with ``mac_of``, lazily (only when a
  line is actually emitted) and once per adapter; ``unknown-mac`` when the lookup has no answer.
  With ``mac_of=None`` (a server run without the control plane: tests, benches) lines carry no
  prefix, as before.

Records also carry the values as attributes (``record.mac``, ``record.client_ip``) for
handlers or formatters that want them as fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

MacOf = Callable[[str], "str | None"]
UNKNOWN_MAC = "unknown-mac"

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class ClientLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one client: prefixes each message with the client's MAC.

    ``mac`` is the MAC when known; otherwise ``mac_of(ip)`` is asked at the first emitted line
    (a failing or empty lookup gives ``unknown-mac``, never an exception in the caller)."""

    def __init__(self, logger: logging.Logger, mac: str | None = None, ip: str | None = None,
                 mac_of: MacOf | None = None) -> None:
        super().__init__(logger, {})
        self._mac = mac
        self.ip = ip
        self._mac_of = mac_of

    @property
    def mac(self) -> str:
        if self._mac is None:
            found: str | None = None
            if self._mac_of is not None and self.ip is not None:
                try:
                    found = self._mac_of(self.ip)
                except Exception:  # a log line must never fail the request it describes
                    self.logger.debug("mac_of(%s) failed", self.ip, exc_info=True)
            self._mac = found or UNKNOWN_MAC
        return self._mac

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        mac = self.mac
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("mac", mac)
        extra.setdefault("client_ip", self.ip)
        kwargs["extra"] = extra
        # the prefix is joined to the format string: a '%' in it must not act as a directive
        return f"{mac.replace('%', '%%')}: {msg}", kwargs


def for_mac(logger: logging.Logger, mac: str, ip: str | None = None) -> ClientLog:
    """The logger for a client whose MAC is known (DHCP)."""
    return ClientLog(logger, mac, ip)


def for_client(logger: logging.Logger, ip: str, mac_of: MacOf | None) -> Log:
    """The logger for the client at ``ip`` (HTTP, TFTP): prefixed with ``mac_of(ip)`` (looked
    up when the first line is emitted), or ``logger`` itself when there is no ``mac_of``."""
    if mac_of is None:
        return logger
    return ClientLog(logger, None, ip, mac_of)
