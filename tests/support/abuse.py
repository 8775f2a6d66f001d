"""Abuse generators for the limits tests, run as scripts (``python -c SCRIPT ...``) inside a
client namespace: a flood of TFTP requests that never acknowledge, and slow HTTP clients."""

from __future__ import annotations

# argv: server, comma-separated spoofed sources, own address, [file name].
# 400 RRQs from spoofed sources through a raw socket (IP_HDRINCL, UDP checksum 0 is legal in
# IPv4), and 100 from real UDP sockets that stay open and never ACK (so no ICMP comes back).
# Prints the OACK options seen by the real sockets (one read each: reading is not ACKing).
FLOODER = r"""
import json, random, socket, struct, sys, time
server, spoofed, own = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
name = sys.argv[4] if len(sys.argv) > 4 else "big.bin"

def rrq(name, **opts):
    o = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in opts.items())
    return struct.pack("!H", 1) + name.encode() + b"\0octet\0" + o

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

payload = rrq(name, blksize="1468", tsize="0", timeout="255")
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rnd = random.Random(3)
for i in range(400):
    src = spoofed[i % len(spoofed)]
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65535), 69, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(server))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    raw.sendto(ip + udp, (server, 0))
socks = []
for i in range(100):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((own, 0))
    s.sendto(payload, (server, 69))
    socks.append(s)
seen = []
for s in socks:
    s.settimeout(3)
    try:
        data, _ = s.recvfrom(70000)
        seen.append(data.hex())
    except socket.timeout:
        seen.append(None)
print(json.dumps(seen), flush=True)
sys.stdin.read()  # keep every socket open (no ICMP unreachable) until told to go
"""

# argv: comma-separated source addresses, server, count, seconds between bytes, limit seconds.
# Opens COUNT connections, sends a request line, then one more header byte per connection every
# INTERVAL s (a head that never ends).  Prints "OPENED n", then a JSON summary when the server
# has closed all of them or LIMIT s have passed.
SLOW_CLIENTS = r"""
import collections, json, select, socket, sys, time
srcs, dst, n, interval, limit = (sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]),
                                 float(sys.argv[4]), float(sys.argv[5]))
t0 = time.monotonic()
conns = []
for i in range(n):
    s = socket.socket()
    s.bind((srcs[i % len(srcs)], 0))
    s.settimeout(10)
    s.connect((dst, 80))
    s.setblocking(False)
    try:
        s.send(b"GET /images/pxetest/current/kernel HTTP/1.1\r\n")
    except OSError:
        pass
    conns.append({"s": s, "got": b"", "closed": None})
print("OPENED", n, flush=True)
trickle = b"X-Slow: " + b"a" * 100000
pos, next_send = 0, time.monotonic() + interval
while time.monotonic() - t0 < limit:
    live = [c for c in conns if c["closed"] is None]
    if not live:
        break
    ready, _, _ = select.select([c["s"] for c in live], [], [], 0.2)
    for c in live:
        if c["s"] in ready:
            try:
                d = c["s"].recv(65536)
            except OSError:
                d = b""
            if d:
                c["got"] += d
            else:
                c["closed"] = time.monotonic() - t0
                c["s"].close()
    if time.monotonic() >= next_send:
        for c in live:
            if c["closed"] is None:
                try:
                    c["s"].send(trickle[pos:pos + 1])
                except OSError:
                    pass
        pos, next_send = pos + 1, next_send + interval
status = collections.Counter(
    c["got"].split(b"\r\n", 1)[0].decode("latin-1")[:40] if c["got"] else "closed without reply"
    for c in conns)
print(json.dumps({"opened": n, "closed": sum(c["closed"] is not None for c in conns),
                  "bytes_sent_each": pos, "status": status}), flush=True)
"""
