"""Read-only TFTP server: RFC 1350, options (RFC 2347) blksize (2348), tsize and timeout (2349),
windowsize (RFC 7440); bounded sessions so a flood of requests cannot exhaust the server.

History: this module once drove tftpy 0.8.7's per-transfer context and download state machine.
Its request handling had already been replaced here (its ``dyn_file_func`` runs only for names
absent from the root and dies on an ``io.BytesIO``, it accepts uploads by default, follows
symlinks out of the root, OACKs options nobody asked for, and any exception that is not its own
kills its thread).  A profile of 100 clients then showed the per-block path spending more time
in tftpy's objects (a packet object per ACK and per DATA, eight ``log.debug`` calls, a second
``read`` per block) than in the two system calls a block needs, it had no windowsize, and
nothing bounded its sessions.  The server below has its own codec (``parse_request`` and
friends, property-tested) and a per-block path of one ``recv_into`` and one ``send``: files up
to CACHE_FILE_MAX are cut once into ready DATA packets shared by the transfers sending them
(``_FileCache``; the rest is read with one ``preadv`` per block into a preallocated buffer).
tftpy is no longer imported (bench/README.md, "TFTP storm", has the numbers).

Path rule (``normalize_tftp_path``): the requested name must be printable ASCII without
backslashes; leading ``/`` are stripped (PXE ROMs often send ``/pxelinux.0``) so *every* name is
relative to the root (``/etc/passwd`` means ``<root>/etc/passwd``); empty and ``.`` segments are
dropped; any ``..`` segment is refused outright (even one that would stay inside).  The file is
then opened with symlinks resolved: a symlink is followed only if its final target is inside the
resolved root (compared by path components, so ``/srv/tftp2`` is not inside ``/srv/tftp``), and
the open walks the resolved components with ``O_NOFOLLOW`` so a symlink swapped in after the
check is refused too.  Only regular files are served.

Modes: ``octet`` and ``netascii`` (any case) are accepted and both get the bytes unchanged (no
CR/LF translation; PXE clients all use octet); any other mode is an Illegal operation error.
Errors (RFC 1350 codes): 1 File not found, 2 Access violation (refused names, symlink escapes,
uploads), 4 Illegal operation (malformed requests, bad modes), 0 with a message for a resolver
that raised and for a request over a session cap.  Each transfer has its own socket connected to
the client's address and port: the kernel delivers nothing from another TID (so no error 5 goes
out; RFC 1350 allows it: the error "can be done only if the TFTP in fact receives a packet with
an incorrect TID", and tftp-hpa's server does the same), and an ICMP unreachable from a client
that went away ends its session at once.  Requests over 2048 bytes are malformed (RFC 2347 caps
them at 512); other opcodes on the request port are dropped and logged.
Every log line names the client IP and the file.

Options (only those asked for are ever acknowledged; an RRQ whose options are all declined gets
DATA 1 as in RFC 1350): ``blksize`` 8..65464 (larger values are lowered to 65464), ``tsize``
(the real size), ``timeout`` 1..``max_timeout`` echoed unchanged as RFC 2349 demands; a larger
one is declined (absent from the OACK) and the server's own ``timeout`` applies, so a request
asking for 255 s cannot hold a session for 21 minutes.  ``windowsize`` (RFC 7440) 1..65535,
lowered to ``max_windowsize`` and to what fits ``WINDOW_BYTES``; clients that do not ask stay
in lock-step.

Transfers: blocks are numbered modulo 2**16 (block 65535 is followed by 0, as tftp-hpa, curl,
iPXE and pxelinux expect), ACKs are mapped back to the absolute block inside the window that was
sent.  A duplicate ACK is ignored (never a retransmission: RFC 1123 4.2.3.1, no Sorcerer's
Apprentice); an ACK for a block inside the current window (RFC 7440: the client saw a gap)
restarts the window after it; an ACK from the future is ignored.  With no valid ACK for
``timeout`` seconds the unacknowledged window (or the OACK) is sent again; after ``retries``
retransmissions without progress the session ends, so a peer that never answers holds a
session for at most ``timeout * (retries + 1)`` seconds.

Caps (``TftpLimits``, ``hcboot serve --tftp-*``; docs/limits.md): at most ``max_sessions``
transfers at once and ``max_per_client`` per client address.  At a cap the oldest *half-open*
session (OACK or DATA 1 sent, never acknowledged: what a spoofed request leaves behind) of that
scope is evicted to make room (at the per-client cap only one half-open for HALF_OPEN_GRACE
seconds, so a client's own burst does not evict itself); if there is none the request is
refused with error 0 and a message.  The request socket is drained at most ``REQUESTS_PER_ROUND``
requests per poll round, so a flood cannot starve running transfers or evict a new session
before its first ACK is read.  Cap events are logged, at most once a second with a count.

The resolver ``resolver(path, client_ip)`` gets the normalised name and may return ``bytes``
(served as is), a ``Path`` (a relative one is confined to the root like a request; an absolute
one is trusted, e.g. the image store, but must be a regular file) or ``None`` (fall through to
the root).  It runs on the server thread: keep it fast.
"""

