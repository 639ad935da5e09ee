"""The one table from the project's exceptions to gRPC status codes; handlers invent none."""

from __future__ import annotations

import grpc

from gossip_agent import errors

CODES: dict[type[errors.GossipAgentError], grpc.StatusCode] = {
    errors.SnapshotTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.SnapshotInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotLeader: grpc.StatusCode.UNAVAILABLE,
    errors.SourceReadOnly: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LeaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.LeaseLost: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.DataPlaneError: grpc.StatusCode.INTERNAL,
    errors.ReportInvalid: grpc.StatusCode.INVALID_ARGUMENT,
}


def code_for(exc: errors.GossipAgentError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL
