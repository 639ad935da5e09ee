"""Cold-start hold, end to end in two network namespaces: a held SYN meets the service ready.

    client ns  <run>-c : eth0 10.201.0.2/24, default route via the node
    node ns    <run>-n : veth0 10.201.0.1/24 (forwarding on), the backend "pod" at
                         10.202.0.5:8080 on lo, ClusterIPs routed to a spare veth, and:
      raw PREROUTING   -m bpf --object-pinned <pins>/HOLD_MATCH -j NFQUEUE --queue-num 7
                       (drop mode: -j DROP, what XDP_DROP does today)
      kube-proxy stand-in, iptables mode's chain structure: nat PREROUTING -> KUBE-SERVICES
                       -> KUBE-SVC-* -> KUBE-SEP-* DNAT once there are endpoints; filter
                       INPUT/FORWARD (ctstate NEW) -> KUBE-SERVICES with a REJECT while there
                       are none.

The hold match (bpf/hold_match.bpf.c) reads a SERVICE_LIST and HEARTBEAT pinned for this test
only; the Holder (gossip_agent/dataplane/hold.py) is bound to the queue inside the node's
namespace. The test plays the agent: once the stand-in has its endpoint (READY_AFTER seconds
after the first SYN, as a starting pod and kube-proxy would), it writes replicas 1 and calls
release(). What is checked is what the client sees: connected, with how many SYN retransmits
(TCP_INFO), and no RST or ICMP error (iptables counters in the client's namespace); and that
the stand-in's REJECT never saw a packet.

Anything opening the bpffs pins runs under `nsenter --net` (`ip netns exec` remounts /sys and
hides them). Every namespace (their rules go with them), pin and queue binding is removed in
the fixture's teardown, also on failure; sweep_stale removes what a killed run left behind.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from gossip_agent.dataplane import hold, holdmatch, layout
from gossip_agent.system import bpfsys
from lab import netns

pytestmark = pytest.mark.e2e

PREFIX = "hold"
SERVICE, PORT = "10.96.0.10", 80
BACKEND, BACKEND_PORT = "10.202.0.5", 8080
QUEUE = 7
# Linux's initial SYN retransmission timeout (TCP_TIMEOUT_INIT). Later SYN retransmits come
# every 1 s while net.ipv4.tcp_syn_linear_timeouts lasts (4 on this kernel), then double.
SYN_RTO = 1.0
_runs = itertools.count()


def service_key(address: str) -> bytes:
    """SERVICE_LIST's key for an IPv4 address: ntohl(daddr) as a host-order u32."""
    return struct.pack("=I", struct.unpack("!I", socket.inet_aton(address))[0])


