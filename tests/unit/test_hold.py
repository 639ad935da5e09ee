"""dataplane.hold's Holder with an in-process queue: verdicts, bounds, expiry, close.

The kernel side (NFQUEUE, the xt_bpf match, kube-proxy's rules) is exercised end to end in
tests/e2e/test_cold_start_hold.py; here every packet's verdict is checked one by one."""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Iterator

import pytest

from gossip_agent.dataplane import hold

pytestmark = pytest.mark.unit

SERVICE = "10.96.0.10"
OTHER = "10.96.0.11"


def key(address: str) -> int:
    return int(struct.unpack("!I", socket.inet_aton(address))[0])


class FakePacket:
    def __init__(self, destination: str) -> None:
        header = bytearray(20)
        header[0] = 0x45
        header[16:20] = socket.inet_aton(destination)
        self.payload = bytes(header)
        self.verdicts: list[str] = []

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


class FakeQueue:
    """Packets put() are read by the holder's thread; close() ends the iteration."""

    def __init__(self) -> None:
        self._packets: queue.Queue[FakePacket | None] = queue.Queue()

    def put(self, packet: FakePacket) -> FakePacket:
        self._packets.put(packet)
        return packet

    def __iter__(self) -> Iterator[hold.Packet]:
        while (packet := self._packets.get()) is not None:
            yield packet

    def close(self) -> None:
        self._packets.put(None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(*, per_service: int = 4, total: int = 8, timeout: float = 30.0
         ) -> tuple[hold.Holder, FakeQueue, Clock]:
    source, clock = FakeQueue(), Clock()
    holder = hold.Holder(source=source, per_service=per_service, total=total, timeout=timeout,
                         clock=clock)
    return holder, source, clock


def feed(holder: hold.Holder, packets: list[FakePacket]) -> None:
    """Hands packets to the holder as its reader thread would, synchronously."""
    for packet in packets:
        holder._arrive(packet)


def test_packets_are_held_until_their_service_is_released() -> None:
    holder, _, clock = make()
    first, second, other = FakePacket(SERVICE), FakePacket(SERVICE), FakePacket(OTHER)
    feed(holder, [first, second, other])
    assert (first.verdicts, holder.held(key(SERVICE)), holder.held(key(OTHER))) == ([], 2, 1)
    clock.now += 0.3
    assert holder.release(key(SERVICE)) == 2
    assert first.verdicts == second.verdicts == ["accept"] and other.verdicts == []
    assert holder.hold_times == [pytest.approx(0.3), pytest.approx(0.3)]
    assert (holder.stats.held_now, holder.stats.released) == (1, 2)


def test_a_packet_arriving_after_release_passes_until_the_service_sleeps_again() -> None:
    holder, _, _ = make()
    holder.release(key(SERVICE))
    late = FakePacket(SERVICE)
    feed(holder, [late])
    assert late.verdicts == ["accept"]
    holder.sleep(key(SERVICE))
    again = FakePacket(SERVICE)
    feed(holder, [again])
    assert again.verdicts == [] and holder.held(key(SERVICE)) == 1


def test_bounds_drop_what_exceeds_them_per_service_and_in_total() -> None:
    holder, _, _ = make(per_service=2, total=3)
    packets = [FakePacket(SERVICE) for _ in range(3)] + [FakePacket(OTHER) for _ in range(2)]
    feed(holder, packets)
    assert [p.verdicts for p in packets] == [[], [], ["drop"], [], ["drop"]]
    assert (holder.stats.held_now, holder.stats.refused) == (3, 2)


def test_what_waits_longer_than_the_timeout_is_dropped() -> None:
    holder, _, clock = make(timeout=30.0)
    old = FakePacket(SERVICE)
    feed(holder, [old])
    clock.now += 20.0
    young = FakePacket(SERVICE)
    feed(holder, [young])
    clock.now += 10.0
    assert holder.expire() == 1
    assert (old.verdicts, young.verdicts) == (["drop"], [])
    assert (holder.stats.expired, holder.stats.held_now) == (1, 1)


def test_a_packet_that_is_not_ipv4_is_dropped_not_held() -> None:
    holder, _, _ = make()
    odd = FakePacket(SERVICE)
    odd.payload = b"\x60" + odd.payload[1:]  # an IPv6 version nibble
    feed(holder, [odd])
    assert odd.verdicts == ["drop"] and holder.stats.refused == 1


def test_close_drops_everything_held_and_accepts_nothing() -> None:
    holder, source, _ = make()
    holder.start()
    packets = [source.put(FakePacket(SERVICE)), source.put(FakePacket(OTHER))]
    source.close()  # the reader drains both, then ends
    holder.close()
    assert [p.verdicts for p in packets] == [["drop"], ["drop"]]
    assert (holder.stats.dropped_at_close, holder.stats.held_now) == (2, 0)
