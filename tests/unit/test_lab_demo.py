"""The lab demo's ping measurement: replies' timestamps from real ``ping -D`` output shapes."""

from __future__ import annotations

import pytest

from homecloud.lab.demo import ping_gaps
from homecloud.lab.errors import LabError

OUT = """PING 203.0.113.10 (203.0.113.10) 56(84) bytes of data.
[1764842400.100000] 64 bytes from 203.0.113.10: icmp_seq=1 ttl=64 time=0.9 ms
[1764842400.200000] 64 bytes from 203.0.113.10: icmp_seq=2 ttl=64 time=0.8 ms
[1764842401.950000] 64 bytes from 203.0.113.10: icmp_seq=19 ttl=64 time=1.2 ms
[1764842402.050000] 64 bytes from 203.0.113.10: icmp_seq=20 ttl=64 time=1.0 ms

--- 203.0.113.10 ping statistics ---
20 packets transmitted, 4 received, 80% packet loss, time 1950ms
"""


def test_longest_gap_and_lost() -> None:
    s = ping_gaps(OUT)
    assert (s.sent, s.received, s.lost) == (20, 4, 16)
    assert s.longest_gap == pytest.approx(1.75)
    assert s.gap_end == pytest.approx(1764842401.95)  # the reply that ended the gap
    assert "16 lost" in s.line()


def test_no_reply_means_no_gap() -> None:
    s = ping_gaps("PING 203.0.113.10\n\n--- 203.0.113.10 ping statistics ---\n"
                  "30 packets transmitted, 0 received, 100% packet loss, time 2900ms\n")
    assert (s.lost, s.longest_gap, s.gap_end) == (30, 0.0, 0.0)


def test_no_summary_is_an_error_with_the_output() -> None:
    with pytest.raises(LabError, match="no summary"):
        ping_gaps("PING 203.0.113.10 (203.0.113.10)\n")


def test_missing_ping_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from homecloud.lab import demo
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LabError, match=r"ping is not installed.*iputils-ping"):
        demo.ping_binary()
