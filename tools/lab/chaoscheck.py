"""The fault campaign's checker: judges a recorded history, with no I/O (tools/chaos.py records).

What is recorded (all of it from outside the agents, never from their logs):
- Adoption: an agent said it holds `version` with `content_hash`. Sources: its WatchState stream
  (reconnected across restarts, so one stream per node for the whole run), its GetHistory
  replies (each reply one ordered list), GetState, and the SERVICE_LIST_META record read from
  its pin (written by the agent only after a table was fully applied).
- MapSample: the node's pinned SERVICE_LIST read every 100 ms, as a table hash (sha256 over the
  sorted little-endian u32 pairs, the product's content hash, recomputed here independently).
  A sample is taken only when two reads a few ms apart agree ("stable"): a snapshot's diff is
  several bpf() calls (deletes, then updates), and a read that lands between two of them, or a
  walk of the hash map racing a writer, shows a mix for microseconds; a mix that stays (a
  writer killed or stopped halfway) is stable and is judged.
- Write: one client call (SetService / DeleteService) with its outcome. Every SetService value
  is unique in the run, so a value in a table names the write that put it there.
- The final state: each node's table and version once the maps converged after the faults.

Properties (each violation is a plain sentence):
1. One content per version: every source, every node: a version never has two content hashes.
2. No version goes back: per node and per ordered source (its WatchState stream across
   restarts, its META record samples, each GetHistory reply), versions never decrease.
3. Maps hold whole adopted tables: a stable sample must be a table this node adopted (its
   content hash is among the hashes the node reported). Race handling: judged after the run,
   against everything recorded, so a sample read before its WatchState event arrived is fine.
   WatchState lets a slow reader skip versions and GetHistory keeps 256, so a node's own record
   can miss an adoption it made: a sample whose table another node adopted is counted as
   `unattributed` (a figure, not a violation); a table nobody ever adopted is a violation
   (half written). Empty: once a node's map held entries, an empty stable sample is a
   violation (the campaign's anchor service is never deleted, so no adopted table is empty).
4. Acknowledged writes survive. Writes are "replicated" when acknowledged with acked_peers >=
   quorum (WriteResponse.quorum, with the leader a majority: the State API promises that no
   change of leader loses those), "leader-only" when acknowledged with fewer (the quorum did
   not confirm within WRITE_ACK_TIMEOUT: no durability was promised; the name is kept from
   when one peer was the bar), and "indeterminate" when the call failed
   (it may or may not have been applied, at a version nobody told us). The rule, for every key
   k and every table T observed at a version u (from any node, the final state included):
   let w be the replicated write on k with the highest version <= u. Then T[k] must be
   - w's value (absent for a delete), or that of a replicated write on k at the same version
     (writes coalesced into one snapshot), or
   - the value of a leader-only or indeterminate write on k (for a SetService, only if the
     first observed version holding that value is not below w's version: a value that was
     already in a table before w cannot legitimately come back after it; for a delete no
     such bound can be drawn, since absence names no write).
   Otherwise w was lost. The final state is one of these tables, so this is exactly "every
   acknowledged write is in the final state or superseded by a later version that changed the
   same key". Also: the converged version is not older than any replicated write's version.
5. Convergence: after the faults healed and the client stopped, every map holds the same table
   within `bound` seconds (tools/chaos.py derives it from the PROFILE=local timers).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence

Version = tuple[int, int]
Table = Mapping[int, int]
ZERO: Version = (0, 0)
MAX_REPORTED = 5  # violations of one kind per node or key listed in full; the rest counted


def table_hash(table: Table) -> str:
    """The product's content hash (core.snapshots), computed here without its code."""
    data = b"".join(struct.pack("<II", key, table[key]) for key in sorted(table))
    return hashlib.sha256(data).hexdigest()