from __future__ import annotations

from bootserver.tftp.codec import (
    CACHE_BYTES,
    CACHE_FILE_MAX,
    DEFAULT_BLKSIZE,
    ERR_ACCESS,
    ERR_ILLEGAL,
    ERR_NOT_FOUND,
    ERR_OPTIONS,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    HALF_OPEN_GRACE,
    MAX_BLKSIZE,
    MAX_NAME,
    MAX_PER_CLIENT,
    MAX_REQUEST,
    MAX_SESSIONS,
    MAX_TIMEOUT,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    OP_ACK,
    OP_DATA,
    OP_ERROR,
    OP_OACK,
    OP_RRQ,
    OP_WRQ,
    REQUESTS_PER_ROUND,
    SESSION_RETRIES,
    SESSION_TIMEOUT,
    WINDOW_BYTES,
    TftpPacketError,
    TftpRequest,
    _quote,
    encode_error,
    encode_oack,
    encode_request,
    negotiate_options,
    parse_error,
    parse_oack,
    parse_request,
)
from bootserver.tftp.paths import (
    TftpNotFound,
    TftpPathError,
    _regular_or_close,
    normalize_tftp_path,
    open_confined,
)
from bootserver.tftp.server import (
    Resolver,
    TftpServer,
)
from bootserver.tftp.session import (
    TftpLimits,
    _bytes_file,
    _CacheEntry,
    _FileCache,
    _RateLog,
    _Refused,
    _Session,
)
from bootserver.tftp.transfers import (
    _Transfers,
)

__all__ = [
    "CACHE_BYTES",
    "CACHE_FILE_MAX",
    "DEFAULT_BLKSIZE",
    "ERR_ACCESS",
    "ERR_ILLEGAL",
    "ERR_NOT_FOUND",
    "ERR_OPTIONS",
    "ERR_UNDEFINED",
    "ERR_UNKNOWN_TID",
    "HALF_OPEN_GRACE",
    "MAX_BLKSIZE",
    "MAX_NAME",
    "MAX_PER_CLIENT",
    "MAX_REQUEST",
    "MAX_SESSIONS",
    "MAX_TIMEOUT",
    "MAX_WINDOWSIZE",
    "MIN_BLKSIZE",
    "OP_ACK",
    "OP_DATA",
    "OP_ERROR",
    "OP_OACK",
    "OP_RRQ",
    "OP_WRQ",
    "REQUESTS_PER_ROUND",
    "SESSION_RETRIES",
    "SESSION_TIMEOUT",
    "WINDOW_BYTES",
    "Resolver",
    "TftpLimits",
    "TftpNotFound",
    "TftpPacketError",
    "TftpPathError",
    "TftpRequest",
    "TftpServer",
    "_CacheEntry",
    "_FileCache",
    "_RateLog",
    "_Refused",
    "_Session",
    "_Transfers",
    "_bytes_file",
    "_quote",
    "_regular_or_close",
    "encode_error",
    "encode_oack",
    "encode_request",
    "negotiate_options",
    "normalize_tftp_path",
    "open_confined",
    "parse_error",
    "parse_oack",
    "parse_request",
]
