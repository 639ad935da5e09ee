"""Who is calling: names from the client certificate grpc verified, and who may write.

A caller's names are its certificate's subject common name and every subject alternative name
(grpc's auth context: x509_common_name, x509_subject_alternative_name). Admin writes
(SetService, DeleteService) need one of ADMIN_IDENTITIES among them.

A member is a caller whose names include the agents' shared name (TLS_SERVER_NAME, default
gossip-agent), as the agents' certificate carries it (k8s/tls). Policy.is_member is the one test
of it, used wherever membership matters:
- only members may call the Gossip service (security/members.py: PERMISSION_DENIED otherwise);
- a follower forwards a write to the leader on its own connection, so the leader would see the
  follower's certificate. The follower therefore sends the caller's admin name in
  FORWARDED_FOR, and the leader believes that header only from a member.
What stays trusted: a member certificate can claim any caller and gossip anything; whoever holds
one is trusted as an agent anyway (see docs/security.md). So the admin certificate must not
carry the shared name.

Without TLS (local runs) there are no identities and writes are open; the agent says so in its
log and in GetLeader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

FORWARDED_FOR = "x-gossip-agent-forwarded-for"
_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def names_of(auth_context: Mapping[str, Iterable[bytes]]) -> frozenset[str]:
    """The names a verified client certificate carries (empty for plaintext calls)."""
    names: set[str] = set()
    for key in _NAME_KEYS:
        for value in auth_context.get(key, ()):
            names.add(value.decode("utf-8", "replace"))
    return frozenset(names)


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    caller: str  # the admin name to forward, or a description for the refusal
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Policy:
    """enforced: TLS is on; admins: names allowed to write; member_name: the agents' shared
    name (TLS_SERVER_NAME)."""

    enforced: bool
    admins: frozenset[str]
    member_name: str

    def is_member(self, names: frozenset[str]) -> bool:
        """Whether a caller with these certificate names (names_of) is an agent of this
        cluster. Plaintext callers have no names, so never are: callers check `enforced`."""
        return bool(self.member_name) and self.member_name in names

    def authorise_write(
        self, *, names: frozenset[str], metadata: Mapping[str, str], peer: str
    ) -> Decision:
        if not self.enforced:
            return Decision(True, "")
        claimed = metadata.get(FORWARDED_FOR, "")
        if claimed and self.is_member(names):
            return self._judge(frozenset((claimed,)), described=f"{claimed} (forwarded by {peer})")
        return self._judge(names, described=describe(names, peer))

    def _judge(self, names: frozenset[str], *, described: str) -> Decision:
        granted = sorted(names & self.admins)
        if granted:
            return Decision(True, granted[0])
        return Decision(False, described, reason=(
            f"caller {described} is not an admin: writes need a client certificate naming one "
            f"of {', '.join(sorted(self.admins)) or '(no ADMIN_IDENTITIES configured)'}"))


def describe(names: Iterable[str], peer: str) -> str:
    """The caller as refusals name it: its address and certificate names."""
    listed = ",".join(sorted(names))
    return f"{peer} [{listed}]" if listed else f"{peer} (no certificate names)"
