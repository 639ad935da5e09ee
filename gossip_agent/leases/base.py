"""The lease Protocol every coordination backend implements.

Contract (bpffs today; redis and configmap/lease later implement the same):
- try_acquire(min_term) takes the lease if nobody holds it and returns a Grant whose term is
  strictly above the backend's previous term AND >= min_term (terms.next_term), recorded in the
  backend atomically with the acquisition. Returns None while someone else holds it.
- renew() returns False as soon as this agent cannot prove it still holds the lease; the caller
  steps down at once. bump(min_term) moves the held lease's term up (a leader refused as stale
  learned of a higher term), atomically in the backend.
- proven() says, without I/O, whether this holder may still act: False once its right to act
  has lapsed on the local monotonic clock (a TTL lease whose renewals stopped, e.g. a process
  frozen by SIGSTOP); the leader checks it before each publication, so a woken leader does not
  publish before its next renew() makes it step down.
- release() gives the lease up (keeping the term counter); read() returns the record as stored.
- holder identities are "<node name>#<pid>-<random>": a restarted agent is a new holder, so it
  never renews its predecessor's lease; it acquires anew with a higher term.
- Backend failures raise errors.LeaseUnavailable (the caller retries with backoff); the backend's
  own exception types never leave its module.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    holder: str
    term: int


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease as stored: empty holder means released (the term counter is kept)."""

    holder: str
    term: int
    acquired_unix: float  # wall-clock seconds, for people only; never used to judge expiry

    @property
    def node(self) -> str:
        return node_of(self.holder)


def holder_identity(node: str) -> str:
    return f"{node}#{os.getpid()}-{secrets.token_hex(3)}"


def node_of(holder: str) -> str:
    return holder.split("#", 1)[0]


class Lease(Protocol):
    backend: str
    holder: str
    # How the lease is held when that deserves a warning, e.g. "flock on an ordinary directory"
    # (shown in GetLeader and the log); "" otherwise.
    note: str

    async def try_acquire(self, *, min_term: int) -> Grant | None: ...

    async def renew(self) -> bool: ...

    def proven(self) -> bool: ...

    async def bump(self, *, min_term: int) -> int: ...

    async def release(self) -> None: ...

    async def read(self) -> LeaseRecord | None: ...

    async def close(self) -> None: ...
