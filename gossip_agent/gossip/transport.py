"""The peer transport over gRPC: how one agent calls another (the Protocol is in base.py).

- GrpcTransport: gossip_agent.v1.Gossip over grpc.aio. Pushes travel on one long-lived
  bidirectional stream per peer (DESIGN: a unary call costs a receiver ~1.1 ms of CPU, a
  streamed message 0.1-0.5 ms), and the payload is sent as the bytes the leader serialized
  once, not re-encoded per peer.
- memory.MemoryNetwork (gossip/memory.py): the same calls in one event loop, with loss, delay
  and partitions, for simulations.

A push is one write on the peer's stream, or, once the peer announced its push port in the
stream's initial metadata, one frame on a plain connection to that port (gossip/pushlink.py:
a fraction of grpc.aio's cost per message); acknowledgements (sent only when asked for, or for
STALE / CONFLICT results: see Snapshot.ack) come back on the same stream, are read by one task
per stream and handed to the callback set with set_ack_handler. Every failure surfaces as
base.PeerUnreachable; grpc's exception types stay in this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection

import grpc
import grpc.aio

from gossip_agent.gossip import base, frames, pushlink
from gossip_agent.security import cluster, tls
from gossip_agent.v1 import gossip_pb2 as pb

log = logging.getLogger("gossip_agent.tls")

PUSH_STREAM = "/gossip_agent.v1.Gossip/PushStream"
EXCHANGE = "/gossip_agent.v1.Gossip/Exchange"


def channel_options(max_message_bytes: int, *, reconnect_cap: float) -> list[tuple[str, int]]:
    return [
        # grpc's own reconnect backoff starts at 1 s and grows to 120 s; a peer that was still
        # starting when we first called would stay unreachable that long. Our per-peer backoff
        # (PEER_BACKOFF_*) decides when to retry, so keep grpc's short and capped by it.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(reconnect_cap * 1000)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Detect a peer that vanished without closing the stream (node loss), so its push
        # stream fails and is re-opened with backoff instead of hanging.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 0),
        # No bandwidth-delay-product probing: it pings on received data, adding a frame each
        # way per push on links where messages are small and the window never limits.
        ("grpc.http2.bdp_probe", 0),
    ]


@dataclasses.dataclass
class _PushStream:
    call: grpc.aio.StreamStreamCall  # type: ignore[type-arg]
    reader: asyncio.Task[None] | None = None
    # The write in flight (at most one: grpc's rule): the task awaiting it and the loop time
    # by which it must finish. `watchdog` checks that deadline (see GrpcTransport._write).
    writer: asyncio.Task[object] | None = None
    deadline: float = 0.0
    watchdog: asyncio.TimerHandle | None = None
    expired: bool = False  # the watchdog cancelled `writer`: its CancelledError is a timeout


def _ignore_ack(address: str, ack: pb.PushAck) -> None:
    pass


class GrpcTransport:
    def __init__(
        self, *, max_message_bytes: int, reconnect_cap: float = 5.0,
        factory: tls.ChannelFactory | None = None, metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._options = channel_options(max_message_bytes, reconnect_cap=reconnect_cap)
        self._limit = max_message_bytes
        # Mutual TLS or plaintext (security/tls.py); channels are reopened when its files change.
        self.factory = factory or tls.ChannelFactory(None)
        self._generation = self.factory.generation
        # Sent on every call this transport makes (the cluster id: security/cluster.py).
        self.metadata = metadata
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, _PushStream] = {}
        self._on_ack: base.AckHandler = _ignore_ack
        self._closing: set[asyncio.Task[None]] = set()
        self._tls_failed: set[str] = set()  # peers whose handshake failure was logged
        # The push port: ports announced on each peer's current PushStream (taken when a link
        # is opened: one attempt per announcement), the links open, and the peers whose port
        # did not connect (logged once; they stay on the PushStream).
        self._push_ports: dict[str, int] = {}
        self._links: dict[str, pushlink.Link] = {}
        self._link_failed: set[str] = set()
        self._hello = pb.PushHello(protocol=frames.PROTOCOL,
                                   cluster_id=dict(metadata).get(cluster.CLUSTER_KEY, ""))

    def set_ack_handler(self, handler: base.AckHandler) -> None:
        self._on_ack = handler

    def kept(self) -> set[str]:
        """Addresses this transport keeps a channel or a push stream for."""
        return set(self._channels) | set(self._streams) | set(self._links)

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.factory.check() != self._generation:
            self._reopen_all()
        channel = self._channels.get(address)
        if channel is None:
            channel = self.factory.open(address, self._options)
            self._channels[address] = channel
        return channel

    def _reopen_all(self) -> None:
        """New certificates: drop every stream and channel; the next call opens new ones.
        The old channels close in the background (a call in flight on one fails and is
        retried like any failed peer call)."""
        self._generation = self.factory.generation
        for address in list(self._streams):
            self._drop_stream(address)
        for address in list(self._links):
            self._drop_link(address)
        old, self._channels = list(self._channels.values()), {}
        for channel in old:
            task = asyncio.create_task(channel.close(grace=1.0), name="gossip.close-channel")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _stream(self, address: str) -> _PushStream:
        stream = self._streams.get(address)
        if stream is None:
            # request_serializer=None: the payload is already the serialized Snapshot.
            method = self.channel(address).stream_stream(
                PUSH_STREAM, request_serializer=None, response_deserializer=pb.PushAck.FromString
            )
            # The stream is opened empty and written to per push (grpc-stubs wants an iterator).
            stream = _PushStream(method(metadata=self.metadata))  # type: ignore[call-arg]
            stream.reader = asyncio.create_task(
                self._read_acks(address, stream), name=f"gossip.push-acks[{address}]")
            self._streams[address] = stream
        return stream

    async def _read_acks(self, address: str, stream: _PushStream) -> None:
        """Hands each ack to the handler; when the stream ends, forgets it (next push reopens)."""
        try:
            self._learn_port(address, stream, await stream.call.initial_metadata())
            while True:
                ack = await stream.call.read()
                if not isinstance(ack, pb.PushAck):  # EOF: the peer closed the stream
                    break
                self._on_ack(address, ack)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        finally:
            if self._streams.get(address) is stream:
                del self._streams[address]
                self._push_ports.pop(address, None)
            _disarm(stream)
            stream.call.cancel()

    def _learn_port(self, address: str, stream: _PushStream, metadata: object) -> None:
        """The push port the peer announced on this stream, if it did (agents since 0.3)."""
        value = metadata.get(frames.PORT_KEY) if isinstance(metadata, grpc.aio.Metadata) else None
        if isinstance(value, str) and value.isdigit() and 0 < int(value) < 65536:
            if self._streams.get(address) is stream and address not in self._links:
                self._push_ports[address] = int(value)

    async def push(self, address: str, payload: bytes, *, timeout: float) -> None:
        link = self._links.get(address)
        if link is None and address in self._push_ports:
            link = await self._open_link(address, timeout=timeout)
        if link is not None:
            try:
                link.send(payload, timeout=timeout)
                return
            except pushlink.LinkFailed as exc:
                # As a failed stream: both go, the next push renegotiates on a new stream.
                self._drop_link(address)
                self._drop_stream(address)
                raise base.PeerUnreachable(address, str(exc), code=exc.code) from exc
        stream = self._stream(address)
        try:
            await _write(stream, payload, timeout=timeout)
        except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as exc:
            detail = _unreachable(address, exc)
            if stream.call.done() and not isinstance(exc, TimeoutError):
                # Why the stream ended (a timed-out write ends it here: that is the cause).
                detail = base.PeerUnreachable(address, await _end_detail(stream.call))
            self._drop_stream(address)
            raise detail from exc

    async def _open_link(self, address: str, *, timeout: float) -> pushlink.Link | None:
        """A link to the port the peer announced, or None (pushes stay on its stream) when
        it does not connect: a firewall that lets the gRPC port through but not PUSH_PORT
        costs speed, never delivery."""
        port = self._push_ports.pop(address)
        host = address.rpartition(":")[0].strip("[]")
        try:
            link = await pushlink.connect(
                address, host, port, hello=self._hello, context=self.factory.ssl_context(),
                server_name=self.factory.files.server_name if self.factory.files else "",
                limit=self._limit, timeout=timeout, on_ack=self._on_ack)
        except (OSError, TimeoutError, tls.TlsError) as exc:
            if address not in self._link_failed:
                self._link_failed.add(address)
                log.warning("push port %d of peer %s does not connect (%s): pushes to it stay "
                            "on the gRPC stream; let PUSH_PORT through between nodes",
                            port, address, exc or type(exc).__name__, extra={"peer": address})
            return None
        self._links[address] = link
        return link

    def _drop_link(self, address: str) -> None:
        link = self._links.pop(address, None)
        if link is not None:
            link.fail(pushlink.LinkFailed("closed by this agent"))

    def _note_handshake_failure(self, address: str, exc: grpc.aio.AioRpcError) -> None:
        """Logs, once per peer, a TLS handshake that failed (grpc's core logs the server side
        of a refusal without the peer's address; this names it from the calling side)."""
        details = str(exc.details() or "")
        if (self.factory.secure and exc.code() == grpc.StatusCode.UNAVAILABLE
                and "handshake" in details.lower() and address not in self._tls_failed):
            self._tls_failed.add(address)
            log.warning("TLS handshake with peer %s failed (a certificate this agent's CA did "
                        "not sign, expired, or plaintext there?): %s", address, details,
                        extra={"peer": address})

    def _drop_stream(self, address: str) -> None:
        self._push_ports.pop(address, None)  # announced on that stream: not yet used, void
        stream = self._streams.pop(address, None)
        if stream is not None:
            _disarm(stream)
            stream.call.cancel()
            if stream.reader is not None:
                stream.reader.cancel()
                # Awaited by close(): a dropped stream's reader must not outlive the transport.
                self._closing.add(stream.reader)
                stream.reader.add_done_callback(self._closing.discard)

    async def exchange(
        self, address: str, request: pb.ExchangeRequest, *, timeout: float
    ) -> pb.ExchangeReply:
        method = self.channel(address).unary_unary(
            EXCHANGE,
            request_serializer=pb.ExchangeRequest.SerializeToString,
            response_deserializer=pb.ExchangeReply.FromString,
        )
        try:
            reply = await method(request, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            self._note_handshake_failure(address, exc)
            raise _unreachable(address, exc) from exc
        assert isinstance(reply, pb.ExchangeReply)
        return reply

    async def retain(self, addresses: Collection[str]) -> int:
        """Closes the channel and push stream of every address not in `addresses` (peers
        that left: pod-IP churn would otherwise leave one channel per address ever called,
        each retrying its connection, for the life of the process)."""
        gone = self.kept() - set(addresses)
        for address in gone:
            await self.forget(address)
        return len(gone)

    async def forget(self, address: str) -> None:
        self._tls_failed.discard(address)
        self._link_failed.discard(address)
        self._push_ports.pop(address, None)
        self._drop_link(address)
        stream = self._streams.get(address)
        self._drop_stream(address)
        if stream is not None and stream.reader is not None:
            await asyncio.gather(stream.reader, return_exceptions=True)
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close(grace=None)

    async def close(self) -> None:
        for address in list(self._channels) + list(self._links):
            await self.forget(address)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _write(stream: _PushStream, payload: bytes, *, timeout: float) -> None:
    """stream.call.write(payload), raising TimeoutError after `timeout` seconds: HTTP/2 flow
    control blocks the write while a stuck peer reads nothing, and that peer's worker must
    fail and back off. Like asyncio.timeout, but with one timer per stream, re-armed only when
    it fires while a write is in flight, instead of a timer made and cancelled per write
    (measured: 6.1 us per write with asyncio.timeout, 0.1 us this way; the leader writes once
    per peer per change). Cancellation from elsewhere still propagates as CancelledError."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stream.writer, stream.deadline = task, loop.time() + timeout
    if stream.watchdog is None:
        stream.watchdog = loop.call_at(stream.deadline, _watch, stream, stream.deadline)
    try:
        await stream.call.write(payload)
    except asyncio.CancelledError:
        if stream.expired and task is not None and task.uncancel() == 0:
            raise TimeoutError(f"write still blocked after {timeout:g}s") from None
        raise
    finally:
        stream.writer = None


def _disarm(stream: _PushStream) -> None:
    if stream.watchdog is not None:
        stream.watchdog.cancel()
        stream.watchdog = None


def _watch(stream: _PushStream, armed_for: float) -> None:
    """The stream's timer, set for `armed_for`, fired: cancel a write whose deadline that was,
    follow a later write to its own deadline, or stop while nothing is in flight (the next
    write arms it again)."""
    stream.watchdog = None
    if stream.writer is None or stream.expired:
        return
    if stream.deadline > armed_for:
        loop = asyncio.get_running_loop()
        stream.watchdog = loop.call_at(stream.deadline, _watch, stream, stream.deadline)
        return
    stream.expired = True
    stream.writer.cancel()


def _unreachable(address: str, exc: BaseException) -> base.PeerUnreachable:
    if isinstance(exc, grpc.aio.AioRpcError):
        return base.PeerUnreachable(
            address, f"{exc.code().name}: {exc.details()}", code=exc.code().name
        )
    if isinstance(exc, TimeoutError):
        return base.PeerUnreachable(address, "timed out", code="DEADLINE_EXCEEDED")
    return base.PeerUnreachable(address, repr(exc))


async def _end_detail(call: grpc.aio.StreamStreamCall) -> str:  # type: ignore[type-arg]
    try:
        code = await call.code()
        details = await call.details()
    except Exception:  # pragma: no cover - the call is already gone
        return "stream closed"
    return f"stream closed: {code.name}: {details}"
