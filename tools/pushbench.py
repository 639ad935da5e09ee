"""Push-path benchmark: the CPU one pushed snapshot costs the follower that takes it and the
leader that writes it, away from everything else a cluster does.

One process is the follower: a real Engine (a pinned BPF map, or --memory), Prometheus
telemetry as an agent with METRICS_PORT has, behind the real Gossip server handler
(api/server.py) on 127.0.0.1. This process is the leader's side of one peer: a GrpcTransport
writing leader.Publication payloads (a full snapshot of 1024 entries first, then one-entry
deltas, as the leader pushes them) on one PushStream, one every --gap seconds, each asking for
an acknowledgement or none (--ack). The follower opens its push port (PUSH_PORT=0) and
announces it on the stream, as an agent does, so the writer moves its pushes there after the
first (--path stream: no port, every push a message on the stream). --bare swaps the handler
for one that reads and drops each message: what grpc.aio alone costs.

CPU is read from /proc/<pid>/task/*/schedstat (nanoseconds, every thread of the process, so
grpc's own threads count), over the pushes and over --rest seconds of nothing before them;
the rest rate is subtracted. Figures are per push, in ms. At one push per 50 ms (the gap
tools/bench.py leaves between changes) each push meets cold caches and sleeping threads, and
costs about twice what it does at one per millisecond: compare like with like.

What the figures are for: the follower's is the floor of tools/bench.py's "follower ms/chg"
without anti-entropy, reports and leases; the writer's is the leader's cost per peer for one
stream (tools/bench.py's "leader ms/peer/chg" also carries the leader's fixed cost / (N - 1)).
GRPC_EXPERIMENTS in force (gossip_agent/__init__.py) is printed with them.

Run: `.venv/bin/python tools/pushbench.py [--memory] [--ack all|none] [--path port|stream]
[--bare]` (root and a mounted bpffs unless --memory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

import grpc
import grpc.aio

from gossip_agent.api import pushport
from gossip_agent.api import server as server_mod
from gossip_agent.api import streams as streams_mod
from gossip_agent.core import peers, snapshots, versions
from gossip_agent.dataplane import base as dataplane_base
from gossip_agent.dataplane import memory
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader, transport, wire
from gossip_agent.observability import metrics
from gossip_agent.security import identity
from gossip_agent.v1 import gossip_pb2 as pb

ENTRIES = 1024
FIRST_IP = 0x0A600000  # 10.96.0.0
ROOT = "/sys/fs/bpf/gossip-agent-bench-push"
MAX_MESSAGE_BYTES = 4 << 20
WARMUP = 50  # deltas pushed before measuring: streams open, caches and allocators settled


def cpu_seconds(pid: int) -> float:
    """Time on CPU of every thread of `pid` so far (schedstat: ns, not 10 ms ticks)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path, encoding="ascii") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9


# -- the follower process ----------------------------------------------------------------------

def open_plane(*, bpf: bool) -> tuple[dataplane_base.DataPlane, str]:
    if not bpf:
        return memory.MemoryDataPlane(max_entries=ENTRIES), ""
    from gossip_agent.dataplane import bpfmap

    pin_dir = f"{ROOT}/{uuid.uuid4().hex[:12]}"
    return bpfmap.open_pinned(pin_dir=pin_dir, max_entries=ENTRIES), pin_dir


def follower_engine(plane: dataplane_base.DataPlane) -> engine_mod.Engine:
    rng = random.Random(1)
    return engine_mod.Engine(
        node="bench-follower", address="127.0.0.1:0", boot_id="bench", dataplane=plane,
        transport=transport.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES),
        membership=peers.Membership(self_address="127.0.0.1:0", policy=peers.BackoffPolicy(),
                                    rng=rng),
        rpc_timeout=2.0, rng=rng, telemetry=metrics.Metrics())


