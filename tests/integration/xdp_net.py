"""A two-namespace rig for the XDP tests: a client namespace joined by a veth pair to a node
namespace whose end carries the program, as a pod's veth does on a real node.

    [client ns]  <cli>  10.211.0.2/24  ==veth==  <node>  10.211.0.1/24  [node ns]
                 route 10.96.0.0/16 via .1                   services 10.96.0.x/32 on lo

Packets from the client to a service IP cross the node end's receive path, where XDP runs;
a UDP listener bound in the node namespace counts what survives. Every name starts with the
prefix ga4a and a random tag; the rig removes its namespaces (and so the veths) even when the
test fails.

Code that must act inside a namespace (attaching XDP over netlink, opening sockets) runs in a
short-lived thread that setns()-es into it: a network namespace is a per-thread attribute, and
a socket keeps the namespace it was created in, so the test's own thread never moves.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from gossip_agent.core import diff, versions
from gossip_agent.dataplane import bpfmap, layout
from gossip_agent.system import bpfsys
from tests.conftest import require

PREFIX = "ga4a"
CLONE_NEWNET = 0x40000000
CLIENT_IP, NODE_IP = "10.211.0.2", "10.211.0.1"
ZERO = "10.96.0.10"  # the service the tests scale to zero
T = TypeVar("T")


def require_netns() -> None:
    require(os.geteuid() == 0, "root (network namespaces, XDP)")
    require(shutil.which("ip") is not None, "iproute2 (ip netns)")
    require(shutil.which("nsenter") is not None, "nsenter (util-linux)")


def sh(*args: str) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{' '.join(args)} failed: {out.stderr.strip()}"
    return out.stdout


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """fn() run in a thread that entered network namespace `netns`; its result or exception."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclasses.dataclass
class Rig:
    tag: str
    client_ns: str
    node_ns: str
    client_if: str
    node_if: str

    def ifindex(self) -> int:
        return in_netns(self.node_ns, lambda: socket.if_nametoindex(self.node_if))

    def add_service(self, ip: str) -> None:
        sh("ip", "-n", self.node_ns, "addr", "add", f"{ip}/32", "dev", "lo")

    def listener(self, ip: str) -> socket.socket:
        """A UDP socket in the node namespace bound to ip (port chosen by the kernel)."""
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, 0))
            sock.setblocking(False)
            return sock

        return in_netns(self.node_ns, make)

    def sender(self) -> socket.socket:
        return in_netns(self.client_ns,
                        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def xdp_prog_id(self) -> int:
        """The program id `ip link` shows on the node end (0 = none)."""
        text = sh("ip", "-n", self.node_ns, "-d", "link", "show", "dev", self.node_if)
        words = text.split()
        for index, word in enumerate(words):
            if word == "prog/xdp" and index + 2 < len(words) and words[index + 1] == "id":
                return int(words[index + 2])
        return 0


def make_rig() -> Iterator[Rig]:
    require_netns()
    tag = uuid.uuid4().hex[:6]
    rig = Rig(tag, f"{PREFIX}-c-{tag}", f"{PREFIX}-n-{tag}", f"{PREFIX}{tag}c",
              f"{PREFIX}{tag}n")
    try:
        for netns in (rig.client_ns, rig.node_ns):
            sh("ip", "netns", "add", netns)
            sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "link", "add", rig.client_if, "netns", rig.client_ns, "type", "veth",
           "peer", "name", rig.node_if, "netns", rig.node_ns)
        sh("ip", "-n", rig.client_ns, "addr", "add", f"{CLIENT_IP}/24", "dev", rig.client_if)
        sh("ip", "-n", rig.node_ns, "addr", "add", f"{NODE_IP}/24", "dev", rig.node_if)
        sh("ip", "-n", rig.client_ns, "link", "set", rig.client_if, "up")
        sh("ip", "-n", rig.node_ns, "link", "set", rig.node_if, "up")
        sh("ip", "-n", rig.client_ns, "route", "add", "10.96.0.0/16", "via", NODE_IP)
        yield rig
    finally:
        for netns in (rig.client_ns, rig.node_ns):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)


def received(sock: socket.socket) -> int:
    """Datagrams waiting on a non-blocking socket (drained)."""
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def send_and_count(rig: Rig, service_ip: str, *, packets: int = 20,
                   settle: float = 5.0) -> int:
    """Sends `packets` datagrams from the client to service_ip; how many the listener got.

    Returns as soon as every datagram arrived, else after `settle` seconds (a liveness bound
    for a loaded 2-core machine; local veth delivery takes microseconds). A drop can only be
    seen as an absence, so tests that expect drops pass a short settle AND wait for the
    program's own dropped counter, which is the positive evidence.
    """
    listener = rig.listener(service_ip)
    sender = rig.sender()
    try:
        port = listener.getsockname()[1]
        for _ in range(packets):
            sender.sendto(b"ping", (service_ip, port))
        deadline = time.monotonic() + settle
        got = 0
        while time.monotonic() < deadline and got < packets:
            got += received(listener)
            if got < packets:
                time.sleep(0.01)
        return got + received(listener)
    finally:
        listener.close()
        sender.close()


# --- the maps, as the tests drive and read them ---------------------------------------------


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def put(plane: bpfmap.BpfDataPlane, table: dict[str, int], seq: int = 1) -> None:
    current = plane.read()
    wanted = {ip(k): v for k, v in table.items()}
    plane.apply(diff.diff(current, wanted), version=versions.Version(1, seq),
                content_hash=b"")


def pinned_heartbeat(pin_dir: str) -> tuple[int, int]:
    """(refreshed_ns, fail_open_after_ns) read from <pin_dir>/HEARTBEAT as the program reads
    it, while an agent (in this process or another) holds the pin directory; (0, 0) when the
    map or the record does not exist yet."""
    pinned = bpfsys.PinnedMap.open_existing(f"{pin_dir}/{layout.HEARTBEAT}",
                                            layout.HEARTBEAT_SPEC)
    if pinned is None:
        return 0, 0
    try:
        raw = pinned.lookup((0).to_bytes(4, sys.byteorder))
    finally:
        pinned.close()
    refreshed, after = layout.HEARTBEAT_STRUCT.unpack(raw or bytes(layout.HEARTBEAT_STRUCT.size))
    return refreshed, after


def totals(plane: bpfmap.BpfDataPlane, service: str) -> tuple[int, int, int]:
    per_cpu = plane.stats().get(ip(service), [])
    return (sum(c[0] for c in per_cpu), sum(c[1] for c in per_cpu), sum(c[2] for c in per_cpu))


def counted(plane: bpfmap.BpfDataPlane, service: str, expected: tuple[int, int, int]) -> bool:
    """Waits until the counters reach `expected` packets in all (the program runs in softirq,
    possibly after sendto returned), then tells whether they are exactly `expected`."""
    wait_for(f"{sum(expected)} packets to {service} counted",
             lambda: sum(totals(plane, service)) >= sum(expected))
    return totals(plane, service) == expected


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)
