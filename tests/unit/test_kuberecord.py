"""client-go's LeaderElectionRecord, byte for byte, and the gossip beat board."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip_agent.core import beats
from gossip_agent.leases import kuberecord

pytestmark = pytest.mark.unit

UTC = datetime.UTC


def test_encoding_is_byte_identical_to_client_go() -> None:
    # What client-go's ConfigMapLock wrote (encoding/json of LeaderElectionRecord).
    expected = ('{"holderIdentity":"node-a#17-ab12cd","leaseDurationSeconds":15,'
                '"acquireTime":"2026-11-25T03:00:00Z","renewTime":"2026-11-25T03:00:07Z",'
                '"leaderTransitions":3}')
    record = kuberecord.ElectionRecord(
        "node-a#17-ab12cd", 15, datetime.datetime(2026, 11, 25, 3, 0, 0, 999, tzinfo=UTC),
        datetime.datetime(2026, 11, 25, 3, 0, 7, tzinfo=UTC), 3)
    assert kuberecord.encode(record) == expected


def test_release_record_and_zero_times_encode_as_client_go_does() -> None:
    record = kuberecord.ElectionRecord("", 1, None, None, 7)
    assert kuberecord.encode(record) == (
        '{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":null,"renewTime":null,'
        '"leaderTransitions":7}')


def test_go_html_escaping_and_utf8_are_kept() -> None:
    record = kuberecord.ElectionRecord("a<b>&c\u2028é", 1, None, None, 0)
    assert kuberecord.encode(record).startswith(
        '{"holderIdentity":"a\\u003cb\\u003e\\u0026c\\u2028é"')


def test_times_in_other_zones_are_written_in_utc() -> None:
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    assert kuberecord.format_time(datetime.datetime(2026, 1, 1, 12, 0, tzinfo=plus2)) == \
        "2026-01-01T10:00:00Z"


def test_decoding_accepts_what_client_go_accepts() -> None:
    newer = ('{"renewTime":"2026-11-25T03:00:07Z","holderIdentity":"n","leaderTransitions":2,'
             '"leaseDurationSeconds":15,"acquireTime":null,"strategy":"","preferredHolder":""}')
    record = kuberecord.decode(newer)
    assert record == kuberecord.ElectionRecord(
        "n", 15, None, datetime.datetime(2026, 11, 25, 3, 0, 7, tzinfo=UTC), 2)
    assert kuberecord.decode("{}") == kuberecord.ElectionRecord("", 0, None, None, 0)


@pytest.mark.parametrize("text", ["[]", "not json", '{"holderIdentity":5}',
                                  '{"leaseDurationSeconds":"15"}', '{"renewTime":"yesterday"}'])
def test_malformed_records_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        kuberecord.decode(text)


@given(holder=st.text(max_size=40), duration=st.integers(1, 3600),
       transitions=st.integers(0, 2**31), seconds=st.integers(0, 2_000_000_000))
def test_encode_then_decode_is_identity_at_second_resolution(
        holder: str, duration: int, transitions: int, seconds: int) -> None:
    moment = datetime.datetime.fromtimestamp(seconds, UTC)
    record = kuberecord.ElectionRecord(holder, duration, moment, moment, transitions)
    assert kuberecord.decode(kuberecord.encode(record)) == record


def test_board_keeps_the_newest_beat_and_when_it_was_first_heard() -> None:
    board = beats.BeatBoard()
    assert board.offer(beats.Beat("a", 2, 5, "s5"), now=10.0)
    assert not board.offer(beats.Beat("a", 2, 5, "s5"), now=11.0)  # the same beat again
    assert not board.offer(beats.Beat("old", 1, 99, "x"), now=12.0)  # an older term
    assert board.first_heard(holder="a", stamp="s5") == 10.0
    assert board.first_heard(holder="a", stamp="other") is None
    assert board.offer(beats.Beat("b", 3, 1, "t1"), now=13.0)
    assert board.best == beats.Beat("b", 3, 1, "t1") and board.heard_at == 13.0


def test_board_is_quiet_only_while_another_holders_beats_are_fresh() -> None:
    board = beats.BeatBoard()
    assert not board.quiet(holder="me", window=5, now=0.0)  # nothing heard: ask the API
    board.offer(beats.Beat("other", 1, 1, "s"), now=10.0)
    assert board.quiet(holder="me", window=5, now=14.9)
    assert not board.quiet(holder="me", window=5, now=15.0)  # silent too long
    assert not board.quiet(holder="other", window=5, now=11.0)  # its own beat
    board.offer(beats.Beat("", 1, 2, "r"), now=16.0)  # released
    assert not board.quiet(holder="me", window=5, now=16.5)


def test_configmap_mirror_data_has_the_seeds_service_list_and_the_document() -> None:
    from gossip_agent.leases import kube

    document = ('{"term":7,"seq":3,"leader":"node-a","leader_address":"","content_hash":"00",'
                '"services":[{"ip":"10.96.0.10","replicas":3,"name":"default/web"},'
                '{"ip":"192.168.0.1","replicas":0,"name":""}]}')
    assert kube.ConfigMapSink.data_of(document) == {
        "service-list": '{"10.96.0.10":3,"192.168.0.1":0}', "version": "7.3",
        "leader": "node-a", "snapshot": document}
