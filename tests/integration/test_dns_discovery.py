"""Headless-Service discovery against a real DNS server: dnsmasq on 127.0.0.1, one per test.

dnsmasq serves A records from a hosts file the test writes (--addn-hosts) and re-reads it on
SIGHUP, which is how a test changes "the Service's endpoints" (DnsServer.serve waits for the
reload to finish). `--local=/svc/` makes it answer NXDOMAIN for unknown names under svc
(without it, a server with no upstreams answers REFUSED).
Stopping it with SIGSTOP gives a server that receives queries and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import dns.exception
import dns.message
import dns.query
import pytest

from gossip_agent.core import peers
from gossip_agent.gossip import discovery

pytestmark = pytest.mark.integration

NAME = "gossip-agent.test.svc"
PORT = 7946
START_DEADLINE = 10.0  # seconds for dnsmasq to answer its first query


@dataclasses.dataclass
class DnsServer:
    """A running dnsmasq; `address` is what discovery takes as its nameserver."""

    process: subprocess.Popen[bytes]
    port: int
    hosts: pathlib.Path
    log: pathlib.Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, records: dict[str, list[str]]) -> None:
        """Replaces the hosts file, makes dnsmasq re-read it, and waits until it has.

        SIGHUP is asynchronous: a query sent right after it may still get the old records.
        dnsmasq logs "read <file> - N names" once the new file is loaded, so wait for that.
        """
        loaded = self._reads()
        _write_hosts(self.hosts, records)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_DEADLINE
        while self._reads() == loaded:
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"dnsmasq did not re-read {self.hosts}:\n{self.log.read_text()}")
            time.sleep(0.005)  # polling the log; the reload takes about a millisecond

    def _reads(self) -> int:
        return self.log.read_text().count(f"read {self.hosts} - ")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def _write_hosts(path: pathlib.Path, records: dict[str, list[str]]) -> None:
    lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # atomic: dnsmasq never reads half a file


def _dnsmasq_binary() -> str:
    # dnsmasq lives in /usr/sbin, which a non-root PATH may lack.
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which("dnsmasq", path=search)
    if found is None:
        message = "dnsmasq is not installed (Debian package dnsmasq-base; tools/setup_system.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: CI requires it", pytrace=False)
        pytest.skip(message)
    return found


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                with contextlib.suppress(OSError):
                    tcp.bind(("127.0.0.1", port))
                    return port


def _answers(port: int) -> bool:
    """Whether a DNS server answers on 127.0.0.1:port (any response, NXDOMAIN included)."""
    query = dns.message.make_query("ready.probe.svc.", "A")
    try:
        dns.query.udp(query, "127.0.0.1", port=port, timeout=0.05)
    except (dns.exception.Timeout, OSError):
        return False
    return True


def _start_dnsmasq(binary: str, tmp_path: pathlib.Path) -> DnsServer:
    hosts, log = tmp_path / "hosts", tmp_path / "dnsmasq.log"
    _write_hosts(hosts, {})
    port = _free_port()
    command = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf and /etc/dnsmasq.d
        "--no-resolv",
        "--no-hosts",
        f"--addn-hosts={hosts}",
        "--local=/svc/",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={port}",
        "--pid-file=",
        # dnsmasq drops root for "nobody", who cannot read pytest's 0700 tmp dir on SIGHUP.
        f"--user={pwd.getpwuid(os.getuid()).pw_name}",
        "--log-facility=-",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return DnsServer(process=process, port=port, hosts=hosts, log=log)


def _wait_ready(server: DnsServer) -> bool:
    """Polls until dnsmasq answers; False if it exited (e.g. its port was taken meanwhile)."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if _answers(server.port):
            return True
        time.sleep(0.01)  # a refused query returns at once: do not spin
    _stop(server)
    pytest.fail(f"dnsmasq did not answer within {START_DEADLINE} s:\n{server.log.read_text()}")


