"""The main job on one machine: a cluster of gossip-agent processes on loopback.

    tools/local_cluster.py --nodes 5            live view of every agent; Ctrl-C (or SIGTERM,
                                                SIGHUP) stops them all
    tools/local_cluster.py --backend redis      the same on another lease backend: redis (a
                                                redis-server of its own), configmap or lease
                                                (the lab's fake Kubernetes API server)
    tools/local_cluster.py --nodes 5 --check    make a change through the leader, wait until
                                                every agent's map holds it, print one JSON line

Each run pins under a root of its own, /sys/fs/bpf/gossip-agent-demo-PID (or, without a
mounted bpffs or root, memory maps under a temporary directory, said in each agent's log), one
pin directory per agent and the bpffs lease beside them, and removes it on exit: two runs never
share a lease, and Ctrl-C leaves no pins behind. --root names the root instead, and keeps it
(the maps outlive the agents, as on a node). The live view ends with the seed's operator
commands against the backend in use.
--check's JSON line: nodes, converged, convergence_ms (leader's write -> last agent's map
write, from each agent's CLOCK_MONOTONIC on this host), leader, term, agents (gRPC addresses).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster

CHECK_IP = "10.96.0.10"
BACKENDS = ("bpffs", "redis", "configmap", "lease")
DEMO_ROOT = "/sys/fs/bpf/gossip-agent-demo-{pid}"  # one per run: never a shared lease
T = TypeVar("T")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="agent processes (1..64)")
    parser.add_argument("--check", action="store_true", help="make one change, verify, exit")
    parser.add_argument("--source", choices=("api", "file"), default="api")
    parser.add_argument("--backend", choices=BACKENDS, default="bpffs",
                        help="lease backend (redis: starts a redis-server; configmap, lease: "
                             "starts the lab's fake Kubernetes API server)")
    parser.add_argument("--root", default="",
                        help="pin/lease root, kept on exit (default: "
                             f"{DEMO_ROOT.format(pid='PID')} or a temporary directory, "
                             "removed on exit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for --check")
    parser.add_argument("--log-dir", default="", help="agent logs (default: a temp dir)")
    parser.add_argument("--mtls", action="store_true",
                        help="mutual TLS: a fresh CA and certificates under the log dir")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 64:
        parser.error("--nodes must be between 1 and 64")
    return args


def choose_root(args: argparse.Namespace) -> tuple[str, bool]:
    """The pin/lease root, and whether this run owns it (then it is removed on exit)."""
    if args.root:
        return args.root, False
    if localcluster.bpffs_mounted() and os.geteuid() == 0:
        root = DEMO_ROOT.format(pid=os.getpid())
        os.makedirs(root, exist_ok=True)
        return root, True
    root = tempfile.mkdtemp(prefix="gossip-agent-demo-")
    print(f"no bpffs (or not root): agents use memory maps under {root}", file=sys.stderr)
    return root, True


def open_backend(backend: str, stack: contextlib.ExitStack, log_dir: str
                 ) -> tuple[dict[str, str], list[str]]:
    """The agents' lease environment, and the seed's operator commands against it. A server
    started here (redis-server, the fake API server) is stopped by `stack`."""
    if backend == "redis":
        from lab import localredis

        if not localredis.available():
            raise SystemExit("local_cluster.py: --backend redis needs redis-server "
                             "(make system installs it: apt-get install redis-server)")
        server = localredis.RedisServer().start()
        stack.callback(server.cleanup)
        cli = f"redis-cli -p {server.port}"
        return ({"COORDINATION_BACKEND": "redis", "REDIS_URL": server.url}, [
            f"{cli} KEYS 'ebpf:*'", f"{cli} GET ebpf:leader", f"{cli} HGETALL ebpf:leader_record",
            f"{cli} GET ebpf:service_list", f"{cli} HGETALL ebpf:coordination",
            f"{cli} DEL ebpf:leader          # forces a new election, at a higher term"])
    if backend in ("configmap", "lease"):
        from lab import fakekube

        kube = fakekube.FakeKube()
        kube.start()
        stack.callback(kube.close)
        kubeconfig = kube.write_kubeconfig(os.path.join(log_dir, "kubeconfig"))
        kubectl = (f"KUBECONFIG={kubeconfig} "
                   f"{os.path.join(os.path.dirname(sys.executable), 'kubectl')}")
        commands = [f"{kubectl} get configmap ebpf-service-list -o yaml",
                    f"{kubectl} get configmap ebpf-service-list "
                    "-o jsonpath='{.metadata.annotations}'"]
        if backend == "lease":
            commands.append(f"{kubectl} get lease gossip-agent -o yaml")
        commands.append(f"{kubectl} delete configmap ebpf-service-list   # a new election")
        return {"COORDINATION_BACKEND": backend, "KUBECONFIG": kubeconfig}, commands
    return {}, []  # bpffs, the default: COORDINATION_BACKEND stays as the caller's env has it


def bpffs_commands(root: str) -> list[str]:
    if not localcluster.bpffs_mounted() or not root.startswith("/sys/fs/bpf/"):
        return [f"cat {root}/LEADER.json    # the lease record (memory maps: no bpftool)"]
    return [f"ls -la {root}/node-0/",
            f"bpftool map dump pinned {root}/node-0/SERVICE_LIST",
            f"bpftool map dump pinned {root}/LEADER"]


def remove_root(root: str) -> None:
    """Removes this run's pins (maps, the lease record and lock): rmtree unlinks bpffs pins."""
    shutil.rmtree(root, ignore_errors=True)
    if os.path.exists(root):
        print(f"local_cluster.py: could not remove {root}", file=sys.stderr)


