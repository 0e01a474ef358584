"""The chunk service's paho client writes a large PUBLISH as header + payload:
the queued packet must slice like paho's joined bytearray does."""

from __future__ import annotations

import socket

import pytest

from algorithm_store._mqtt import _Gather


@pytest.mark.parametrize("pos", [0, 1, 9, 10, 11, 500, 1009, 1010])
def test_gather_slices_like_the_joined_packet(pos: int) -> None:
    head, payload = bytes(range(10)), bytes(range(256)) * 4
    g = _Gather(memoryview(head), memoryview(payload[:1000]))
    joined = head + payload[:1000]
    assert len(g) == len(joined) == 1010
    rest = g[pos:]
    assert len(rest) == len(joined) - pos
    assert bytes(rest.head) + bytes(rest.payload) == joined[pos:]


def test_gather_goes_out_whole_through_partial_sends() -> None:
    """What paho does: send, advance by what was written, slice, send again."""
    head, payload = b"H" * 7, bytes(range(256)) * 8192  # 2 MiB: many partial sends
    a, b = socket.socketpair()
    a.setblocking(False)
    packet, pos, got = _Gather(memoryview(head), memoryview(payload)), 0, bytearray()
    try:
        while pos < len(packet):
            try:
                pos += a.sendmsg([packet[pos:].head, packet[pos:].payload])
            except BlockingIOError:
                pass
            got += b.recv(1 << 20)
        while len(got) < len(head) + len(payload):
            got += b.recv(1 << 20)
    finally:
        a.close()
        b.close()
    assert bytes(got) == head + payload
