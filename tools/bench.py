"""Full-convergence latency of gossip-agent on this machine, and what it costs in CPU.

For each cluster size N (default 8, 16, 32 agent processes on loopback, bpffs lease, pinned BPF
maps), the leader's table is first filled to 1024 entries and the cluster left to settle
(--settle-seconds); then it is left alone for a quiet period, then --changes writes (default
200), one every --gap seconds after the previous reply, each changing one service's replicas
through the leader's SetService. A change's latency runs from the leader's write
(WriteResponse.written_monotonic_ns) to the moment the LAST agent finished writing it into its
map (applied_monotonic_ns in each agent's GetHistory, read after the changes, so no watcher
stream loads the agents while they are measured). All processes share this host's
CLOCK_MONOTONIC, so the difference is exact.

CPU, from /proc/<pid>/stat (utime + stime of each agent process, tools/proccpu.py):
- at rest: each agent's CPU over the quiet period as % of one core; the leader's and the
  followers' median. The quiet period lasts --rest-seconds, or as long as the changes take at
  the least (changes x gap + the pauses before reading the histories), whichever is longer.
- per change: each agent's CPU over the whole run of changes, minus its rest rate (CPU of the
  quiet period / its length) x the run's wall time, divided by the number of changes, in ms;
  the leader's and the followers' median. CPU time comes in 10 ms ticks, so each figure is
  good to about 2 ticks / changes (0.1 ms at 200 changes). The run includes the leader's
  SetService calls and each agent's GetHistory reads (one per 100 changes). "Leader per peer"
  is the leader's figure / (N - 1): what each more agent costs it.
- steal: /proc/stat's steal over the quiet period and the changes, as % of wall x cores; a
  run with steal is one on a noisy machine, its figures are not comparable.

Prints a table per N, or with --json one JSON line: a list of objects with nodes, changes,
entries, p50_ms, p99_ms, max_ms, leader_ / follower_cpu_ms_per_change,
leader_cpu_ms_per_peer_per_change, leader_ / follower_rest_pct, quiet_s, changes_s, steal_pct.

--rest measures CPU at rest only, in either harness (--harness local: the loopback cluster,
maps only; --harness netns: network namespaces with XDP_INTERFACES set, every node's program
attached and counting): per N, the leader's, the followers' median and max over
--rest-seconds, the whole cluster in cores, the steal, and the timers in force. The harnesses
run PROFILE=local (fast timers for tests and demos); --timers cluster sets every timer to the
DaemonSet's default instead, which is what a node pays in production.

--anchors runs the etcd-watch anchor (tools/anchors.py: ../shared/anchors/anchor_bench.py
--design etcd --encoding bin, in its own virtualenv --anchor-venv) at the same N, interleaved
with ours round by round (ours, etcd, ours, etcd, ... --rounds times), and prints per N the
medians of the rounds' p50 and p99 for both, the ratios gossip-agent / etcd of those medians,
each round's own ratios and the steal of every round (--json: every round's full figures).
Each anchor run makes as many puts as --changes, one every --gap seconds.

--mtls measures every N twice per run, with mutual TLS off and on (a fresh CA, a certificate
per agent, the admin certificate for the benchmark's own calls), --runs times alternating,
and prints the medians and the ratio on/off of the p50 (the goal: under 1.2).

--failover measures leader failover instead (tools/failover.py): SIGKILL of the leader -> every
survivor holds a snapshot of the new term, median and max over --kills rounds per --backend.
`tools/bench.py kube ...` measures the configmap backend instead (tools/bench_kube.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence

import anchors  # tools/anchors.py: the etcd-watch anchor
import benchcluster  # tools/ is on sys.path when this file runs as a script
import failover  # tools/failover.py, next to this script
import mapbench
import proccpu
import wakebench  # tools/wakebench.py: the scaling loop's wake-up latency (issue 8)
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

HISTORY_BATCH = 100  # changes between history collections (agents keep 256 adoptions)
SETTLE_SECONDS = 1.0  # before collecting: anything slower than this is a failure to converge
History = list[tuple[tuple[int, int], int]]  # ((term, seq), applied_monotonic_ns) per adoption


async def histories(cluster: benchcluster.Cluster) -> list[History]:
    """Each agent's recent adoptions as ((term, seq), applied_monotonic_ns)."""

    async def one(address: str) -> History:
        async with cluster.channels.open(address, []) as channel:
            reply = await pb_grpc.StateStub(channel).GetHistory(pb.GetHistoryRequest(), timeout=10)
        return [((e.version.term, e.version.seq), e.applied_monotonic_ns) for e in reply.events]

    return list(await asyncio.gather(*(one(a) for a in cluster.addresses)))


