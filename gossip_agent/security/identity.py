"""Who is calling: names from the client certificate grpc verified, and who may write.

A caller's names are its certificate's subject common name and every subject alternative name
(grpc's auth context: x509_common_name, x509_subject_alternative_name). Admin writes
(SetService, DeleteService) need one of ADMIN_IDENTITIES among them.

A follower forwards a write to the leader on its own connection, so the leader would see the
follower's certificate. The follower therefore sends the caller's admin name in FORWARDED_FOR,
and the leader believes that header only from a member: a caller whose certificate carries the
agents' shared name (TLS_SERVER_NAME) as a SAN. What stays trusted: a member certificate can
claim any caller; whoever holds one is trusted as an agent anyway (see README, Security).

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
    """enforced: TLS is on; admins: names allowed to write; member_name: the agents' SAN."""

    enforced: bool
    admins: frozenset[str]
    member_name: str

    def authorise_write(
        self, *, names: frozenset[str], metadata: Mapping[str, str], peer: str
    ) -> Decision:
        if not self.enforced:
            return Decision(True, "")
        claimed = metadata.get(FORWARDED_FOR, "")
        if claimed and self.member_name in names:
            return self._judge(frozenset((claimed,)), described=f"{claimed} (forwarded by {peer})")
        return self._judge(names, described=_describe(names, peer))

    def _judge(self, names: frozenset[str], *, described: str) -> Decision:
        granted = sorted(names & self.admins)
        if granted:
            return Decision(True, granted[0])
        return Decision(False, described, reason=(
            f"caller {described} is not an admin: writes need a client certificate naming one "
            f"of {', '.join(sorted(self.admins)) or '(no ADMIN_IDENTITIES configured)'}"))


def _describe(names: Iterable[str], peer: str) -> str:
    listed = ",".join(sorted(names))
    return f"{peer} [{listed}]" if listed else f"{peer} (no certificate names)"