def bare_handler() -> grpc.GenericRpcHandler[Any, Any]:
    async def push_stream(requests: Any, context: Any) -> None:
        while isinstance(await context.read(), bytes):
            pass

    return grpc.method_handlers_generic_handler(server_mod.GOSSIP_SERVICE, {
        "PushStream": grpc.stream_stream_rpc_method_handler(
            push_stream, request_deserializer=None, response_serializer=None)})


def follower_port(engine: engine_mod.Engine) -> pushport.PushPort:
    """The follower's push port, plaintext, as an agent with PUSH_PORT=0 opens it."""
    return pushport.PushPort(
        engine=engine, host="127.0.0.1", port=0, limit=MAX_MESSAGE_BYTES, cluster_id="",
        policy=identity.Policy(enforced=False, admins=frozenset(), member_name=""),
        context=None)


async def serve(*, bpf: bool, bare: bool, path: str) -> None:
    """Prints the port, serves until stdin closes (the benchmark ended or died)."""
    plane, pin_dir = open_plane(bpf=bpf)
    server = grpc.aio.server(options=server_mod.server_options(MAX_MESSAGE_BYTES))
    engine = follower_engine(plane)
    push_port = follower_port(engine) if path == "port" and not bare else None
    handler = bare_handler() if bare else server_mod.gossip_handler(
        engine, streams_mod.OpenStreams(), push_port=push_port.port if push_port else 0)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if push_port is not None:
        await push_port.start()
    await server.start()
    print(port, flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)
    finally:
        if push_port is not None:
            await push_port.stop()
        await server.stop(None)
        plane.close()
        if pin_dir:
            shutil.rmtree(pin_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(ROOT)  # another run may still use it


# -- the writer (this process) -----------------------------------------------------------------

def payloads(count: int) -> list[bytes]:
    """A full snapshot, then `count` one-entry deltas, each on the one before."""
    entries = {FIRST_IP + i: 1 for i in range(ENTRIES)}
    names = {key: f"bench/svc-{i}" for i, key in enumerate(entries)}
    previous = snapshots.build(version=versions.Version(1, 1), leader="bench-leader",
                               leader_address="127.0.0.1:0", entries=entries, names=names)
    out = [leader.Publication(previous, None, written_ns=time.monotonic_ns()).full]
    for i in range(count):
        entries[FIRST_IP + i % ENTRIES] = 2 + i
        current = snapshots.build(version=versions.Version(1, 2 + i), leader="bench-leader",
                                  leader_address="127.0.0.1:0", entries=entries, names=names)
        delta = snapshots.delta_between(previous, current)
        out.append(leader.Publication(current, delta, written_ns=time.monotonic_ns()).delta)
        previous = current
    return out


async def drive(*, port: int, follower: int, count: int, gap: float, ack: bool,
                rest: float, port_path: bool = False) -> dict[str, float]:
    """port_path: the follower announced its push port; every measured push must use it."""
    messages = payloads(WARMUP + count)
    writer = transport.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES)
    acks: list[pb.PushAck] = []
    writer.set_ack_handler(lambda address, message: acks.append(message))
    address, me, suffix = f"127.0.0.1:{port}", os.getpid(), wire.ACK_SUFFIX if ack else b""
    try:
        await writer.push(address, messages[0] + wire.ACK_SUFFIX, timeout=5.0)
        await _until(lambda: bool(acks), what="the full snapshot's acknowledgement")
        if port_path:
            # The port is announced on the stream the first push opened, and the writer moves
            # there on a later push. Until it has, the full snapshot again (a DUPLICATE, never
            # acknowledged unasked): no delta may travel on the stream and the port at once,
            # where the later could overtake the earlier.
            async def on_the_port() -> bool:
                if address in writer._links:
                    return True
                await writer.push(address, messages[0], timeout=5.0)
                return False

            await _until(on_the_port, what="the writer's move to the push port")
        for message in messages[1:WARMUP + 1]:
            await writer.push(address, message + suffix, timeout=5.0)
            await asyncio.sleep(gap)
        if port_path != (address in writer._links):
            raise RuntimeError(f"pushes {'never moved' if port_path else 'moved'} to a push port")
        if port_path and writer._streams.get(address) is None:
            raise RuntimeError("the stream that announced the port ended")
        rest_from = (time.monotonic(), cpu_seconds(follower), cpu_seconds(me))
        await asyncio.sleep(rest)
        start = (time.monotonic(), cpu_seconds(follower), cpu_seconds(me))
        for message in messages[WARMUP + 1:]:
            await writer.push(address, message + suffix + wire.age_suffix(1), timeout=5.0)
            await asyncio.sleep(gap)
        await asyncio.sleep(0.1)  # the last acknowledgement
        end = (time.monotonic(), cpu_seconds(follower), cpu_seconds(me))
    finally:
        await writer.close()
    refused = [a for a in acks if a.result != pb.PushAck.ADOPTED]
    if refused or (ack and len(acks) != WARMUP + count + 1):
        raise RuntimeError(f"{len(acks)} acks, {len(refused)} not ADOPTED: {refused[:1]}")

    def per_push(column: int) -> float:
        rest_rate = (start[column] - rest_from[column]) / max(1e-9, start[0] - rest_from[0])
        return 1000.0 * (end[column] - start[column] - rest_rate * (end[0] - start[0])) / count

    return {"follower_ms_per_push": round(per_push(1), 3),
            "writer_ms_per_push": round(per_push(2), 3)}


