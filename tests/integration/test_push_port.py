"""The push port (PUSH_PORT, api/pushport.py and gossip/pushlink.py) between real agents in
this event loop, and against a raw client speaking its frames:

- a leader moves its pushes to each follower's announced port, and every agent converges;
- a port that stops answering costs speed, never delivery: the leader falls back to the
  PushStream and says so once;
- under mutual TLS the port applies every check of the Gossip service, with the same codes and
  counters, and a refused frame changes nothing: a handshake without a certificate of TLS_CA,
  a certificate that is not a member's, another cluster id, a first frame that is no
  PushHello, an oversized frame, a snapshot that does not parse, an unproven term;
- a follower that reads nothing fails the leader's push after the timeout, as a blocked
  PushStream write does, and a refusal reaches the pusher as PeerUnreachable with its code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from gossip_agent.api import server as server_mod
from gossip_agent.core import snapshots
from gossip_agent.gossip import base as gossip_base
from gossip_agent.gossip import frames, wire
from gossip_agent.gossip import transport as transport_mod
from gossip_agent.security import tls
from gossip_agent.v1 import gossip_pb2 as pb
from gossip_agent.v1 import gossip_pb2_grpc as pb_grpc
from lab import localcluster
from tests.integration.conftest import Pki
from tests.integration.test_grpc_api import (
    CONVERGE_DEADLINE,
    ELECTION_DEADLINE,
    RPC_DEADLINE,
    address,
    fingerprint,
    lease_held_by_test,
    poll,
    running_agents,
    snapshot_bytes,
    state_stub,
    wait_for_leader,
)
from tests.integration.test_security import get_state

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 1 << 20  # the agents' default (MAX_MESSAGE_BYTES)


async def set_replicas(leader: Any, ip: str, replicas: int) -> None:
    async with state_stub(address(leader)) as stub:
        await stub.SetService(pb.SetServiceRequest(ip=ip, replicas=replicas),
                              timeout=RPC_DEADLINE)


async def held_everywhere(agents: list[Any], ip: str, replicas: int) -> None:
    key = snapshots.parse_ip(ip)

    async def check() -> bool:
        return all(a.engine.table.get(key) == replicas for a in agents)

    await poll(f"{ip}={replicas} on every agent", check, timeout=CONVERGE_DEADLINE)


async def until_on_the_port(leader: Any, followers: list[Any], ip: str) -> int:
    """Writes `ip` (replicas 1, 2, ...) until the leader pushes to every follower on its port:
    the first push opens the stream, whose announcement comes back while later pushes go. A
    bound, not a count. Returns the last replicas written."""
    replicas, deadline = 0, time.monotonic() + CONVERGE_DEADLINE
    while not {address(a) for a in followers} <= set(leader.transport._links):
        assert time.monotonic() < deadline, "the leader never moved to the push ports"
        replicas += 1
        await set_replicas(leader, ip, replicas)
        await held_everywhere([leader, *followers], ip, replicas)
    return replicas


def port_bytes(agent: Any) -> tuple[int, int]:
    """(bytes received on the PushStream, on the push port)."""
    received = agent.engine.stats.bytes_received
    return received["push"], received["push-port"]


async def test_a_leader_moves_its_pushes_to_each_followers_push_port(tmp_path: Path) -> None:
    async with running_agents(3, lease_dir=tmp_path) as agents:
        leader = await wait_for_leader(agents)
        followers = [a for a in agents if a is not leader]
        assert all(a.push_port is not None and a.push_port.port > 0 for a in agents)
        first = await until_on_the_port(leader, followers, "10.1.0.1")
        before = {id(a): port_bytes(a) for a in followers}
        for replicas in range(first + 1, first + 11):
            await set_replicas(leader, "10.1.0.1", replicas)
        await held_everywhere(agents, "10.1.0.1", first + 10)
        for follower in followers:
            stream_before, port_before = before[id(follower)]
            stream_now, port_now = port_bytes(follower)
            assert stream_now == stream_before, "a push went on the PushStream, not the port"
            assert port_now > port_before, "nothing arrived on the push port"
        assert set(leader.transport._links) == {address(a) for a in followers}
        # Admin writes wait on a quorum of acks: those came back on the port too.
        async with state_stub(address(leader)) as stub:
            reply = await stub.SetService(pb.SetServiceRequest(ip="10.1.0.2", replicas=1),
                                          timeout=RPC_DEADLINE)
        assert reply.acked_peers >= reply.quorum > 0


async def test_a_push_port_that_stops_answering_falls_back_to_the_push_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gossip_agent.tls")
    async with running_agents(3, lease_dir=tmp_path) as agents:
        leader = await wait_for_leader(agents)
        gone, kept = (a for a in agents if a is not leader)
        first = await until_on_the_port(leader, [gone, kept], "10.2.0.1")
        # Its port closes (connections and listener) while its gRPC port still announces it.
        assert gone.push_port is not None
        await gone.push_port.stop()
        stream_before, port_before = port_bytes(gone)
        # One at a time, each held everywhere before the next: the first finds the link gone
        # and reopens the stream, later ones find the announced port refusing connections.
        for replicas in range(first + 1, first + 7):
            await set_replicas(leader, "10.2.0.1", replicas)
            await held_everywhere(agents, "10.2.0.1", replicas)
        stream_now, port_now = port_bytes(gone)
        assert port_now == port_before and stream_now > stream_before
        assert address(gone) not in leader.transport._links
        assert address(kept) in leader.transport._links
        logged = [r.getMessage() for r in caplog.records
                  if f"of peer {address(gone)} does not connect" in r.getMessage()]
        assert len(logged) == 1, logged  # once, however many pushes followed


async def test_push_port_off_announces_nothing_and_pushes_stay_on_the_stream(
    tmp_path: Path,
) -> None:
    async with running_agents(2, lease_dir=tmp_path, PUSH_PORT="off") as agents:
        leader = await wait_for_leader(agents)
        assert all(a.push_port is None for a in agents)
        for replicas in (1, 2, 3):
            await set_replicas(leader, "10.3.0.1", replicas)
        await held_everywhere(agents, "10.3.0.1", 3)
        follower = next(a for a in agents if a is not leader)
        assert port_bytes(follower)[1] == 0 and port_bytes(follower)[0] > 0
        assert not leader.transport._links


# -- a raw client of the port -----------------------------------------------------------------


async def exchange(port: int, sent: list[bytes], *, context: ssl.SSLContext | None = None,
                   raw: bytes = b"") -> list[pb.PushReply]:
    """Connects, writes each message as a frame (then `raw` as is), and reads replies until
    the port closes the connection or goes quiet for a moment."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context,
        server_hostname=tls.TlsFiles("", "", "").server_name if context else None)
    try:
        for message in sent:
            writer.write(frames.frame(message))
        writer.write(raw)
        await writer.drain()
        replies: list[pb.PushReply] = []
        splitter = frames.Splitter(limit=MAX_MESSAGE_BYTES)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
            except TimeoutError:
                return replies
            if not data:
                return replies
            replies += [pb.PushReply.FromString(m) for m in splitter.feed(data)]
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # the port closed first


