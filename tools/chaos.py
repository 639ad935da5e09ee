"""The fault campaign: a nemesis, a client and a recorder around 5 agents in network namespaces.

    tools/chaos.py --backend {bpffs,redis,lease,configmap} --seconds 60 --seed 1 --json

Phases:
1. Build: 5 node namespaces on a bridge (tools/lab/netns.py), agents with
   PROFILE=local, DATAPLANE=bpf (maps pinned per node, no XDP program: nothing here needs
   packets filtered, and compiling it costs 3 s of CPU per start), COORDINATION_BACKEND as
   asked: bpffs (the flock on this host), redis (a redis-server without persistence in a host
   namespace on the bridge), lease / configmap (the fake API server in a host namespace).
   An iptables chain pair CHAOS_IN / CHAOS_OUT on each node's eth0 holds the network faults.
2. Baseline: wait for a leader, write the anchor service (never deleted afterwards: no
   adopted table is ever empty from then on) and wait until every map holds it.
3. Faults for --seconds while a client writes: on a seeded schedule (random.Random(seed)), two
   lanes run side by side, each one fault at a time with a gap between faults:
   - process lane: SIGKILL (restarted after a pause), SIGSTOP for longer than the lease's
     expiry then SIGCONT, SIGTERM and restart with the same pins; each aimed at the leader or
     at a random node (a coin toss);
   - network lane: one node cut off (DROP on eth0), a split in two groups (the backend's host
     stays on one side), random loss (-m statistic on 1-3 nodes, both ways), delay (NFQUEUE
     and tools/nfdelay.py on 1-2 nodes' outgoing packets), and per backend a Redis restart
     without persistence, or API server pauses and 500s.
   The client runs 2 writers, each SetService (unique replica values) or DeleteService on one
   of 24 service IPs through a random agent (a follower forwards to the leader), 3 s deadline.
4. Heal everything, stop the client, wait until every agent answers, and measure until all
   maps hold the same table and version: the bound is 3 x (lease expiry + GOSSIP_INTERVAL +
   PEER_BACKOFF_CAP + RPC_TIMEOUT) with the PROFILE=local values (lease expiry: LEASE_TTL for
   bpffs and redis, LEASE_DURATION for the Kubernetes backends): 18 s and 24 s.
5. Check the recorded history (tools/lab/chaoscheck.py says what and how) and print
   one JSON line. Exit status 1 when there are violations, 2 when the campaign itself failed.

Recording (from outside the agents): every agent's WatchState stream (reconnected across
restarts), GetHistory every 2 s, its pinned SERVICE_LIST and SERVICE_LIST_META every 100 ms.
Agent logs, the fault log and the recorded history stay in --log-dir (default: a temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from gossip_agent import config
from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import chaoscheck, fakekube, netns

BACKENDS = ("bpffs", "redis", "lease", "configmap")
PREFIX = "gachaos"
BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-chaos"
NODES = 5
REDIS_PORT = 6379
ANCHOR = "10.96.0.1"  # set once before the faults, never deleted
KEYS = [f"10.96.1.{i}" for i in range(1, 25)]
WRITERS = 2
WRITE_DEADLINE = 3.0  # seconds per client call: a forwarded write waits WRITE_ACK_TIMEOUT (1 s)
SAMPLE_INTERVAL = 0.1
STABLE_GAP = 0.005  # two reads this far apart must agree for a map sample to count
HISTORY_INTERVAL = 2.0
START_DEADLINE = 90.0  # 5 agents importing grpc and kubernetes on 2 shared cores, then electing
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 250)]
ZERO = chaoscheck.ZERO
NFDELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nfdelay.py")


def now(start: float) -> float:
    return time.monotonic() - start


# -- timers ---------------------------------------------------------------------------------------


def convergence_bound(backend: str) -> float:
    """3 x (lease expiry + anti-entropy round + longest peer backoff + one RPC deadline)."""
    local = config.from_env({"PROFILE": "local", "NODE_NAME": "chaos"})
    expiry = local.lease.ttl if backend in ("bpffs", "redis") else float(local.lease.duration)
    return 3 * (expiry + local.gossip.interval + local.gossip.backoff_cap
                + local.gossip.rpc_timeout)


def lease_expiry(backend: str) -> float:
    local = config.from_env({"PROFILE": "local", "NODE_NAME": "chaos"})
    return local.lease.ttl if backend in ("bpffs", "redis") else float(local.lease.duration)


# -- the world: namespaces, agents, the backend, the network faults ------------------------------


class World:
    """The cluster and the levers the nemesis pulls; close() undoes everything."""

    def __init__(self, *, backend: str, log_dir: str) -> None:
        self.backend = backend
        self.log_dir = log_dir
        env = {"DATAPLANE": "bpf", "XDP_INTERFACES": "", "COORDINATION_BACKEND": backend,
               "LOG_LEVEL": "info"}
        self.cluster = netns.Cluster(NODES, prefix=PREFIX,
                                     bpffs_root=os.path.join(BPFFS_ROOT, uuid.uuid4().hex[:12]),
                                     log_dir=log_dir, env=env)
        self.host: netns.Host | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.kube: fakekube.FakeKube | None = None
        self.delayers: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[netns.Node]:
        return self.cluster.nodes

    def build(self) -> None:
        self.cluster.__enter__()
        for node in self.nodes:
            for command in (["-N", "CHAOS_IN"], ["-N", "CHAOS_OUT"],
                            ["-A", "INPUT", "-i", "eth0", "-j", "CHAOS_IN"],
                            ["-A", "OUTPUT", "-o", "eth0", "-j", "CHAOS_OUT"]):
                iptables(node.netns, *command)
        if self.backend == "redis":
            self.host = self.cluster.add_host("redis")
            self.start_redis()
            self.cluster.env["REDIS_URL"] = f"redis://{self.host.ip}:{REDIS_PORT}/0"
        elif self.backend in ("lease", "configmap"):
            self.host = self.cluster.add_host("api")
            self.kube = fakekube.FakeKube(host=self.host.ip)
            netns.run_in(self.host.netns, self.kube.start)
            self.cluster.env["KUBECONFIG"] = self.kube.write_kubeconfig(
                os.path.join(self.log_dir, "kubeconfig"))
            self.cluster.env["COORDINATION_NAMESPACE"] = "default"
        self.cluster.start()

    def close(self) -> None:
        for step in (self.stop_delayers, self._close_kube, self.cluster.close):
            try:
                step()
            except Exception as exc:  # every step runs; say what failed
                print(f"chaos: cleanup step {step.__name__} failed: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS_ROOT)

    def _close_kube(self) -> None:
        if self.kube is not None:
            self.kube.close()

    # redis ------------------------------------------------------------------------------------

    def start_redis(self) -> None:
        assert self.host is not None
        self.redis = self.cluster.spawn(
            self.host.netns,
            ["redis-server", "--port", str(REDIS_PORT), "--bind", self.host.ip, "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", self.log_dir],
            log_name="redis.log")
        deadline = time.monotonic() + 10
        while not self._redis_answers():
            if time.monotonic() > deadline or self.redis.poll() is not None:
                raise netns.HarnessError("redis-server did not answer PING in 10 s")
            time.sleep(0.02)

    def _redis_answers(self) -> bool:
        assert self.host is not None
        sock = netns.socket_in(self.host.netns, kind=socket.SOCK_STREAM)
        sock.settimeout(0.5)
        try:
            sock.connect((self.host.ip, REDIS_PORT))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
        finally:
            sock.close()

    def kill_redis(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(10)

    # the network ------------------------------------------------------------------------------

    def drop_all(self, node: netns.Node) -> None:
        iptables(node.netns, "-A", "CHAOS_IN", "-j", "DROP")
        iptables(node.netns, "-A", "CHAOS_OUT", "-j", "DROP")

    def drop_between(self, node: netns.Node, addresses: Sequence[str]) -> None:
        for address in addresses:
            iptables(node.netns, "-A", "CHAOS_IN", "-s", address, "-j", "DROP")
            iptables(node.netns, "-A", "CHAOS_OUT", "-d", address, "-j", "DROP")

    def lose(self, node: netns.Node, probability: float) -> None:
        for chain in ("CHAOS_IN", "CHAOS_OUT"):
            iptables(node.netns, "-A", chain, "-m", "statistic", "--mode", "random",
                     "--probability", f"{probability:.3f}", "-j", "DROP")

    def delay(self, node: netns.Node, *, delay_ms: float, jitter_ms: float, seed: int) -> None:
        queue = 100 + node.index
        log_name = f"nfdelay-{node.name}.log"
        process = self.cluster.spawn(
            node.netns, [sys.executable, NFDELAY, "--queue", str(queue), "--delay-ms",
                         f"{delay_ms:.0f}", "--jitter-ms", f"{jitter_ms:.0f}", "--seed",
                         str(seed)], log_name=log_name)
        self.delayers.append(process)
        deadline = time.monotonic() + 10
        path = os.path.join(self.log_dir, log_name)
        while True:  # bound to the queue: only then may packets be sent to it
            with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
                if f"queue {queue} delaying" in handle.read().split("nfdelay: released")[-1]:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise netns.HarnessError(f"nfdelay for {node.name} did not start: see {path}")
            time.sleep(0.02)
        # --queue-bypass: if the delayer dies, packets pass instead of being dropped.
        iptables(node.netns, "-A", "CHAOS_OUT", "-j", "NFQUEUE", "--queue-num", str(queue),
                 "--queue-bypass")

    def heal_network(self) -> None:
        for node in self.nodes:
            iptables(node.netns, "-F", "CHAOS_IN")
            iptables(node.netns, "-F", "CHAOS_OUT")
        self.stop_delayers()

    def stop_delayers(self) -> None:
        for process in self.delayers:
            if process.poll() is None:
                process.terminate()
        for process in self.delayers:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.delayers = []

    # reading the pins --------------------------------------------------------------------------

    def read_map(self, node: netns.Node) -> dict[int, int] | None:
        return self.cluster.pinned_table(node)

    def read_meta(self, node: netns.Node) -> tuple[chaoscheck.Version, str] | None:
        pinned = bpfsys.PinnedMap.open_existing(
            os.path.join(node.pin_dir, layout.SERVICE_LIST_META), layout.META_SPEC)
        if pinned is None:
            return None
        try:
            raw = pinned.lookup(bytes(4))
        finally:
            pinned.close()
        if raw is None:
            return None
        term, seq, digest, layout_version, _ = layout.META_STRUCT.unpack(raw)
        if layout_version == 0:
            return ZERO, ""
        return (term, seq), ("" if digest == bytes(32) else digest.hex())


def iptables(namespace: str, *args: str) -> None:
    netns.run("ip", "netns", "exec", namespace, "iptables", "-w", *args)


# -- talking to the agents ----------------------------------------------------------------------


class Agents:
    """One channel per agent (through the harness's forwarder on 127.0.0.1)."""

    def __init__(self, nodes: Sequence[netns.Node]) -> None:
        self._channels = {n.name: grpc.aio.insecure_channel(n.api_address,
                                                             options=CHANNEL_OPTIONS)
                          for n in nodes}

    def stub(self, node: netns.Node) -> pb_grpc.StateStub:
        return pb_grpc.StateStub(self._channels[node.name])  # type: ignore[no-untyped-call]

    async def leader(self, nodes: Sequence[netns.Node]) -> netns.Node | None:
        for node in nodes:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await self.stub(node).GetLeader(pb.GetLeaderRequest(), timeout=0.5)
                if reply.leader_node:
                    return next((n for n in nodes if n.name == reply.leader_node), None)
        return None

    async def state(self, node: netns.Node, timeout: float = 1.0) -> pb.GetStateResponse | None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await self.stub(node).GetState(pb.GetStateRequest(), timeout=timeout)
            assert isinstance(reply, pb.GetStateResponse)
            return reply
        return None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)


