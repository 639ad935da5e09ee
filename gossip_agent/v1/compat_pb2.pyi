from gossip_agent.v1 import gossip_pb2 as _gossip_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LegacyNodeReport(_message.Message):
    __slots__ = ("node", "incarnation", "seq", "scale_requests", "traffic", "has_summary", "blind")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SCALE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    HAS_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    BLIND_FIELD_NUMBER: _ClassVar[int]
    node: str
    incarnation: int
    seq: int
    scale_requests: _containers.RepeatedCompositeFieldContainer[_gossip_pb2.ScaleRequest]
    traffic: _containers.RepeatedCompositeFieldContainer[TrafficFact]
    has_summary: bool
    blind: str
    def __init__(self, node: _Optional[str] = ..., incarnation: _Optional[int] = ..., seq: _Optional[int] = ..., scale_requests: _Optional[_Iterable[_Union[_gossip_pb2.ScaleRequest, _Mapping]]] = ..., traffic: _Optional[_Iterable[_Union[TrafficFact, _Mapping]]] = ..., has_summary: _Optional[bool] = ..., blind: _Optional[str] = ...) -> None: ...

class TrafficFact(_message.Message):
    __slots__ = ("service_ip", "passed", "dropped", "idle_ns")
    SERVICE_IP_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    IDLE_NS_FIELD_NUMBER: _ClassVar[int]
    service_ip: str
    passed: int
    dropped: int
    idle_ns: int
    def __init__(self, service_ip: _Optional[str] = ..., passed: _Optional[int] = ..., dropped: _Optional[int] = ..., idle_ns: _Optional[int] = ...) -> None: ...
