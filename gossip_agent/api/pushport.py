"""The follower's side of the push port (PUSH_PORT; proto PushHello): the leader's pushes as
frames on a plain TCP connection, judged exactly as on the PushStream.

The port is bound when the agent is built (a port in use fails start-up with a sentence naming
PUSH_PORT, as LISTEN_ADDR does) and announced in the initial metadata of every PushStream this
agent answers (api/server.py), so a leader learns it from the stream it already has and a
leader before 0.3 never sees it.

Every check of the Gossip service holds here, in the same order and with the same counters:
- under mutual TLS the client certificate must be signed by TLS_CA (the handshake) and be a
  member's (identity.Policy.is_member): otherwise PERMISSION_DENIED, before anything is read;
- the PushHello's cluster id must be ours: otherwise FAILED_PRECONDITION;
- a frame over MAX_MESSAGE_BYTES is RESOURCE_EXHAUSTED before its body is buffered; a snapshot
  that does not parse or validate is INVALID_ARGUMENT; an unproven (term, leader) is
  FAILED_PRECONDITION (gossip/proof.py), with the lease read done while reading is paused, so
  frames stay in order.
A refusal is one PushRefusal frame, then the connection closes: what the stream's status is.
Snapshots are judged in data_received, with no task or coroutine per frame: that is the point
of the port (about a tenth of grpc.aio's cost per message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl

from gossip_agent import errors
from gossip_agent.api import status
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import frames, pushlink, wire
from gossip_agent.security import cluster, identity, members, tls
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.api")

# A connection that has not sent its PushHello within this many seconds is closed: it holds
# a socket and, under TLS, a handshake's memory.
HELLO_TIMEOUT = 10.0
# Unacknowledged data to a leader that vanished ends its connection after this long (TCP
# keepalive ends an idle one): a follower keeps no dead leader's connection.
USER_TIMEOUT = 30.0


class PushPort:
    """The listening socket and its connections."""

    def __init__(
        self, *, engine: engine_mod.Engine, host: str, port: int, limit: int,
        policy: identity.Policy, cluster_id: str, context: ssl.SSLContext | None,
    ) -> None:
        self.engine = engine
        self.limit = limit
        self.max_buffered = pushlink.MAX_LAG_FRAMES * (limit + frames.HEADER.size)
        self.policy = policy
        self.cluster_id = cluster_id
        self.context = context
        self.refusals = cluster.LogOnce()
        self.connections: set[_Connection] = set()
        self._socket = _listen(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), sock=self._socket, ssl=self.context,
            ssl_handshake_timeout=HELLO_TIMEOUT if self.context is not None else None)

    def close(self) -> None:
        """Closes the listening socket of a port never started (the agent failed to build)."""
        if self._server is None:
            self._socket.close()

    async def stop(self) -> None:
        """Stops listening and ends every connection (the leader reconnects elsewhere)."""
        if self._server is not None:
            self._server.close()
        else:
            self._socket.close()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Not SO_REUSEPORT: a second agent on the port must fail, not share it (api/server.py).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(f"PUSH_PORT {port} on {host}: cannot listen ({exc.strerror})") from exc
    return sock


class _Connection(asyncio.Protocol):
    """One leader's connection: a PushHello, then snapshots, each judged as it arrives."""

    def __init__(self, port: PushPort) -> None:
        self._port = port
        self._engine = port.engine
        self._splitter = frames.Splitter(limit=port.limit)
        self._transport: asyncio.Transport | None = None
        self._peer = "unknown"
        self._greeted = False
        self._closed = False
        self._held: collections.deque[bytes] = collections.deque()  # frames behind a proof
        self._proving: asyncio.Task[None] | None = None
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._port.connections.add(self)
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self._peer = f"ipv{'6' if ':' in str(peer[0]) else '4'}:{peer[0]}:{peer[1]}"
        pushlink.keepalive(transport, user_timeout=USER_TIMEOUT)
        if self._port.policy.enforced:
            names = tls.peer_names(transport.get_extra_info("peercert"))
            if not self._port.policy.is_member(names):
                self._refuse_stranger(names)
                return
        self._hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT, self._refuse, "INVALID_ARGUMENT",
            f"no PushHello within {HELLO_TIMEOUT:g}s")

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            messages = self._splitter.feed(data)
        except frames.FrameTooLarge as exc:
            self._refuse("RESOURCE_EXHAUSTED", str(exc))
            return
        for message in messages:
            if self._proving is not None:
                self._held.append(message)  # behind a proof: judged in order once it is done
            elif not self._take(message) and self._closed:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._port.connections.discard(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._proving is not None:
            self._proving.cancel()

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # -- frames -------------------------------------------------------------------------------

    def _take(self, message: bytes) -> bool:
        """Judges one frame; False when it was refused (the connection closes) or waits on a
        proof (later frames are held until it is done)."""
        if not self._greeted:
            return self._hello(message)
        engine = self._engine
        engine.stats.bytes_received["push-port"] += len(message)
        try:
            snapshot = wire.parse(pb.Snapshot, message)
            if engine.needs_proof(snapshot):  # a new (term, leader): one lease read, in order
                self._prove(snapshot)
                return False
            self._judge(snapshot)
        except errors.GossipAgentError as exc:
            self._refuse(status.code_for(exc).name, str(exc))
            return False
        return True

    def _judge(self, snapshot: pb.Snapshot) -> None:
        engine = self._engine
        result = engine.receive_push(snapshot)
        transport = self._transport
        if wire.wants_ack(snapshot, result) and transport is not None:
            if transport.get_write_buffer_size() > self._port.max_buffered:
                # A leader that reads none of its acks: no more memory for it (it reconnects).
                self._refuse("RESOURCE_EXHAUSTED", "acknowledgements not read: closing")
                return
            reply = pb.PushReply(ack=engine.push_ack(result)).SerializeToString()
            transport.write(frames.HEADER.pack(len(reply)) + reply)

    def _hello(self, message: bytes) -> bool:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        try:
            hello = wire.parse(pb.PushHello, message)
        except errors.GossipAgentError as exc:
            self._refuse("INVALID_ARGUMENT", f"first frame is not a PushHello: {exc}")
            return False
        if hello.protocol != frames.PROTOCOL:
            self._refuse("INVALID_ARGUMENT", f"push protocol {hello.protocol!r} is not "
                         f"{frames.PROTOCOL!r}")
            return False
        if hello.cluster_id != self._port.cluster_id:
            self._engine.stats.rejected["cluster"] += 1
            message_text = cluster.refusal_message(theirs=hello.cluster_id,
                                                   ours=self._port.cluster_id)
            self._log_once((cluster.host_of(self._peer), hello.cluster_id), message_text)
            self._refuse("FAILED_PRECONDITION", message_text)
            return False
        self._greeted = True
        return True

    def _prove(self, snapshot: pb.Snapshot) -> None:
        assert self._transport is not None
        self._transport.pause_reading()
        self._proving = asyncio.create_task(self._proven(snapshot),
                                            name=f"gossip.push-port.prove[{self._peer}]")

    async def _proven(self, snapshot: pb.Snapshot) -> None:
        try:
            await self._engine.prove(snapshot, sender=self._peer)
            self._judge(snapshot)
        except errors.GossipAgentError as exc:
            self._refuse(status.code_for(exc).name, str(exc))
            return
        finally:
            self._proving = None
        while self._held and not self._closed and self._proving is None:
            self._take(self._held.popleft())
        if not self._closed and self._proving is None and self._transport is not None:
            self._transport.resume_reading()

    # -- refusals -----------------------------------------------------------------------------

    def _refuse_stranger(self, names: frozenset[str]) -> None:
        self._engine.stats.rejected[members.REASON] += 1
        message = members.refusal_message(described=identity.describe(names, self._peer),
                                          member_name=self._port.policy.member_name)
        self._log_once((cluster.host_of(self._peer), names), message)
        self._refuse("PERMISSION_DENIED", message)

    def _log_once(self, key: object, message: str) -> None:
        if self._port.refusals.first(key):
            log.warning("refused gossip on the push port from %s: %s", self._peer, message,
                        extra={"peer": self._peer})

    def _refuse(self, code: str, message: str) -> None:
        """One PushRefusal frame, then the connection closes once it is written."""
        if self._closed or self._transport is None:
            return
        self._closed = True
        self._held.clear()
        reply = pb.PushReply(refusal=pb.PushRefusal(code=code, message=message))
        self._transport.write(frames.frame(reply.SerializeToString()))
        self._transport.close()
