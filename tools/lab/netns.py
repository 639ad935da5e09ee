"""A small cluster on one machine: each node a network namespace running its own agent process.

Layout (every name carries the caller's prefix and a run id, so parallel runs never collide):

    switch ns  <prefix>-<run>-sw : bridge br0, one port sw<i> per node
    node ns    <prefix>-<run>-n<i>: eth0 10.100.0.<i+1>/24 (to the bridge; agents gossip here),
                                     veth<i> 10.200.<i>.1/24 (the node end of the pod's veth,
                                     where the XDP program goes, as on a real node), service
                                     IPs on lo (a listener there stands in for the Service's
                                     endpoints), and the agent process (nsenter --net=...)
    pod ns     <prefix>-<run>-p<i>: eth0 10.200.<i>.2/24, default route via the node, so
                                     traffic from the pod to a service IP crosses veth<i>

The bridge lives in its own namespace, so nothing is added to the host's network: only the
namespaces' /run/netns files are visible outside. Agents are started with `nsenter --net=`
rather than `ip netns exec`, which remounts /sys and would hide the host's bpffs (DESIGN.md):
the agents pin their maps under `bpffs_root`/<node> and share the bpffs lease in `bpffs_root`.

The test process stays in the host namespace and reaches each agent's gRPC port through a TCP
forwarder on 127.0.0.1 (api_address), whose upstream sockets are created inside the node's
namespace (a socket keeps the namespace it was created in); UDP test sockets are made the same
way (socket_in). Nothing here needs a process per packet.

Cleanup (close(), also on a failed start and at exit of the `with` block) always runs every
step and logs what fails: agents by PID (SIGTERM, SIGKILL after a grace period), then any
process whose environment carries this run's marker (e.g. an agent restarted by a test), the
forwarders, the namespaces (pod, node, switch: veths and the XDP programs on them go with
them), and the bpffs directory. sweep_stale(prefix) removes what a killed run left behind.

Root, `ip` and `bridge` (iproute2), `nsenter` and a mounted bpffs are required;
missing() says which are absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys

log = logging.getLogger("lab.netns")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
MARKER = "GOSSIP_AGENT_NETNS_RUN"  # env var naming the run in every process it starts
AGENT_PORT = 50051  # fixed: each agent has its namespace's whole port space to itself
NODE_NET = "10.100.0"  # node i: 10.100.0.<i+1>
POD_NET = "10.200"  # pod i: 10.200.<i>.2, its node end 10.200.<i>.1
XDP_GLOB = "veth*"  # the node ends of the pods' veths, as XDP_INTERFACES names them
STOP_GRACE = 5.0  # seconds from SIGTERM to SIGKILL: the agent's own grace (2 s) plus margin
MAX_NODES = 200  # node addresses are 10.100.0.1..200
FIRST_HOST = 201  # extra hosts (a Redis server, a fake API server): 10.100.0.201..254
MAX_HOSTS = 54


class HarnessError(Exception):
    """A harness step failed; the message names the command and its stderr."""


def missing() -> list[str]:
    """What this machine lacks for a namespaced cluster (empty when everything is there)."""
    gaps = []
    if os.geteuid() != 0:
        gaps.append("root (network namespaces and BPF need it)")
    for tool in ("ip", "bridge", "nsenter"):
        if shutil.which(tool) is None:
            gaps.append(f"the {tool} command")
    if not bpfsys.is_bpffs("/sys/fs/bpf"):
        gaps.append("bpffs mounted at /sys/fs/bpf")
    return gaps


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def ip(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "-n", netns, *args, check=check)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(netns: str, family: int = socket.AF_INET,
              kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket living in network namespace `netns`, usable from any thread of this process.

    A socket belongs to the namespace its creator was in; a short-lived thread enters the
    namespace (setns affects only the calling thread), creates it and exits."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _setns(os.path.join(NETNS_DIR, netns))
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=make, name=f"netns-socket[{netns}]")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise HarnessError(f"cannot create a socket in {netns}: {outcome}") from outcome
    return outcome


def run_in(netns: str, call: Callable[[], object]) -> None:
    """Runs `call` on a thread that entered `netns` (e.g. a server's start(), so its listening
    socket lives there while the test process stays in the host's namespace); re-raises what
    it raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _setns(os.path.join(NETNS_DIR, netns))
            call()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns.run-in.{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class Forwarder:
    """TCP forwarders from 127.0.0.1:<port> to an address inside a namespace, on one thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="netns-forwarder",
                                        daemon=True)
        self._thread.start()

    def open(self, *, netns: str, host: str, port: int) -> str:
        """Starts a forwarder; returns its 127.0.0.1:port."""
        future = asyncio.run_coroutine_threadsafe(self._serve(netns, host, port), self._loop)
        return future.result(timeout=10)

    async def _serve(self, netns: str, host: str, port: int) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await self._loop.sock_connect(upstream, (host, port))
            except OSError:
                upstream.close()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@dataclasses.dataclass(frozen=True)
class Host:
    """A namespace on the cluster network that runs no agent: for the servers later backends
    need (redis-server, a fake Kubernetes API), reachable from every node at `ip`."""

    name: str
    netns: str
    ip: str


@dataclasses.dataclass
class Node:
    index: int
    name: str  # NODE_NAME of its agent
    netns: str
    pod_netns: str
    ip: str  # on eth0, towards the bridge
    pod_ip: str
    veth: str  # the node end of the pod's veth (XDP goes here)
    pin_dir: str
    log_path: str
    api_address: str = ""  # 127.0.0.1:port forwarding to the agent's gRPC port
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The agent's gRPC address inside the cluster network."""
        return f"{self.ip}:{AGENT_PORT}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Listener:
    """UDP sockets bound to service IPs inside a node namespace; counts datagrams per service."""

    def __init__(self, netns: str, services: Sequence[str], port: int) -> None:
        self.port = port
        self.counts = dict.fromkeys(services, 0)
        self._sockets: dict[str, socket.socket] = {}
        for service in services:
            sock = socket_in(netns)
            sock.bind((service, port))
            sock.setblocking(False)
            self._sockets[service] = sock

    def drain(self) -> dict[str, int]:
        """Reads everything that arrived so far; returns the running counts."""
        for service, sock in self._sockets.items():
            while True:
                try:
                    sock.recv(2048)
                except BlockingIOError:
                    break
                self.counts[service] += 1
        return dict(self.counts)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()


class Cluster:
    """`with Cluster(3, prefix="ga4b", ...) as cluster:` builds the network, then start()."""

    _runs = 0

    def __init__(
        self,
        nodes: int,
        *,
        prefix: str,
        bpffs_root: str,
        log_dir: str,
        env: Mapping[str, str] | None = None,
        services: Sequence[str] = (),
        wrapper: Sequence[str] = (),
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}")
        Cluster._runs += 1
        self.run_id = f"{prefix}-{os.getpid()}x{Cluster._runs}"
        self.bpffs_root = bpffs_root
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.services = list(services)
        # A command the agent runs under, inside its namespace (e.g. setpriv limiting its
        # capabilities to what a manifest grants); nsenter itself keeps the test's rights.
        self.wrapper = list(wrapper)
        self.switch = f"{self.run_id}-sw"
        self.nodes = [self._node(i) for i in range(nodes)]
        self._namespaces: list[str] = []
        self._forwarder: Forwarder | None = None
        self._listeners: list[Listener] = []
        self.hosts: list[Host] = []
        self._processes: list[subprocess.Popen[bytes]] = []  # spawn()ed, stopped in close()

    def _node(self, i: int) -> Node:
        return Node(
            index=i, name=f"node-{i}", netns=f"{self.run_id}-n{i}", pod_netns=f"{self.run_id}-p{i}",
            ip=f"{NODE_NET}.{i + 1}", pod_ip=f"{POD_NET}.{i}.2", veth=f"veth{i}",
            pin_dir=os.path.join(self.bpffs_root, f"node-{i}"),
            log_path=os.path.join(self.log_dir, f"node-{i}.log"),
        )

    # -- building -------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.bpffs_root, exist_ok=True)
        self._add_netns(self.switch)
        ip(self.switch, "link", "add", "br0", "type", "bridge")
        ip(self.switch, "link", "set", "br0", "up")
        for node in self.nodes:
            self._build_node(node)
        self._forwarder = Forwarder()
        for node in self.nodes:
            node.api_address = self._forwarder.open(netns=node.netns, host=node.ip,
                                                    port=AGENT_PORT)

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self._namespaces.append(name)
        ip(name, "link", "set", "lo", "up")

    def _join_switch(self, netns: str, *, port: str, address: str) -> None:
        """eth0 in `netns` at address/24, its peer `port` a port of the bridge."""
        run("ip", "link", "add", "eth0", "netns", netns, "type", "veth",
            "peer", "name", port, "netns", self.switch)
        ip(self.switch, "link", "set", port, "master", "br0", "up")
        ip(netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(netns, "link", "set", "eth0", "up")

    def _build_node(self, node: Node) -> None:
        self._add_netns(node.netns)
        self._add_netns(node.pod_netns)
        self._join_switch(node.netns, port=f"sw{node.index}", address=node.ip)
        run("ip", "link", "add", node.veth, "netns", node.netns, "type", "veth",
            "peer", "name", "eth0", "netns", node.pod_netns)
        gateway = f"{POD_NET}.{node.index}.1"
        ip(node.netns, "addr", "add", f"{gateway}/24", "dev", node.veth)
        ip(node.netns, "link", "set", node.veth, "up")
        ip(node.pod_netns, "addr", "add", f"{node.pod_ip}/24", "dev", "eth0")
        ip(node.pod_netns, "link", "set", "eth0", "up")
        ip(node.pod_netns, "route", "add", "default", "via", gateway)
        for service in self.services:
            ip(node.netns, "addr", "add", f"{service}/32", "dev", "lo")

    def add_host(self, name: str) -> Host:
        """A namespace joined to the bridge at 10.100.0.<201+k>, for a server processes in the
        node namespaces talk to (start it with spawn())."""
        index = len(self.hosts)
        if index >= MAX_HOSTS:
            raise HarnessError(f"at most {MAX_HOSTS} hosts")
        host = Host(name=name, netns=f"{self.run_id}-h{index}",
                    ip=f"{NODE_NET}.{FIRST_HOST + index}")
        self._add_netns(host.netns)
        self._join_switch(host.netns, port=f"sh{index}", address=host.ip)
        self.hosts.append(host)
        return host

    def spawn(self, netns: str, argv: Sequence[str], *, log_name: str,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Starts argv inside namespace `netns` (a host's, a node's or a pod's), output to
        log_dir/<log_name>; close() stops it by PID like the agents."""
        with open(os.path.join(self.log_dir, log_name), "ab") as log_file:
            process = subprocess.Popen(
                ["nsenter", f"--net={os.path.join(NETNS_DIR, netns)}", "--", *argv],
                env={**os.environ, **(env or {}), MARKER: self.run_id},
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._processes.append(process)
        return process

    # -- agents ---------------------------------------------------------------------------------

    def agent_env(self, node: Node) -> dict[str, str]:
        peers = ",".join(n.address for n in self.nodes if n is not node)
        return {
            **os.environ,
            "PROFILE": "local",
            "NODE_NAME": node.name,
            "LISTEN_ADDR": node.address,
            "ADVERTISE_ADDR": node.address,
            "PEERS": peers,
            "BPF_PIN_DIR": node.pin_dir,
            "BPF_LEASE_DIR": self.bpffs_root,
            "DATAPLANE": "bpf",
            "XDP_INTERFACES": XDP_GLOB,
            MARKER: self.run_id,
            **self.env,
        }

    def start(self, nodes: Sequence[Node] | None = None) -> None:
        for node in nodes if nodes is not None else self.nodes:
            self.start_agent(node)

    def start_agent(self, node: Node, *, tree: str | None = None) -> None:
        """Starts the node's agent; `tree` runs another release's code (a directory holding its
        gossip_agent/ and bpf/, e.g. from `git archive`): a rolling update's older agents."""
        if node.running:
            raise HarnessError(f"the agent of {node.name} is already running")
        env = self.agent_env(node)
        if tree is not None:  # `-m` puts the working directory first on sys.path
            env["PYTHONPATH"] = tree
        with open(node.log_path, "ab") as log_file:
            node.process = subprocess.Popen(
                ["nsenter", f"--net={os.path.join(NETNS_DIR, node.netns)}", "--",
                 *self.wrapper, sys.executable, "-m", "gossip_agent", "run"],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=tree,
            )

    def kill_agent(self, node: Node, sig: int = signal.SIGKILL, *, timeout: float = STOP_GRACE
                   ) -> int | None:
        """Signals the agent and waits for it to exit (SIGKILL after `timeout`)."""
        process = node.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    # -- the network ----------------------------------------------------------------------------

    def cut(self, node: Node, *, how: str = "drop") -> None:
        """Cuts `node` off from the others.

        "drop": its switch port stops forwarding (bridge port state disabled): every frame to
        and from the node is silently lost while both links stay up, so open connections hang
        as with a failed switch or a `tc ... drop` (tc's netem and drop actions are kernel
        modules this machine's kernel does not have; the bridge port state is built in).
        "down": the node's link goes down: its calls fail at once."""
        if how == "drop":
            run("bridge", "-n", self.switch, "link", "set", "dev", f"sw{node.index}",
                "state", "0")
        elif how == "down":
            ip(node.netns, "link", "set", "eth0", "down")
        else:
            raise ValueError(f"how must be drop or down, not {how!r}")

    def heal(self, node: Node) -> None:
        """Undoes cut(): link up, then the switch port forwarding again."""
        ip(node.netns, "link", "set", "eth0", "up")
        run("bridge", "-n", self.switch, "link", "set", "dev", f"sw{node.index}", "state", "3")

    def listener(self, node: Node, *, port: int, services: Sequence[str] | None = None
                 ) -> Listener:
        """UDP listeners for the service IPs on `node` (they must be among `services`)."""
        listener = Listener(node.netns, services if services is not None else self.services,
                            port)
        self._listeners.append(listener)
        return listener

    def send_from_pod(self, node: Node, service: str, *, port: int, count: int) -> None:
        """`count` UDP datagrams from the node's pod to service:port."""
        sock = socket_in(node.pod_netns)
        try:
            for i in range(count):
                sock.sendto(f"probe {i}".encode(), (service, port))
        finally:
            sock.close()

    # -- reading the kernel ---------------------------------------------------------------------

    def pinned_table(self, node: Node) -> dict[int, int] | None:
        """The node's SERVICE_LIST as the kernel holds it (read from the pin, never written)."""
        path = os.path.join(node.pin_dir, layout.SERVICE_LIST)
        pinned = bpfsys.PinnedMap.open_existing(path, layout.service_list_spec(
            int(self.env.get("MAP_MAX_ENTRIES", layout.DEFAULT_MAX_ENTRIES))))
        if pinned is None:
            return None
        try:
            return pinned.items_u32()
        finally:
            pinned.close()

    # -- cleanup --------------------------------------------------------------------------------

    def close(self) -> None:
        """Removes everything this cluster made; every step runs even if an earlier one fails."""
        for step in (self._stop_agents, self._kill_marked, self._close_sockets,
                     self._close_forwarder, self._delete_namespaces, self._remove_pins):
            try:
                step()
            except Exception:
                log.exception("netns cleanup step %s failed", step.__name__)

    def _stop_agents(self) -> None:
        processes = [n.process for n in self.nodes if n.process is not None]
        processes += self._processes
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _kill_marked(self) -> None:
        for pid in marked_processes(f"{MARKER}={self.run_id}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _close_sockets(self) -> None:
        for listener in self._listeners:
            listener.close()

    def _close_forwarder(self) -> None:
        if self._forwarder is not None:
            self._forwarder.close()

    def _delete_namespaces(self) -> None:
        for name in reversed(self._namespaces):
            run("ip", "netns", "del", name, check=False)
        self._namespaces = []

    def _remove_pins(self) -> None:
        remove_bpffs_tree(self.bpffs_root)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def marked_processes(marker: str) -> list[int]:
    """PIDs whose environment holds `marker` exactly (only processes a run started can)."""
    wanted = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as handle:
            if wanted in handle.read().split(b"\0"):
                found.append(int(entry))
    return found


def remove_bpffs_tree(path: str) -> None:
    """rm -r for a bpffs directory (pins unlink like files)."""
    if not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def sweep_stale(prefix: str) -> list[str]:
    """Deletes namespaces `<prefix>-<pid>x<n>-*` whose creating process is gone (a run killed
    before its cleanup); returns their names. Namespaces of live runs are left alone."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(NETNS_DIR)):
            pid = _creator(name, prefix)
            if pid is not None and not _alive(pid):
                run("ip", "netns", "del", name, check=False)
                removed.append(name)
    return removed


def _creator(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix + "-"):
        return None
    run_part = name[len(prefix) + 1:].split("-", 1)[0]
    pid_text = run_part.split("x", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