def applied_at(history: History, version: tuple[int, int]) -> int:
    """When an agent's map first held `version`: it may have skipped straight to a newer one."""
    times = [ns for v, ns in history if v >= version and ns > 0]
    if not times:
        raise RuntimeError(f"an agent never adopted {version}")
    return min(times)


def latencies_of(written: History, agent_histories: list[History]) -> list[float]:
    """Leader's write -> the last agent's map write, per change, in milliseconds."""
    return [
        (max(applied_at(h, version) for h in agent_histories) - written_ns) / 1e6
        for version, written_ns in written
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def quiet_seconds(rest_seconds: float, changes: int, gap: float) -> float:
    """--rest-seconds, or the shortest the run of changes can take if that is longer: the rest
    rate subtracted from it is then measured over about as long as it is applied to."""
    return max(rest_seconds, changes * gap + math.ceil(changes / HISTORY_BATCH) * SETTLE_SECONDS)


@dataclasses.dataclass(frozen=True)
class Measured:
    leader: str
    latencies: list[float]  # ms, one per change
    quiet: proccpu.Window
    changes: proccpu.Window
    steal_pct: float  # over the quiet period and the changes


async def make_changes(
    cluster: benchcluster.Cluster, stub: pb_grpc.StateStub, *, changes: int, gap: float
) -> list[float]:
    latencies: list[float] = []
    written: History = []
    entries = benchcluster.TABLE_ENTRIES
    for change in range(changes):
        reply = await stub.SetService(pb.SetServiceRequest(
            ip=benchcluster.ip_of(change % entries), replicas=2 + change,
            name=f"bench/svc-{change % entries}"), timeout=30)
        written.append(((reply.version.term, reply.version.seq), reply.written_monotonic_ns))
        await asyncio.sleep(gap)
        # Agents keep their last 256 adoptions: collect before they roll over.
        if len(written) == HISTORY_BATCH or change == changes - 1:
            await asyncio.sleep(SETTLE_SECONDS)
            latencies += latencies_of(written, await histories(cluster))
            written = []
    return latencies


async def measure(
    cluster: benchcluster.Cluster, *, changes: int, gap: float, quiet: float, settle: float
) -> Measured:
    leader = await benchcluster.prepare(cluster, settle=settle)
    async with cluster.channels.open(leader, []) as channel:
        stub = pb_grpc.StateStub(channel)
        before = benchcluster.sample(cluster)
        await asyncio.sleep(quiet)
        start = benchcluster.sample(cluster)
        latencies = await make_changes(cluster, stub, changes=changes, gap=gap)
        end = benchcluster.sample(cluster)
    return Measured(leader=leader, latencies=latencies, quiet=proccpu.between(before, start),
                    changes=proccpu.between(start, end),
                    steal_pct=proccpu.between(before, end).steal_pct)


def cpu_figures(
    cluster: benchcluster.Cluster, measured: Measured, changes: int
) -> dict[str, float]:
    quiet, run = measured.quiet, measured.changes

    def per_change(pid: int) -> float:
        at_rest = quiet.cpu[pid] / quiet.wall * run.wall
        return 1000.0 * (run.cpu[pid] - at_rest) / changes

    cost = benchcluster.per_agent(cluster, measured.leader, per_change)
    rest = benchcluster.per_agent(cluster, measured.leader, quiet.percent)
    peers = max(1, len(cluster.addresses) - 1)
    return {
        **cost.summary("cpu_ms_per_change", digits=3),
        "leader_cpu_ms_per_peer_per_change": round(cost.leader / peers, 3),
        **rest.summary("rest_pct"),
        "quiet_s": round(quiet.wall, 1),
        "changes_s": round(run.wall, 1),
        "steal_pct": round(measured.steal_pct, 2),
    }


def run_size(nodes: int, args: argparse.Namespace, *, mtls: bool = False) -> dict[str, object]:
    """One cluster of `nodes` agents: latency percentiles and CPU figures of --changes."""
    quiet = quiet_seconds(args.rest_seconds, args.changes, args.gap)
    with benchcluster.start(args.harness, nodes, mtls=mtls) as cluster:
        measured = asyncio.run(measure(cluster, changes=args.changes, gap=args.gap, quiet=quiet,
                                       settle=args.settle_seconds))
    print(f"N={nodes}{' mTLS' if mtls else ''}: {args.changes} changes in "
          f"{measured.changes.wall:.1f}s after {measured.quiet.wall:.1f}s at rest", file=sys.stderr)
    latencies = measured.latencies
    return {
        "nodes": nodes,
        "harness": args.harness,
        "mtls": mtls,
        "changes": args.changes,
        "entries": benchcluster.TABLE_ENTRIES,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        **cpu_figures(cluster, measured, args.changes),
    }


COLUMNS = (  # (key, header) of the default table, after nodes
    ("changes", "changes"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
    ("leader_cpu_ms_per_change", "leader ms/chg"),
    ("follower_cpu_ms_per_change", "follower ms/chg"),
    ("leader_cpu_ms_per_peer_per_change", "leader ms/peer/chg"),
    ("leader_rest_pct", "leader rest %"), ("follower_rest_pct", "follower rest %"),
    ("steal_pct", "steal %"),
)


def print_table(rows: list[dict[str, object]], columns: tuple[tuple[str, str], ...]) -> None:
    print(" ".join(f"{header:>{max(6, len(header))}}" for _, header in (("", "nodes"),
                                                                        *columns)))
    for row in rows:
        print(" ".join(f"{row[key]!s:>{max(6, len(header))}}"
                       for key, header in (("nodes", "nodes"), *columns)))


def mtls_main(args: argparse.Namespace) -> int:
    """Each N with mTLS off then on, --runs times; medians of the runs' p50 and p99."""
    rows = []
    for nodes in args.nodes or [8, 32]:
        runs: dict[bool, list[dict[str, object]]] = {False: [], True: []}
        for _ in range(args.runs):
            for mtls in (False, True):
                runs[mtls].append(run_size(nodes, args, mtls=mtls))
        row: dict[str, object] = {"nodes": nodes, "runs": args.runs, "changes": args.changes}
        for mtls, name in ((False, "plain"), (True, "mtls")):
            for key in ("p50_ms", "p99_ms"):
                row[f"{name}_{key}"] = median_of(runs[mtls], key)
        row["ratio_p50"] = round(float(str(row["mtls_p50_ms"])) /
                                 float(str(row["plain_p50_ms"])), 3)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'nodes':>5} {'runs':>4} {'plain p50':>9} {'mTLS p50':>9} {'plain p99':>9} "
          f"{'mTLS p99':>9} {'ratio p50':>9}")
    for r in rows:
        print(f"{r['nodes']:>5} {r['runs']:>4} {r['plain_p50_ms']:>9} {r['mtls_p50_ms']:>9} "
              f"{r['plain_p99_ms']:>9} {r['mtls_p99_ms']:>9} {r['ratio_p50']:>9}")
    return 0


