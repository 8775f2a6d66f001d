"""Packet-level DHCP clients for integration tests: plain UDP sockets created inside a test
namespace (setns on this thread), and requests built once with the codec (FIELD-NOTES: building
packets with scapy costs ~1 ms each; bursts use pre-built bytes)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.options import MessageType as MT
from tests.support.netns import Netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
PXE_BIOS = b"PXEClient:Arch:00000:UNDI:002001"


@contextlib.contextmanager
def entered(ns: Netns) -> Iterator[None]:
    """Run the body with this thread in ``ns`` (sockets made here stay in ``ns``)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        yield
    finally:
        if _libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(own)
        os.close(target)


class UdpClient:
    """A DHCP client socket on port ``port`` inside a namespace (replies arrive by broadcast)."""

    def __init__(self, ns: Netns, ifname: str = "eth0", port: int = 68,
                 bind: str = "0.0.0.0") -> None:
        with entered(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())  # SO_BINDTODEVICE
            s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            s.bind((bind, port))
        self.sock = s

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes, addr: tuple[str, int] = ("255.255.255.255", 67)) -> None:
        self.sock.sendto(data, addr)

    def recv(self, xid: int, timeout: float = 3.0) -> tuple[DhcpPacket, tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply with xid {xid:#x}")
            self.sock.settimeout(left)
            data, src = self.sock.recvfrom(65536)
            p = codec.decode(data)
            if p.xid == xid and p.op == codec.BOOTREPLY:
                return p, src

    def exchange(self, data: bytes, xid: int,
                 addr: tuple[str, int] = ("255.255.255.255", 67),
                 timeout: float = 3.0) -> DhcpPacket:
        self.send(data, addr)
        return self.recv(xid, timeout)[0]

    def drain(self, timeout: float) -> list[DhcpPacket]:
        """Every reply that arrives until ``timeout`` seconds pass without one."""
        out = []
        self.sock.settimeout(timeout)
        with contextlib.suppress(TimeoutError, socket.timeout):
            while True:
                out.append(codec.decode(self.sock.recv(65536)))
        return out


def req(mt: MT, mac: str, xid: int, pxe: bool = True, options: dict[int, bytes] | None = None,
        **fields: Any) -> bytes:
    """A client request (broadcast flag set); ``pxe``: a BIOS PXE ROM's options 60 and 93."""
    opts: dict[int, bytes] = {o.MESSAGE_TYPE: bytes((mt,))}
    if pxe:
        opts[o.VENDOR_CLASS] = PXE_BIOS
        opts[o.CLIENT_ARCH] = b"\x00\x00"
    opts.update(options or {})
    p = DhcpPacket(op=1, xid=xid, chaddr=bytes.fromhex(mac.replace(":", "")), flags=0x8000,
                   options=opts, **fields)
    return codec.encode(p, max_size=1472)


def selecting(mac: str, xid: int, server: str, ip: str, pxe: bool = True) -> bytes:
    """The REQUEST that takes an OFFER (RFC 2131 §4.3.2 SELECTING)."""
    return req(MT.REQUEST, mac, xid, pxe, options={o.SERVER_ID: o.ip_bytes(server),
                                                   o.REQUESTED_IP: o.ip_bytes(ip)})


def init_reboot(mac: str, xid: int, ip: str, pxe: bool = True) -> bytes:
    """The REQUEST of a client that remembers its address (INIT-REBOOT: option 50, no 54)."""
    return req(MT.REQUEST, mac, xid, pxe, options={o.REQUESTED_IP: o.ip_bytes(ip)})