async def _until(check: Any, *, what: str, timeout: float = 5.0) -> None:
    """Polls `check` (a callable returning a bool, or an awaitable of one) every 10 ms."""
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.01)


def run(*, count: int = 300, gap: float = 0.05, ack: bool = True, bpf: bool = True,
        bare: bool = False, rest: float = 3.0, path: str = "port") -> dict[str, object]:
    command = [sys.executable, os.path.abspath(__file__), "--serve"]
    command += (["--bare"] if bare else []) + ([] if bpf else ["--memory"]) + ["--path", path]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as follower:
        assert follower.stdout is not None and follower.stdin is not None
        try:
            port = int(follower.stdout.readline())
            figures = asyncio.run(drive(port=port, follower=follower.pid, count=count, gap=gap,
                                        ack=ack and not bare, rest=rest,
                                        port_path=path == "port" and not bare))
        finally:
            follower.stdin.close()
            follower.wait(timeout=30)
    return {"pushes": count, "gap_s": gap, "ack": ack and not bare, "bpf": bpf, "bare": bare,
            "path": path if not bare else "stream",
            **figures, "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="pushes measured")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between pushes")
    parser.add_argument("--ack", choices=("all", "none"), default="all",
                        help="ask an acknowledgement of every push, or of none")
    parser.add_argument("--memory", action="store_true", help="an in-memory map, not BPF")
    parser.add_argument("--path", choices=("port", "stream"), default="port",
                        help="the follower's push port (PUSH_PORT) or the PushStream only")
    parser.add_argument("--bare", action="store_true",
                        help="a handler that reads and drops: grpc.aio alone")
    parser.add_argument("--rest", type=float, default=3.0, help="seconds of rest measured")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(bpf=not args.memory, bare=args.bare, path=args.path))
        return 0
    result = run(count=args.count, gap=args.gap, ack=args.ack == "all", bpf=not args.memory,
                 bare=args.bare, rest=args.rest, path=args.path)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['pushes']} pushes, one per {args.gap * 1000:g} ms, ack "
              f"{args.ack}{', bare handler' if args.bare else ''}, {result['path']}, "
              f"{'BPF' if result['bpf'] else 'memory'} map, GRPC_EXPERIMENTS="
              f"{result['grpc_experiments'] or '(grpc default)'}:\n"
              f"  follower {result['follower_ms_per_push']:.3f} ms per push, "
              f"writer {result['writer_ms_per_push']:.3f} ms per push")
    return 0


if __name__ == "__main__":
    sys.exit(main())
