"""Dissemination at scale, simulated: N real agents (engines, leadership, anti-entropy, memory
maps and lease) in one process, over the in-memory network, on virtual time (lab/vtime.py).

What is modelled, and what is real:
- real: every agent's code path from the leader's write to its map write (serialize, parse,
  decide, expand, hash, apply), acknowledgements, anti-entropy, elections, the term proof;
- modelled (gossip/memory.py Costs): each agent is one CPU that messages queue for. Sending one
  costs its sender --send-ms, receiving and handling one costs its receiver --receive-ms, and
  a hop takes --latency-ms. The defaults come from this machine: tools/bench.py at N = 32 on
  2026-12-07 measured 0.08 ms of leader CPU per peer per change and 0.31 ms per follower per
  change (pushes on the push port); 0.2 ms is a same-zone datacenter hop.

The scenario: the leader's table filled to --entries, then --dead of the agents crash, then
--changes writes, one every --gap seconds, with --loss of all messages lost; half-way the
leader crashes (--no-failover to skip) and the changes go on with its successor. Timers are the
DaemonSet's (GOSSIP_INTERVAL 1 s, LEASE_RENEW 1 s, LEASE_RETRY 0.5 s); --campaigners agents
campaign (every agent does in a cluster; the others would only retry a taken lease).

Prints (--json: one JSON line) the keys of issue 18: nodes, p50_ms, p99_ms, max_ms (a change's
latency: its version's adoption by the leader to the adoption of it, or of a newer one, by the
last live agent), leader_cpu_ms_per_change (modelled), max_sends_per_agent_per_change,
max_connections_per_agent (distinct peers an agent sent to), leader_reports_per_interval (null:
traffic reports are not simulated yet), and the virtual and wall seconds the run took.
Today's dissemination is a star: the leader sends every change to every peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from typing import Any

from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import memory as memnet
from lab import simcluster, vtime

DAEMONSET_TIMING = leader_mod.Timing(
    retry_interval=0.5, renew_interval=1.0, coalesce_window=0.0, write_ack_timeout=2.0)
FIRST_IP = 0x0A600000


class Adoptions:
    """When each agent first held each version (virtual seconds), as the engines report."""

    def __init__(self) -> None:
        self.first: dict[tuple[int, int], dict[str, float]] = {}

    def __call__(self, agent: simcluster.SimAgent) -> None:
        version = agent.engine.held.version
        now = asyncio.get_running_loop().time()
        self.first.setdefault((version.term, version.seq), {}).setdefault(agent.address, now)

    def held_at(self, address: str, version: tuple[int, int]) -> float | None:
        """When `address` first held `version` or a newer one."""
        times = [at[address] for v, at in self.first.items() if v >= version and address in at]
        return min(times) if times else None


async def until(what: str, check: Any, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise RuntimeError(f"not within {timeout:g} virtual seconds: {what}")
        await asyncio.sleep(0.01)


async def scenario(args: argparse.Namespace) -> dict[str, Any]:
    adoptions = Adoptions()
    costs = memnet.Costs(send=args.send_ms / 1000, receive=args.receive_ms / 1000,
                         latency=args.latency_ms / 1000, cores=args.cores)
    cluster = simcluster.SimCluster(
        args.nodes, seed=args.seed, loss=args.loss, costs=costs, timing=DAEMONSET_TIMING,
        gossip_interval=1.0, on_adopted=adoptions, max_entries=max(1024, args.entries))
    cluster.start(campaigners=args.campaigners)
    try:
        return await _run(cluster, adoptions, args)
    finally:
        await cluster.stop()


async def _run(cluster: simcluster.SimCluster, adoptions: Adoptions,
               args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Bounds in virtual seconds: however slow the real code, the model's time decides.
    await until("one leader in office", lambda: len(cluster.leaders()) == 1 and
                cluster.leaders()[0].engine.held.version.term > 0, timeout=120)
    leader = cluster.leaders()[0]
    table = {FIRST_IP + i: (1, f"sim/svc-{i}") for i in range(args.entries)}
    await leader.leadership.write(updates=table, deletes=())
    filled = leader.engine.held.version
    await until("every agent holds the full table",
                lambda: all(a.engine.held.version >= filled for a in cluster.agents), timeout=60)
    dead = _crash(cluster, leader, share=args.dead)
    network = cluster.network
    cpu_before = dict(network.cpu)
    written: list[tuple[tuple[int, int], str]] = []  # (version, its leader's address)
    leaders = [leader]
    pending: set[asyncio.Task[Any]] = set()
    spans: list[tuple[dict[str, int], int]] = []  # sends at each leader's first change, count
    span_start, span_changes = dict(network.sends), 0
    for change in range(args.changes):
        if change == args.changes // 2 and args.failover:
            spans.append((_sent_since(network.sends, span_start), span_changes))
            leader = await _fail_over(cluster, leader, dead)
            leaders.append(leader)
            span_start, span_changes = dict(network.sends), 0
        span_changes += 1
        before = leader.engine.held.version
        # Not awaited: the write's acknowledgement waits on a quorum, which is not what is
        # timed; its version is the one the leader's own map takes next.
        task = asyncio.create_task(leader.leadership.write(
            updates={FIRST_IP + change % args.entries: (2 + change, "")}, deletes=()))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await until("the leader's own adoption",
                    lambda b=before, w=leader: w.engine.held.version > b, timeout=10)
        version = leader.engine.held.version
        written.append(((version.term, version.seq), leader.address))
        await asyncio.sleep(args.gap)
    spans.append((_sent_since(network.sends, span_start), span_changes))
    await asyncio.sleep(5.0)  # anti-entropy rounds for whatever a loss left behind
    await asyncio.gather(*pending, return_exceptions=True)
    live = [a for a in cluster.agents if a.address not in dead]
    latencies = []
    for version, writer in written:
        start = adoptions.held_at(writer, version)
        ends = [adoptions.held_at(a.address, version) for a in live]
        if start is None or any(end is None for end in ends):
            raise RuntimeError(f"version {version} never reached every live agent")
        latencies.append((max(e for e in ends if e is not None) - start) * 1000)
    changes = max(1, args.changes)
    # Per leader's span: each leader sends every change of its own term (a star, today).
    most_sends = max((count / max(1, led) for sent, led in spans for count in sent.values()),
                     default=0)
    leader_cpu = sum(network.cpu.get(a.address, 0.0) - cpu_before.get(a.address, 0.0)
                     for a in leaders)
    return {
        "nodes": args.nodes,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "leader_cpu_ms_per_change": round(leader_cpu * 1000 / changes, 2),
        "max_sends_per_agent_per_change": math.ceil(most_sends),
        "max_connections_per_agent": max((len(p) for p in network.peers_of.values()), default=0),
        "leader_reports_per_interval": None,
        "changes": args.changes, "dead": len(dead), "loss": args.loss,
        "failover": args.failover, "virtual_s": round(loop.time(), 1),
    }


def _sent_since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Messages each agent sent since `before` (the network's running counts)."""
    return {address: count - before.get(address, 0) for address, count in now.items()}


