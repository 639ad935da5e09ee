"""The leader's side of the push port (proto PushHello): one TCP connection per peer that
announced a port, each push one frame written without waiting, acks read as they come.

Why not the PushStream: a message on a grpc.aio stream costs the writer 0.1 to 0.5 ms of CPU
and the reader as much (tools/pushbench.py); the same bytes in a frame on a socket cost a
fraction of that, and the leader writes one per peer per change.

A link fails as a stream does, with base.PeerUnreachable on the push that finds it so:
- the peer refused (a PushRefusal: its code and message are the detail) or closed;
- the peer reads nothing: the bytes waiting to be sent have not drained within the push's
  timeout (what a blocked write on the stream would be), or exceed MAX_LAG_FRAMES frames of the
  largest size;
- the peer vanished: TCP keepalive and TCP_USER_TIMEOUT end the connection, as grpc's
  keepalive ends a stream.
Opening a link that cannot connect is not a failure of the peer, whose gRPC port answered: the
caller keeps pushing on the PushStream (transport.GrpcTransport).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from gossip_agent import errors
from gossip_agent.gossip import frames
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.gossip")

# Bytes the kernel and asyncio may hold for a peer before it is a peer that reads nothing:
# this many of the largest frames. A snapshot waits at most one round behind the newest. The
# follower bounds the acks it holds for a leader that reads nothing the same way.
MAX_LAG_FRAMES = 4
# Idle connections are probed like grpc's keepalive (transport.channel_options): first probe
# after 10 s of silence, then every 5 s, dead after 2 unanswered.
KEEPALIVE = ((socket.TCP_KEEPIDLE, 10), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 2))


class LinkFailed(errors.GossipAgentError):
    """The link to a peer ended or is stuck; `code` is a gRPC status name, as PushStream's."""

    def __init__(self, detail: str, *, code: str = "UNAVAILABLE") -> None:
        super().__init__(detail)
        self.code = code


class _Reader(asyncio.Protocol):
    """The peer's frames: acks to `on_ack`, a refusal or a close ends the link."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        link = self._link
        try:
            replies = link.splitter.feed(data)
        except frames.FrameTooLarge as exc:
            link.fail(LinkFailed(f"peer sent {exc}", code="RESOURCE_EXHAUSTED"))
            return
        for message in replies:
            try:
                reply = pb.PushReply.FromString(message)
            except Exception as exc:  # protobuf's DecodeError, kept out of the callers
                link.fail(LinkFailed(f"unreadable reply from the push port: {exc!r}",
                                     code="INTERNAL"))
                return
            if reply.HasField("ack"):
                link.on_ack(link.address, reply.ack)
            else:
                refusal = reply.refusal
                link.fail(LinkFailed(f"refused: {refusal.code}: {refusal.message}",
                                     code=refusal.code or "UNKNOWN"))
                return

    def pause_writing(self) -> None:
        self._link.paused_at = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self._link.paused_at = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.fail(LinkFailed(f"push connection closed: {exc or 'by the peer'}"))


class Link:
    """One open connection to a peer's push port."""

    def __init__(self, address: str, *, limit: int,
                 on_ack: Callable[[str, pb.PushAck], None]) -> None:
        self.address = address
        self.on_ack = on_ack
        self.splitter = frames.Splitter(limit=limit)
        self.transport: asyncio.Transport | None = None
        self.paused_at: float | None = None  # when the write buffer went over its high mark
        self.failure: LinkFailed | None = None
        self._max_buffered = MAX_LAG_FRAMES * (limit + frames.HEADER.size)

    def send(self, payload: bytes, *, timeout: float) -> None:
        """Writes one frame; LinkFailed when the link is over or the peer reads nothing."""
        transport = self.transport
        if self.failure is not None or transport is None:
            raise self.failure or LinkFailed("push connection not open")
        if self.paused_at is not None:
            waited = asyncio.get_running_loop().time() - self.paused_at
            if (waited > timeout
                    or transport.get_write_buffer_size() > self._max_buffered):
                self.fail(LinkFailed(f"peer read nothing for {waited:.1f}s",
                                     code="DEADLINE_EXCEEDED"))
                raise self.failure or LinkFailed("stuck")
        transport.write(frames.HEADER.pack(len(payload)) + payload)

    def fail(self, failure: LinkFailed) -> None:
        """Ends the link (the first cause is kept); the next send raises it."""
        if self.failure is None:
            self.failure = failure
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    @property
    def open(self) -> bool:
        return self.failure is None and self.transport is not None


async def connect(
    address: str, host: str, port: int, *, hello: pb.PushHello, context: ssl.SSLContext | None,
    server_name: str, limit: int, timeout: float, on_ack: Callable[[str, pb.PushAck], None],
) -> Link:
    """A link to host:port with its PushHello written; OSError/TimeoutError when it cannot
    connect or the TLS handshake fails."""
    link = Link(address, limit=limit, on_ack=on_ack)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, _ = await loop.create_connection(
            lambda: _Reader(link), host, port, ssl=context,
            server_hostname=server_name if context is not None else None)
    assert isinstance(transport, asyncio.Transport)
    keepalive(transport, user_timeout=3 * timeout)
    link.transport = transport
    transport.write(frames.frame(hello.SerializeToString()))
    return link


def keepalive(transport: asyncio.BaseTransport, *, user_timeout: float) -> None:
    """TCP keepalive for an idle connection, and TCP_USER_TIMEOUT so data the peer never
    acknowledges ends the connection after `user_timeout` seconds (a node that vanished): both
    ends of the push port, so neither holds a dead peer's connection for good."""
    sock = transport.get_extra_info("socket")
    if sock is None:  # pragma: no cover - a TCP transport always has its socket
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in KEEPALIVE:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    milliseconds = max(1000, int(user_timeout * 1000))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
