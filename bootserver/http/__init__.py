"""Threaded HTTP/1.1 server for the boot path (iPXE scripts, kernels, initrds, readiness POSTs).

The server does the protocol; an ``App`` decides the content::

    class App(Protocol):
        def handle(self, method, path, client_ip, headers, body) -> Response | None

* ``method`` is ``GET``, ``HEAD`` or ``POST`` (anything else is answered 405 before the app is
  asked; HEAD is passed as ``HEAD`` and answered like GET without the body).
* ``path`` is the path percent-decoded exactly once (here; an app must not decode it again),
  with ``?`` and the raw query appended when the request had one
  (``/boot.ipxe?mac=52:54:00:...``).  Before the app sees it the server has refused (400)
  request targets that are not origin-form (or absolute-form http URLs), that contain NUL,
  control characters, backslashes or raw non-ASCII, a percent-encoded ``?`` or ``/``, or a
  ``..`` segment (raw or percent-encoded).  ``%252e%252e`` reaches the app as the literal
  ``%2e%2e``.  Confining paths to a directory is still the app's job.
* ``headers`` is a case-insensitive mapping; ``body`` is the request body (POST bodies need a
  Content-Length, at most ``max_body`` bytes: 411 / 413 otherwise).
* ``None`` means 404.  An exception in the app is logged and answered 500.

``Response(file=Path)`` is streamed with ``socket.sendfile`` (zero copy) from one fd opened once
per request, so a concurrent ``os.replace`` of the path yields entirely the old or entirely the
new version, never a mix (the image store's atomic publish relies on this).  Single byte ranges
(``Range: bytes=a-b``, ``a-``, ``-n``) get 206; multi-range requests get the whole file (200);
unsatisfiable ones 416.

Limits (``HttpLimits``; docs/security.md has the defaults and hcboot's flags): at most
``max_connections`` connections at once and ``max_per_client`` from one client address; the
whole request head (request line and headers) must arrive within ``head_timeout`` of the
connection's start or of the next request's first byte (a deadline, not a per-recv timeout),
else 408 and close; a kept-alive connection waits ``idle_timeout`` for its next request; the
whole request body must arrive within ``io_timeout``, and a response send that makes no progress
for ``io_timeout`` ends the connection.  A new
connection over a cap takes the place of the connection of that client (per-client cap) or of
any client (overall cap) that has waited longest for a request head, then for a request body,
then of the longest idle keep-alive connection; only when every connection is busy handling a
request or sending its reply is it answered 503.
So slow clients that never finish a head cannot lock out a client that sends one promptly.

Modules: ``request`` (paths, ranges, headers, ``Response``, ``App``; no sockets), ``limits``
(``HttpLimits``, the per-phase deadline reader, the connection table and its admission),
``handler`` (one connection: the request loop and the responses), ``server`` (``HttpServer``).
Log lines about a client start with its MAC when the server is given ``mac_of``
(:mod:`bootserver.clientlog`).
"""

from bootserver.http.limits import HttpLimits
from bootserver.http.request import (
    ALLOWED_METHODS,
    DEFAULT_MAX_BODY,
    UNSATISFIABLE,
    App,
    BadRequestPath,
    Headers,
    Response,
    clean_request_path,
    parse_range,
)
from bootserver.http.server import HttpServer

__all__ = ["ALLOWED_METHODS", "DEFAULT_MAX_BODY", "UNSATISFIABLE", "App", "BadRequestPath",
           "Headers", "HttpLimits", "HttpServer", "Response", "clean_request_path",
           "parse_range"]
