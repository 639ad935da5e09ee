"""interfaces.follow (task `xdp.interfaces`) on real link events, in a network namespace the
test creates: the loop runs in a thread that entered it (xdp_net.in_netns), so its netlink
socket and its listings are that namespace's."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from gossip_agent.dataplane import interfaces
from tests.integration import xdp_net

pytestmark = pytest.mark.integration

# The default netlink receive buffer (net.core.rmem_default, 208 KiB here) holds about 50
# RTM_NEWLINK messages of a new bridge; 150 unread ones overflow it every time.
BURST = 150
DEADLINE = 10.0  # seconds; far below the rescan backstop, which the test sets to an hour


@pytest.fixture
def netns() -> Iterator[str]:
    xdp_net.require_netns()
    name = f"{xdp_net.PREFIX}-l-{uuid.uuid4().hex[:6]}"
    xdp_net.sh("ip", "netns", "add", name)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def add_bridges(netns: str, names: list[str]) -> None:
    batch = "".join(f"link add {name} type bridge\n" for name in names)
    out = subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


async def wait_seen(what: str, seen: list[dict[str, int]], wanted: set[str],
                    task: asyncio.Task[None]) -> None:
    """Until the last listing on_change got includes `wanted`; fails if the loop ended."""
    started = time.monotonic()
    while not (seen and wanted <= set(seen[-1])):
        if task.done():
            raise AssertionError(f"xdp.interfaces ended while waiting for {what}") from (
                task.exception() if not task.cancelled() else None)
        assert time.monotonic() - started < DEADLINE, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_lost_link_notifications_make_it_rescan_at_once_and_keep_listening(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"{xdp_net.PREFIX}{netns[-6:]}"
    burst = [f"{prefix}{index}" for index in range(BURST)]
    seen: list[dict[str, int]] = []

    def on_change(found: dict[str, int]) -> None:
        seen.append(found)
        if len(seen) == 1:
            # Blocks the loop that reads the socket, as a busy agent would: the kernel queues
            # the burst's notifications until the socket's buffer overflows (ENOBUFS).
            add_bridges(netns, burst)

    async def scenario() -> None:
        task = asyncio.create_task(
            interfaces.follow((f"{prefix}*",), on_change, rescan_seconds=3600),
            name="xdp.interfaces")
        try:
            await wait_seen("the burst after the overflow", seen, set(burst), task)
            late = f"{prefix}x"
            add_bridges(netns, [late])
            await wait_seen("an interface added after the overflow", seen, {late}, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.DEBUG, logger="gossip_agent.xdp"):
        xdp_net.in_netns(netns, lambda: asyncio.run(scenario()))

    # The overflow did happen (the proof that this test tested it), and warned once.
    levels = [r.levelno for r in caplog.records if "ENOBUFS" in r.getMessage()]
    assert levels[:1] == [logging.WARNING] and set(levels[1:]) <= {logging.DEBUG}, levels
