"""The configmap and lease backends against the fake API server, through the official client.

Timing is driven by an injected monotonic clock where expiry or deadlines matter, so these
tests check the rules (expiry from this agent's own observation, the renew deadline, 409
handling) exactly, without sleeping.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config

from gossip_agent import errors
from gossip_agent.core import beats, snapshots, versions
from gossip_agent.gossip import mirror
from gossip_agent.leases import kube, kuberecord
from lab import fakekube

pytestmark = pytest.mark.integration

TIMING = kube.KubeTiming(duration=15, renew_deadline=10, retry_interval=2, renew_interval=2)


class Clock:
    """Monotonic and wall clock together: advancing one advances the other."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime.datetime:
        return self.epoch + datetime.timedelta(seconds=self.now)


@pytest.fixture
def api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


LeaseFactory = Callable[..., kube.KubeLease]


@pytest.fixture
async def make_lease(kubeconfig: str) -> AsyncIterator[LeaseFactory]:
    made: list[kube.KubeLease] = []

    def make(node: str, *, kind: str = "configmap", clock: Clock | None = None,
             board: beats.BeatBoard | None = None) -> kube.KubeLease:
        api = config.new_client_from_config(config_file=kubeconfig)
        clock = clock or Clock()
        lease = kube.KubeLease(kind=kind, api=api, namespace="default",
                               name="ebpf-service-list", node=node, timing=TIMING,
                               beats=board or beats.BeatBoard(), clock=clock, wall=clock.wall)
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.api.close()


def annotation(fake: fakekube.FakeKube) -> str:
    obj = fake.get_object("configmaps", "ebpf-service-list")
    assert obj is not None
    text: str = obj["metadata"]["annotations"][kuberecord.ANNOTATION]
    return text


async def test_first_candidate_writes_client_go_record_and_keeps_other_fields(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    fake_kube.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "ebpf-service-list", "namespace": "default", "annotations": {"team": "net"}},
        "data": {"service-list": "{}"}})
    lease = make_lease("node-a")
    grant = await lease.try_acquire(min_term=1)
    assert grant is not None and grant.term == 1 and grant.holder == lease.holder
    text = annotation(fake_kube)
    assert list(json.loads(text)) == ["holderIdentity", "leaseDurationSeconds", "acquireTime",
                                      "renewTime", "leaderTransitions"]
    assert text.startswith('{"holderIdentity":"' + lease.holder + '","leaseDurationSeconds":15,')
    obj = fake_kube.get_object("configmaps", "ebpf-service-list")
    assert obj is not None
    assert obj["metadata"]["annotations"]["team"] == "net"
    assert obj["data"] == {"service-list": "{}"}


