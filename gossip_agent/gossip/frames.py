"""Frames of the push port (proto PushHello): a 4-byte big-endian length, then the message.

Pure bytes, no I/O: both ends of the push port (gossip/pushlink.py, api/pushport.py) feed what
their socket received into a Splitter and get whole messages back, in order. A length over the
limit is refused as soon as its 4 bytes arrive, before anything of the body is buffered.
"""

from __future__ import annotations

import struct

from gossip_agent import errors

PROTOCOL = "gossip-agent/push/1"
# The initial-metadata key by which a PushStream's callee announces its push port.
PORT_KEY = "x-gossip-agent-push-port"
HEADER = struct.Struct(">I")


class FrameTooLarge(errors.GossipAgentError):
    """A frame longer than the limit (MAX_MESSAGE_BYTES): the connection ends."""


def frame(message: bytes) -> bytes:
    return HEADER.pack(len(message)) + message


class Splitter:
    """Collects received bytes; yields each whole frame's message once, in order."""

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages `data` completes (often exactly one); FrameTooLarge on a length over
        the limit, with nothing of that frame kept."""
        buffer = self._buffer
        if not buffer and len(data) >= HEADER.size:
            # The common case, one whole frame in one read: no copy into the buffer.
            (length,) = HEADER.unpack_from(data)
            if length == len(data) - HEADER.size and length <= self._limit:
                return [data[HEADER.size:]]
        buffer += data
        messages: list[bytes] = []
        while len(buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer)
            if length > self._limit:
                buffer.clear()
                raise FrameTooLarge(
                    f"push frame of {length} bytes is over the {self._limit}-byte limit "
                    f"(MAX_MESSAGE_BYTES)")
            end = HEADER.size + length
            if len(buffer) < end:
                break
            messages.append(bytes(buffer[HEADER.size:end]))
            del buffer[:end]
        return messages