def _stop(server: DnsServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # a stopped process would hold SIGTERM
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def dnsmasq(tmp_path: pathlib.Path) -> Iterator[DnsServer]:
    binary = _dnsmasq_binary()
    for attempt in range(5):  # the free port can be taken between probing and binding
        workdir = tmp_path / f"dnsmasq-{attempt}"
        workdir.mkdir()
        server = _start_dnsmasq(binary, workdir)
        if _wait_ready(server):
            break
        _stop(server)
    else:
        pytest.fail(f"dnsmasq did not start:\n{server.log.read_text()}")
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(params=["silent", "closed"])
def dead_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A nameserver address that never answers: a bound socket nobody reads, or a closed port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if request.param == "silent":
            yield f"127.0.0.1:{port}"
            return
    yield f"127.0.0.1:{port}"


async def _eventually(check: Callable[[], object], *, what: str, within: float = 10.0) -> None:
    """Polls `check` until it returns a truthy value; fails naming `what` and the last value."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out after {within} s waiting for {what}; last saw {last!r}")


@contextlib.asynccontextmanager
async def _running(loop: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Runs the discovery loop as a task; cancels it and waits for it on the way out."""
    task = asyncio.create_task(loop, name="discovery.dns")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _membership(self_address: str) -> peers.Membership:
    return peers.Membership(
        self_address=self_address, policy=peers.BackoffPolicy(), rng=random.Random(1)
    )


# --- resolve() ---


async def test_resolve_returns_every_a_record_as_sorted_ip_port(dnsmasq: DnsServer) -> None:
    dnsmasq.serve({NAME: ["127.0.0.4", "127.0.0.2", "127.0.0.3"]})
    found = await discovery.resolve(NAME, PORT, nameserver=dnsmasq.address)
    assert found == ["127.0.0.2:7946", "127.0.0.3:7946", "127.0.0.4:7946"]


async def test_unknown_name_resolves_to_no_peers(dnsmasq: DnsServer) -> None:
    dnsmasq.serve({NAME: ["127.0.0.2"]})
    assert await discovery.resolve("missing.test.svc", PORT, nameserver=dnsmasq.address) == []


async def test_name_without_a_records_resolves_to_no_peers(dnsmasq: DnsServer) -> None:
    dnsmasq.serve({NAME: ["127.0.0.2"], "v6only.test.svc": ["fd00::1"]})
    assert await discovery.resolve("v6only.test.svc", PORT, nameserver=dnsmasq.address) == []


async def test_resolve_drops_excluded_addresses_by_ip_or_ip_port(dnsmasq: DnsServer) -> None:
    dnsmasq.serve({NAME: ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})
    found = await discovery.resolve(
        NAME, PORT, nameserver=dnsmasq.address, exclude=["127.0.0.3", "127.0.0.4:7946"]
    )
    assert found == ["127.0.0.2:7946"]


async def test_large_record_set_is_complete_through_tcp_fallback(dnsmasq: DnsServer) -> None:
    # 200 A records do not fit a 512-byte UDP answer: dnsmasq truncates, dnspython retries over
    # TCP. A DaemonSet's headless Service has one record per node, so big clusters hit this.
    ips = [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(200)]
    dnsmasq.serve({NAME: ips})
    found = await discovery.resolve(NAME, PORT, nameserver=dnsmasq.address)
    assert found == sorted(f"{ip}:{PORT}" for ip in ips)


async def test_server_that_does_not_answer_raises_within_the_timeout(dead_server: str) -> None:
    started = time.monotonic()
    with pytest.raises(discovery.DiscoveryError, match=NAME) as caught:
        await discovery.resolve(NAME, PORT, nameserver=dead_server, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0
    assert dead_server.split(":")[0] in str(caught.value)


# --- run_dns_discovery() ---


async def test_discovery_loop_follows_record_changes_and_excludes_self(
    dnsmasq: DnsServer,
) -> None:
    membership = _membership("127.0.0.2:7946")
    dnsmasq.serve({NAME: ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})
    loop = discovery.run_dns_discovery(
        membership=membership,
        name=NAME,
        port=PORT,
        nameserver=dnsmasq.address,
        interval=0.05,
        log=logging.getLogger("test.discovery"),
        timeout=0.5,
    )
    async with _running(loop):
        wanted = ["127.0.0.3:7946", "127.0.0.4:7946"]
        await _eventually(membership.addresses, what="the first successful lookup")
        assert membership.addresses() == wanted
        assert all(p.origins == {peers.DNS} for p in membership.peers())

        dnsmasq.serve({NAME: ["127.0.0.2", "127.0.0.3", "127.0.0.5"]})
        wanted = ["127.0.0.3:7946", "127.0.0.5:7946"]
        await _eventually(
            lambda: membership.addresses() == wanted,
            what=f"the re-resolved set {wanted} after SIGHUP",
        )


async def test_failed_lookups_keep_the_previous_peers_and_warn_once(
    dnsmasq: DnsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[bool] = []  # True per successful lookup, False per DiscoveryError
    real_resolve = discovery.resolve

    async def counting_resolve(*args: Any, **kwargs: Any) -> list[str]:
        try:
            found = await real_resolve(*args, **kwargs)
        except discovery.DiscoveryError:
            attempts.append(False)
            raise
        attempts.append(True)
        return found

    monkeypatch.setattr(discovery, "resolve", counting_resolve)
    caplog.set_level(logging.INFO, logger="test.discovery")
    membership = _membership("127.0.0.9:7946")
    dnsmasq.serve({NAME: ["127.0.0.2", "127.0.0.3"]})
    wanted = ["127.0.0.2:7946", "127.0.0.3:7946"]
    loop = discovery.run_dns_discovery(
        membership=membership,
        name=NAME,
        port=PORT,
        nameserver=dnsmasq.address,
        interval=0.02,
        log=logging.getLogger("test.discovery"),
        timeout=0.3,
    )
    async with _running(loop):
        await _eventually(lambda: membership.addresses() == wanted, what="the first lookup")

        # Count from here: on a loaded machine a lookup may already have timed out before.
        logged_before, failed_before = len(caplog.records), attempts.count(False)
        dnsmasq.pause()
        await _eventually(
            lambda: attempts.count(False) >= failed_before + 3,
            what="three failed lookups against the stopped dnsmasq",
        )
        assert membership.addresses() == wanted
        streak = caplog.records[logged_before:]
        warnings = [r.getMessage() for r in streak if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "keeping the 2 peers" in warnings[0]
        assert NAME in warnings[0] and dnsmasq.address in warnings[0]

        logged_before = len(caplog.records)
        dnsmasq.resume()
        await _eventually(
            lambda: any("works again" in r.getMessage() for r in caplog.records[logged_before:]),
            what="the recovery message after SIGCONT",
        )
        assert membership.addresses() == wanted
