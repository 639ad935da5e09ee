"""The Kubernetes backends' figures: `tools/bench.py kube [--failover] [--load]`.

Both run agent processes on loopback (lab.localcluster, COORDINATION_BACKEND=configmap)
against the fake API server (lab.fakekube) over real HTTP, reached through a
kubeconfig file as a cluster would be.

- failover: --kills times (default 10), SIGKILL the leader of --failover-nodes agents (default
  3) and time until a survivor says it leads (GetLeader.is_self) at a higher term and has
  published (its GetState is at that term); the killed agent is restarted before the next
  kill. With LEASE_DURATION=D the expected figure is about D (expiry is counted from when each
  follower heard the leader's last renewal through gossip) plus up to one retry interval.
- load: for N in --load-nodes (default 8, 32), once a leader has published, count the API
  requests the whole cluster makes over --window seconds (default 30) at rest, and who made
  them (the user agent names the node). Only the leader should appear: its renewals, one per
  LEASE_RENEW_INTERVAL.

Lease timers default to the cluster profile (LEASE_DURATION=15, LEASE_RENEW_DEADLINE=10,
LEASE_RETRY_INTERVAL=0.5, LEASE_RENEW_INTERVAL=1); the rest is PROFILE=local.
Prints a table, or with --json one JSON line {"failover": {...}, "load": [...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc.aio

from gossip_agent.v1 import gossip_pb2 as pb
from lab import fakekube, localcluster


async def leading(address: str) -> int:
    """The term `address` leads and has published at, or 0."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        leader = await localcluster.call(address, "GetLeader", pb.GetLeaderRequest(), 0.5)
        assert isinstance(leader, pb.GetLeaderResponse)
        if leader.is_self:
            state = await localcluster.call(address, "GetState", pb.GetStateRequest(), 0.5)
            assert isinstance(state, pb.GetStateResponse)
            if state.version.term == leader.term:
                return int(leader.term)
    return 0


async def wait_leader(addresses: list[str], *, above: int, timeout: float) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        terms = await asyncio.gather(*(leading(a) for a in addresses))
        for address, term in zip(addresses, terms, strict=True):
            if term > above:
                return address, term
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no leader above term {above} after {timeout:g}s")


async def wait_serving(agent: localcluster.AgentProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await localcluster.call(agent.address, "GetState", pb.GetStateRequest(), 0.5)
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{agent.node} did not serve within {timeout:g}s")


def cluster_env(kubeconfig: str, timers: dict[str, str]) -> dict[str, str]:
    return {"COORDINATION_BACKEND": "configmap", "KUBECONFIG": kubeconfig,
            "COORDINATION_NAMESPACE": "default", "DATAPLANE": "memory",
            "LOG_LEVEL": "warning", **timers}


async def failover(cluster: localcluster.LocalCluster, kills: int,
                   timeout: float) -> list[float]:
    for agent in cluster.agents:
        await wait_serving(agent, 120)
    address, term = await wait_leader(cluster.addresses, above=0, timeout=timeout)
    times = []
    for kill in range(kills):
        victim = next(a for a in cluster.agents if a.address == address)
        survivors = [a.address for a in cluster.agents if a is not victim]
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait(5)
        address, term = await wait_leader(survivors, above=term, timeout=timeout)
        times.append(time.monotonic() - killed)
        print(f"kill {kill + 1}: {times[-1]:.2f}s, new term {term}", file=sys.stderr)
        victim.start()  # back to N agents: a new holder identity, a follower
        await wait_serving(victim, 120)
    return times


@contextlib.contextmanager
def kube_cluster(nodes: int, timers: dict[str, str]
                 ) -> Iterator[tuple[fakekube.FakeKube, localcluster.LocalCluster]]:
    """A fake API server and `nodes` agents on the configmap backend, all stopped after."""
    with fakekube.FakeKube() as kube, tempfile.TemporaryDirectory(prefix="ga-kube-") as tmp:
        kubeconfig = kube.write_kubeconfig(f"{tmp}/kubeconfig")
        cluster = localcluster.LocalCluster(nodes, root=f"{tmp}/root", log_dir=f"{tmp}/logs",
                                            extra_env=cluster_env(kubeconfig, timers))
        cluster.start()
        try:
            yield kube, cluster
        finally:
            cluster.stop()


def run_failover(nodes: int, kills: int, timers: dict[str, str]) -> dict[str, Any]:
    with kube_cluster(nodes, timers) as (_, cluster):
        timeout = 3 * (float(timers["LEASE_DURATION"]) + 10)
        times = asyncio.run(failover(cluster, kills, timeout))
    return {"nodes": nodes, "kills": kills, "lease_duration_s": float(timers["LEASE_DURATION"]),
            "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
            "min_s": round(min(times), 2)}


async def settle(cluster: localcluster.LocalCluster) -> None:
    for agent in cluster.agents:
        await wait_serving(agent, 300)
    await wait_leader(cluster.addresses, above=0, timeout=120)


def run_load(nodes: int, window: float, timers: dict[str, str]) -> dict[str, Any]:
    with kube_cluster(nodes, timers) as (kube, cluster):
        asyncio.run(settle(cluster))
        # Beats need a few gossip rounds to reach everyone after the election.
        time.sleep(float(timers["LEASE_DURATION"]))
        since = time.monotonic()
        time.sleep(window)
        seen = [r for r in list(kube.requests) if since <= r.at < since + window]
    by_agent = collections.Counter(r.user_agent.removeprefix("gossip-agent/") for r in seen)
    by_verb = collections.Counter(f"{r.verb} {r.resource}" for r in seen)
    return {"nodes": nodes, "window_s": window,
            "requests_per_s": round(len(seen) / window, 2),
            "agents_calling": len(by_agent), "by_agent": dict(by_agent),
            "by_verb": dict(by_verb)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py kube", description=__doc__.split("\n\n")[0])
    parser.add_argument("--failover", action="store_true", help="only the failover figure")
    parser.add_argument("--load", action="store_true", help="only the API load figure")
    parser.add_argument("--failover-nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--load-nodes", type=int, action="append",
                        help="cluster size for the load figure; repeat (default 8, 32)")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--lease-duration", default="15")
    parser.add_argument("--renew-deadline", default="10")
    parser.add_argument("--retry-interval", default="0.5")
    parser.add_argument("--renew-interval", default="1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    timers = {"LEASE_DURATION": args.lease_duration, "LEASE_RENEW_DEADLINE": args.renew_deadline,
              "LEASE_RETRY_INTERVAL": args.retry_interval,
              "LEASE_RENEW_INTERVAL": args.renew_interval}
    both = not (args.failover or args.load)
    results: dict[str, Any] = {}
    if args.failover or both:
        results["failover"] = run_failover(args.failover_nodes, args.kills, timers)
    if args.load or both:
        results["load"] = [run_load(n, args.window, timers) for n in args.load_nodes or [8, 32]]
    if args.json:
        print(json.dumps(results))
        return 0
    if "failover" in results:
        f = results["failover"]
        print(f"configmap failover, {f['nodes']} agents, {f['kills']} leader kills, "
              f"LEASE_DURATION={f['lease_duration_s']:g}s: median {f['median_s']}s, "
              f"max {f['max_s']}s, min {f['min_s']}s")
    for load in results.get("load", []):
        print(f"API requests at rest, N={load['nodes']}: {load['requests_per_s']}/s over "
              f"{load['window_s']:g}s from {load['agents_calling']} agent(s) "
              f"{load['by_agent']} {load['by_verb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