def hello(cluster_id: str = "ga15") -> bytes:
    return pb.PushHello(protocol=frames.PROTOCOL, cluster_id=cluster_id).SerializeToString()


def refusal_of(replies: list[pb.PushReply]) -> tuple[str, str]:
    assert len(replies) == 1 and replies[0].HasField("refusal"), replies
    assert replies[0].refusal.message, "refused without a sentence"
    return replies[0].refusal.code, replies[0].refusal.message


async def refused_handshake(port: int, context: ssl.SSLContext | None) -> None:
    """The handshake fails (or, for plaintext, the port answers nothing) and no reply comes."""
    try:
        replies = await exchange(port, [hello()], context=context)
    except (ssl.SSLError, ConnectionError, OSError):
        return
    assert replies == [], replies


async def test_the_push_port_applies_every_gossip_check_under_mtls_and_changes_nothing(
    pki: Pki, tmp_path: Path
) -> None:
    table = {snapshots.parse_ip("10.4.0.1"): 1}
    with lease_held_by_test(tmp_path, term=5):  # nobody leads; test-leader's term 5 is proven
        env = {**pki.agent_env(1)[0], "CLUSTER_ID": "ga15"}
        async with running_agents(1, lease_dir=tmp_path, per_agent={0: env}) as (agent,):
            assert agent.push_port is not None
            port, admin, stats = agent.push_port.port, pki.admin, agent.engine.stats
            member = pki.factory(pki.ca.issue(pki.directory, "node-9")).ssl_context()
            before = fingerprint(await get_state(admin, address(agent)))

            await refused_handshake(port, None)  # plaintext
            other_ca = pki.factory(pki.other.issue(pki.directory / "o", "node-8"),
                                   ca=pki.ca.cert).ssl_context()
            await refused_handshake(port, other_ca)

            admin_context = admin.ssl_context()
            code, message = refusal_of(await exchange(port, [hello()], context=admin_context))
            assert code == "PERMISSION_DENIED" and "is not a member" in message
            assert stats.rejected["not-member"] == 1

            code, message = refusal_of(await exchange(port, [hello("red")], context=member))
            assert code == "FAILED_PRECONDITION" and "red" in message and "ga15" in message
            assert stats.rejected["cluster"] == 1

            snapshot = snapshot_bytes(5, 1, table) + wire.ACK_SUFFIX
            code, _ = refusal_of(await exchange(port, [snapshot], context=member))
            assert code == "INVALID_ARGUMENT"  # the first frame must be the PushHello
            code, _ = refusal_of(await exchange(
                port, [hello()], context=member,
                raw=struct.pack(">I", MAX_MESSAGE_BYTES + 1) + b"\0" * 64))
            assert code == "RESOURCE_EXHAUSTED"
            code, _ = refusal_of(await exchange(port, [hello(), b"\xff\xff not a snapshot"],
                                                context=member))
            assert code == "INVALID_ARGUMENT"
            unproven = snapshot_bytes(7, 1, table) + wire.ACK_SUFFIX  # the record says term 5
            code, _ = refusal_of(await exchange(port, [hello(), unproven], context=member))
            assert code == "FAILED_PRECONDITION"
            assert fingerprint(await get_state(admin, address(agent))) == before
            assert agent.engine.stats.bytes_received["push-port"] > 0  # frames were read

            # A member of this cluster is heard: two snapshots, in order, each acknowledged.
            second = snapshot_bytes(5, 2, {**table, snapshots.parse_ip("10.4.0.2"): 3})
            replies = await exchange(port, [hello(), snapshot, second + wire.ACK_SUFFIX],
                                     context=member)
            assert [r.ack.result for r in replies] == [pb.PushAck.ADOPTED] * 2, replies
            assert agent.engine.held.version.seq == 2
            assert agent.engine.table[snapshots.parse_ip("10.4.0.2")] == 3