async def test_missing_configmap_is_created_with_the_term_above_every_term_seen(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    grant = await make_lease("node-a").try_acquire(min_term=8)
    assert grant is not None and grant.term == 8
    assert json.loads(annotation(fake_kube))["leaderTransitions"] == 8


async def test_follower_takes_over_only_after_duration_from_its_own_observation(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    leader_clock, clock = Clock(), Clock()
    leader, follower = make_lease("node-a", clock=leader_clock), make_lease("node-b", clock=clock)
    first = await leader.try_acquire(min_term=1)
    assert first is not None
    assert await follower.try_acquire(min_term=1) is None  # observed now
    clock.now += TIMING.duration - 1
    assert await follower.try_acquire(min_term=1) is None  # not yet expired
    leader_clock.now += 2
    assert await leader.renew()  # bytes change: the follower's observation starts again
    clock.now += 2
    assert await follower.try_acquire(min_term=1) is None
    clock.now += TIMING.duration + 0.1
    grant = await follower.try_acquire(min_term=1)
    assert grant is not None and grant.term == first.term + 1  # leaderTransitions + 1
    assert not await leader.renew()  # 409, re-read: the holder changed, so it steps down


async def test_stale_update_gets_409_and_the_candidate_does_not_lead(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    clock = Clock()
    leader, follower = make_lease("node-a"), make_lease("node-b", clock=clock)
    assert await leader.try_acquire(min_term=1) is not None
    assert await follower.try_acquire(min_term=1) is None
    clock.now += TIMING.duration + 1
    before = annotation(fake_kube)
    fake_kube.fail(status=409, verb="update", resource="configmaps")
    assert await follower.try_acquire(min_term=1) is None
    assert annotation(fake_kube) == before


async def test_renewal_errors_are_tolerated_until_the_renew_deadline(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    clock = Clock()
    leader = make_lease("node-a", clock=clock)
    assert await leader.try_acquire(min_term=1) is not None
    fake_kube.fail(status=500, verb="update", times=None)
    clock.now += TIMING.renew_deadline / 2
    assert await leader.renew()  # failed, but within the deadline: still leading
    clock.now += TIMING.renew_deadline / 2 + 0.1
    assert not await leader.renew()  # past the deadline: step down
    fake_kube.clear_faults()
    assert not await leader.renew()  # stays down until it acquires again


async def test_release_writes_empty_holder_with_duration_1_and_keeps_transitions(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    clock = Clock()
    leader, follower = make_lease("node-a"), make_lease("node-b", clock=clock)
    grant = await leader.try_acquire(min_term=3)
    assert grant is not None
    await leader.release()
    record = json.loads(annotation(fake_kube))
    assert record["holderIdentity"] == "" and record["leaseDurationSeconds"] == 1
    assert record["leaderTransitions"] == grant.term
    taken = await follower.try_acquire(min_term=1)  # released: no need to wait for expiry
    assert taken is not None and taken.term == grant.term + 1


async def test_lease_kind_stores_the_record_in_a_coordination_lease(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube, api: client.ApiClient) -> None:
    clock = Clock()
    leader = make_lease("node-a", kind="lease")
    follower = make_lease("node-b", kind="lease", clock=clock)
    grant = await leader.try_acquire(min_term=1)
    assert grant is not None
    lease = client.CoordinationV1Api(api).read_namespaced_lease("ebpf-service-list", "default")
    assert lease.spec.holder_identity == leader.holder
    assert lease.spec.lease_duration_seconds == 15 and lease.spec.lease_transitions == 1
    raw = fake_kube.get_object("leases", "ebpf-service-list")
    assert raw is not None and raw["spec"]["renewTime"].endswith("Z")
    assert "." in raw["spec"]["renewTime"]  # MicroTime
    assert await follower.try_acquire(min_term=1) is None
    clock.now += TIMING.duration + 1
    taken = await follower.try_acquire(min_term=1)
    assert taken is not None and taken.term == 2
    assert not await leader.renew()


async def test_follower_sends_nothing_while_gossip_shows_the_leader_renewing(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    clock, board = Clock(), beats.BeatBoard()
    leader, follower = make_lease("node-a"), make_lease("node-b", clock=clock, board=board)
    assert await leader.try_acquire(min_term=1) is not None
    assert leader.beats.best is not None
    board.offer(leader.beats.best, now=clock.now)  # as a digest would bring it
    before = follower.api_calls
    for _ in range(5):
        assert await follower.try_acquire(min_term=1) is None
    assert follower.api_calls == before
    clock.now += TIMING.duration  # beats stopped: the follower reads the record again
    await follower.try_acquire(min_term=1)
    assert follower.api_calls == before + 2  # read, then take over (the record expired)


async def test_record_matching_the_last_beat_counts_as_observed_when_the_beat_was_heard(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    clock, board = Clock(), beats.BeatBoard()
    leader, follower = make_lease("node-a"), make_lease("node-b", clock=clock, board=board)
    assert await leader.try_acquire(min_term=1) is not None
    assert leader.beats.best is not None
    board.offer(leader.beats.best, now=clock.now)
    clock.now += TIMING.duration + 0.5  # the leader died right after that beat
    grant = await follower.try_acquire(min_term=1)
    assert grant is not None  # first read, yet no second wait of LEASE_DURATION


async def test_forbidden_names_the_verb_and_the_resource(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    fake_kube.fail(status=403, verb="get", resource="configmaps", times=None)
    with pytest.raises(errors.LeaseUnavailable) as caught:
        await make_lease("node-a").try_acquire(min_term=1)
    message = str(caught.value)
    assert "forbids get on configmaps" in message and "RBAC" in message
    assert 'cannot get resource \\"configmaps\\"' in message or \
        'cannot get resource "configmaps"' in message


async def test_deleted_configmap_makes_the_leader_step_down_and_a_higher_term_follows(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    leader = make_lease("node-a")
    grant = await leader.try_acquire(min_term=4)
    assert grant is not None
    fake_kube.delete_object("configmaps", "ebpf-service-list")
    assert not await leader.renew()
    again = await leader.try_acquire(min_term=grant.term + 1)  # max_term_seen + 1
    assert again is not None and again.term == grant.term + 1


async def test_bump_raises_the_term_and_keeps_the_holder(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    leader = make_lease("node-a")
    assert await leader.try_acquire(min_term=1) is not None
    assert await leader.bump(min_term=9) == 9
    record = json.loads(annotation(fake_kube))
    assert record["holderIdentity"] == leader.holder and record["leaderTransitions"] == 9
    read = await leader.read()
    assert read is not None and read.term == 9 and read.holder == leader.holder


async def test_edit_of_other_fields_does_not_cost_the_leader_its_lease(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube, api: client.ApiClient) -> None:
    leader = make_lease("node-a")
    assert await leader.try_acquire(min_term=1) is not None
    client.CoreV1Api(api).patch_namespaced_config_map(
        "ebpf-service-list", "default", {"data": {"service-list": "{}"}})
    assert await leader.renew()  # 409 on the old resourceVersion, re-read, still the holder
    obj: Any = fake_kube.get_object("configmaps", "ebpf-service-list")
    assert obj["data"] == {"service-list": "{}"}


async def test_mirror_sink_writes_data_never_goes_back_and_keeps_the_record(
        make_lease: LeaseFactory, fake_kube: fakekube.FakeKube) -> None:
    leader = make_lease("node-a")
    assert await leader.try_acquire(min_term=1) is not None
    record_before = annotation(fake_kube)
    clock = Clock()
    sink = kube.ConfigMapSink(api=leader.api, namespace="default", name="ebpf-service-list",
                              interval=1.0, timeout=5, clock=clock)
    snapshot = snapshots.build(version=versions.Version(1, 4), leader="node-a",
                               leader_address="", entries={0x0A60000A: 3, 0x0A60000B: 0},
                               names={0x0A60000A: "default/web"})
    document = mirror.document_of(snapshot)
    assert await sink.mirror_snapshot(term=1, seq=4, document=document)
    obj: Any = fake_kube.get_object("configmaps", "ebpf-service-list")
    assert json.loads(obj["data"]["service-list"]) == {"10.96.0.10": 3, "10.96.0.11": 0}
    assert obj["data"]["version"] == "1.4" and obj["data"]["leader"] == "node-a"
    assert annotation(fake_kube) == record_before
    assert await sink.read_mirror() == document  # a new node's warm start reads this
    assert mirror.snapshot_of(document).content_hash == snapshot.content_hash
    older = mirror.document_of(snapshots.build(
        version=versions.Version(1, 3), leader="node-a", leader_address="", entries={},
        names={}))
    assert not await sink.mirror_snapshot(term=1, seq=5, document=document)  # too soon
    clock.now += 1.5
    assert not await sink.mirror_snapshot(term=1, seq=3, document=older)  # never back
    assert await sink.read_mirror() == document