def show_version(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def show_key(key: int) -> str:
    return str(ipaddress.IPv4Address(key))


@dataclasses.dataclass(frozen=True, slots=True)
class Adoption:
    node: str
    version: Version
    content_hash: str  # hex; "" when the source did not know it
    stream: str  # the ordered sequence it belongs to: "watch", "meta", "history#<n>", "state"
    at: float  # seconds since the campaign started


@dataclasses.dataclass(frozen=True, slots=True)
class MapSample:
    node: str
    at: float
    table_hash: str
    entries: int


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    id: int
    key: int
    value: int | None  # None: DeleteService
    node: str  # the agent the client called
    started: float
    ended: float
    version: Version | None = None  # from the WriteResponse; None when the call failed
    acked_peers: int = 0
    quorum: int = 1  # WriteResponse.quorum: peers needed for durability
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.version is not None

    @property
    def replicated(self) -> bool:
        return self.version is not None and self.acked_peers >= self.quorum

    def describe(self) -> str:
        what = (f"set {show_key(self.key)}={self.value}" if self.value is not None
                else f"delete {show_key(self.key)}")
        return f"write #{self.id} ({what} via {self.node})"


@dataclasses.dataclass
class History:
    adoptions: list[Adoption] = dataclasses.field(default_factory=list)
    samples: list[MapSample] = dataclasses.field(default_factory=list)
    tables: dict[str, dict[int, int]] = dataclasses.field(default_factory=dict)  # hash -> table
    writes: list[Write] = dataclasses.field(default_factory=list)
    final: dict[str, tuple[Version, str]] = dataclasses.field(default_factory=dict)
    converged_after: float | None = None  # seconds from the heal to equal maps; None: never
    convergence_bound: float = 0.0

    def add_table(self, table: Mapping[int, int]) -> str:
        digest = table_hash(table)
        self.tables.setdefault(digest, dict(table))
        return digest


@dataclasses.dataclass
class Report:
    violations: list[str]
    figures: dict[str, int]


def check(history: History) -> Report:
    figures: dict[str, int] = {}
    violations = [
        *one_content_per_version(history.adoptions),
        *versions_never_go_back(history.adoptions),
        *maps_hold_whole_tables(history, figures),
        *acknowledged_writes_survive(history, figures),
        *converged(history),
    ]
    return Report(violations, figures)


# -- 1 ------------------------------------------------------------------------------------------


def one_content_per_version(adoptions: Iterable[Adoption]) -> list[str]:
    seen: dict[Version, dict[str, set[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(set))
    for adoption in adoptions:
        if adoption.version != ZERO and adoption.content_hash:
            seen[adoption.version][adoption.content_hash].add(adoption.node)
    found = []
    for version in sorted(seen):
        contents = seen[version]
        if len(contents) > 1:
            held = "; ".join(f"{digest[:12]} on {', '.join(sorted(nodes))}"
                             for digest, nodes in sorted(contents.items()))
            found.append(f"version {show_version(version)} names {len(contents)} different "
                         f"contents: {held}")
    return found


# -- 2 ------------------------------------------------------------------------------------------


def versions_never_go_back(adoptions: Iterable[Adoption]) -> list[str]:
    last: dict[tuple[str, str], Adoption] = {}
    found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for adoption in adoptions:
        if adoption.stream == "state":
            continue  # one-off reads, ordered by nothing
        sequence = (adoption.node, adoption.stream.split("#", 1)[0])
        ordered = (adoption.node, adoption.stream)
        before = last.get(ordered)
        if before is not None and adoption.version < before.version:
            found[sequence].append(
                f"{adoption.node}'s version went back from {show_version(before.version)} to "
                f"{show_version(adoption.version)} in its {sequence[1]} record at "
                f"t={adoption.at:.1f}s")
        last[ordered] = adoption
    return _capped(found.values())


def _capped(found: Iterable[list[str]]) -> list[str]:
    out = []
    for items in found:
        out += items[:MAX_REPORTED]
        if len(items) > MAX_REPORTED:
            out.append(f"... and {len(items) - MAX_REPORTED} more like the one above")
    return out


# -- 3 ------------------------------------------------------------------------------------------


def maps_hold_whole_tables(history: History, figures: dict[str, int]) -> list[str]:
    own: dict[str, set[str]] = collections.defaultdict(set)
    for adoption in history.adoptions:
        if adoption.content_hash:
            own[adoption.node].add(adoption.content_hash)
    anywhere = set().union(*own.values()) if own else set()
    held_entries: set[str] = set()
    found: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    unattributed = 0
    for sample in history.samples:
        if sample.entries == 0:
            if sample.node in held_entries:
                found[(sample.node, "empty")].append(
                    f"{sample.node}'s map went empty at t={sample.at:.1f}s after holding "
                    f"entries")
            continue
        held_entries.add(sample.node)
        if sample.table_hash in own[sample.node]:
            continue
        if sample.table_hash in anywhere:
            unattributed += 1
            continue
        found[(sample.node, sample.table_hash)].append(
            f"{sample.node}'s map held a table no agent ever adopted at t={sample.at:.1f}s "
            f"({sample.entries} entries, hash {sample.table_hash[:12]}"
            f"{_nearest(history, sample, own[sample.node])}): half written")
    figures["samples_unattributed"] = unattributed
    # One line per distinct bad table: a table left half written is sampled every 100 ms.
    out = []
    for items in found.values():
        extra = f" (sampled {len(items)} times)" if len(items) > 1 else ""
        out.append(items[0] + extra)
    return out


def _nearest(history: History, sample: MapSample, adopted: set[str]) -> str:
    table = history.tables.get(sample.table_hash)
    if table is None:
        return ""
    best: tuple[int, str] | None = None
    for digest in adopted:
        other = history.tables.get(digest)
        if other is None:
            continue
        differing = sorted(k for k in table.keys() | other.keys() if table.get(k) != other.get(k))
        if best is None or len(differing) < best[0]:
            keys = ", ".join(f"{show_key(k)}: {table.get(k)} vs {other.get(k)}"
                             for k in differing[:4])
            best = (len(differing), f"; nearest adopted table {digest[:12]} differs in {keys}")
    return best[1] if best else ""


# -- 4 ------------------------------------------------------------------------------------------


def version_tables(history: History) -> dict[Version, dict[int, int]]:
    """Version -> its table, where one content hash is known for the version and the table of
    that hash was sampled (or read with GetState)."""
    hashes: dict[Version, set[str]] = collections.defaultdict(set)
    for adoption in history.adoptions:
        if adoption.version != ZERO and adoption.content_hash:
            hashes[adoption.version].add(adoption.content_hash)
    for version, digest in history.final.values():
        if version != ZERO and digest:
            hashes[version].add(digest)
    out = {}
    for version, digests in hashes.items():
        if len(digests) == 1:
            table = history.tables.get(next(iter(digests)))
            if table is not None:
                out[version] = table
    return out


def acknowledged_writes_survive(history: History, figures: dict[str, int]) -> list[str]:
    tables = version_tables(history)
    figures["versions_with_known_tables"] = len(tables)
    by_key: dict[int, list[Write]] = collections.defaultdict(list)
    for write in history.writes:
        by_key[write.key].append(write)
    final = max((v for v, _ in history.final.values()), default=None)
    out = []
    for key, writes in sorted(by_key.items()):
        out += _key_history(key, writes, tables, final)
    out += _final_not_older(history)
    return out


def _key_history(key: int, writes: Sequence[Write], tables: Mapping[Version, Table],
                 final: Version | None) -> list[str]:
    replicated = sorted((w for w in writes if w.replicated),
                        key=lambda w: (w.version or ZERO, w.id))
    versions = [w.version or ZERO for w in replicated]
    uncertain_sets = {w.value: w for w in writes if not w.replicated and w.value is not None}
    uncertain_delete = any(not w.replicated and w.value is None for w in writes)
    first_seen: dict[int, Version] = {}
    for version in sorted(tables):
        value = tables[version].get(key)
        if value is not None:
            first_seen.setdefault(value, version)
    missing: dict[int, list[tuple[Version, int | None]]] = collections.defaultdict(list)
    lost: dict[int, Write] = {}
    for version in sorted(tables):
        index = bisect.bisect_right(versions, version)
        if index == 0:
            continue  # no replicated write on this key at or below this version
        latest = replicated[index - 1]
        peers = [w for w in replicated if w.version == latest.version]
        value = tables[version].get(key)
        if any(w.value == value for w in peers):
            continue
        if value is None and uncertain_delete:
            continue
        if value is not None and value in uncertain_sets and \
                first_seen.get(value, version) >= (latest.version or ZERO):
            continue
        missing[latest.id].append((version, value))
        lost[latest.id] = latest
    return [_lost(lost[write_id], key, seen, final) for write_id, seen in missing.items()]


def _lost(write: Write, key: int, seen: Sequence[tuple[Version, int | None]],
          final: Version | None) -> str:
    """One sentence per lost write, however many observed tables lack it."""
    version, value = seen[0]
    holds = f"{show_key(key)}={value}" if value is not None else f"no {show_key(key)}"
    later = f" and {len(seen) - 1} later observed version(s)" if len(seen) > 1 else ""
    final_too = ", the final state included" if final in {v for v, _ in seen} else ""
    return (f"{write.describe()}, acknowledged at {show_version(write.version or ZERO)} by "
            f"{write.acked_peers} peer(s), is missing from version {show_version(version)} "
            f"(which holds {holds}){later}{final_too}, and no later acknowledged write changed "
            f"that key: the write was lost")


def _final_not_older(history: History) -> list[str]:
    if not history.final:
        return []
    final = max(version for version, _ in history.final.values())
    late = [w for w in history.writes if w.replicated and w.version is not None
            and w.version > final]
    if not late:
        return []
    newest = max(late, key=lambda w: w.version or ZERO)
    assert newest.version is not None
    return [f"the cluster converged on version {show_version(final)}, older than "
            f"{len(late)} replicated write(s), the newest {newest.describe()} at "
            f"{show_version(newest.version)}"]


# -- 5 ------------------------------------------------------------------------------------------


def converged(history: History) -> list[str]:
    if history.converged_after is None:
        finals = ", ".join(f"{node} at {show_version(v)} ({h[:12]})"
                           for node, (v, h) in sorted(history.final.items()))
        return [f"the maps did not converge within {history.convergence_bound:.0f}s after the "
                f"faults ended: {finals}"]
    if history.converged_after > history.convergence_bound:
        return [f"the maps converged {history.converged_after:.1f}s after the faults ended, "
                f"beyond the {history.convergence_bound:.0f}s bound"]
    return []
