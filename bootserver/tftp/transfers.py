"""Running transfers: windows of DATA, ACKs, retransmission and the end of a session (a base
class of :class:`~bootserver.tftp.server.TftpServer`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import time
from collections import OrderedDict

from bootserver.clientlog import Log
from bootserver.tftp.codec import (
    ERR_UNDEFINED,
    OP_ACK,
    OP_ERROR,
    encode_error,
    parse_error,
)
from bootserver.tftp.session import (
    TftpLimits,
    _FileCache,
    _RateLog,
    _Session,
)

log = logging.getLogger("homecloud.tftp")

# send/recv errors on a connected session socket that mean the client is not there (an ICMP
# port or host unreachable came back)
_PEER_GONE = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                        errno.EHOSTDOWN))


class _Transfers:
    """Session I/O of the TFTP server (its state is set up by ``TftpServer.__init__``)."""

    limits: TftpLimits
    counters: dict[str, int]
    _sessions: dict[tuple[str, int], _Session]
    _by_fd: dict[int, _Session]
    _per_client: dict[str, int]
    _half_open: OrderedDict[tuple[str, int], _Session]
    _epoll: select.epoll | None
    _ratelog: _RateLog
    _cache: _FileCache
    _rbuf: bytearray

    def _log(self, host: str) -> Log:
        raise NotImplementedError  # TftpServer._log

    def _send_quiet(self, s: _Session, pkt: bytes) -> None:
        try:
            s.sock.send(pkt)
        except OSError as e:  # a lost packet: the retransmission timer covers it
            self._log(s.host).debug("TFTP %s: send failed: %s", s, e)

    def _send_window(self, s: _Session, now: float) -> None:
        """Send the blocks after the last acknowledged one, up to the window (or the end)."""
        first = s.acked + 1
        last = min(s.acked + s.window, s.last_block)
        blksize, buf, view, payload = s.blksize, s.buf, s.view, s.payload
        send, filefd, pkts = s.sock.send, s.filefd, s.pkts
        for block in range(first, last + 1):
            if pkts is not None:
                pkt: bytes | memoryview = pkts[block - 1]
            else:
                try:
                    n = os.preadv(filefd, payload, (block - 1) * blksize)
                except OSError as e:
                    self._fail(s, ERR_UNDEFINED, "read error",
                               f"read error at block {block}: {e}")
                    return
                buf[2] = (block >> 8) & 0xFF
                buf[3] = block & 0xFF
                pkt = view[:4 + n]
            try:
                send(pkt)
            except OSError as e:
                if e.errno in _PEER_GONE:
                    self._end(s, f"client gone ({e.strerror})")
                    return
                self._log(s.host).debug("TFTP %s: send of block %d failed: %s", s, block, e)
                break  # lost (EAGAIN, ENOBUFS...): resent when the timer runs out
        s.sent = max(s.sent, last)
        s.deadline = now + s.timeout

    def _on_session(self, s: _Session, now: float) -> None:
        # One datagram per readiness event: in lock-step (and per window) the next ACK is not
        # there yet, and epoll is level-triggered.  The socket is connected to the client's
        # address and port, so the kernel delivers nothing from any other TID (RFC 1350: the
        # error for a foreign TID "can be done only if the TFTP in fact receives" the packet;
        # tftp-hpa does the same) and reports an ICMP unreachable as ECONNREFUSED.
        try:
            got = s.sock.recv_into(self._rbuf)  # a kept buffer: no allocation per ACK
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._recv_failed(s, e)
            return
        self._on_packet(s, got, now)

    def _recv_failed(self, s: _Session, e: OSError) -> None:
        if e.errno in _PEER_GONE:
            self._end(s, f"client gone ({e.strerror})", expired=not s.established)
        else:
            self._log(s.host).debug("TFTP %s: recv: %s", s, e)

    def _on_packet(self, s: _Session, got: int, now: float) -> None:
        """A datagram of ``got`` bytes from the client, in ``self._rbuf``."""
        buf = self._rbuf
        if got >= 4 and buf[1] == OP_ACK and buf[0] == 0:
            number = (buf[2] << 8) | buf[3]
            sent = s.sent
            if s.window == 1 and number == (sent & 0xFFFF) and sent > s.acked > 0:
                # the lock-step fast path: the ACK of the one block in flight
                s.acked = sent
                s.tries = 0
                if sent >= s.last_block:
                    self._end(s, "")
                    return
                block = sent + 1
                pkts = s.pkts
                if pkts is not None:
                    pkt: bytes | memoryview = pkts[sent]  # DATA block sent + 1, ready
                else:
                    try:
                        n = os.preadv(s.filefd, s.payload, sent * s.blksize)
                    except OSError as e:
                        self._fail(s, ERR_UNDEFINED, "read error",
                                   f"read error at block {block}: {e}")
                        return
                    b = s.buf
                    b[2] = (block >> 8) & 0xFF
                    b[3] = block & 0xFF
                    pkt = s.view[:4 + n]
                s.sent = block
                s.deadline = now + s.timeout
                try:
                    s.sock.send(pkt)
                except OSError as e:
                    if e.errno in _PEER_GONE:
                        self._end(s, f"client gone ({e.strerror})")
                return
            self._on_ack(s, number, now)
        elif got >= 4 and buf[1] == OP_ERROR and buf[0] == 0:
            code, msg = parse_error(bytes(buf[:got]))
            self._end(s, f"client sent error {code} {msg[:80]!r}",
                      aborted=s.acked < 0)  # after an OACK: a tsize probe (pxelinux)
        else:
            self._ratelog(self._log(s.host), "junk", logging.WARNING,
                          "TFTP %s: dropped %d-byte packet %r (expected ACK or ERROR)",
                          s, got, bytes(buf[:min(got, 8)]))

    def _on_ack(self, s: _Session, number: int, now: float) -> None:
        block = s.acked + ((number - s.acked) & 0xFFFF)  # the absolute block it names
        if block == s.acked or block > s.sent:
            if block == s.acked:
                s.dup_acks += 1  # RFC 1123 4.2.3.1: never answer a duplicate ACK
            else:
                self._log(s.host).debug(
                    "TFTP %s: ACK %d for a block not sent yet ignored", s, number)
            return
        if not s.established:
            s.established = True
            self._half_open.pop(s.peer, None)
        s.acked = block
        s.tries = 0
        if block >= s.last_block:
            self._end(s, "")
            return
        self._send_window(s, now)

    def _check_timeouts(self, now: float) -> None:
        retries = self.limits.retries
        for s in list(self._sessions.values()):
            if now < s.deadline:
                continue
            if s.tries >= retries:
                what = "the OACK" if s.acked < 0 else f"block {s.acked + 1}"
                self._end(s, f"no ACK for {what} after {s.tries} retransmissions "
                          f"({s.timeout:g} s apart)", expired=True)
                continue
            s.tries += 1
            s.retransmits += 1
            self.counters["retransmits"] += 1
            if s.acked < 0:
                assert s.oack is not None
                self._send_quiet(s, s.oack)
                s.deadline = now + s.timeout
            else:
                self._send_window(s, now)

    def _fail(self, s: _Session, code: int, message: str, reason: str) -> None:
        self._send_quiet(s, encode_error(code, message))
        self._end(s, reason)

    def _end(self, s: _Session, reason: str, *, quiet: bool = False, aborted: bool = False,
             expired: bool = False) -> None:
        """Close a session; ``reason`` empty means it completed."""
        if s.done:
            return
        s.done = True
        key = s.peer
        self._sessions.pop(key, None)
        self._half_open.pop(key, None)
        n = self._per_client.get(s.host, 0) - 1
        if n > 0:
            self._per_client[s.host] = n
        else:
            self._per_client.pop(s.host, None)
        if self._by_fd.get(s.fd) is s:
            del self._by_fd[s.fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(s.fd)
        if s.cache_key is not None:
            self._cache.release(s.cache_key)
            s.pkts = None
        for closer in (s.sock.close, s.fileobj.close):
            try:
                closer()
            except Exception as e:  # never let cleanup take the loop down
                self._log(s.host).warning("TFTP %s: cleanup: %s", s, e)
        c = self.counters
        took = time.monotonic() - s.started
        if not reason:
            c["completed"] += 1
            c["dup_acks"] += s.dup_acks
            self._log(s.host).info(
                "TFTP %s: sent %s (%d bytes, blksize %d%s) in %.3f s%s", s.host, s.name,
                     s.size, s.blksize, f", windowsize {s.window}" if s.window > 1 else "",
                     took, f", {s.retransmits} retransmissions" if s.retransmits else "")
            return
        if quiet:
            return
        if aborted:
            self._log(s.host).info("TFTP %s: %s ended after the OACK: %s", s.host, s.name, reason)
            return
        if expired and not s.established:
            c["expired"] += 1
            self._ratelog(self._log(s.host), "expired", logging.WARNING,
                          "TFTP %s: transfer of %r never acknowledged, session ended: %s",
                          s.host, s.name, reason)
            return
        c["failed"] += 1
        self._log(s.host).warning("TFTP %s: transfer of %r ended: %s", s.host, s.name, reason)
