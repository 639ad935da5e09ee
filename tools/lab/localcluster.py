"""Runs N agent processes on this machine: the demo, the benchmark and end-to-end tests use it.

Each agent listens on its own loopback port, lists every other agent in PEERS, pins its maps in
its own directory under `root` and competes for one bpffs lease in `root` itself (on a real node
pin and lease directories coincide; here they must not, or the agents would share one map).
Without a mounted bpffs (no root) the agents fall back, loudly, to memory maps and a flock on
an ordinary directory (PROFILE=local, DATAPLANE=auto).

Operating each agent (observe=True, the default): /metrics on METRICS_PORT and the aiomonitor
console on AIOMONITOR_PORT (web UI and Python console ports next to it, the Python console
disabled), all on free loopback ports recorded in AgentProcess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import grpc.aio

from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc

BPFFS_ROOT = "/sys/fs/bpf/gossip-agent-local"


# Listening ports are picked below the kernel's ephemeral range: a port bind(0) hands out comes
# from that range, and between its release here and the agent's own bind any outgoing
# connection (32 agents open hundreds) may take it. The agent then exits at start and a
# benchmark waited 300 s for it.
LOWEST_PORT = 10000


def ephemeral_start(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as ranges:
        return int(ranges.read().split()[0])
    return 32768


def free_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """Distinct ports that bind now, below the ephemeral range; held open together while they
    are chosen so they are distinct."""
    rng = rng or random.Random()
    candidates = list(range(LOWEST_PORT, ephemeral_start()))
    rng.shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            if len(sockets) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        if len(sockets) < count:
            raise RuntimeError(f"only {len(sockets)} of {count} listening ports are free below "
                               f"{ephemeral_start()}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1:3] == [path, "bpf"] for line in mounts)
    return False


@dataclasses.dataclass
class AgentProcess:
    index: int
    node: str
    address: str
    pin_dir: str
    env: dict[str, str]
    log_path: str
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0  # 0 = off
    monitor_port: int = 0  # the aiomonitor console; 0 = off

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gossip_agent", "run"], env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    def __init__(
        self,
        nodes: int,
        *,
        root: str,
        log_dir: str,
        extra_env: Mapping[str, str] | None = None,
        observe: bool = True,
        mtls: bool = False,
    ) -> None:
        self.root = root
        # mtls: a CA, one certificate per agent and an admin one under log_dir/tls; `client`
        # opens channels the way an operator with the admin certificate would.
        self.client = tls.ChannelFactory(None)
        # One batch, so every port is distinct: gRPC, then metrics, console, web UI, REPL.
        ports = free_ports(nodes * (5 if observe else 1))
        addresses = [f"127.0.0.1:{port}" for port in ports[:nodes]]
        os.makedirs(log_dir, exist_ok=True)
        self.agents = [
            self._agent(i, addresses, log_dir, extra_env or {}) for i in range(nodes)
        ]
        if observe:
            for agent, extra in zip(self.agents, _chunks(ports[nodes:], 4), strict=True):
                _observe(agent, extra)
        if mtls:
            self.client = _issue_certificates(self.agents, os.path.join(log_dir, "tls"))

    def _agent(
        self, index: int, addresses: Sequence[str], log_dir: str, extra: Mapping[str, str]
    ) -> AgentProcess:
        node = f"node-{index}"
        pin_dir = os.path.join(self.root, node)
        env = {
            **os.environ,
            "PROFILE": "local",
            "NODE_NAME": node,
            "LISTEN_ADDR": addresses[index],
            "PEERS": ",".join(a for a in addresses if a != addresses[index]),
            "BPF_PIN_DIR": pin_dir,
            "BPF_LEASE_DIR": self.root,
            **extra,
        }
        return AgentProcess(index, node, addresses[index], pin_dir, env,
                            os.path.join(log_dir, f"{node}.log"))

    @property
    def metrics_targets(self) -> list[str]:
        """host:port of every agent's /metrics (what a Prometheus scrape config lists)."""
        return [f"127.0.0.1:{a.metrics_port}" for a in self.agents if a.metrics_port]

    @property
    def addresses(self) -> list[str]:
        return [a.address for a in self.agents]

    def start(self) -> None:
        for agent in self.agents:
            agent.start()

    def stop(self, timeout: float = 10.0) -> None:
        for agent in self.agents:
            agent.signal(signal.SIGTERM)
        for agent in self.agents:
            agent.wait(timeout)

    def exited(self) -> list[AgentProcess]:
        return [a for a in self.agents if a.process is not None and a.process.poll() is not None]


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _observe(agent: AgentProcess, ports: Sequence[int]) -> None:
    agent.metrics_port, agent.monitor_port = ports[0], ports[1]
    agent.env.update({
        "METRICS_PORT": str(ports[0]),
        "METRICS_HOST": "127.0.0.1",
        "AIOMONITOR_PORT": str(ports[1]),
        "AIOMONITOR_WEBUI_PORT": str(ports[2]),
        "AIOMONITOR_CONSOLE_PORT": str(ports[3]),
    })


