"""Leader failover time per lease backend: SIGKILL of the leader -> every survivor holds a
snapshot of the new leader's term. Called by `tools/bench.py --failover`.

For each backend (bpffs: the flock on this host's BPF filesystem; redis: a redis-server this
tool starts on a free loopback port, without persistence), N agent processes run on loopback
(PROFILE=local timers unless --env overrides them). Each round:
  1. find the leader (it says so, and holds a snapshot of its own term) and the cluster
     converged on it;
  2. SIGKILL the leader, noting CLOCK_MONOTONIC (shared with every agent on this host);
  3. wait until every survivor's GetState version has a term above the old leader's;
  4. per survivor, the first adoption above the old term (GetHistory's applied_monotonic_ns):
     the round's failover time is the latest of these minus the kill time;
  5. restart the killed agent on its pin directory and wait until it has caught up.
Prints median and max per backend over --kills rounds (at least 10 for a figure to report).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster, localredis

BACKENDS = ("bpffs", "redis")
ROUND_TIMEOUT = 30.0  # seconds for one failover or one catch-up: a failure, far above any bound


@dataclasses.dataclass(frozen=True)
class Result:
    backend: str
    nodes: int
    kills: int
    median_ms: float
    max_ms: float
    samples_ms: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "nodes": self.nodes, "kills": self.kills,
                "median_ms": self.median_ms, "max_ms": self.max_ms}


async def converged_leader(addresses: Sequence[str]) -> tuple[str, int]:
    """(leader address, its term) once every agent holds a snapshot of that term."""
    leader, reply = await localcluster.find_leader(addresses, timeout=ROUND_TIMEOUT)
    await localcluster.wait_all(addresses, what=f"every agent at term {reply.term}",
                                timeout=ROUND_TIMEOUT,
                                check=lambda s: s.version.term >= reply.term)
    return leader, reply.term


async def first_adoption_above(address: str, term: int) -> int:
    """applied_monotonic_ns of the agent's first adoption with a term above `term`."""
    reply = await localcluster.call(address, "GetHistory", pb.GetHistoryRequest(), 5.0)
    assert isinstance(reply, pb.GetHistoryResponse)
    times = [e.applied_monotonic_ns for e in reply.events if e.version.term > term]
    if not times:
        raise RuntimeError(f"{address} has no adoption above term {term} in its history")
    return min(times)


async def one_kill(cluster: localcluster.LocalCluster) -> float:
    """One round; returns the failover time in milliseconds."""
    leader_address, old_term = await converged_leader(cluster.addresses)
    leader = next(a for a in cluster.agents if a.address == leader_address)
    survivors = [a.address for a in cluster.agents if a is not leader]
    killed_ns = time.monotonic_ns()
    leader.signal(signal.SIGKILL)
    await localcluster.wait_all(survivors, what=f"every survivor above term {old_term}",
                                timeout=ROUND_TIMEOUT,
                                check=lambda s: s.version.term > old_term)
    adopted = await asyncio.gather(*(first_adoption_above(a, old_term) for a in survivors))
    leader.wait(5.0)
    leader.start()  # same pin directory: it comes back as a follower and catches up
    return (max(adopted) - killed_ns) / 1e6


async def measure(cluster: localcluster.LocalCluster, kills: int) -> list[float]:
    await localcluster.wait_all(cluster.addresses, what="every agent to serve",
                                timeout=120, check=lambda s: True)
    samples = []
    for round_number in range(kills):
        samples.append(await one_kill(cluster))
        print(f"  kill {round_number + 1}/{kills}: {samples[-1]:.1f} ms", file=sys.stderr)
    return samples


def backend_env(backend: str, redis: localredis.RedisServer | None) -> dict[str, str]:
    if backend == "bpffs":
        return {"COORDINATION_BACKEND": "bpffs"}
    assert redis is not None
    return {"COORDINATION_BACKEND": "redis", "REDIS_URL": redis.url,
            "REDIS_KEY_PREFIX": "bench:"}


def run_backend(
    backend: str, *, nodes: int, kills: int, root: str, extra_env: Mapping[str, str]
) -> Result:
    redis = localredis.RedisServer().start() if backend == "redis" else None
    log_dir = tempfile.mkdtemp(prefix=f"gossip-failover-{backend}-")
    shutil.rmtree(root, ignore_errors=True)
    cluster = localcluster.LocalCluster(nodes, root=root, log_dir=log_dir, extra_env={
        "LOG_LEVEL": "warning", **backend_env(backend, redis), **extra_env})
    print(f"{backend}: {nodes} agents, {kills} kills (logs {log_dir})", file=sys.stderr)
    cluster.start()
    try:
        samples = asyncio.run(measure(cluster, kills))
    finally:
        cluster.stop()
        if redis is not None:
            redis.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    return Result(backend, nodes, kills, round(statistics.median(samples), 1),
                  round(max(samples), 1), tuple(round(s, 1) for s in samples))


def default_root() -> str:
    if localcluster.bpffs_mounted() and os.geteuid() == 0:
        return localcluster.BPFFS_ROOT + f"-failover-{os.getpid()}"
    return tempfile.mkdtemp(prefix="gossip-failover-")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def run(
    *, backends: Sequence[str], nodes: int, kills: int, env: Sequence[str] = ()
) -> list[Result]:
    extra = parse_env(env)
    results = []
    for backend in backends:
        if backend == "redis" and not localredis.available():
            raise SystemExit("redis-server is not installed (tools/setup_system.sh)")
        root = default_root()
        results.append(run_backend(backend, nodes=nodes, kills=kills, root=root,
                                   extra_env=extra))
    return results


def table(results: Sequence[Result]) -> str:
    lines = [f"{'backend':>8} {'nodes':>5} {'kills':>5} {'median ms':>10} {'max ms':>8}"]
    lines += [f"{r.backend:>8} {r.nodes:>5} {r.kills:>5} {r.median_ms:>10} {r.max_ms:>8}"
              for r in results]
    return "\n".join(lines)
