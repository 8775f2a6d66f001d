"""AoE I/O on a raw AF_PACKET socket: Query Config and IDENTIFY (the windowed multipath reader
is :mod:`homecloud.aoe.reader`).

Frames are built once per path by scapy (:mod:`homecloud.aoe.frames`) and patched per request
with struct; replies are matched on the tag by this module (scapy's ``AOE.answers`` matches any
AoE frame).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import random
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence

from homecloud.aoe import frames as F
from homecloud.aoe.frames import (
    AoEError,
    AoEReplyError,
    AoETimeout,
    ATACommandError,
    ConfigReply,
    Identify,
    Target,
)

log = logging.getLogger("homecloud.aoe")

_CLONE_NEWNET = 0x40000000
_SIOCGIFMTU = 0x8921
AOE_HDR = struct.Struct("!BBHBBI")
TAG = struct.Struct("!I")


class InterfaceError(AoEError):
    """The interface (or network namespace) cannot be opened for AoE."""


@contextlib.contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name`` (``ip netns`` name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        except OSError as exc:
            raise InterfaceError(f"network namespace {name!r}: {exc.strerror}") from exc
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise InterfaceError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            yield
        finally:
            if libc.setns(own, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot happen as root
                raise InterfaceError("cannot return to the original network namespace")
    finally:
        os.close(own)


class AoESocket:
    """A non-blocking raw packet socket for AoE (ethertype 0x88a2) bound to one interface.

    ``netns`` opens it inside a named network namespace (the socket stays there; the calling
    thread returns to its own namespace)."""

    def __init__(self, interface: str, *, netns: str | None = None,
                 rcvbuf: int = 8 << 20) -> None:
        self.interface = interface
        ctx = _in_netns(netns) if netns else contextlib.nullcontext()
        with ctx:
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                     socket.htons(F.ETH_P_AOE))
            except PermissionError as exc:
                raise InterfaceError(f"{interface}: raw AoE socket needs root"
                                     f" (CAP_NET_RAW): {exc.strerror}") from exc
            try:
                sock.bind((interface, F.ETH_P_AOE))
            except OSError as exc:
                sock.close()
                raise InterfaceError(f"{interface}: cannot bind: {exc.strerror}") from exc
        self.sock = sock
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                continue
        self.mac: bytes = sock.getsockname()[4]
        ifr = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, struct.pack("16si12x",
                                                                 interface.encode(), 0))
        self.mtu: int = struct.unpack_from("16si", ifr)[1]
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @property
    def max_sectors(self) -> int:
        """Sectors per request that fit this interface's MTU."""
        return max(1, min(255, (self.mtu - F.AOE_HDR_LEN - F.ATA_HDR_LEN) // F.SECTOR))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes | bytearray) -> None:
        try:
            self.sock.send(frame)
        except BlockingIOError:
            # the device queue is full: wait until it drains a little, then try once more
            time.sleep(0.0005)
            self.sock.send(frame)

    def recv_into(self, buf: bytearray | memoryview) -> int:
        """One frame into ``buf``; 0 when none is waiting."""
        try:
            return self.sock.recv_into(buf)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a frame; True if one is waiting."""
        return bool(self._poll.poll(max(0, int(timeout * 1000 + 0.999))))

    def drain(self) -> None:
        buf = bytearray(16384)
        while self.recv_into(buf):
            pass

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AoESocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_tag() -> int:
    return random.getrandbits(32)


# ---------------------------------------------------------------- Query Config


def query_config(sock: AoESocket, target: Target | None = None, timeout: float = 1.0,
                 sends: int = 2) -> list[ConfigReply]:
    """Broadcast a Query Config (to ``target``, or to every target: shelf 0xffff, slot 0xff) and
    collect the replies for ``timeout`` seconds.  The request is sent ``sends`` times spread over
    the first half of the timeout (a lost broadcast would hide a path); replies are de-duplicated
    per (target, MAC).  Sorted by target, then MAC."""
    tag = new_tag()
    shelf, slot = (target.shelf, target.slot) if target else (0xFFFF, 0xFF)
    frame = F.build_query_config(sock.mac, shelf=shelf, slot=slot, tag=tag)
    found: dict[tuple[Target, str], ConfigReply] = {}
    buf = bytearray(16384)
    start = time.monotonic()
    deadline = start + timeout
    send_times = [start + i * timeout / (2 * sends) for i in range(max(1, sends))]
    while True:
        now = time.monotonic()
        while send_times and send_times[0] <= now:
            send_times.pop(0)
            sock.send(frame)
        if now >= deadline:
            break
        nxt = min([deadline, *send_times[:1]])
        if not sock.wait(nxt - now):
            continue
        while n := sock.recv_into(buf):
            mv = memoryview(buf)[:n]
            if n < F.OFF_QC_CONFIG or buf[0:6] != sock.mac:
                continue
            vf, _err, major, minor, cmd, rtag = AOE_HDR.unpack_from(buf, F.ETH_LEN)
            if rtag != tag or cmd != F.CMD_QUERY_CONFIG or not vf & F.AOE_RESPONSE:
                continue
            if vf & F.AOE_ERROR:
                log.warning("Query Config error %d from %s", _err, F.mac_str(bytes(buf[6:12])))
                continue
            if target and (major, minor) != (target.shelf, target.slot):
                continue
            try:
                rep = F.parse_config_reply(mv)
            except (F.BadFrame, ValueError):
                continue
            found.setdefault((rep.target, rep.mac), rep)
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------- single request (IDENTIFY)


def exchange(sock: AoESocket, target: Target, mac: str, frame: bytes | bytearray, tag: int, *,
             lba: int | None = None, what: str = "ATA command", timeout: float = 0.5,
             retries: int = 4) -> bytes:
    """Send one ATA request ``frame`` (tagged ``tag``) to path ``mac`` and wait for its answer,
    resending it ``retries`` times; returns the whole reply frame.  AoEReplyError or
    ATACommandError when the target refuses it, AoETimeout when nothing answers."""
    buf = bytearray(16384)
    macb = F.mac_bytes(mac)
    for _ in range(retries + 1):
        sock.send(frame)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.wait(left):
                break
            while n := sock.recv_into(buf):
                if n < F.DATA_OFFSET or buf[6:12] != macb:
                    continue
                vf, err, major, minor, cmd, rtag = AOE_HDR.unpack_from(buf, F.ETH_LEN)
                if (rtag != tag or cmd != F.CMD_ATA or not vf & F.AOE_RESPONSE
                        or (major, minor) != (target.shelf, target.slot)):
                    continue
                if vf & F.AOE_ERROR:
                    raise AoEReplyError(target, lba, mac, err)
                status = buf[F.OFF_CMDSTAT]
                if status & (F.ATA_STATUS_ERR | F.ATA_STATUS_DF):
                    raise ATACommandError(target, lba, mac, status, buf[F.OFF_ERRFEAT])
                return bytes(buf[:n])
    raise AoETimeout(target, lba, [mac], what=what, tries=retries + 1)


def ata_request(sock: AoESocket, target: Target, mac: str, *, command: int, lba: int = 0,
                sectors: int = 1, timeout: float = 0.5, retries: int = 4) -> bytes:
    """One ATA request to one path, retried; returns the reply's data (``sectors`` * 512)."""
    tag = new_tag()
    frame = F.build_ata_request(sock.mac, mac, target, command=command, sectors=sectors,
                                lba=lba, tag=tag)
    reply = exchange(sock, target, mac, frame, tag, lba=lba, timeout=timeout, retries=retries,
                     what=f"ATA command 0x{command:02x}")
    return F.reply_data(reply, sectors)


def identify(sock: AoESocket, target: Target, macs: Sequence[str], *, timeout: float = 0.5,
             retries: int = 4) -> tuple[Identify, str]:
    """ATA IDENTIFY DEVICE through the first path that answers; returns (identify, mac)."""
    last: AoEError | None = None
    for mac in macs:
        try:
            data = ata_request(sock, target, mac, command=F.ATA_IDENTIFY, timeout=timeout,
                               retries=retries)
            return F.parse_identify(data), mac
        except AoETimeout as exc:
            last = exc
    if last is None:
        raise AoETimeout(target, None, [], what="IDENTIFY")
    raise AoETimeout(target, None, list(macs), what="IDENTIFY", tries=retries + 1) from last
