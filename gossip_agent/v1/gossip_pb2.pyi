from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Version(_message.Message):
    __slots__ = ("term", "seq")
    TERM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    term: int
    seq: int
    def __init__(self, term: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "leader", "leader_address", "table", "names", "content_hash", "age_us", "ack", "names_hash", "names_omitted", "base")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    AGE_US_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NAMES_HASH_FIELD_NUMBER: _ClassVar[int]
    NAMES_OMITTED_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    version: Version
    leader: str
    leader_address: str
    table: bytes
    names: _containers.RepeatedScalarFieldContainer[str]
    content_hash: bytes
    age_us: int
    ack: bool
    names_hash: bytes
    names_omitted: bool
    base: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., leader: _Optional[str] = ..., leader_address: _Optional[str] = ..., table: _Optional[bytes] = ..., names: _Optional[_Iterable[str]] = ..., content_hash: _Optional[bytes] = ..., age_us: _Optional[int] = ..., ack: _Optional[bool] = ..., names_hash: _Optional[bytes] = ..., names_omitted: _Optional[bool] = ..., base: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class Digest(_message.Message):
    __slots__ = ("node", "address", "version", "content_hash", "complete", "max_term_seen", "boot_id", "peers", "leader", "beat_holder", "beat_term", "beat_seq", "beat_stamp")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    MAX_TERM_SEEN_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    BEAT_HOLDER_FIELD_NUMBER: _ClassVar[int]
    BEAT_TERM_FIELD_NUMBER: _ClassVar[int]
    BEAT_SEQ_FIELD_NUMBER: _ClassVar[int]
    BEAT_STAMP_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    version: Version
    content_hash: bytes
    complete: bool
    max_term_seen: int
    boot_id: str
    peers: _containers.RepeatedScalarFieldContainer[str]
    leader: bool
    beat_holder: str
    beat_term: int
    beat_seq: int
    beat_stamp: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., content_hash: _Optional[bytes] = ..., complete: _Optional[bool] = ..., max_term_seen: _Optional[int] = ..., boot_id: _Optional[str] = ..., peers: _Optional[_Iterable[str]] = ..., leader: _Optional[bool] = ..., beat_holder: _Optional[str] = ..., beat_term: _Optional[int] = ..., beat_seq: _Optional[int] = ..., beat_stamp: _Optional[str] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("digest", "snapshot")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    digest: Digest
    snapshot: Snapshot
    def __init__(self, digest: _Optional[_Union[Digest, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ExchangeReply(_message.Message):
    __slots__ = ("digest", "snapshot")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    digest: Digest
    snapshot: Snapshot
    def __init__(self, digest: _Optional[_Union[Digest, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("result", "held", "held_hash", "node", "max_term_seen")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[PushAck.Result]
        ADOPTED: _ClassVar[PushAck.Result]
        DUPLICATE: _ClassVar[PushAck.Result]
        STALE: _ClassVar[PushAck.Result]
        CONFLICT: _ClassVar[PushAck.Result]
        NEED_FULL: _ClassVar[PushAck.Result]
    RESULT_UNSPECIFIED: PushAck.Result
    ADOPTED: PushAck.Result
    DUPLICATE: PushAck.Result
    STALE: PushAck.Result
    CONFLICT: PushAck.Result
    NEED_FULL: PushAck.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    HELD_HASH_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MAX_TERM_SEEN_FIELD_NUMBER: _ClassVar[int]
    result: PushAck.Result
    held: Version
    held_hash: bytes
    node: str
    max_term_seen: int
    def __init__(self, result: _Optional[_Union[PushAck.Result, str]] = ..., held: _Optional[_Union[Version, _Mapping]] = ..., held_hash: _Optional[bytes] = ..., node: _Optional[str] = ..., max_term_seen: _Optional[int] = ...) -> None: ...

class PushHello(_message.Message):
    __slots__ = ("protocol", "cluster_id")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    cluster_id: str
    def __init__(self, protocol: _Optional[str] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class PushRefusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("ack", "refusal")
    ACK_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    ack: PushAck
    refusal: PushRefusal
    def __init__(self, ack: _Optional[_Union[PushAck, _Mapping]] = ..., refusal: _Optional[_Union[PushRefusal, _Mapping]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("ip", "replicas", "name")
    IP_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ip: str
    replicas: int
    name: str
    def __init__(self, ip: _Optional[str] = ..., replicas: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("node", "version", "leader", "content_hash", "complete", "entries", "dataplane", "map_path", "map_max_entries", "max_term_seen", "blind", "scale_down")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    MAP_PATH_FIELD_NUMBER: _ClassVar[int]
    MAP_MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_TERM_SEEN_FIELD_NUMBER: _ClassVar[int]
    BLIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: Version
    leader: str
    content_hash: str
    complete: bool
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    dataplane: str
    map_path: str
    map_max_entries: int
    max_term_seen: int
    blind: str
    scale_down: _containers.RepeatedCompositeFieldContainer[ScaleDownOutlook]
    def __init__(self, node: _Optional[str] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., leader: _Optional[str] = ..., content_hash: _Optional[str] = ..., complete: _Optional[bool] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., dataplane: _Optional[str] = ..., map_path: _Optional[str] = ..., map_max_entries: _Optional[int] = ..., max_term_seen: _Optional[int] = ..., blind: _Optional[str] = ..., scale_down: _Optional[_Iterable[_Union[ScaleDownOutlook, _Mapping]]] = ...) -> None: ...

class ScaleDownOutlook(_message.Message):
    __slots__ = ("service", "ip", "allowed", "cause", "reason")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    service: str
    ip: str
    allowed: bool
    cause: str
    reason: str
    def __init__(self, service: _Optional[str] = ..., ip: _Optional[str] = ..., allowed: _Optional[bool] = ..., cause: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("address", "node", "state", "last_contact_ms_ago", "version_known", "consecutive_failures", "origin")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    VERSION_KNOWN_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    address: str
    node: str
    state: str
    last_contact_ms_ago: int
    version_known: Version
    consecutive_failures: int
    origin: str
    def __init__(self, address: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[str] = ..., last_contact_ms_ago: _Optional[int] = ..., version_known: _Optional[_Union[Version, _Mapping]] = ..., consecutive_failures: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class GetLeaderRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLeaderResponse(_message.Message):
    __slots__ = ("holder", "leader_node", "leader_address", "term", "backend", "is_self", "refusal", "note")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    IS_SELF_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    holder: str
    leader_node: str
    leader_address: str
    term: int
    backend: str
    is_self: bool
    refusal: str
    note: str
    def __init__(self, holder: _Optional[str] = ..., leader_node: _Optional[str] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ..., backend: _Optional[str] = ..., is_self: _Optional[bool] = ..., refusal: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class WatchStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateEvent(_message.Message):
    __slots__ = ("node", "version", "leader", "content_hash", "entry_count", "applied_monotonic_ns", "applied_unix_ms", "via")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    node: str
    version: Version
    leader: str
    content_hash: str
    entry_count: int
    applied_monotonic_ns: int
    applied_unix_ms: int
    via: str
    def __init__(self, node: _Optional[str] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., leader: _Optional[str] = ..., content_hash: _Optional[str] = ..., entry_count: _Optional[int] = ..., applied_monotonic_ns: _Optional[int] = ..., applied_unix_ms: _Optional[int] = ..., via: _Optional[str] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StateEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[StateEvent, _Mapping]]] = ...) -> None: ...

class SetServiceRequest(_message.Message):
    __slots__ = ("ip", "replicas", "name")
    IP_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ip: str
    replicas: int
    name: str
    def __init__(self, ip: _Optional[str] = ..., replicas: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("ip",)
    IP_FIELD_NUMBER: _ClassVar[int]
    ip: str
    def __init__(self, ip: _Optional[str] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("version", "leader", "acked_peers", "written_monotonic_ns", "quorum")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    ACKED_PEERS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    version: Version
    leader: str
    acked_peers: int
    written_monotonic_ns: int
    quorum: int
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., leader: _Optional[str] = ..., acked_peers: _Optional[int] = ..., written_monotonic_ns: _Optional[int] = ..., quorum: _Optional[int] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("service_ip", "source_ip", "node", "monotonic_ns", "unix_ms", "via", "events", "skipped", "name")
    SERVICE_IP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    service_ip: str
    source_ip: str
    node: str
    monotonic_ns: int
    unix_ms: int
    via: str
    events: int
    skipped: int
    name: str
    def __init__(self, service_ip: _Optional[str] = ..., source_ip: _Optional[str] = ..., node: _Optional[str] = ..., monotonic_ns: _Optional[int] = ..., unix_ms: _Optional[int] = ..., via: _Optional[str] = ..., events: _Optional[int] = ..., skipped: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class WatchScaleRequestsRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    def __init__(self, scope: _Optional[str] = ...) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("node", "incarnation", "seq", "has_summary", "blind", "scale_ups", "facts", "generation", "full", "compact")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HAS_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    BLIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_UPS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    seq: int
    has_summary: bool
    blind: str
    scale_ups: _containers.RepeatedCompositeFieldContainer[ScaleUp]
    facts: _containers.RepeatedCompositeFieldContainer[ServiceFact]
    generation: int
    full: bool
    compact: bool
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., seq: _Optional[int] = ..., has_summary: _Optional[bool] = ..., blind: _Optional[str] = ..., scale_ups: _Optional[_Iterable[_Union[ScaleUp, _Mapping]]] = ..., facts: _Optional[_Iterable[_Union[ServiceFact, _Mapping]]] = ..., generation: _Optional[int] = ..., full: _Optional[bool] = ..., compact: _Optional[bool] = ...) -> None: ...

class ScaleUp(_message.Message):
    __slots__ = ("service", "source", "monotonic_ns", "unix_ms", "events")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    service: int
    source: int
    monotonic_ns: int
    unix_ms: int
    events: int
    def __init__(self, service: _Optional[int] = ..., source: _Optional[int] = ..., monotonic_ns: _Optional[int] = ..., unix_ms: _Optional[int] = ..., events: _Optional[int] = ...) -> None: ...

class ServiceFact(_message.Message):
    __slots__ = ("service", "passed", "dropped", "idle_ns")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    IDLE_NS_FIELD_NUMBER: _ClassVar[int]
    service: int
    passed: int
    dropped: int
    idle_ns: int
    def __init__(self, service: _Optional[int] = ..., passed: _Optional[int] = ..., dropped: _Optional[int] = ..., idle_ns: _Optional[int] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("seq", "duplicate", "leader", "term", "need_full", "compact")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    NEED_FULL_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    leader: str
    term: int
    need_full: bool
    compact: bool
    def __init__(self, seq: _Optional[int] = ..., duplicate: _Optional[bool] = ..., leader: _Optional[str] = ..., term: _Optional[int] = ..., need_full: _Optional[bool] = ..., compact: _Optional[bool] = ...) -> None: ...