def source_env(args: argparse.Namespace, log_dir: str) -> dict[str, str]:
    if args.source == "api":
        return {"SOURCE": "api"}
    path = os.path.join(log_dir, "services.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("services:\n  - {ip: 10.96.0.11, replicas: 1, name: default/demo}\n")
    print(f"SOURCE=file: edit {path} and watch the agents follow", file=sys.stderr)
    return {"SOURCE": "file", "SOURCE_FILE": path}


async def watch_applied(
    address: str, version: pb.Version, into: dict[str, int], channels: tls.ChannelFactory
) -> None:
    """Records when `address` applied `version` (or newer), from its own WatchState stream."""
    async with channels.open(address, []) as channel:
        stream = channel.unary_stream(
            "/gossip_agent.v1.State/WatchState",
            request_serializer=pb.WatchStateRequest.SerializeToString,
            response_deserializer=pb.StateEvent.FromString,
        )
        async for event in stream(pb.WatchStateRequest()):
            if (event.version.term, event.version.seq) >= (version.term, version.seq):
                into[address] = event.applied_monotonic_ns
                return


async def check(cluster: localcluster.LocalCluster, timeout: float) -> dict[str, object]:
    """Makes one change through the leader and waits until every agent's map holds it."""
    started = time.monotonic()
    channels = cluster.client
    await localcluster.wait_all(cluster.addresses, what="every agent to serve", timeout=timeout,
                                check=lambda s: True, channels=channels)
    leader, info = await localcluster.find_leader(cluster.addresses, timeout, channels=channels)
    replicas = random.randint(1, 1000)
    reply = await localcluster.call(leader, "SetService", pb.SetServiceRequest(
        ip=CHECK_IP, replicas=replicas, name="default/check"), timeout=10, channels=channels)
    assert isinstance(reply, pb.WriteResponse)
    applied: dict[str, int] = {}
    remaining = max(1.0, timeout - (time.monotonic() - started))
    converged = True
    try:
        async with asyncio.timeout(remaining):
            await asyncio.gather(*(watch_applied(a, reply.version, applied, channels)
                                   for a in cluster.addresses))
            await localcluster.wait_all(
                cluster.addresses, what="every map to hold the change", timeout=remaining,
                check=lambda s: any(e.ip == CHECK_IP and e.replicas == replicas
                                    for e in s.entries), channels=channels,
            )
    except TimeoutError:
        converged = False
    latest = max(applied.values(), default=reply.written_monotonic_ns)
    return {
        "nodes": len(cluster.agents),
        "converged": converged and len(applied) == len(cluster.agents),
        "convergence_ms": round((latest - reply.written_monotonic_ns) / 1e6, 3),
        "leader": reply.leader,
        "term": reply.version.term,
        "agents": cluster.addresses,
        "mtls": cluster.client.secure,
    }


async def live_view(cluster: localcluster.LocalCluster, footer: str) -> None:
    while True:
        rows = await localcluster.states(cluster.addresses, timeout=1.0,
                                         channels=cluster.client)
        lines = [f"{'NODE':10} {'ADDRESS':18} {'VERSION':>9} {'LEADER':10} {'ENTRIES':>7} PLANE"]
        for agent, state in zip(cluster.agents, rows, strict=True):
            if state is None:
                status = "running" if agent.running else f"exited ({agent.process.returncode})"
                lines.append(f"{agent.node:10} {agent.address:18} {'-':>9} {status}")
                continue
            version = f"{state.version.term}.{state.version.seq}"
            lines.append(f"{state.node:10} {agent.address:18} {version:>9} "
                         f"{state.leader or '-':10} {len(state.entries):>7} {state.dataplane}")
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        print(clear + "\n".join(lines) + "\n" + footer, flush=True)
        await asyncio.sleep(1.0)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_signalled: list[int] = []  # stop signals that arrived while no event loop was running


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (`timeout`, `kill`, a closed terminal) stop the agents as Ctrl-C does.
    By default they end this process without running its `finally`, and the agents, each in a
    session of its own, went on running. Outside the event loop the handler only records the
    signal (raising from it could land inside grpc's C core); inside, stoppable() ends the
    work."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: _signalled.append(signum))


async def stoppable(work: Coroutine[Any, Any, T]) -> T | None:
    """work's result, or None if a stop signal came first (before or while it ran)."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopped.set)
    try:
        if _signalled:
            work.close()
            return None
        task = asyncio.create_task(work, name="local-cluster.work")
        waiter = asyncio.create_task(stopped.wait(), name="local-cluster.signal")
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        stop_on_signals()  # the agents' shutdown that follows is not cut short either


def footer(cluster: localcluster.LocalCluster, *, root: str, owned: bool, log_dir: str,
           commands: list[str]) -> str:
    first = cluster.agents[0]
    lines = ["", f"logs: {log_dir}",
             f"console ({first.node}): .venv/bin/python -m aiomonitor.cli -p {first.monitor_port}",
             f"grpcurl: .venv/bin/grpcurl -plaintext {first.address} "
             "gossip_agent.v1.State/GetState",
             "the seed's operator commands, against this cluster:",
             *(f"  {line}" for line in commands)]
    kept = "kept" if not owned else "removed"
    lines.append(f"(Ctrl-C stops every agent; the pins under {root} are then {kept})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="gossip-agent-logs-")
    root, owned = choose_root(args)
    with contextlib.ExitStack() as stack:
        if owned:
            stack.callback(remove_root, root)
        backend_env, commands = open_backend(args.backend, stack, log_dir)
        if args.backend == "bpffs":
            commands = bpffs_commands(root)
        cluster = localcluster.LocalCluster(
            args.nodes, root=root, log_dir=log_dir,
            extra_env={**source_env(args, log_dir), **backend_env}, mtls=args.mtls)
        stack.callback(cluster.stop)  # before the servers and the pins go
        print(f"starting {args.nodes} agents ({args.backend} lease, pins under {root}); "
              f"logs in {log_dir}", file=sys.stderr)
        for agent in cluster.agents:
            print(f"  {agent.node}: grpc {agent.address}  metrics http://127.0.0.1:"
                  f"{agent.metrics_port}/metrics  console: .venv/bin/python -m aiomonitor.cli "
                  f"-p {agent.monitor_port}", file=sys.stderr)
        cluster.start()
        return run(args, cluster, footer(cluster, root=root, owned=owned, log_dir=log_dir,
                                         commands=commands), log_dir)
    return 1  # not reached: an exception leaves the block above


def run(args: argparse.Namespace, cluster: localcluster.LocalCluster, text: str,
        log_dir: str) -> int:
    try:
        if args.check:
            result = asyncio.run(stoppable(check(cluster, args.timeout)))
            if result is None:
                print("local_cluster.py: stopped by a signal before the check ended",
                      file=sys.stderr)
                return 1
            print(json.dumps(result))
            return 0 if result["converged"] else 1
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(stoppable(live_view(cluster, text)))
        return 0
    except TimeoutError as exc:
        print(json.dumps({"nodes": args.nodes, "converged": False, "error": str(exc),
                          "agents": cluster.addresses}))
        return 1
    finally:
        cluster.stop()
        if not args.log_dir and args.check:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