def _crash(cluster: simcluster.SimCluster, leader: simcluster.SimAgent, *,
           share: float) -> set[str]:
    count = round(share * len(cluster.agents))
    others = [a for a in cluster.agents if a is not leader]
    gone = {a.address for a in others[len(others) - count:]} if count else set()
    for address in gone:
        cluster.network.take_down(address)
    return gone


async def _fail_over(cluster: simcluster.SimCluster, leader: simcluster.SimAgent,
                     dead: set[str]) -> simcluster.SimAgent:
    """The leader crashes (its lease revoked, as a TTL would expire); the successor leads."""
    cluster.network.take_down(leader.address)
    dead.add(leader.address)
    await leader.stop()
    cluster.lease_store.revoke()
    await until("a new leader", lambda: any(
        a.leadership.leading and a is not leader for a in cluster.agents), timeout=60)
    return next(a for a in cluster.agents if a.leadership.leading and a is not leader)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result = vtime.run(scenario(args))
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def main_result(argv: list[str]) -> dict[str, Any]:
    """The figures main() prints, for tests."""
    return run(parser().parse_args(argv))


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--nodes", type=int, default=1000)
    options.add_argument("--changes", type=int, default=20)
    options.add_argument("--gap", type=float, default=0.5, help="virtual seconds between writes")
    options.add_argument("--entries", type=int, default=1024)
    options.add_argument("--loss", type=float, default=0.01)
    options.add_argument("--dead", type=float, default=0.01)
    options.add_argument("--no-failover", dest="failover", action="store_false")
    options.add_argument("--campaigners", type=int, default=3)
    options.add_argument("--send-ms", type=float, default=0.08)
    options.add_argument("--receive-ms", type=float, default=0.31)
    options.add_argument("--latency-ms", type=float, default=0.2)
    options.add_argument("--cores", type=int, default=0,
                        help="0: a CPU per agent (a node each); k: all share k, as on this "
                        "machine (to check the model against tools/bench.py)")
    options.add_argument("--seed", type=int, default=1)
    options.add_argument("--json", action="store_true")
    return options


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
