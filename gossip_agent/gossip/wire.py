"""Conversion between the core's dataclasses and the gossip_agent.v1 protobuf messages.

Only this module (and api/) knows both worlds, so the core stays free of generated code.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import message as protobuf_message

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.v1 import gossip_pb2 as pb


def version_to_pb(version: versions.Version) -> pb.Version:
    return pb.Version(term=version.term, seq=version.seq)


def version_from_pb(message: pb.Version) -> versions.Version:
    return versions.Version(message.term, message.seq)


def snapshot_to_pb(
    snapshot: snapshots.Snapshot, *, age_us: int = 0, omit_names: bool = False
) -> pb.Snapshot:
    omitted = omit_names or snapshot.names is None
    return pb.Snapshot(
        version=version_to_pb(snapshot.version),
        leader=snapshot.leader,
        leader_address=snapshot.leader_address,
        table=snapshot.table,
        names=() if omitted else snapshot.names,
        content_hash=snapshot.content_hash,
        age_us=age_us,
        names_hash=snapshot.names_hash,
        names_omitted=omitted,
    )


def delta_to_pb(delta: snapshots.Delta) -> pb.Snapshot:
    return pb.Snapshot(
        version=version_to_pb(delta.version),
        base=version_to_pb(delta.base),
        leader=delta.leader,
        leader_address=delta.leader_address,
        table=delta.changes,
        content_hash=delta.content_hash,
        names_hash=delta.names_hash,
        names_omitted=True,
    )


def delta_from_pb(message: pb.Snapshot) -> snapshots.Delta:
    if not message.HasField("version"):
        raise errors.SnapshotInvalid("delta has no version")
    return snapshots.Delta(
        version=version_from_pb(message.version),
        base=version_from_pb(message.base),
        leader=message.leader,
        leader_address=message.leader_address,
        changes=message.table,
        content_hash=message.content_hash,
        names_hash=message.names_hash,
    )


def snapshot_from_pb(message: pb.Snapshot) -> snapshots.Snapshot:
    if not message.HasField("version"):
        raise errors.SnapshotInvalid("snapshot has no version")
    return snapshots.Snapshot(
        version=version_from_pb(message.version),
        leader=message.leader,
        leader_address=message.leader_address,
        table=message.table,
        names=None if message.names_omitted else tuple(message.names),
        content_hash=message.content_hash,
        names_hash=message.names_hash,
    )


# Snapshot(ack=True) serialized: appended to an encoded snapshot it sets `ack` on the receiving
# side (protobuf merges concatenated messages; for a scalar the last value wins), so the leader
# encodes each snapshot once whether or not it asks a given peer for an acknowledgement.
ACK_SUFFIX = pb.Snapshot(ack=True).SerializeToString()


def age_suffix(age_us: int) -> bytes:
    """Snapshot(age_us=...) serialized, appended to an encoded snapshot like ACK_SUFFIX: the
    leader encodes once and each push carries its own age (time since the leader wrote it)."""
    return pb.Snapshot(age_us=max(0, age_us)).SerializeToString()


_ALWAYS_ACKED = (pb.PushAck.STALE, pb.PushAck.CONFLICT, pb.PushAck.NEED_FULL)


def ack_wanted(message: pb.Snapshot, ack: pb.PushAck) -> bool:
    """Whether a pushed snapshot's receiver sends its PushAck (see Snapshot.ack)."""
    return wants_ack(message, ack.result)


def wants_ack(message: pb.Snapshot, result: pb.PushAck.Result) -> bool:
    """ack_wanted, decided from the result alone: before the PushAck is built, so a push
    nobody asked an acknowledgement of costs no PushAck (most pushes at N > 8)."""
    return message.ack or result in _ALWAYS_ACKED


M = TypeVar("M", bound=protobuf_message.Message)


def parse(message_type: type[M], payload: bytes) -> M:
    """Parses wire bytes; a payload that does not parse is INVALID_ARGUMENT, not INTERNAL."""
    try:
        return message_type.FromString(payload)
    except Exception as exc:  # protobuf raises DecodeError and, for some inputs, others
        raise errors.SnapshotInvalid(f"message does not parse as {message_type.__name__}") from exc
