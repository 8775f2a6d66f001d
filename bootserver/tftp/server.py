"""The TFTP server: the request port, admission under the caps, the event loop."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO

from bootserver.clientlog import Log, MacOf, for_client
from bootserver.tftp.codec import (
    DEFAULT_BLKSIZE,
    ERR_ACCESS,
    ERR_ILLEGAL,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    HALF_OPEN_GRACE,
    OP_ACK,
    OP_RRQ,
    OP_WRQ,
    REQUESTS_PER_ROUND,
    TftpPacketError,
    TftpRequest,
    encode_error,
    encode_oack,
    negotiate_options,
    parse_request,
)
from bootserver.tftp.paths import (
    TftpNotFound,
    TftpPathError,
    _regular_or_close,
    normalize_tftp_path,
    open_confined,
)
from bootserver.tftp.session import (
    TftpLimits,
    _bytes_file,
    _FileCache,
    _RateLog,
    _Refused,
    _Session,
)
from bootserver.tftp.transfers import _PEER_GONE, _Transfers

log = logging.getLogger("homecloud.tftp")



Resolver = Callable[[str, str], bytes | Path | None]


class TftpServer(_Transfers):
    """Read-only TFTP server for ``root`` on ``bind_ip:port`` (one background thread).

    ``port=0`` picks a free port (read ``.port`` after ``start()``)."""

    def __init__(self, root: Path, bind_ip: str, port: int = 69,
                 resolver: Resolver | None = None, limits: TftpLimits | None = None,
                 mac_of: MacOf | None = None) -> None:
        """``mac_of(ip)``: the MAC of a client address, so every line about a client starts
        with its MAC (:mod:`bootserver.clientlog`); None: lines without it."""
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"TFTP root {str(root)!r} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise PermissionError(f"TFTP root {str(root)!r} is not readable")
        self.bind_ip = bind_ip
        self.port = port
        self.resolver = resolver
        self.limits = limits or TftpLimits()
        self.mac_of = mac_of
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._by_fd: dict[int, _Session] = {}
        self._per_client: dict[str, int] = {}
        self._half_open: OrderedDict[tuple[str, int], _Session] = OrderedDict()
        self._epoll: select.epoll | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ratelog = _RateLog()
        self._cache = _FileCache()
        self._rbuf = bytearray(2048)  # a session's packets: ACK (4), ERROR (<= 516); longer
        # datagrams are cut, which changes nothing for the first 4 bytes read from them
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "sessions", "completed", "failed", "expired", "evicted",
             "refused_busy", "refused_client", "retransmits", "dup_acks", "peak_sessions",
             "peak_per_client"), 0)

    # -- lifecycle -----------------------------------------------------------------------
    def _log(self, host: str) -> Log:
        """The logger for lines about the client at ``host`` (prefixed with its MAC)."""
        return for_client(log, host, self.mac_of)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TftpServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((self.bind_ip, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"tftp-{self.bind_ip}:{self.port}",
                                        daemon=True)
        self._thread.start()
        lim = self.limits
        log.info("TFTP serving %s on %s:%d (at most %d sessions, %d per client; timeout %g s, "
                 "up to %d s if asked, %d retries; windowsize up to %d; a session without ACKs "
                 "ends within %g s)", self.root, self.bind_ip, self.port, lim.max_sessions,
                 lim.max_per_client, lim.timeout, lim.max_timeout, lim.retries,
                 lim.max_windowsize, lim.idle_life)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def __enter__(self) -> TftpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request -> file object ------------------------------------------------------------
    def open_for(self, name: str, client_ip: str) -> IO[bytes]:
        """The file object to serve for a requested name (raises _Refused)."""
        try:
            rel = normalize_tftp_path(name)
        except TftpPathError as e:
            self._log(client_ip).warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        if self.resolver is not None:
            try:
                found = self.resolver(rel, client_ip)
            except Exception:
                self._log(client_ip).exception("TFTP %s: resolver failed for %r", client_ip, rel)
                raise _Refused(ERR_UNDEFINED, "internal error") from None
            if isinstance(found, bytes | bytearray):
                self._log(client_ip).info(
                    "TFTP %s: RRQ %s -> %d generated bytes", client_ip, rel, len(found))
                return _bytes_file(bytes(found))
            if found is not None:
                return self._open_path(Path(found), rel, client_ip)
        try:
            fd = open_confined(self.root, rel)
        except TftpPathError as e:
            self._log(client_ip).warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except TftpNotFound as e:
            self._log(client_ip).info("TFTP %s: RRQ %s: not found (%s)", client_ip, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        self._log(client_ip).info("TFTP %s: RRQ %s", client_ip, rel)
        return os.fdopen(fd, "rb")

    def _open_path(self, path: Path, rel: str, client_ip: str) -> IO[bytes]:
        try:
            if not path.is_absolute():
                fd = open_confined(self.root, str(path))
            else:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                fd = _regular_or_close(fd, str(path))
        except TftpPathError as e:
            self._log(client_ip).warning(
                "TFTP %s: resolver path for %s refused: %s", client_ip, rel, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except OSError as e:
            self._log(client_ip).warning(
                "TFTP %s: resolver path %s for %s: %s", client_ip, path, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        self._log(client_ip).info("TFTP %s: RRQ %s -> %s", client_ip, rel, path)
        return os.fdopen(fd, "rb")

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # pragma: no cover - the loop catches per packet; last resort
            log.exception("TFTP server loop died")
            raise
        finally:
            for s in list(self._sessions.values()):
                self._end(s, "server stopping")
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            c = self.counters
            log.info("TFTP stopped: %d requests, %d sessions (%d completed, %d failed, %d expired "
                     "without an ACK, %d evicted), %d refused at the caps, peak %d sessions",
                     c["requests"], c["sessions"], c["completed"], c["failed"], c["expired"],
                     c["evicted"], c["refused_busy"] + c["refused_client"], c["peak_sessions"])

    def _loop(self) -> None:
        assert self._sock is not None
        main = self._sock.fileno()
        ep = self._epoll = select.epoll()
        ep.register(main, select.EPOLLIN)
        by_fd = self._by_fd
        on_session, on_packet = self._on_session, self._on_packet
        rbuf = self._rbuf
        poll, monotonic, stopped = ep.poll, time.monotonic, self._stop.is_set
        next_check = 0.0
        while not stopped():
            events = poll(0.05)
            now = monotonic()
            for fd, _ev in events:
                s = by_fd.get(fd)
                if s is None:  # the request port, or a session ended earlier in this round
                    if fd == main:
                        self._on_main(now)
                    continue
                try:
                    pkts = s.pkts
                    if pkts is None or s.window != 1:
                        on_session(s, now)
                        continue
                    # The storm's hot path, inline: a cached file in lock-step, the ACK of the
                    # block in flight that is not the last one -> send the next ready packet.
                    try:
                        got = s.sock.recv_into(rbuf)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        self._recv_failed(s, e)
                        continue
                    sent = s.sent
                    if (got >= 4 and rbuf[1] == OP_ACK and rbuf[0] == 0
                            and (rbuf[2] << 8 | rbuf[3]) == sent & 0xFFFF
                            and s.last_block > sent > s.acked > 0):
                        s.acked = sent
                        s.tries = 0
                        s.sent = sent + 1
                        s.deadline = now + s.timeout
                        try:
                            s.sock.send(pkts[sent])
                        except OSError as e:
                            if e.errno in _PEER_GONE:
                                self._end(s, f"client gone ({e.strerror})")
                        continue
                    on_packet(s, got, now)
                except Exception as e:  # a bug must cost one transfer, never the server
                    self._log(s.host).exception("TFTP %s: unexpected error", s)
                    self._end(s, f"internal error {e!r}")
            if now >= next_check:
                try:
                    self._check_timeouts(now)
                except Exception:  # pragma: no cover - same rule as above
                    log.exception("TFTP: unexpected error checking timeouts")
                next_check = now + 0.05

    # -- requests ----------------------------------------------------------------------------
    def _on_main(self, now: float) -> None:
        assert self._sock is not None
        for _ in range(REQUESTS_PER_ROUND):
            try:
                buf, (host, port) = self._sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("TFTP recvfrom: %s", e)
                return
            try:
                self._on_request(buf, host, port, now)
            except Exception:  # one bad request never takes the loop down
                self._log(host).exception(
                    "TFTP %s:%d: unexpected error handling a request", host, port)

    def _reply_error(self, host: str, port: int, code: int, message: str) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(encode_error(code, message), (host, port))
        except OSError as e:
            self._log(host).debug("TFTP %s:%d: error reply not sent: %s", host, port, e)

    def _on_request(self, buf: bytes, host: str, port: int, now: float) -> None:
        key = (host, port)
        if key in self._sessions:
            self._log(host).debug("TFTP %s:%d: retransmitted request ignored", host, port)
            return
        opcode = (buf[0] << 8 | buf[1]) if len(buf) >= 2 else -1
        if opcode not in (OP_RRQ, OP_WRQ):
            self._ratelog(self._log(host), "stray", logging.WARNING,
                          "TFTP %s:%d: dropped %d-byte packet with opcode %d on the request port",
                          host, port, len(buf), opcode)
            return
        self.counters["requests"] += 1
        try:
            req = parse_request(buf)
        except TftpPacketError as e:
            self._ratelog(self._log(host), "malformed", logging.WARNING,
                          "TFTP %s:%d: malformed request: %s",
                          host, port, e)
            self._reply_error(host, port, ERR_ILLEGAL, "malformed request")
            return
        if req.opcode == OP_WRQ:
            self._log(host).warning(
                "TFTP %s: upload of %r refused (read-only server)", host, req.filename)
            self._reply_error(host, port, ERR_ACCESS, "read-only server: uploads refused")
            return
        if req.mode.lower() not in ("octet", "netascii"):
            self._log(host).warning(
                "TFTP %s: RRQ %r with unsupported mode %r", host, req.filename[:80],
                        req.mode[:32])
            self._reply_error(host, port, ERR_ILLEGAL, f"unsupported mode {req.mode[:32]!r}")
            return
        victim = self._make_room(host, port)
        if victim is False:
            return
        try:
            fileobj = self.open_for(req.filename, host)
        except _Refused as e:
            self._reply_error(host, port, e.code, str(e))
            return
        try:
            self._open_session(req, fileobj, host, port, victim, now)
        except BaseException:
            fileobj.close()
            raise

    def _make_room(self, host: str, port: int) -> _Session | bool | None:
        """The half-open session to evict for a new one (None: there is room), or False when
        the request was refused at a cap (an error has been sent)."""
        lim = self.limits
        if self._per_client.get(host, 0) >= lim.max_per_client:
            # only a session half-open for a while: a client's own requests in one burst (or
            # behind one NAT) must not evict each other before their first ACK is read
            young = time.monotonic() - HALF_OPEN_GRACE
            victim = next((s for s in self._half_open.values()
                           if s.host == host and s.started <= young), None)
            if victim is None:
                self.counters["refused_client"] += 1
                self._ratelog(self._log(host), "refused_client", logging.WARNING,
                              "TFTP %s:%d: per-client cap reached (%d transfers from %s, none "
                              "half-open for %g s): request refused", host, port,
                              lim.max_per_client, host, HALF_OPEN_GRACE)
                self._reply_error(host, port, ERR_UNDEFINED,
                                  f"too many transfers from {host} (max {lim.max_per_client})")
                return False
            self._ratelog(self._log(host), "evict_client", logging.WARNING,
                          "TFTP %s:%d: per-client cap reached (%d transfers from %s): evicting "
                          "the oldest unacknowledged one, %s", host, port, lim.max_per_client,
                          host, victim)
            return victim
        if len(self._sessions) >= lim.max_sessions:
            victim = next(iter(self._half_open.values()), None)
            if victim is None:
                self.counters["refused_busy"] += 1
                self._ratelog(self._log(host), "refused_busy", logging.WARNING,
                              "TFTP %s:%d: session cap reached (%d transfers, all "
                              "acknowledged): request refused", host, port, lim.max_sessions)
                self._reply_error(host, port, ERR_UNDEFINED,
                                  f"server busy ({lim.max_sessions} transfers), retry later")
                return False
            self._ratelog(self._log(host), "evict_busy", logging.WARNING,
                          "TFTP %s:%d: session cap reached (%d transfers): evicting the oldest "
                          "unacknowledged one, %s", host, port, lim.max_sessions, victim)
            return victim
        return None

    def _open_session(self, req: TftpRequest, fileobj: IO[bytes], host: str, port: int,
                      victim: _Session | bool | None, now: float) -> None:
        lim = self.limits
        size = os.fstat(fileobj.fileno()).st_size
        accepted = negotiate_options(req.option_map(), max_timeout=lim.max_timeout,
                                     max_windowsize=lim.max_windowsize)
        if "tsize" in accepted:
            accepted["tsize"] = size
        if isinstance(victim, _Session):
            self.counters["evicted"] += 1
            self._send_quiet(victim, encode_error(ERR_UNDEFINED, "server at its session cap"))
            self._end(victim, "evicted at the session cap", quiet=True)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as e:  # EMFILE/ENFILE: out of descriptors
            self.counters["refused_busy"] += 1
            self._log(host).error("TFTP %s:%d: cannot create a session socket: %s", host, port, e)
            self._reply_error(host, port, ERR_UNDEFINED, "server busy, retry later")
            fileobj.close()
            return
        try:
            sock.bind((self.bind_ip if self.bind_ip not in ("", "0.0.0.0") else "", 0))
            sock.connect((host, port))
            sock.setblocking(False)
            window = accepted.get("windowsize", 1)
            blksize = accepted.get("blksize", DEFAULT_BLKSIZE)
            if window > 1:  # room for a whole window (skb overhead ~1 KiB per datagram)
                need = window * (blksize + 1024)
                with contextlib.suppress(OSError):
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < need:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, need)
        except OSError as e:
            sock.close()
            self._log(host).error("TFTP %s:%d: cannot set up a session socket: %s", host, port, e)
            self._reply_error(host, port, ERR_UNDEFINED, "server error")
            fileobj.close()
            return
        oack = encode_oack(accepted) if accepted else None
        timeout = float(accepted.get("timeout", lim.timeout))
        s = _Session(sock, (host, port), req.filename, fileobj, size, blksize, window, timeout,
                     oack, now)
        with contextlib.suppress(OSError):
            cached = self._cache.acquire(s.filefd, blksize, size)
            if cached is not None:
                s.cache_key, s.pkts = cached
        key = (host, port)
        self._sessions[key] = s
        self._by_fd[s.fd] = s
        self._half_open[key] = s
        n = self._per_client[host] = self._per_client.get(host, 0) + 1
        c = self.counters
        c["sessions"] += 1
        c["peak_sessions"] = max(c["peak_sessions"], len(self._sessions))
        c["peak_per_client"] = max(c["peak_per_client"], n)
        assert self._epoll is not None
        self._epoll.register(s.fd, select.EPOLLIN)
        if accepted:
            self._log(s.host).debug("TFTP %s: OACK %s", s, accepted)
            self._send_quiet(s, oack)  # type: ignore[arg-type]
        else:
            self._send_window(s, now)

    # -- transfers ---------------------------------------------------------------------------
