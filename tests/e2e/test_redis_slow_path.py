"""The redis lease over a slow, lossy path to Redis, through a delaying TCP proxy.

tc netem is not available on this kernel (`tc qdisc ... netem` answers "Specified qdisc kind
is unknown": sch_netem is neither built in nor shipped as a module), so the path is slowed by
a proxy on loopback instead, as the issue allows: every chunk in either direction is held for
a delay with jitter, and a fraction of chunks ("lost") are held for an extra 200-400 ms, what
TCP's retransmission of a lost segment costs. Order is kept per direction, as TCP keeps it.
The proxy runs in its own thread and event loop; the host's loopback itself is not shaped.

Asserted strictly: at most one node per term and no version going backwards, throughout.
Moderate delay and loss (well below the renew deadline): the lease does not move. Delay beyond
the renew deadline: the leader steps down. Healthy again: one leader at a higher term.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lab import localcluster
from lab import localredis as redisserver
from tests.e2e.test_local_cluster import (
    Clients,
    assert_never_backwards,
    leader_after_a_first_change,
    until,
    version_recorder,
)
from tests.e2e.test_redis_cluster import assert_one_leader_per_term, leader_recorder

pytestmark = pytest.mark.e2e

TTL = 2.0  # PROFILE=local's LEASE_TTL
CALM_SECONDS = 8.0  # how long the lease must stay put on a slow but working path
RETRANSMIT = (0.2, 0.4)  # seconds a "lost" chunk is held: TCP's minimum RTO and one doubling


class SlowProxy:
    """127.0.0.1:<port> -> target, delaying (and "losing") chunks; tunable while running."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.port = 0
        self._rng = random.Random(5)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slow-proxy", daemon=True)
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every connection

    def start(self) -> SlowProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the proxy did not start")
        return self

    def shape(self, *, delay: float, jitter: float = 0.0, loss: float = 0.0) -> None:
        self.delay, self.jitter, self.loss = delay, jitter, loss

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        # Close every socket first, so each connection's pipes end by themselves; then wait
        # for the transports to finish closing before the loop goes away (warnings are errors).
        writers = list(self._writers)
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        if others := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.wait(others, timeout=5)
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for stream in (writer, up_writer):
                stream.close()
                with contextlib.suppress(OSError):
                    await stream.wait_closed()
                self._writers.discard(stream)

    def _hold(self) -> float:
        held = self.delay + self._rng.uniform(0, self.jitter)
        if self._rng.random() < self.loss:
            held += self._rng.uniform(*RETRANSMIT)
        return held

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last_due = 0.0
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                last_due = max(last_due, time.monotonic() + self._hold())  # keep the order
                await asyncio.sleep(max(0.0, last_due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
        writer.close()  # EOF from one side ends the other direction too


@pytest.fixture
def slow_redis(redis_server: redisserver.RedisServer) -> Iterator[SlowProxy]:
    proxy = SlowProxy((redis_server.host, redis_server.port)).start()
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_redis_over_a_slow_lossy_path_keeps_one_leader_and_moves_it_only_when_it_must(
    slow_redis: SlowProxy, start_cluster: Callable[..., localcluster.LocalCluster],
    clients: Clients,
) -> None:
    cluster = start_cluster(3, {"COORDINATION_BACKEND": "redis",
                                "REDIS_URL": f"redis://127.0.0.1:{slow_redis.port}/0",
                                "REDIS_KEY_PREFIX": "slow:"})
    _, before, _ = await leader_after_a_first_change(cluster, clients)
    async with version_recorder(clients, cluster.agents) as versions, \
            leader_recorder(clients, cluster.agents) as leaders:
        # 1. Slow but working: 40-50 ms per direction (a round trip 1000x loopback's), 2% of
        #    chunks held as if retransmitted. Renewals take longer, all well within the 1.4 s
        #    deadline.
        slow_redis.shape(delay=0.04, jitter=0.01, loss=0.02)
        # An observation window, not a wait for an event: the recorders sample throughout.
        await asyncio.sleep(CALM_SECONDS)
        claims = {claim for _, seen in leaders.samples for claim in seen}
        assert claims == {(before.leader_node, before.term)}, (
            f"the lease moved on a slow but working path: {sorted(claims)}")

        # 2. Slower than the renew deadline: the leader must step down.
        slow_redis.shape(delay=2.5)

        async def nobody_leads() -> tuple[bool, object]:
            # GetLeader reads the record from Redis (cut off after REDIS_TIMEOUT, 0.5 s):
            # give it longer, and count only answers.
            replies = await asyncio.gather(
                *(clients.get_leader(a.address, 2.0) for a in cluster.agents))
            claims = [(r.leader_node, r.term) if r else None for r in replies]
            return all(r is not None and not r.is_self for r in replies), claims

        await until("the leader to step down on a path slower than its deadline",
                    nobody_leads, timeout=3 * TTL, running=cluster.agents)

        # 3. Healthy again: one leader, at a higher term.
        slow_redis.shape(delay=0.0)
        _, after = await localcluster.find_leader(cluster.addresses, timeout=6 * TTL)
        assert after.term > before.term
    assert_never_backwards(versions)
    assert_one_leader_per_term(leaders)
