"""Which network interfaces the XDP program goes on, followed as they come and go.

XDP_INTERFACES is a comma list of names and shell globs (`eth0,veth*,cali*,lxc*`). On a real
node ClusterIP traffic is seen before kube-proxy's DNAT only on the host side of pod veths,
which appear and vanish with pods, so the set is re-evaluated on every link change.

How changes are noticed: a NETLINK_ROUTE socket joined to the RTMGRP_LINK multicast group
wakes the loop on any link event; the loop then lists the interfaces again (if_nameindex)
rather than decoding the messages. A full listing is cheap (one syscall) and cannot drift from
the kernel's truth even when messages were lost, which decoding messages one by one could.
A periodic rescan backs that up. This needs no netlink library: the only thing read from the
socket is "something changed".

Lost messages: when notifications come faster than the loop reads them (many pods created at
once on a busy node, or the loop held up), the socket's receive buffer overflows, the kernel
drops what does not fit and the next recv fails with ENOBUFS. That is not a failure of the
loop: it means "changes were lost", so it rescans at once and keeps listening (the warning is
logged once per process, later overflows at debug level, since a busy node may overflow often).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import logging
import socket
from collections.abc import Callable, Iterable

log = logging.getLogger("gossip_agent.xdp")

RTMGRP_LINK = 1  # include/uapi/linux/rtnetlink.h: link up/down/new/del notifications
RESCAN_SECONDS = 30.0  # backstop for lost notifications; link events wake the loop at once


def parse_patterns(text: str) -> tuple[str, ...]:
    """`eth0, veth*` -> ("eth0", "veth*"); empty items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def matching(patterns: Iterable[str], interfaces: Iterable[tuple[int, str]]) -> dict[str, int]:
    """name -> ifindex of the interfaces any pattern matches (case-sensitive globs)."""
    wanted = tuple(patterns)
    return {name: index for index, name in interfaces
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted)}


def current(patterns: Iterable[str]) -> dict[str, int]:
    """The matching interfaces of this process's network namespace, now."""
    return matching(patterns, socket.if_nameindex())


def _link_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_LINK))
    return sock


class _Overflows:
    """ENOBUFS seen on the link socket: the first logged at warning, the rest at debug."""

    def __init__(self) -> None:
        self.count = 0

    def note(self) -> None:
        self.count += 1
        level = logging.WARNING if self.count == 1 else logging.DEBUG
        log.log(level, "link notifications were lost (ENOBUFS: the netlink socket's buffer "
                "overflowed, %d time(s) so far); rescanning the interfaces", self.count)


def _drain(sock: socket.socket, overflows: _Overflows) -> None:
    """Reads every queued notification. ENOBUFS reports that some were dropped; the socket
    stays usable (the kernel clears the error as it reports it), so reading goes on, and the
    listing that follows is the rescan."""
    while True:
        try:
            sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return  # nothing queued any more
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            overflows.note()


async def follow(
    patterns: tuple[str, ...],
    on_change: Callable[[dict[str, int]], None],
    *,
    rescan_seconds: float = RESCAN_SECONDS,
) -> None:
    """Calls on_change(matching interfaces) now and after every link change, until cancelled
    (task `xdp.interfaces`). The socket is opened before the first listing, so no interface
    can appear unnoticed in between."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    overflows = _Overflows()
    with _link_socket() as sock:
        loop.add_reader(sock.fileno(), changed.set)
        try:
            while True:
                changed.clear()
                _drain(sock, overflows)
                on_change(current(patterns))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), rescan_seconds)
        finally:
            loop.remove_reader(sock.fileno())
