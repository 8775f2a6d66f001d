"""A record writer for "no acknowledged write is lost" tests (issue 12), run on a lab node.

Standard library only: the tests send this file over SSH (``python3 - write DEV SECONDS``)
to an hnode's dom0 or an instance, where nothing of homecloud is installed.

``write DEV SECONDS``: appends numbered 4 KiB records to the block device (or file) DEV,
record ``i`` at byte ``i * 4096``, each carrying its number, the time it was written and a
sha256 of itself.  DEV is opened with O_DIRECT (no page cache between the record and the
device) and ``fsync`` follows every record.  Once fsync returned it prints ``ack I`` (the
record is acknowledged: it must survive anything the storage does).  A failed write or
fsync prints ``err I ERRNO TEXT`` and the writer goes on with the next record (a test sees
every error, not only the first).  A write+fsync longer than one second prints
``stall I SECONDS``.  At the end (SECONDS elapsed, or the device full) one line
``done {json}``: records, errors, the worst stall and where.

``check DEV N``: reads records 0..N-1 back (O_DIRECT) and prints ``done {json}`` with how
many are intact and the numbers of those that are not (torn, another record's, zeros).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import sys
import time

REC = 4096
MAGIC = b"HCREC1 "
SUM = 32                      # sha256 at the end of the record


def record(i: int) -> bytes:
    head = MAGIC + f"{i} {time.time():.6f} ".encode()
    body = head + bytes((i * 7 + k) & 0xFF for k in range(REC - SUM - len(head)))
    return body + hashlib.sha256(body).digest()


def intact(i: int, data: bytes) -> bool:
    body, digest = data[:REC - SUM], data[REC - SUM:]
    if hashlib.sha256(body).digest() != digest or not body.startswith(MAGIC):
        return False
    return body[len(MAGIC):].split(b" ", 1)[0] == str(i).encode()


FILE_LIMIT = 1 << 18          # records in a regular file: 1 GiB


def write(dev: str, seconds: float) -> int:
    """DEV: a block device, or a file (made if missing; inside an instance, on its root
    filesystem: then fsync also commits the filesystem's journal)."""
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT | os.O_CREAT, 0o600)
    st = os.fstat(fd)
    limit = os.lseek(fd, 0, os.SEEK_END) // REC if stat.S_ISBLK(st.st_mode) else FILE_LIMIT
    buf = mmap.mmap(-1, REC)          # page-aligned, as O_DIRECT needs
    t0 = time.monotonic()
    i = errors = 0
    worst = (0.0, -1)
    took_all: list[float] = []
    while time.monotonic() - t0 < seconds and i < limit:
        buf.seek(0)
        buf.write(record(i))
        t = time.monotonic()
        try:
            if os.pwrite(fd, buf, i * REC) != REC:
                raise OSError(0, "short write")
            os.fsync(fd)
        except OSError as exc:
            errors += 1
            print(f"err {i} {exc.errno} {exc.strerror}", flush=True)
        else:
            print(f"ack {i}", flush=True)
        took = time.monotonic() - t
        took_all.append(took)
        if took > 1.0:
            print(f"stall {i} {took:.2f}", flush=True)
        if took > worst[0]:
            worst = (took, i)
        i += 1
    os.close(fd)
    took_all.sort()
    pick = (lambda q: round(took_all[min(len(took_all) - 1, int(q * len(took_all)))] * 1000, 2)
            ) if took_all else (lambda q: 0.0)
    print("done " + json.dumps({"records": i, "errors": errors,
                                "worst_stall_s": round(worst[0], 3), "worst_at": worst[1],
                                "seconds": round(time.monotonic() - t0, 1),
                                "median_ms": pick(0.5), "p99_ms": pick(0.99)}), flush=True)
    return 0


def check(dev: str, n: int) -> int:
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, REC)
    bad: list[int] = []
    for i in range(n):
        got = os.preadv(fd, [buf], i * REC)
        if got != REC or not intact(i, bytes(buf)):
            bad.append(i)
    os.close(fd)
    print("done " + json.dumps({"checked": n, "intact": n - len(bad), "bad": bad[:100],
                                "bad_count": len(bad)}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "write":
        return write(argv[1], float(argv[2]))
    if len(argv) == 3 and argv[0] == "check":
        return check(argv[1], int(argv[2]))
    print("usage: recwriter.py write DEV SECONDS | check DEV N", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
