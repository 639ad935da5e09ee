"""Cold-start hold: packets to a sleeping service wait in an NFQUEUE until this node can deliver.

The raw-table rule (docs/cold-start.md) queues exactly what the hold match program matches
(holdmatch.py) to queue `queue_num`; this module owns that queue's binding and gives each
packet its verdict:
  - on arrival: accepted at once if its service was released meanwhile (the map write that
    stops the match can trail the release), dropped if a bound is reached, else held;
  - release(service): every held packet of the service is accepted, in arrival order. The
    caller releases only once the node can deliver (ready endpoints and kube-proxy's rules
    programmed): an accepted packet continues to conntrack and kube-proxy's DNAT, and released
    too early it would meet kube-proxy's "no endpoints" REJECT;
  - expire(): what waited longer than `timeout` is dropped, as drop mode would have at once.

Invariants:
  - Bounded: at most `per_service` packets per service and `total` in all are held; the
    kernel queue is given the same maxlen, and without the fail-open flag (NFQUEUE's
    --queue-bypass / NFQA_CFG_F_FAIL_OPEN) a full or unbound queue drops, never accepts.
  - Every packet gets exactly one verdict; close() drops what is still held. If the process
    dies instead, the kernel drops the queue's packets when its netlink socket goes away.
  - Only this module imports fnfqueue (an import-linter contract); its errors are wrapped
    into errors.DataPlaneError.

Threads: fnfqueue reads the netlink socket on its own thread and hands packets to an iterator;
this module drains that iterator on one named thread (`hold.read`). Verdicts may be given from
any thread (a netlink send); the held lists are guarded by one lock.
Cost: O(1) per packet on arrival, O(held) per expire() and per release.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import fnfqueue

from gossip_agent import errors

log = logging.getLogger("gossip_agent.hold")

# Enough of the packet to read the IPv4 header (20 bytes without options) and the ports: the
# verdict needs only the destination address, and copying less keeps the queue's memory small.
COPY_BYTES = 64
_DADDR = struct.Struct("!I")  # iphdr.daddr at offset 16, read as SERVICE_LIST's host-order key
_DADDR_OFFSET = 16


class Packet(Protocol):
    """One queued packet (fnfqueue.Packet has this shape): a verdict is a method call."""

    @property
    def payload(self) -> bytes: ...

    def accept(self) -> None: ...

    def drop(self) -> None: ...


class Source(Protocol):
    """The queue's packets as an iterator that ends when closed (fnfqueue.Connection)."""

    def __iter__(self) -> Iterator[Packet]: ...

    def close(self) -> None: ...


@dataclasses.dataclass(slots=True)
class HoldStats:
    """Counters since start: every packet ends in exactly one of the last four."""

    held_now: int = 0
    held: int = 0  # ever held (entered a service's list)
    released: int = 0  # accepted by release(), or on arrival after a release
    expired: int = 0  # dropped by expire() after `timeout`
    refused: int = 0  # dropped on arrival: a bound was reached, or not IPv4
    dropped_at_close: int = 0


@dataclasses.dataclass(slots=True)
class _Held:
    since: float
    packet: Packet


def service_of(payload: bytes) -> int | None:
    """The destination IPv4 of a queued packet as SERVICE_LIST's key, None if not IPv4."""
    if len(payload) < _DADDR_OFFSET + _DADDR.size or payload[0] >> 4 != 4:
        return None
    return int(_DADDR.unpack_from(payload, _DADDR_OFFSET)[0])