def _issue_certificates(agents: Sequence[AgentProcess], directory: str) -> tls.ChannelFactory:
    """Certificates from a fresh CA (lab.certs: the `test` extra)."""
    from pathlib import Path

    from lab import certs

    ca = certs.authority(Path(directory))
    for agent in agents:
        agent.env.update(certs.tls_env(ca=ca, leaf=ca.issue(Path(directory), agent.node)))
    admin = ca.issue(Path(directory), "gossip-agent-admin", dns=())
    return tls.ChannelFactory(tls.TlsFiles(cert=str(admin.cert), key=str(admin.key),
                                           ca=str(ca.cert)))


_PLAINTEXT = tls.ChannelFactory(None)


async def call(
    address: str, method: str, request: object, timeout: float = 2.0,
    *, channels: tls.ChannelFactory = _PLAINTEXT,
) -> object:
    async with channels.open(address, []) as channel:
        stub = pb_grpc.StateStub(channel)
        return await getattr(stub, method)(request, timeout=timeout)


async def states(
    addresses: Sequence[str], timeout: float = 2.0, *, channels: tls.ChannelFactory = _PLAINTEXT,
) -> list[pb.GetStateResponse | None]:
    async def one(address: str) -> pb.GetStateResponse | None:
        try:
            reply = await call(address, "GetState", pb.GetStateRequest(), timeout,
                               channels=channels)
        except grpc.aio.AioRpcError:
            return None
        assert isinstance(reply, pb.GetStateResponse)
        return reply

    return list(await asyncio.gather(*(one(a) for a in addresses)))


async def find_leader(
    addresses: Sequence[str], timeout: float, *, channels: tls.ChannelFactory = _PLAINTEXT,
) -> tuple[str, pb.GetLeaderResponse]:
    """The address of the agent that says it leads and has published its first snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address in addresses:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await call(address, "GetLeader", pb.GetLeaderRequest(), 1.0,
                                   channels=channels)
                assert isinstance(reply, pb.GetLeaderResponse)
                if reply.is_self:
                    state = await call(address, "GetState", pb.GetStateRequest(), 1.0,
                                       channels=channels)
                    assert isinstance(state, pb.GetStateResponse)
                    if state.version.term == reply.term:
                        return address, reply
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no leader among {len(addresses)} agents after {timeout:g}s")


async def wait_all(
    addresses: Sequence[str], *, what: str, timeout: float,
    check: Callable[[pb.GetStateResponse], bool], channels: tls.ChannelFactory = _PLAINTEXT,
) -> list[pb.GetStateResponse]:
    """Polls GetState on every agent until check(state) holds for all of them."""
    deadline = time.monotonic() + timeout
    last: list[pb.GetStateResponse | None] = []
    while time.monotonic() < deadline:
        last = await states(addresses, channels=channels)
        if all(s is not None and check(s) for s in last):
            return [s for s in last if s is not None]
        await asyncio.sleep(0.05)
    lagging = [a for a, s in zip(addresses, last, strict=False)
               if s is None or not check(s)]
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; lagging: {lagging}")