def median_of(rows: Sequence[Mapping[str, object]], key: str) -> float:
    return round(statistics.median(float(str(r[key])) for r in rows), 2)


async def rest_once(cluster: benchcluster.Cluster, *, settle: float, seconds: float
                    ) -> dict[str, object]:
    leader = await benchcluster.prepare(cluster, settle=settle)
    before = benchcluster.sample(cluster)
    await asyncio.sleep(seconds)
    window = proccpu.between(before, benchcluster.sample(cluster))
    rest = benchcluster.per_agent(cluster, leader, window.percent)
    return {
        "harness": cluster.harness,
        "nodes": len(cluster.addresses),
        "entries": benchcluster.TABLE_ENTRIES,
        "rest_s": round(window.wall, 1),
        **rest.summary("rest_pct"),
        "follower_rest_max_pct": round(max(rest.followers), 2),
        "cluster_cores": round(sum(window.cpu.values()) / window.wall, 3),
        "steal_pct": round(window.steal_pct, 2),
        "timers": benchcluster.timers(cluster.env),
    }


REST_COLUMNS = (
    ("harness", "harness"), ("entries", "entries"), ("rest_s", "seconds"),
    ("leader_rest_pct", "leader %"), ("follower_rest_pct", "follower %"),
    ("follower_rest_max_pct", "follower max %"), ("cluster_cores", "all agents, cores"),
    ("steal_pct", "steal %"),
)


