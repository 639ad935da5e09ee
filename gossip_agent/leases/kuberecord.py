"""client-go's leader-election record, byte for byte, without the kubernetes client.

ConfigMap locks (client-go before 1.24) store the record as JSON in the annotation
`control-plane.alpha.kubernetes.io/leader`. Go's encoding/json writes the struct fields in
declaration order with no spaces, metav1.Time as RFC3339 in UTC with whole seconds (a zero time
as null), and escapes <, >, & and U+2028/2029:

    {"holderIdentity":"node-a#17-ab12cd","leaseDurationSeconds":15,
     "acquireTime":"2026-11-25T03:00:00Z","renewTime":"2026-11-25T03:00:07Z",
     "leaderTransitions":3}

Decoding accepts what client-go accepts: any field order, missing fields, null times, and the
newer fields (strategy, preferredHolder) that later client-go versions add.

Semantics kept from client-go: leaderTransitions is kept on renew and raised on every change of
holder; release writes an empty holder with leaseDurationSeconds 1. One deliberate difference:
our term is leaderTransitions and a term must be above every term seen in the cluster (a
recreated ConfigMap starts again at 0), so an acquisition writes max(old + 1, min_term), and
the first record is created with the term (>= 1) rather than 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from typing import Any

ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


@dataclasses.dataclass(frozen=True, slots=True)
class ElectionRecord:
    holder: str
    duration_seconds: int
    acquire_time: datetime.datetime | None
    renew_time: datetime.datetime | None
    transitions: int


def format_time(moment: datetime.datetime | None) -> str | None:
    """metav1.Time: RFC3339, UTC, whole seconds."""
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime.datetime | None) -> str | None:
    """metav1.MicroTime (Lease acquireTime/renewTime): RFC3339 with microseconds, UTC."""
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> datetime.datetime | None:
    if text is None or text == "":
        return None
    if isinstance(text, datetime.datetime):
        return text.astimezone(datetime.UTC)
    if not isinstance(text, str):
        raise ValueError(f"time {text!r} is not a string")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.UTC)


def _go_escape(text: str) -> str:
    """Go's json.Marshal HTML-escapes <, > and & and escapes the JS line separators."""
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def encode(record: ElectionRecord) -> str:
    fields = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": format_time(record.acquire_time),
        "renewTime": format_time(record.renew_time),
        "leaderTransitions": record.transitions,
    }
    return _go_escape(json.dumps(fields, separators=(",", ":"), ensure_ascii=False))


def decode(text: str) -> ElectionRecord:
    """The record in an annotation; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the leader annotation is not a JSON object")
    holder, duration = data.get("holderIdentity") or "", data.get("leaseDurationSeconds") or 0
    transitions = data.get("leaderTransitions") or 0
    if not isinstance(holder, str) or not isinstance(duration, int) or not isinstance(
            transitions, int):
        raise ValueError("holderIdentity must be a string, leaseDurationSeconds and "
                         "leaderTransitions integers")
    return ElectionRecord(holder, duration, parse_time(data.get("acquireTime")),
                          parse_time(data.get("renewTime")), transitions)


def fingerprint(text: str) -> str:
    """Short identity of a stored record, carried in gossip beats (core.beats)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
