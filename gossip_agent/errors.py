"""The project's exceptions: plain sentences that name the thing.

api/status.py maps each class to one gRPC status code; handlers never invent codes.
"""

from __future__ import annotations


class GossipAgentError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(GossipAgentError):
    """Invalid configuration; `problems` lists one message per bad variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class SnapshotInvalid(GossipAgentError):
    """A snapshot or admin write breaks the wire contract (INVALID_ARGUMENT)."""


class SnapshotTooLarge(GossipAgentError):
    """More entries than the receiver's map holds (RESOURCE_EXHAUSTED)."""


class NotLeader(GossipAgentError):
    """A write reached an agent that cannot act for the leader (UNAVAILABLE)."""

    def __init__(self, message: str, *, leader: str = "", leader_address: str = "") -> None:
        super().__init__(message)
        self.leader = leader
        self.leader_address = leader_address


class SourceReadOnly(GossipAgentError):
    """An admin write while the leader's source is not "api" (FAILED_PRECONDITION)."""


class LeaseError(GossipAgentError):
    """Base of lease failures."""


class LeaseUnavailable(LeaseError):
    """The lease backend cannot be reached or used right now; retried with backoff."""


class LeaseLost(LeaseError):
    """This agent can no longer prove it holds the lease."""


class DataPlaneError(GossipAgentError):
    """The BPF map could not be opened, created or written."""


class PinDirInUse(GossipAgentError):
    """Another agent already owns this pin directory."""


class ShuttingDown(GossipAgentError):
    """The agent is stopping (UNAVAILABLE: retry elsewhere or later)."""


class ReportInvalid(GossipAgentError):
    """A node report (Gossip/Report) or a scale-request watch breaks its contract
    (INVALID_ARGUMENT)."""


class AnnotationInvalid(GossipAgentError):
    """A Service's scale-to-zero annotation is malformed: that Service is skipped (logged once)."""


class SourceUnavailable(GossipAgentError):
    """The source's backing API cannot be reached or refused a call; retried with backoff."""


class TermUnproven(GossipAgentError):
    """A snapshot's term and leader are not what the lease backend records (gossip/proof.py)."""
class PolicyInvalid(GossipAgentError):
    """A Service's scaling annotation (dependencies, dependents, scaling-priority, hpa-*) is
    malformed: the Service is scaled without that feature (logged once)."""


class ScaleFailed(GossipAgentError):
    """A scaling write was not made (API refused or unreachable, precondition failed, lease not
    proven); the leader tries again on its next round."""