def rest_main(args: argparse.Namespace) -> int:
    """CPU at rest per agent, in % of one core, of a cluster holding the full table."""
    rows = []
    for nodes in args.nodes or [32]:
        with benchcluster.start(args.harness, nodes, timers=args.timers) as cluster:
            rows.append(asyncio.run(rest_once(cluster, settle=args.settle_seconds,
                                              seconds=args.rest_seconds)))
    if args.json:
        print(json.dumps(rows))
        return 0
    print_table(rows, REST_COLUMNS)
    timers = rows[0]["timers"]  # the same at every N: one harness, one environment
    assert isinstance(timers, dict)
    print(f"timers in force ({args.harness} harness, --timers {args.timers}): "
          + " ".join(f"{name}={value}" for name, value in timers.items()))
    return 0


def anchors_main(args: argparse.Namespace) -> int:
    """Ours and the etcd anchor at each N, interleaved --rounds times; medians and ratios."""
    gaps = anchors.missing(anchor_dir=args.anchor_dir, venv=args.anchor_venv)
    if gaps:
        print("--anchors needs " + "; ".join(gaps) + "\n" + anchors.install_hint(args.anchor_venv),
              file=sys.stderr)
        return 2
    rows = []
    for nodes in args.nodes or [8, 16, 32]:
        ours: list[dict[str, object]] = []
        etcd: list[dict[str, float]] = []
        for rep in range(1, args.rounds + 1):
            ours.append(run_size(nodes, args))
            etcd.append(anchors.run(anchor_dir=args.anchor_dir, venv=args.anchor_venv,
                                    nodes=nodes, changes=args.changes, gap=args.gap,
                                    rep=rep).as_dict())
            print(f"N={nodes} round {rep}: ours p50 {ours[-1]['p50_ms']} / p99 "
                  f"{ours[-1]['p99_ms']} ms, etcd p50 {etcd[-1]['p50_ms']} / p99 "
                  f"{etcd[-1]['p99_ms']} ms", file=sys.stderr)
        rows.append(anchor_row(nodes, ours, etcd))
    if args.json:
        print(json.dumps(rows))
        return 0
    print_table(rows, ANCHOR_COLUMNS)
    return 0


def anchor_row(nodes: int, ours: list[dict[str, object]], etcd: list[dict[str, float]]
               ) -> dict[str, object]:
    row: dict[str, object] = {"nodes": nodes, "rounds": len(ours)}
    for key in ("p50_ms", "p99_ms"):
        row[f"ours_{key}"], row[f"etcd_{key}"] = median_of(ours, key), median_of(etcd, key)
        row[f"ratio_{key[:3]}"] = round(float(str(row[f"ours_{key}"])) /
                                        float(str(row[f"etcd_{key}"])), 2)
    row["round_ratios"] = " ".join(
        "/".join(f"{float(str(o[key])) / e[key]:.2f}" for key in ("p50_ms", "p99_ms"))
        for o, e in zip(ours, etcd, strict=True))
    row["steal_pct"] = " ".join(f"{o['steal_pct']}/{e['steal_pct']}"
                                for o, e in zip(ours, etcd, strict=True))
    row["ours"], row["etcd"] = ours, etcd  # every round, for --json
    return row


ANCHOR_COLUMNS = (
    ("rounds", "rounds"), ("ours_p50_ms", "ours p50"), ("etcd_p50_ms", "etcd p50"),
    ("ratio_p50", "ratio p50"), ("ours_p99_ms", "ours p99"), ("etcd_p99_ms", "etcd p99"),
    ("ratio_p99", "ratio p99"), ("round_ratios", "per round p50/p99 ratios"),
    ("steal_pct", "steal % per round, ours/etcd"),
)


def failover_main(args: argparse.Namespace) -> int:
    results = failover.run(backends=args.backend or failover.BACKENDS,
                           nodes=args.failover_nodes, kills=args.kills, env=args.env)
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    else:
        print(failover.table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kube"]:  # the Kubernetes backends' failover and API load (bench_kube.py)
        import bench_kube

        return bench_kube.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, action="append",
                        help="cluster size; repeat for several (default 8, 16, 32)")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05,
                        help="seconds between changes (after the leader's reply)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--failover", action="store_true",
                        help="measure leader failover per backend (tools/failover.py)")
    parser.add_argument("--backend", action="append", choices=failover.BACKENDS,
                        help="--failover: backend to measure; repeat (default bpffs and redis)")
    parser.add_argument("--kills", type=int, default=10, help="--failover: rounds per backend")
    parser.add_argument("--failover-nodes", type=int, default=5, help="--failover: agents")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="--failover: extra agent environment, e.g. LEASE_TTL=5")
    parser.add_argument("--map", action="store_true",
                        help="run the map-write benchmark instead (tools/mapbench.py)")
    parser.add_argument("--map-runs", type=int, default=1000,
                        help="applications per case for --map")
    parser.add_argument("--mtls", action="store_true",
                        help="each N with mutual TLS off and on; prints the ratio (default N: "
                             "8 and 32)")
    parser.add_argument("--wake", action="store_true",
                        help="measure wake-up latency, first packet -> /scale PATCH "
                             "(tools/wakebench.py; root, netns, bcc)")
    parser.add_argument("--wakes", type=int, default=60, help="--wake: wakes per run")
    parser.add_argument("--wake-nodes", type=int, default=8, help="--wake: agents")
    parser.add_argument("--runs", type=int, default=3,
                        help="--mtls: runs per N and mode; --wake: runs (medians reported)")
    parser.add_argument("--harness", choices=benchcluster.HARNESSES, default="local",
                        help="local: agents on loopback, maps only; netns: network namespaces, "
                             "XDP on every node (root, bcc)")
    parser.add_argument("--rest", action="store_true",
                        help="measure CPU at rest only, per agent (default N: 32)")
    parser.add_argument("--timers", choices=("profile", "cluster"), default="profile",
                        help="--rest: the harness's own timers (PROFILE=local), or every timer "
                             "at the DaemonSet's default (PROFILE=cluster)")
    parser.add_argument("--rest-seconds", type=float, default=10.0,
                        help="length of the quiet period CPU at rest is measured over")
    parser.add_argument("--settle-seconds", type=float, default=5.0,
                        help="wait after the table is full everywhere, before measuring")
    parser.add_argument("--anchors", action="store_true",
                        help="interleave each run with the etcd-watch anchor; print ratios")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--anchors: rounds per N (ours, etcd, ours, etcd, ...)")
    parser.add_argument("--anchor-dir", default=anchors.default_dir(),
                        help="--anchors: the folder of anchor_bench.py (default: %(default)s)")
    parser.add_argument("--anchor-venv", default=anchors.DEFAULT_VENV,
                        help="--anchors: the anchor's virtualenv with aetcd and psutil "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.wake:
        return wakebench.report(nodes=args.wake_nodes, wakes=args.wakes, runs=args.runs,
                                as_json=args.json)
    if args.map:
        return mapbench.report(runs=args.map_runs, as_json=args.json)
    if args.failover:
        return failover_main(args)
    gaps = benchcluster.missing(args.harness)
    if gaps:
        parser.error(f"--harness {args.harness} needs " + ", ".join(gaps))
    if args.mtls and args.harness != "local":
        parser.error("--mtls runs in the local harness only")
    if args.rest:
        return rest_main(args)
    if args.anchors:
        return anchors_main(args)
    if args.mtls:
        return mtls_main(args)
    results = [run_size(n, args) for n in args.nodes or [8, 16, 32]]
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