class Holder:
    """Holds queued packets per service until release(), expire() or close()."""

    def __init__(self, *, source: Source, per_service: int, total: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._per_service = per_service
        self._total = total
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[int, collections.deque[_Held]] = {}
        self._open: set[int] = set()  # released services: their packets pass on arrival
        self.stats = HoldStats()
        self.hold_times: list[float] = []  # seconds each released packet waited (metrics later)
        self._thread = threading.Thread(target=self._read, name="hold.read", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def held(self, service: int) -> int:
        with self._lock:
            return len(self._held.get(service, ()))

    def release(self, service: int) -> int:
        """Accepts every held packet of `service`, and those arriving until sleep(service)."""
        with self._lock:
            self._open.add(service)
            batch = self._held.pop(service, collections.deque())
            self.stats.held_now -= len(batch)
            self.stats.released += len(batch)
            now = self._clock()
            self.hold_times.extend(now - entry.since for entry in batch)
        for entry in batch:
            entry.packet.accept()
        return len(batch)

    def sleep(self, service: int) -> None:
        """The service is at 0 again: its packets are held from now on."""
        with self._lock:
            self._open.discard(service)

    def expire(self) -> int:
        """Drops every packet held longer than `timeout`; returns how many."""
        with self._lock:
            stale = self._take_stale(self._clock() - self._timeout)
        for entry in stale:
            entry.packet.drop()
        return len(stale)

    def close(self) -> None:
        """Stops reading and drops what is held (never accepts it: docs/cold-start.md)."""
        self._source.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._lock:
            rest = [entry for queue in self._held.values() for entry in queue]
            self._held.clear()
            self.stats.held_now = 0
            self.stats.dropped_at_close += len(rest)
        for entry in rest:
            entry.packet.drop()

    def _take_stale(self, cutoff: float) -> list[_Held]:
        stale: list[_Held] = []
        for service in list(self._held):
            queue = self._held[service]
            while queue and queue[0].since <= cutoff:
                stale.append(queue.popleft())
            if not queue:
                del self._held[service]
        self.stats.held_now -= len(stale)
        self.stats.expired += len(stale)
        return stale

    def _read(self) -> None:
        try:
            for packet in self._source:
                self._arrive(packet)
                self.expire()
        except Exception:  # the thread must say why it ended; close() still drops the rest
            log.exception("hold: reading the queue failed; held packets stay until close()")

    def _arrive(self, packet: Packet) -> None:
        service = service_of(packet.payload)
        verdict = self._place(service, packet)
        if verdict == "accept":
            packet.accept()
        elif verdict == "drop":
            packet.drop()

    def _place(self, service: int | None, packet: Packet) -> str:
        with self._lock:
            if service is not None and service in self._open:
                self.stats.released += 1
                return "accept"
            queue = self._held.get(service) if service is not None else None
            full = self.stats.held_now >= self._total or (
                queue is not None and len(queue) >= self._per_service)
            if service is None or full:
                self.stats.refused += 1
                return "drop"
            self._held.setdefault(service, collections.deque()).append(
                _Held(since=self._clock(), packet=packet))
            self.stats.held_now += 1
            self.stats.held += 1
            return "held"


def open_queue(queue_num: int, *, maxlen: int) -> Source:
    """Binds NFQUEUE `queue_num` in the caller's network namespace: copy COPY_BYTES of each
    packet, kernel queue limited to `maxlen`, and explicitly no fail-open flag."""
    try:
        connection = fnfqueue.Connection()
    except OSError as exc:
        raise errors.DataPlaneError(f"cannot open an nfnetlink queue socket: {exc}") from exc
    try:
        queue = connection.bind(queue_num)
        queue.set_mode(COPY_BYTES, fnfqueue.COPY_PACKET)
        queue.set_maxlen(maxlen)
        queue.fail_open = False
    except OSError as exc:
        connection.close()
        raise errors.DataPlaneError(
            f"cannot bind NFQUEUE {queue_num} (is another process bound to it?): {exc}"
        ) from exc
    return _Connection(connection)


class _Connection:
    """fnfqueue.Connection as a Source; ENOBUFS (the socket overran) is logged, not fatal."""

    def __init__(self, connection: fnfqueue.Connection) -> None:
        self._connection = connection

    def __iter__(self) -> Iterator[Packet]:
        while True:
            try:
                yield from self._connection
                return
            except fnfqueue.BufferOverflowException:
                log.warning("hold: the queue socket overran (ENOBUFS); the kernel dropped some")
                self._connection.reset()

    def close(self) -> None:
        self._connection.close()