# -- the leader's side against ports that misbehave --------------------------------------------


async def announcing_server(push_port: int) -> tuple[grpc.aio.Server, str]:
    """A PushStream that announces `push_port` and reads what comes."""
    async def push_stream(requests: AsyncIterator[bytes], context: Any) -> None:
        await context.send_initial_metadata(((frames.PORT_KEY, str(push_port)),))
        while isinstance(await context.read(), bytes):
            pass

    server = grpc.aio.server(options=server_mod.server_options(MAX_MESSAGE_BYTES))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        server_mod.GOSSIP_SERVICE, {"PushStream": grpc.stream_stream_rpc_method_handler(
            push_stream, request_deserializer=None, response_serializer=None)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def until_linked(transport: transport_mod.GrpcTransport, address_: str) -> None:
    """Pushes until the transport writes to `address_` on a link (the announcement came)."""
    deadline = time.monotonic() + CONVERGE_DEADLINE
    while address_ not in transport._links:
        assert time.monotonic() < deadline, "the announced port was never used"
        await transport.push(address_, b"", timeout=1.0)
        await asyncio.sleep(0.02)


async def test_a_follower_that_reads_nothing_fails_the_push_after_the_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # holds the connection open, reads nothing

    silent = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    server, target = await announcing_server(silent.sockets[0].getsockname()[1])
    transport = transport_mod.GrpcTransport(max_message_bytes=MAX_MESSAGE_BYTES)
    try:
        await until_linked(transport, target)
        started = time.monotonic()
        with pytest.raises(gossip_base.PeerUnreachable) as caught:
            while time.monotonic() - started < 10 * ELECTION_DEADLINE:
                await transport.push(target, b"\0" * (MAX_MESSAGE_BYTES // 2), timeout=0.5)
                await asyncio.sleep(0.05)
        assert caught.value.code == "DEADLINE_EXCEEDED", caught.value
        assert target not in transport._links and target not in transport._streams
    finally:
        await transport.close()
        for writer in accepted:
            writer.close()
        silent.close()
        await server.stop(None)


async def test_a_refusal_on_the_port_reaches_the_pusher_with_its_code(tmp_path: Path) -> None:
    with lease_held_by_test(tmp_path, term=5):
        env = {"CLUSTER_ID": "ga15"}
        async with running_agents(1, lease_dir=tmp_path, per_agent={0: env}) as (agent,):
            assert agent.push_port is not None
            server, target = await announcing_server(agent.push_port.port)
            # A pusher of another cluster: its PushHello is refused.
            transport = transport_mod.GrpcTransport(
                max_message_bytes=MAX_MESSAGE_BYTES,
                metadata=(("x-gossip-agent-cluster", "red"),))
            try:
                with pytest.raises(gossip_base.PeerUnreachable) as caught:
                    await until_linked(transport, target)
                    for _ in range(50):
                        await transport.push(target, snapshot_bytes(5, 1, {1: 1}), timeout=1.0)
                        await asyncio.sleep(0.02)
                assert caught.value.code == "FAILED_PRECONDITION", caught.value
                assert "cluster id red" in str(caught.value)
                assert agent.engine.stats.rejected["cluster"] >= 1
                assert agent.engine.held.snapshot is None or agent.engine.held.version.term != 5
            finally:
                await transport.close()
                await server.stop(None)


async def test_agents_converge_with_the_push_port_under_mtls(pki: Pki, tmp_path: Path) -> None:
    async with running_agents(3, lease_dir=tmp_path, per_agent=pki.agent_env(3)) as agents:
        addresses = [address(a) for a in agents]
        admin = pki.admin
        leader_address, _ = await localcluster.find_leader(addresses, ELECTION_DEADLINE,
                                                           channels=admin)
        leader = next(a for a in agents if address(a) == leader_address)
        followers = [a for a in agents if a is not leader]
        async with admin.open(leader_address, []) as channel:
            stub = pb_grpc.StateStub(channel)
            replicas, deadline = 0, time.monotonic() + CONVERGE_DEADLINE
            # Until the leader pushes to both on their ports (TLS handshakes included), then
            # three more, which must arrive there.
            while not {address(a) for a in followers} <= set(leader.transport._links):
                assert time.monotonic() < deadline, "the leader never moved to the push ports"
                replicas += 1
                await stub.SetService(pb.SetServiceRequest(ip="10.5.0.1", replicas=replicas),
                                      timeout=RPC_DEADLINE)
                await held_everywhere(agents, "10.5.0.1", replicas)
            before = [port_bytes(a)[1] for a in followers]
            for more in range(replicas + 1, replicas + 4):
                await stub.SetService(pb.SetServiceRequest(ip="10.5.0.1", replicas=more),
                                      timeout=RPC_DEADLINE)
        await held_everywhere(agents, "10.5.0.1", replicas + 3)
        assert all(port_bytes(a)[1] > seen for a, seen in zip(followers, before, strict=True))
