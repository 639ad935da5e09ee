"""The mirror document (GET ebpf:service_list): a faithful, checked copy of a snapshot."""

from __future__ import annotations

import json

import pytest

from gossip_agent import errors
from gossip_agent.core import snapshots, versions
from gossip_agent.gossip import mirror

pytestmark = pytest.mark.unit


def sample() -> snapshots.Snapshot:
    return snapshots.build(
        version=versions.Version(3, 7), leader="node-a", leader_address="10.0.0.1:50051",
        entries={0x0A60000A: 3, 0x0A600001: 0}, names={0x0A60000A: "default/web"})


def test_a_snapshot_survives_the_round_trip_through_its_document() -> None:
    original = sample()
    again = mirror.snapshot_of(mirror.document_of(original))
    assert again == original


def test_the_document_lists_services_by_ip_with_replicas_and_names() -> None:
    data = json.loads(mirror.document_of(sample()))
    assert (data["term"], data["seq"], data["leader"]) == (3, 7, "node-a")
    assert data["services"] == [
        {"ip": "10.96.0.1", "replicas": 0, "name": ""},
        {"ip": "10.96.0.10", "replicas": 3, "name": "default/web"},
    ]


def test_a_hand_edited_table_is_refused_by_its_content_hash() -> None:
    data = json.loads(mirror.document_of(sample()))
    data["services"][0]["replicas"] = 5
    with pytest.raises(errors.SnapshotInvalid, match="content_hash"):
        mirror.snapshot_of(json.dumps(data))


@pytest.mark.parametrize("document", ["", "[]", '{"term": 1}', '{"term": "x", "seq": 1}'])
def test_a_document_that_is_not_a_snapshot_is_refused(document: str) -> None:
    with pytest.raises(errors.SnapshotInvalid):
        mirror.snapshot_of(document)
