"""The bpffs lease: a flock on a BPF-filesystem directory, its record in a pinned BPF map.

Scope: bpffs is per host, so this backend elects one leader among agents on ONE machine (the
local cluster, or two agents on a node during a rolling update); core.terms.refuse_to_lead
stops it from being used across hosts.

How it holds:
- The lock is an exclusive flock on the directory <lease_dir>/leader_lock (a bpffs directory
  can be opened and flocked; a pinned map file cannot be opened at all). Not "leader.lock":
  bpffs refuses names containing a dot (EPERM; dots are reserved for the kernel's own
  files). The fd stays open while held. The kernel drops the lock when the holder dies, even
  by SIGKILL, so failover on one host is immediate: no TTL to wait out.
- The record (holder, term, acquisition time) lives in <lease_dir>/LEADER, a pinned BPF array
  map, so people can read it with `bpftool map dump pinned <lease_dir>/LEADER`. It is written
  only under the lock; the term counter survives releases and agent restarts (not reboots:
  bpffs is memory; gossip and persisted state lift the term above what was seen anyway).
- Where lease_dir is not on bpffs (non-root local runs), the same flock on an ordinary
  directory, with the record as JSON in <lease_dir>/LEADER.json (temp file + rename), and
  `note` says so.

All methods are async to satisfy leases.base.Lease but run their syscalls inline: each takes
microseconds, less than a hop to a thread. Every OSError or bpf() failure becomes
errors.LeaseUnavailable naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
from collections.abc import Iterator
from typing import Protocol

from gossip_agent import errors
from gossip_agent.core import terms
from gossip_agent.leases import base
from gossip_agent.system import bpfsys

LOCK_DIR = "leader_lock"  # no dot: bpffs rejects dotted names with EPERM
RECORD_MAP = "LEADER"
RECORD_JSON = "LEADER.json"

# Contract of the pinned record map <lease_dir>/LEADER (array, 1 entry, key u32 0), host order:
#     struct leader_record {
#         char holder[128];      // "<node>#<pid>-<random>", NUL-padded; "" = released
#         u64  term;             // fencing token; kept across releases
#         u64  acquired_unix_ns; // wall clock, for people only: never used to judge expiry
#     };                         // 144 bytes, no padding
# All zero means "never written". Holders are cut to 127 bytes so a C reader always finds a NUL.
HOLDER_BYTES = 128
RECORD_STRUCT = struct.Struct(f"={HOLDER_BYTES}sQQ")
RECORD_SPEC = bpfsys.MapSpec(
    name=RECORD_MAP,
    map_type=bpfsys.BPF_MAP_TYPE_ARRAY,
    key_size=4,
    value_size=RECORD_STRUCT.size,
    max_entries=1,
)
_RECORD_KEY = struct.pack("=I", 0)


class _RecordStore(Protocol):
    path: str

    def read(self) -> base.LeaseRecord | None: ...

    def write(self, record: base.LeaseRecord) -> None: ...


class _BpfRecordStore:
    """The record in a pinned BPF map, opened per call so a re-created pin is always seen."""

    def __init__(self, lease_dir: str) -> None:
        self.path = os.path.join(lease_dir, RECORD_MAP)

    def read(self) -> base.LeaseRecord | None:
        pinned = bpfsys.PinnedMap.open_existing(self.path, RECORD_SPEC)
        if pinned is None:
            return None
        try:
            raw = pinned.lookup(_RECORD_KEY)
        finally:
            pinned.close()
        return None if raw is None else decode_record(raw)

    def write(self, record: base.LeaseRecord) -> None:
        pinned = bpfsys.PinnedMap.open_or_create(self.path, RECORD_SPEC)
        try:
            pinned.update(_RECORD_KEY, encode_record(record))
        finally:
            pinned.close()


class _JsonRecordStore:
    """The record as a JSON file, for directories outside bpffs."""

    def __init__(self, lease_dir: str) -> None:
        self.path = os.path.join(lease_dir, RECORD_JSON)

    def read(self) -> base.LeaseRecord | None:
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
            return base.LeaseRecord(
                str(data["holder"]), int(data["term"]), float(data["acquired_unix"])
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.LeaseUnavailable(
                f"lease record {self.path} is not a valid record: {exc!r}"
            ) from exc

    def write(self, record: base.LeaseRecord) -> None:
        # Rename is atomic, so a reader sees the old record or the new one, never half.
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(
                {
                    "holder": record.holder,
                    "term": record.term,
                    "acquired_unix": record.acquired_unix,
                },
                file,
            )
        os.replace(temporary, self.path)


def encode_record(record: base.LeaseRecord) -> bytes:
    holder = record.holder.encode()
    if len(holder) >= HOLDER_BYTES:
        raise ValueError(f"holder {record.holder!r} is longer than {HOLDER_BYTES - 1} bytes")
    return RECORD_STRUCT.pack(holder, record.term, int(record.acquired_unix * 1e9))


def decode_record(raw: bytes) -> base.LeaseRecord | None:
    """The record, or None for the all-zero value of a record never written."""
    if not any(raw):
        return None
    holder, term, acquired_ns = RECORD_STRUCT.unpack(raw)
    name = holder.split(b"\0", 1)[0].decode(errors="replace")
    return base.LeaseRecord(name, term, acquired_ns / 1e9)


def fit_holder(holder: str) -> str:
    """The identity cut to fit the record: the node part shrinks, the unique suffix stays."""
    if len(holder.encode()) < HOLDER_BYTES:
        return holder
    node, _, suffix = holder.partition("#")
    room = HOLDER_BYTES - 1 - len(suffix.encode()) - 1
    return node.encode()[:room].decode(errors="ignore") + "#" + suffix


@contextlib.contextmanager
def _backend_errors(path: str) -> Iterator[None]:
    """OSError and bpf() failures leave this module as LeaseUnavailable naming the path."""
    try:
        yield
    except OSError as exc:
        raise errors.LeaseUnavailable(f"bpffs lease {path}: {exc.strerror or exc}") from exc
    except errors.DataPlaneError as exc:
        raise errors.LeaseUnavailable(f"bpffs lease {path}: {exc}") from exc


def store_record(lease_dir: str, record: base.LeaseRecord) -> None:
    """Writes the record as the lock's holder does; the caller must hold the lock (tests that
    stand in for a leader)."""
    store, _ = _choose_store(lease_dir)
    with _backend_errors(store.path):
        store.write(record)


def _choose_store(lease_dir: str) -> tuple[_RecordStore, str]:
    with _backend_errors(lease_dir):
        on_bpffs = bpfsys.is_bpffs(lease_dir)
    if on_bpffs:
        return _BpfRecordStore(lease_dir), ""
    note = f"flock on an ordinary directory: the BPF filesystem is not available at {lease_dir}"
    return _JsonRecordStore(lease_dir), note


class BpffsLease:
    """leases.base.Lease over a directory lock; see the module docstring."""

    backend = "bpffs"

    def __init__(self, *, lease_dir: str, node: str) -> None:
        self.holder = fit_holder(base.holder_identity(node))
        self.lease_dir = lease_dir
        self._lock_path = os.path.join(lease_dir, LOCK_DIR)
        self._store, self.note = _choose_store(lease_dir)
        self._lock_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._lock_fd is not None

    async def try_acquire(self, *, min_term: int) -> base.Grant | None:
        """Takes the lock without waiting; None while another holder has it.

        Called while already held, it returns the current grant if the record still names
        this holder (else it steps down and tries anew).
        """
        if self._lock_fd is not None:
            record = await self.read()
            if record is not None and record.holder == self.holder:
                return base.Grant(self.holder, record.term)
            self._unlock()
        with _backend_errors(self._lock_path):
            fd = bpfsys.lock_directory(self._lock_path)
        if fd is None:
            return None
        try:
            term = self._record_acquisition(min_term)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return base.Grant(self.holder, term)

    def _record_acquisition(self, min_term: int) -> int:
        with _backend_errors(self._store.path):
            previous = self._store.read()
            backend_term = (previous.term if previous is not None else 0) + 1
            term = terms.next_term(backend_term=backend_term, max_seen=min_term - 1)
            self._store.write(base.LeaseRecord(self.holder, term, time.time()))
        return term

    async def renew(self) -> bool:
        """True while the lock is held and the record still names this holder. If someone
        rewrote the record, this holder steps down (drops the lock) and returns False."""
        if self._lock_fd is None:
            return False
        record = await self.read()
        if record is None or record.holder != self.holder:
            self._unlock()
            return False
        return True

    def proven(self) -> bool:
        """The kernel holds the flock for as long as the fd is open: no deadline to lapse."""
        return self._lock_fd is not None

    async def bump(self, *, min_term: int) -> int:
        """Moves the held lease's term to max(term + 1, min_term); LeaseLost if not held."""
        record = await self._held_record()
        term = max(record.term + 1, min_term)
        with _backend_errors(self._store.path):
            self._store.write(base.LeaseRecord(self.holder, term, record.acquired_unix))
        return term

    async def _held_record(self) -> base.LeaseRecord:
        if self._lock_fd is None:
            raise errors.LeaseLost(f"lease {self.lease_dir} is not held by {self.holder}")
        record = await self.read()
        if record is None or record.holder != self.holder:
            self._unlock()
            owner = record.node if record is not None and record.holder else "nobody"
            term = record.term if record is not None else 0
            raise errors.LeaseLost(f"lease {self.lease_dir} lost at term {term} to {owner}")
        return record

    async def release(self) -> None:
        """Writes the record with an empty holder (the term is kept), then unlocks."""
        if self._lock_fd is None:
            return
        try:
            with _backend_errors(self._store.path):
                record = self._store.read()
                if record is not None and record.holder == self.holder:
                    released = base.LeaseRecord("", record.term, record.acquired_unix)
                    self._store.write(released)
        finally:
            self._unlock()

    async def read(self) -> base.LeaseRecord | None:
        with _backend_errors(self._store.path):
            return self._store.read()

    async def close(self) -> None:
        await self.release()

    def _unlock(self) -> None:
        """Closing the fd drops the flock (it belongs to this open file description)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
