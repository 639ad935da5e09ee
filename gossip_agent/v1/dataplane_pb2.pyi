from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDataPlaneRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InterfaceStatus(_message.Message):
    __slots__ = ("name", "ifindex", "status", "mode", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ifindex: int
    status: str
    mode: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., ifindex: _Optional[int] = ..., status: _Optional[str] = ..., mode: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CpuCounters(_message.Message):
    __slots__ = ("cpu", "passed", "dropped", "fail_open")
    CPU_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    passed: int
    dropped: int
    fail_open: int
    def __init__(self, cpu: _Optional[int] = ..., passed: _Optional[int] = ..., dropped: _Optional[int] = ..., fail_open: _Optional[int] = ...) -> None: ...

class ServiceCounters(_message.Message):
    __slots__ = ("ip", "listed", "passed", "dropped", "fail_open", "per_cpu")
    IP_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_FIELD_NUMBER: _ClassVar[int]
    PER_CPU_FIELD_NUMBER: _ClassVar[int]
    ip: str
    listed: bool
    passed: int
    dropped: int
    fail_open: int
    per_cpu: _containers.RepeatedCompositeFieldContainer[CpuCounters]
    def __init__(self, ip: _Optional[str] = ..., listed: _Optional[bool] = ..., passed: _Optional[int] = ..., dropped: _Optional[int] = ..., fail_open: _Optional[int] = ..., per_cpu: _Optional[_Iterable[_Union[CpuCounters, _Mapping]]] = ...) -> None: ...

class GetDataPlaneResponse(_message.Message):
    __slots__ = ("node", "dataplane", "pin_dir", "program_id", "xdp_interfaces", "interfaces", "services", "fail_open_after_seconds", "heartbeat_age_ms", "failed_open", "scale_up_events")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    PIN_DIR_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    XDP_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    FAILED_OPEN_FIELD_NUMBER: _ClassVar[int]
    SCALE_UP_EVENTS_FIELD_NUMBER: _ClassVar[int]
    node: str
    dataplane: str
    pin_dir: str
    program_id: int
    xdp_interfaces: str
    interfaces: _containers.RepeatedCompositeFieldContainer[InterfaceStatus]
    services: _containers.RepeatedCompositeFieldContainer[ServiceCounters]
    fail_open_after_seconds: float
    heartbeat_age_ms: int
    failed_open: bool
    scale_up_events: int
    def __init__(self, node: _Optional[str] = ..., dataplane: _Optional[str] = ..., pin_dir: _Optional[str] = ..., program_id: _Optional[int] = ..., xdp_interfaces: _Optional[str] = ..., interfaces: _Optional[_Iterable[_Union[InterfaceStatus, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceCounters, _Mapping]]] = ..., fail_open_after_seconds: _Optional[float] = ..., heartbeat_age_ms: _Optional[int] = ..., failed_open: _Optional[bool] = ..., scale_up_events: _Optional[int] = ...) -> None: ...