def version_of(message: pb.Version) -> chaoscheck.Version:
    return (message.term, message.seq)


def entries_of(reply: pb.GetStateResponse) -> dict[int, int]:
    return {chaoscheck_key(e.ip): e.replicas for e in reply.entries}


def chaoscheck_key(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "big")


# -- the recorder --------------------------------------------------------------------------------


class Recorder:
    """Fills a chaoscheck.History from WatchState, GetHistory and the pins while it runs."""

    def __init__(self, world: World, agents: Agents, start: float) -> None:
        self.world, self.agents, self.start = world, agents, start
        self.history = chaoscheck.History()
        self.unstable_samples = 0
        self.read_errors: list[str] = []
        self.watch_events = 0
        self.latest: dict[str, tuple[dict[int, int], chaoscheck.Version]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._history_replies = 0

    def begin(self) -> None:
        for node in self.world.nodes:
            self._tasks.append(asyncio.create_task(self._watch(node),
                                                   name=f"chaos.watch.{node.name}"))
            self._tasks.append(asyncio.create_task(self._poll_history(node),
                                                   name=f"chaos.history.{node.name}"))
        self._tasks.append(asyncio.create_task(self._sample(), name="chaos.sample"))

    async def end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def adopt(self, node: str, version: chaoscheck.Version, digest: str, stream: str) -> None:
        self.history.adoptions.append(chaoscheck.Adoption(
            node=node, version=version, content_hash=digest, stream=stream,
            at=now(self.start)))

    async def _watch(self, node: netns.Node) -> None:
        while True:
            try:
                async for event in self.agents.stub(node).WatchState(pb.WatchStateRequest()):
                    self.watch_events += 1
                    self.adopt(node.name, version_of(event.version), event.content_hash,
                               "watch")
            except grpc.aio.AioRpcError:
                pass  # the agent stopped or restarted: reconnect
            await asyncio.sleep(0.1)

    async def _poll_history(self, node: netns.Node) -> None:
        while True:
            await asyncio.sleep(HISTORY_INTERVAL)
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await self.agents.stub(node).GetHistory(pb.GetHistoryRequest(),
                                                                timeout=1.0)
                self._history_replies += 1
                for event in reply.events:
                    self.adopt(node.name, version_of(event.version), event.content_hash,
                               f"history#{self._history_replies}")

    async def _sample(self) -> None:
        while True:
            for node in self.world.nodes:
                try:
                    await self.sample_node(node)
                except (bpfsys.BpfError, OSError) as exc:
                    self.read_errors.append(f"{node.name} at t={now(self.start):.1f}s: {exc}")
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def sample_node(self, node: netns.Node) -> None:
        table = await self._stable_table(node)
        if table is None:
            self.unstable_samples += 1
            return
        meta = self.world.read_meta(node)
        version, digest = meta if meta is not None else (ZERO, "")
        if version != ZERO:
            self.adopt(node.name, version, digest, "meta")
        digest_of_table = self.history.add_table(table)
        self.history.samples.append(chaoscheck.MapSample(
            node=node.name, at=now(self.start), table_hash=digest_of_table, entries=len(table)))
        self.latest[node.name] = (table, version)

    async def _stable_table(self, node: netns.Node) -> dict[int, int] | None:
        """Two reads STABLE_GAP apart that agree; None after 5 tries (a writer mid-diff)."""
        first = self.world.read_map(node) or {}
        for _ in range(5):
            await asyncio.sleep(STABLE_GAP)
            second = self.world.read_map(node) or {}
            if second == first:
                return first
            first = second
        return None


# -- the client ----------------------------------------------------------------------------------


class Client:
    """WRITERS loops of SetService / DeleteService through random agents."""

    def __init__(self, world: World, agents: Agents, recorder: Recorder, *, seed: int) -> None:
        self.world, self.agents, self.recorder = world, agents, recorder
        self.seed = seed
        self.next_id = 1
        self.next_value = 2  # 1 is the anchor's
        self.errors: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def anchor(self, deadline: float) -> None:
        """The anchor service, retried until replicated and in every map."""
        rng = random.Random(self.seed)
        while True:
            if time.monotonic() > deadline:
                raise netns.HarnessError("the anchor write was never acknowledged by a peer")
            write = await self.write(rng.choice(self.world.nodes), ANCHOR, 1, write_id=0)
            if write.replicated:
                break
            await asyncio.sleep(0.3)
        key = chaoscheck_key(ANCHOR)
        while any(self.recorder.latest.get(n.name, ({}, ZERO))[0].get(key) != 1
                  for n in self.world.nodes):
            if time.monotonic() > deadline:
                raise netns.HarnessError("the anchor never reached every map")
            await asyncio.sleep(0.1)

    def begin(self) -> None:
        for i in range(WRITERS):
            self._tasks.append(asyncio.create_task(self._writer(random.Random(
                self.seed * 1000 + 17 + i)), name=f"chaos.writer.{i}"))

    async def end(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _writer(self, rng: random.Random) -> None:
        while not self._stop.is_set():
            node = rng.choice(self.world.nodes)
            ip = rng.choice(KEYS)
            value = None if rng.random() < 0.25 else self.next_value
            if value is not None:
                self.next_value += 1
            write_id, self.next_id = self.next_id, self.next_id + 1
            await self.write(node, ip, value, write_id=write_id)
            await asyncio.sleep(rng.uniform(0.05, 0.25))

    async def write(self, node: netns.Node, ip: str, value: int | None, *, write_id: int
                    ) -> chaoscheck.Write:
        started = now(self.recorder.start)
        stub = self.agents.stub(node)
        try:
            if value is None:
                reply = await stub.DeleteService(pb.DeleteServiceRequest(ip=ip),
                                                 timeout=WRITE_DEADLINE)
            else:
                reply = await stub.SetService(pb.SetServiceRequest(
                    ip=ip, replicas=value, name=f"chaos/w{write_id}"), timeout=WRITE_DEADLINE)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            self.errors[code] += 1
            write = chaoscheck.Write(id=write_id, key=chaoscheck_key(ip), value=value,
                                     node=node.name, started=started,
                                     ended=now(self.recorder.start),
                                     error=f"{code}: {exc.details()}")
        else:
            write = chaoscheck.Write(id=write_id, key=chaoscheck_key(ip), value=value,
                                     node=node.name, started=started,
                                     ended=now(self.recorder.start),
                                     version=version_of(reply.version),
                                     acked_peers=reply.acked_peers, quorum=reply.quorum)
        self.recorder.history.writes.append(write)
        return write


# -- the nemesis ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    kind: str
    lane: str
    start: float
    duration: float
    targets: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""
    applied_at: float | None = None
    healed_at: float | None = None
    error: str = ""


PROCESS_KINDS = ("kill", "stop", "restart")
NETWORK_KINDS = {
    "bpffs": ("partition-one", "partition-split", "loss", "delay"),
    "redis": ("partition-one", "partition-split", "loss", "delay", "redis-restart",
              "redis-restart"),
    "lease": ("partition-one", "partition-split", "loss", "delay", "api-pause", "api-500"),
    "configmap": ("partition-one", "partition-split", "loss", "delay", "api-pause", "api-500"),
}


def schedule(backend: str, seconds: float, seed: int) -> list[Fault]:
    """The whole campaign's faults, decided up front from the seed (targets are picked when a
    fault starts, by a generator seeded from the same seed, since "the leader" is known then)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    expiry = lease_expiry(backend)
    for lane, kinds in (("process", PROCESS_KINDS), ("network", NETWORK_KINDS[backend])):
        at = rng.uniform(0.5, 2.0)
        while at < seconds:
            kind = rng.choice(kinds)
            if kind == "stop":
                duration = expiry + rng.uniform(0.5, 2.0)  # past the lease's expiry
            elif kind == "restart":
                duration = 0.0
            elif kind == "kill":
                duration = rng.uniform(0.2, 3.0)  # down time before the restart
            elif kind == "redis-restart":
                duration = rng.uniform(0.0, 2.0)
            else:
                duration = rng.uniform(1.5, 6.0)
            duration = min(duration, max(0.0, seconds - at))
            faults.append(Fault(kind=kind, lane=lane, start=at, duration=duration))
            at += duration + rng.uniform(1.0, 4.0)
    return sorted(faults, key=lambda f: f.start)


class Nemesis:
    def __init__(self, world: World, agents: Agents, *, seed: int, start: float) -> None:
        self.world, self.agents, self.start = world, agents, start
        self.rng = random.Random(seed + 7919)
        self.log: list[Fault] = []
        self.stopped: set[str] = set()
        self.offset = 0.0  # campaign time at which the schedule's time 0 falls

    async def run(self, faults: Sequence[Fault]) -> None:
        lanes = {lane: [f for f in faults if f.lane == lane] for lane in ("process", "network")}
        await asyncio.gather(*(self._lane(items) for items in lanes.values()))

    async def _lane(self, faults: Sequence[Fault]) -> None:
        for fault in faults:
            await asyncio.sleep(max(0.0, self.offset + fault.start - now(self.start)))
            self.log.append(fault)
            heal: Callable[[], Any] | None = None
            try:
                fault.applied_at = now(self.start)
                heal = await self._apply(fault)
                await asyncio.sleep(fault.duration)
            except netns.HarnessError as exc:
                fault.error = str(exc)
            finally:
                if heal is not None:
                    await asyncio.shield(asyncio.to_thread(heal))
                fault.healed_at = now(self.start)

    async def _target(self) -> netns.Node:
        if self.rng.random() < 0.5:
            running = [n for n in self.world.nodes if n.running and n.name not in self.stopped]
            leader = await self.agents.leader(running)
            if leader is not None:
                return leader
        return self.rng.choice(self.world.nodes)

    async def _apply(self, fault: Fault) -> Callable[[], Any] | None:
        world, rng = self.world, self.rng
        nodes = world.nodes
        if fault.kind in PROCESS_KINDS:
            node = await self._target()
            fault.targets = [node.name]
            return await getattr(self, f"_{fault.kind}")(node)
        if fault.kind == "partition-one":
            node = rng.choice(nodes)
            fault.targets = [node.name]
            await asyncio.to_thread(world.drop_all, node)
            return world.heal_network
        if fault.kind == "partition-split":
            return await self._split(fault)
        if fault.kind == "loss":
            chosen = rng.sample(nodes, rng.randint(1, 3))
            probability = rng.uniform(0.1, 0.4)
            fault.targets, fault.detail = [n.name for n in chosen], f"p={probability:.2f}"
            for node in chosen:
                await asyncio.to_thread(world.lose, node, probability)
            return world.heal_network
        if fault.kind == "delay":
            chosen = rng.sample(nodes, rng.randint(1, 2))
            delay, jitter = rng.uniform(50, 300), rng.uniform(0, 100)
            fault.targets = [n.name for n in chosen]
            fault.detail = f"{delay:.0f} ms + 0..{jitter:.0f} ms"
            for node in chosen:
                await asyncio.to_thread(world.delay, node, delay_ms=delay, jitter_ms=jitter,
                                        seed=rng.randrange(1 << 30))
            return world.heal_network
        if fault.kind == "redis-restart":
            fault.targets = ["redis"]
            await asyncio.to_thread(world.kill_redis)
            return world.start_redis
        if fault.kind == "api-pause":
            assert world.kube is not None
            fault.targets = ["api-server"]
            world.kube.pause()
            return world.kube.resume
        if fault.kind == "api-500":
            assert world.kube is not None
            fault.targets = ["api-server"]
            world.kube.fail(status=500, times=None, message="chaos")
            return world.kube.clear_faults
        raise ValueError(f"unknown fault {fault.kind}")

    async def _split(self, fault: Fault) -> Callable[[], Any]:
        world, rng = self.world, self.rng
        shuffled = list(world.nodes)
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(shuffled) - 1)
        sides = [shuffled[:cut], shuffled[cut:]]
        backend_side = rng.randrange(2)  # the side that keeps the backend's host
        fault.targets = [n.name for n in sides[0]] + ["|"] + [n.name for n in sides[1]]
        hosts = [world.host.ip] if world.host is not None else []
        fault.detail = f"backend with side {backend_side + 1}" if hosts else ""
        for index, side in enumerate(sides):
            other = [n.ip for n in sides[1 - index]]
            if index != backend_side:
                other += hosts
            for node in side:
                await asyncio.to_thread(world.drop_between, node, other)
        return world.heal_network

    async def _kill(self, node: netns.Node) -> Callable[[], Any]:
        await asyncio.to_thread(self.world.cluster.kill_agent, node, signal.SIGKILL)
        return lambda: self._ensure_running(node)

    async def _stop(self, node: netns.Node) -> Callable[[], Any]:
        if node.process is not None and node.running:
            node.process.send_signal(signal.SIGSTOP)
            self.stopped.add(node.name)

        def cont() -> None:
            if node.process is not None and node.running:
                node.process.send_signal(signal.SIGCONT)
            self.stopped.discard(node.name)
        return cont

    async def _restart(self, node: netns.Node) -> Callable[[], Any]:
        await asyncio.to_thread(self.world.cluster.kill_agent, node, signal.SIGTERM)
        return lambda: self._ensure_running(node)

    def _ensure_running(self, node: netns.Node) -> None:
        if not node.running:
            self.world.cluster.start_agent(node)

    def heal_all(self) -> None:
        """After the campaign: whatever a cancelled lane left, undone."""
        for node in self.world.nodes:
            if node.process is not None and node.running:
                node.process.send_signal(signal.SIGCONT)
            self._ensure_running(node)
        self.stopped.clear()
        self.world.heal_network()
        if self.world.kube is not None:
            self.world.kube.resume()
            self.world.kube.clear_faults()
        if self.world.backend == "redis" and (self.world.redis is None
                                              or self.world.redis.poll() is not None):
            self.world.start_redis()


# -- the campaign --------------------------------------------------------------------------------


async def wait_for(what: str, check: Callable[[], Any], *, timeout: float,
                   interval: float = 0.1) -> float:
    """Polls check() (sync or async) until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise netns.HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def all_answer(agents: Agents, nodes: Sequence[netns.Node]) -> bool:
    replies = await asyncio.gather(*(agents.state(n, 0.5) for n in nodes))
    return all(r is not None for r in replies)


async def campaign(world: World, *, seconds: float, seed: int) -> dict[str, Any]:
    start = time.monotonic()
    agents = Agents(world.nodes)
    recorder = Recorder(world, agents, start)
    client = Client(world, agents, recorder, seed=seed)
    nemesis = Nemesis(world, agents, seed=seed, start=start)
    bound = convergence_bound(world.backend)
    try:
        await wait_for("every agent to answer GetState", lambda: all_answer(agents, world.nodes),
                       timeout=START_DEADLINE)
        recorder.begin()
        await client.anchor(time.monotonic() + START_DEADLINE)
        faults = schedule(world.backend, seconds, seed)
        nemesis.offset = now(start)
        client.begin()
        await nemesis.run(faults)
        await client.end()
        await asyncio.to_thread(nemesis.heal_all)
        healed = now(start)
        await wait_for("every agent to answer after the faults",
                       lambda: all_answer(agents, world.nodes), timeout=START_DEADLINE)
        serving = now(start)
        converged = await measure_convergence(world, recorder, timeout=2 * bound)
        await final_state(world, agents, recorder)
    finally:
        await recorder.end()
        await agents.close()
    history = recorder.history
    history.converged_after = converged
    history.convergence_bound = bound
    report = chaoscheck.check(history)
    save(world.log_dir, history, nemesis.log)
    writes = [w for w in history.writes if w.id != 0]
    return {
        "backend": world.backend, "seed": seed, "seconds": seconds, "agents": len(world.nodes),
        "faults": {"count": len(nemesis.log),
                   "by_kind": dict(sorted(Counter(f.kind for f in nemesis.log).items())),
                   "failed_to_apply": sum(1 for f in nemesis.log if f.error),
                   "errors": [f"{f.kind}: {f.error}" for f in nemesis.log if f.error][:5]},
        "writes_attempted": len(writes),
        "writes_acknowledged": sum(1 for w in writes if w.acknowledged),
        "writes_replicated": sum(1 for w in writes if w.replicated),
        "writes_leader_only": sum(1 for w in writes if w.acknowledged and not w.replicated),
        "writes_failed": sum(1 for w in writes if not w.acknowledged),
        "write_errors": dict(sorted(client.errors.items())),
        "convergence_s": None if converged is None else round(converged, 2),
        "convergence_bound_s": bound,
        "heal_to_serving_s": round(serving - healed, 2),
        "map_samples": len(history.samples), "unstable_samples": recorder.unstable_samples,
        "watch_events": recorder.watch_events, "adoptions": len(history.adoptions),
        "versions": len({a.version for a in history.adoptions}),
        "final_versions": sorted({chaoscheck.show_version(v) for v, _ in history.final.values()}),
        **report.figures,
        "violations": report.violations,
        "log_dir": world.log_dir,
    }


async def measure_convergence(world: World, recorder: Recorder, *, timeout: float
                              ) -> float | None:
    """Seconds until every map holds the same table at the same META version (sampled by the
    recorder, every 100 ms); None if that did not happen within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        latest = [recorder.latest.get(n.name) for n in world.nodes]
        if all(x is not None for x in latest) and len({json.dumps(sorted(x[0].items())) + str(
                x[1]) for x in latest if x is not None}) == 1:
            return time.monotonic() - started
        await asyncio.sleep(SAMPLE_INTERVAL)
    return None


async def final_state(world: World, agents: Agents, recorder: Recorder) -> None:
    for node in world.nodes:
        reply = await agents.state(node, 2.0)
        if reply is None:
            continue
        version = version_of(reply.version)
        digest = recorder.history.add_table(entries_of(reply))
        if reply.content_hash and reply.content_hash != digest:
            recorder.history.adoptions.append(chaoscheck.Adoption(
                node=node.name, version=version, content_hash=reply.content_hash,
                stream="state", at=now(recorder.start)))
        recorder.adopt(node.name, version, digest, "state")
        recorder.history.final[node.name] = (version, digest)


def save(log_dir: str, history: chaoscheck.History, faults: Sequence[Fault]) -> None:
    """Everything the checker saw, so `--recheck LOG_DIR` can judge it again offline."""
    def lines(name: str, items: Sequence[Any]) -> None:
        with open(os.path.join(log_dir, name), "w", encoding="utf-8") as out:
            for item in items:
                out.write(json.dumps(dataclasses.asdict(item)) + "\n")

    lines("faults.jsonl", faults)
    lines("writes.jsonl", history.writes)
    lines("adoptions.jsonl", history.adoptions)
    lines("samples.jsonl", history.samples)
    with open(os.path.join(log_dir, "tables.json"), "w", encoding="utf-8") as out:
        json.dump({"tables": {h: sorted(t.items()) for h, t in history.tables.items()},
                   "final": history.final, "converged_after": history.converged_after,
                   "convergence_bound": history.convergence_bound}, out)


def load(log_dir: str) -> chaoscheck.History:
    def lines(name: str) -> list[dict[str, Any]]:
        with open(os.path.join(log_dir, name), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def version(value: Any) -> chaoscheck.Version | None:
        return None if value is None else (int(value[0]), int(value[1]))

    with open(os.path.join(log_dir, "tables.json"), encoding="utf-8") as handle:
        saved = json.load(handle)
    return chaoscheck.History(
        adoptions=[chaoscheck.Adoption(**{**a, "version": version(a["version"])})
                   for a in lines("adoptions.jsonl")],
        samples=[chaoscheck.MapSample(**m) for m in lines("samples.jsonl")],
        tables={h: dict(map(tuple, items)) for h, items in saved["tables"].items()},
        writes=[chaoscheck.Write(**{**w, "version": version(w["version"])})
                for w in lines("writes.jsonl")],
        final={node: (version(v) or ZERO, h) for node, (v, h) in saved["final"].items()},
        converged_after=saved["converged_after"],
        convergence_bound=saved["convergence_bound"])


# -- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--recheck", metavar="LOG_DIR", default="",
                        help="judge a finished run's saved history again (no cluster)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long faults are injected (then heal and a quiet period)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--log-dir", default="", help="agent logs and the recorded history")
    args = parser.parse_args(argv)
    if not args.backend and not args.recheck:
        parser.error("--backend is required (or --recheck LOG_DIR)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recheck:
        report = chaoscheck.check(load(args.recheck))
        print(json.dumps({**report.figures, "violations": report.violations}))
        return 1 if report.violations else 0
    gaps = netns.missing() + [f"the {tool} command" for tool in ("iptables", "redis-server")
                              if shutil.which(tool) is None]
    if gaps:
        print(json.dumps({"error": "cannot run the campaign here: " + ", ".join(gaps)}))
        return 2
    netns.sweep_stale(PREFIX)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix=f"gossip-chaos-{args.backend}-")
    os.makedirs(log_dir, exist_ok=True)
    world = World(backend=args.backend, log_dir=log_dir)
    try:
        world.build()
        result = asyncio.run(campaign(world, seconds=args.seconds, seed=args.seed))
    except Exception as exc:  # the harness failed, not the agents: exit 2, not 1
        print(json.dumps({"backend": args.backend, "seed": args.seed,
                          "error": f"the campaign itself failed: {exc!r}", "log_dir": log_dir}))
        return 2
    finally:
        world.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