def syn_retransmits(sock: socket.socket) -> int:
    """tcpi_total_retrans from TCP_INFO (u32 at offset 100 of struct tcp_info)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("=I", info, 100)[0])


class Lab:
    """The two namespaces, the pins, the stand-in's rules and, in hold mode, the Holder."""

    def __init__(self) -> None:
        run = f"{PREFIX}-{os.getpid()}x{next(_runs)}"
        self.client, self.node = f"{run}-c", f"{run}-n"
        self.pin_dir = f"/sys/fs/bpf/{run}"
        self.holder: hold.Holder | None = None
        self.match: holdmatch.HoldMatch | None = None
        self.maps: list[bpfsys.PinnedMap] = []
        self.sockets: list[socket.socket] = []

    # -- building -------------------------------------------------------------------------
    def build(self, *, mode: str) -> None:
        netns.sweep_stale(PREFIX)
        for name in (self.client, self.node):
            netns.run("ip", "netns", "add", name)
            netns.ip(name, "link", "set", "lo", "up")
        self._wire()
        self._pin(sleeping=SERVICE)
        self._stand_in_without_endpoints()
        self._client_counters()
        target = ["-j", "NFQUEUE", "--queue-num", str(QUEUE)] if mode == "hold" else ["-j", "DROP"]
        self.iptables("-t", "raw", "-A", "PREROUTING", "-m", "bpf", "--object-pinned",
                      self.match_pin, *target)
        if mode == "hold":
            self.bind_holder()
        self.backend()

    def _wire(self) -> None:
        n, c = self.node, self.client
        netns.ip(n, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", c)
        netns.ip(n, "addr", "add", "10.201.0.1/24", "dev", "veth0")
        netns.ip(n, "link", "set", "veth0", "up")
        netns.ip(c, "addr", "add", "10.201.0.2/24", "dev", "eth0")
        netns.ip(c, "link", "set", "eth0", "up")
        netns.ip(c, "route", "add", "default", "via", "10.201.0.1")
        netns.ip(n, "addr", "add", f"{BACKEND}/32", "dev", "lo")
        # ClusterIPs live nowhere (kube-proxy DNATs them); a route makes them forwardable so
        # an un-DNATed packet reaches the filter table's FORWARD chain, and its REJECT.
        # (a veth pair: this kernel has no dummy driver)
        netns.ip(n, "link", "add", "svc0", "type", "veth", "peer", "name", "svc1")
        netns.ip(n, "link", "set", "svc1", "up")
        netns.ip(n, "link", "set", "svc0", "up")
        netns.ip(n, "route", "add", "10.96.0.0/12", "dev", "svc0")
        self.nsenter(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _pin(self, *, sleeping: str) -> None:
        os.makedirs(self.pin_dir)
        table = bpfsys.PinnedMap.open_or_create(
            os.path.join(self.pin_dir, layout.SERVICE_LIST), layout.service_list_spec())
        beat = bpfsys.PinnedMap.open_or_create(
            os.path.join(self.pin_dir, layout.HEARTBEAT), layout.HEARTBEAT_SPEC)
        self.maps += [table, beat]
        self.table, self.beat = table, beat
        self.set_replicas(sleeping, 0)
        self.match = holdmatch.HoldMatch(pin_dir=self.pin_dir,
                                         max_entries=layout.DEFAULT_MAX_ENTRIES)
        self.match.pin()
        self.match_pin = self.match.pin_path

    def bind_holder(self) -> None:
        sources: list[hold.Source] = []
        netns.run_in(self.node, lambda: sources.append(hold.open_queue(QUEUE, maxlen=64)))
        self.holder = hold.Holder(source=sources[0], per_service=16, total=64, timeout=30.0)
        self.holder.start()

    def backend(self) -> None:
        listener = netns.socket_in(self.node, kind=socket.SOCK_STREAM)
        self.sockets.append(listener)
        listener.bind((BACKEND, BACKEND_PORT))
        listener.listen(16)  # the kernel completes handshakes; nothing needs accept()

    # -- the kube-proxy stand-in (iptables mode) --------------------------------------------
    def _stand_in_without_endpoints(self) -> None:
        for table in ("nat", "filter"):
            self.iptables("-t", table, "-N", "KUBE-SERVICES")
        self.iptables("-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
        for chain in ("INPUT", "FORWARD"):
            self.iptables("-t", "filter", "-A", chain, "-m", "conntrack", "--ctstate", "NEW",
                          "-j", "KUBE-SERVICES")
        self.iptables("-t", "filter", "-A", "KUBE-SERVICES", *self._service_match(),
                      "-j", "REJECT", "--reject-with", "icmp-port-unreachable")

    def stand_in_ready(self) -> None:
        """The endpoint is programmed: DNAT chain first, then the REJECT goes (kube-proxy
        writes both in one iptables-restore)."""
        self.iptables("-t", "nat", "-N", "KUBE-SVC-TEST")
        self.iptables("-t", "nat", "-N", "KUBE-SEP-TEST")
        self.iptables("-t", "nat", "-A", "KUBE-SEP-TEST", "-p", "tcp", "-j", "DNAT",
                      "--to-destination", f"{BACKEND}:{BACKEND_PORT}")
        self.iptables("-t", "nat", "-A", "KUBE-SVC-TEST", "-j", "KUBE-SEP-TEST")
        self.iptables("-t", "nat", "-A", "KUBE-SERVICES", *self._service_match(),
                      "-j", "KUBE-SVC-TEST")
        self.iptables("-t", "filter", "-D", "KUBE-SERVICES", *self._service_match(),
                      "-j", "REJECT", "--reject-with", "icmp-port-unreachable")

    @staticmethod
    def _service_match() -> list[str]:
        return ["-d", f"{SERVICE}/32", "-p", "tcp", "--dport", str(PORT)]

    def reject_hits(self) -> int:
        return self.counter(self.node, "filter", "KUBE-SERVICES", "REJECT")

    # -- the client and its counters --------------------------------------------------------
    def _client_counters(self) -> None:
        """Counting rules (no target): any RST or ICMP error reaching the client."""
        self.iptables("-A", "INPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", ns=self.client)
        self.iptables("-A", "INPUT", "-p", "icmp", ns=self.client)

    def client_errors(self) -> dict[str, int]:
        return {"rst": self.rule_hits(self.client, "INPUT", 1),
                "icmp": self.rule_hits(self.client, "INPUT", 2)}

    def connect(self, *, timeout: float) -> Client:
        sock = netns.socket_in(self.client, kind=socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.settimeout(timeout)
        return Client(sock)

    # -- the agent's part -------------------------------------------------------------------
    def set_replicas(self, service: str, replicas: int) -> None:
        self.table.update(service_key(service), struct.pack("=I", replicas))

    def fail_open(self) -> None:
        """A heartbeat last refreshed at boot, with FAIL_OPEN_AFTER 1 ns: stale."""
        self.beat.update(struct.pack("=I", 0), layout.HEARTBEAT_STRUCT.pack(0, 1))

    # -- commands ---------------------------------------------------------------------------
    def nsenter(self, ns: str, *argv: str) -> str:
        """nsenter --net keeps the host's mounts, so /sys/fs/bpf (the pins) stays visible."""
        return netns.run("nsenter", f"--net={netns.NETNS_DIR}/{ns}", *argv).stdout

    def iptables(self, *argv: str, ns: str | None = None) -> str:
        return self.nsenter(ns or self.node, "iptables", "-w", *argv)

    def counter(self, ns: str, table: str, chain: str, target: str) -> int:
        """Packets of the first rule of `chain` jumping to `target`."""
        listing = self.iptables("-t", table, "-nvxL", chain, ns=ns)
        for line in listing.splitlines()[2:]:
            fields = line.split()
            if len(fields) > 2 and fields[2] == target:
                return int(fields[0])
        raise AssertionError(f"no {target} rule in {table}/{chain} of {ns}:\n{listing}")

    def rule_hits(self, ns: str, chain: str, number: int) -> int:
        """Packets of the filter table's rule `number` of `chain`."""
        return int(self.iptables("-nvxL", chain, str(number), ns=ns).split()[0])

    def raw_hits(self) -> int:
        listing = self.iptables("-t", "raw", "-nvxL", "PREROUTING")
        return sum(int(line.split()[0]) for line in listing.splitlines()[2:] if line.strip())

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Every step runs, whatever failed before it."""
        steps = [lambda: self.holder and self.holder.close()]
        steps += [sock.close for sock in self.sockets]
        steps += [lambda name=name: netns.run("ip", "netns", "del", name, check=False)
                  for name in (self.client, self.node)]
        steps += [m.close for m in self.maps]
        steps += [lambda: self.match and self.match.close(),
                  lambda: netns.remove_bpffs_tree(self.pin_dir)]
        failures = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep cleaning; report all at the end
                failures.append(exc)
        if failures:
            raise failures[0]


class Client:
    """connect() to the service on a thread; the start and the outcome are timed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.error: BaseException | None = None
        self.connected_at = 0.0
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._connect, name="hold-test.client")
        self._thread.start()

    def _connect(self) -> None:
        try:
            self.sock.connect((SERVICE, PORT))
            self.connected_at = time.monotonic()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def wait(self) -> float:
        """Seconds from connect() to connected; re-raises its error."""
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "connect() still blocked after 30 s"
        if self.error is not None:
            raise self.error
        return self.connected_at - self.started_at


def poll(condition: object, *, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        time.sleep(0.005)


def pause_until(moment: float) -> None:
    """The simulated pod start-up: the stand-in becomes ready at a set time after the SYN."""
    time.sleep(max(0.0, moment - time.monotonic()))


@pytest.fixture
def lab() -> Iterator[Lab]:
    gaps = netns.missing()
    if gaps:
        pytest.fail(f"this machine lacks: {', '.join(gaps)}")
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def wake(lab: Lab, *, ready_at: float) -> float:
    """Plays kube-proxy and the agent at `ready_at`: endpoint programmed, replicas 1, then
    the release. Returns when the node could deliver, and checks the REJECT was never hit."""
    pause_until(ready_at)
    assert lab.reject_hits() == 0, "a packet reached the no-endpoints REJECT before ready"
    lab.stand_in_ready()
    ready = time.monotonic()
    lab.set_replicas(SERVICE, 1)
    if lab.holder is not None:
        lab.holder.release(struct.unpack("=I", service_key(SERVICE))[0])
    return ready


@pytest.mark.parametrize("ready_after", [0.3, 1.2])
def test_held_syn_connects_when_the_stand_in_becomes_ready(lab: Lab, ready_after: float
                                                           ) -> None:
    lab.build(mode="hold")
    assert lab.holder is not None
    client = lab.connect(timeout=10)
    key = struct.unpack("=I", service_key(SERVICE))[0]
    poll(lambda: lab.holder is not None and lab.holder.held(key) >= 1,
         what="the first SYN in the hold queue", within=2.0)
    ready = wake(lab, ready_at=client.started_at + ready_after)
    elapsed = client.wait()
    after_ready = client.connected_at - ready
    retransmits = syn_retransmits(client.sock)
    print(f"\nhold, ready at {ready_after} s: connected at {elapsed * 1000:.0f} ms, "
          f"{after_ready * 1000:.1f} ms after ready, SYN retransmits {retransmits}, "
          f"held {lab.holder.stats}")
    assert after_ready < 0.05, f"connected {after_ready:.3f} s after the service was ready"
    assert retransmits == (0 if ready_after < SYN_RTO else 1)
    assert lab.client_errors() == {"rst": 0, "icmp": 0}
    assert lab.holder.stats.refused == lab.holder.stats.expired == 0


def test_drop_mode_connects_only_at_the_next_retransmit(lab: Lab) -> None:
    """The comparison: today's drop (XDP_DROP, played by a raw-table DROP on the same match)
    with the backend ready at 0.3 s connects at the 1 s SYN retransmit."""
    lab.build(mode="drop")
    client = lab.connect(timeout=10)
    poll(lambda: lab.raw_hits() >= 1, what="the first SYN dropped", within=2.0)
    wake(lab, ready_at=client.started_at + 0.3)
    elapsed = client.wait()
    print(f"\ndrop, ready at 0.3 s: connected at {elapsed * 1000:.0f} ms, "
          f"SYN retransmits {syn_retransmits(client.sock)}")
    assert elapsed >= SYN_RTO * 0.9 and syn_retransmits(client.sock) == 1
    assert lab.client_errors() == {"rst": 0, "icmp": 0}


def test_a_dead_holder_means_drop_then_fail_open_lets_the_retransmit_through(lab: Lab) -> None:
    """The agent dies with a SYN held: the kernel drops it (no --queue-bypass, so nothing is
    accepted into the REJECT), the 1 s retransmit is dropped by the unbound queue, and once
    the heartbeat is stale the match stops queueing: the 3 s retransmit goes the normal way."""
    lab.build(mode="hold")
    assert lab.holder is not None
    client = lab.connect(timeout=10)
    key = struct.unpack("=I", service_key(SERVICE))[0]
    poll(lambda: lab.holder is not None and lab.holder.held(key) >= 1,
         what="the first SYN in the hold queue", within=2.0)
    lab.holder.close()  # the agent is gone: its netlink socket closes
    lab.holder = None
    poll(lambda: lab.raw_hits() >= 2, what="the 1 s retransmit at the unbound queue",
         within=3.0)
    assert lab.reject_hits() == 0 and lab.client_errors() == {"rst": 0, "icmp": 0}
    lab.stand_in_ready()
    lab.fail_open()
    failed_open = time.monotonic()
    elapsed = client.wait()
    print(f"\ndead holder, then fail-open: connected at {elapsed * 1000:.0f} ms, "
          f"SYN retransmits {syn_retransmits(client.sock)}")
    # The SYN and the 1 s retransmit were both lost; a later retransmit connected (at 2 s on
    # a kernel with tcp_syn_linear_timeouts, at 3 s without).
    assert client.connected_at > failed_open and syn_retransmits(client.sock) >= 2
    assert lab.client_errors() == {"rst": 0, "icmp": 0}




def test_packets_to_an_awake_service_never_take_the_holding_path(lab: Lab) -> None:
    lab.build(mode="hold")
    assert lab.holder is not None
    lab.stand_in_ready()
    lab.set_replicas(SERVICE, 1)
    client = lab.connect(timeout=10)
    elapsed = client.wait()
    assert elapsed < 0.5 and syn_retransmits(client.sock) == 0
    assert lab.raw_hits() == 0, "the hold match queued a packet to an awake service"
    assert lab.holder.stats.held == lab.holder.stats.refused == 0
