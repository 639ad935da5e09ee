"""The pure parts of the XDP side: interface patterns, the event hub, fail-open settings and
the liveness the heartbeat vouches for."""

from __future__ import annotations

import asyncio

import pytest

from gossip_agent import config, errors
from gossip_agent.dataplane import enforcer, events, interfaces, liveness

pytestmark = pytest.mark.unit


def event(n: int) -> events.ScaleUpEvent:
    return events.ScaleUpEvent(service_ip=0x0A60000A, source_ip=0x0AD30002, timestamp_ns=n)


def test_patterns_are_split_trimmed_and_empty_items_dropped() -> None:
    assert interfaces.parse_patterns(" eth0, veth*,,cali* ") == ("eth0", "veth*", "cali*")
    assert interfaces.parse_patterns("") == ()


def test_names_and_globs_select_interfaces_case_sensitively() -> None:
    found = [(1, "lo"), (2, "eth0"), (3, "veth12ab"), (4, "cali9"), (5, "ETH0"), (6, "eth01")]
    assert interfaces.matching(("eth0", "veth*", "cali*"), found) == {
        "eth0": 2, "veth12ab": 3, "cali9": 4}
    assert interfaces.matching((), found) == {}


def test_event_shows_addresses_dotted() -> None:
    assert (event(1).service, event(1).source) == ("10.96.0.10", "10.211.0.2")


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = events.EventHub()
    with hub.subscribe() as first, hub.subscribe() as second:
        for n in range(3):
            hub.publish(event(n))
        for subscription in (first, second):
            got = [await asyncio.wait_for(anext(subscription), 1) for _ in range(3)]
            assert [e.timestamp_ns for e in got] == [0, 1, 2]
            assert subscription.get_nowait() is None
    assert hub.subscribers == 0 and hub.published == 3


async def test_a_slow_subscriber_loses_its_oldest_events_and_they_are_counted() -> None:
    hub = events.EventHub(queue_size=2)
    with hub.subscribe() as slow:
        for n in range(5):
            hub.publish(event(n))
        assert [slow.get_nowait(), slow.get_nowait()] == [event(3), event(4)]
    assert hub.dropped == 3


async def test_leaving_the_block_unsubscribes_and_ends_iteration() -> None:
    hub = events.EventHub()
    with hub.subscribe() as subscription:
        pass
    hub.publish(event(1))
    assert [e async for e in subscription] == []
    assert hub.subscribers == 0


def test_xdp_variables_parse_with_units_and_defaults() -> None:
    cfg = config.from_env({"LISTEN_ADDR": "127.0.0.1:1"})
    assert (cfg.xdp.interfaces, cfg.xdp.mode, cfg.xdp.fail_open_after) == ("", "auto", 600.0)
    cfg = config.from_env({"LISTEN_ADDR": "127.0.0.1:1", "XDP_INTERFACES": "eth0, veth*",
                           "XDP_MODE": "generic", "FAIL_OPEN_AFTER": "0.5"})
    assert (cfg.xdp.interfaces, cfg.xdp.mode, cfg.xdp.fail_open_after) == (
        "eth0,veth*", "generic", 30.0)
    assert config.from_env({"LISTEN_ADDR": "127.0.0.1:1",
                            "FAIL_OPEN_AFTER": "0"}).xdp.fail_open_after == 0


def test_bad_xdp_variables_are_each_named() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_env({"LISTEN_ADDR": "127.0.0.1:1", "XDP_INTERFACES": "eth0,a/b",
                         "XDP_MODE": "offload", "FAIL_OPEN_AFTER": "-1"})
    problems = "\n".join(caught.value.problems)
    for name in ("XDP_INTERFACES", "XDP_MODE", "FAIL_OPEN_AFTER"):
        assert name in problems


def test_heartbeat_refreshes_four_times_per_fail_open_period_capped() -> None:
    assert enforcer.heartbeat_interval(8.0) == 2.0
    assert enforcer.heartbeat_interval(600.0) == enforcer.HEARTBEAT_MAX_INTERVAL
    assert enforcer.heartbeat_interval(0) == enforcer.HEARTBEAT_MAX_INTERVAL


@pytest.mark.parametrize("fail_open_after", [0.6, 6.0, 40.0, 240.0, 600.0, 7 * 24 * 3600.0])
def test_probation_is_a_quarter_of_fail_open_after_capped_at_a_minute(
    fail_open_after: float
) -> None:
    period = enforcer.probation(fail_open_after)
    assert period == min(fail_open_after / 4, 60.0)
    # Never shorter than a refresh interval; with the old agent's last interval, at most half
    # of FAIL_OPEN_AFTER, the rest left for a healthy restart (shutdown, pull, start-up).
    assert enforcer.heartbeat_interval(fail_open_after) <= period
    assert enforcer.heartbeat_interval(fail_open_after) + period <= fail_open_after / 2


def test_no_probation_when_the_node_never_fails_open() -> None:
    assert enforcer.probation(0) == 0


async def test_liveness_holds_only_once_up_and_while_every_watched_loop_runs() -> None:
    alive = liveness.Liveness()
    finish = asyncio.Event()
    running = asyncio.create_task(asyncio.Event().wait(), name="lease.elect")
    ending = asyncio.create_task(finish.wait(), name="xdp.events")
    try:
        alive.watch(running)
        alive.watch(ending)
        assert alive.why_not() == "the agent is not up yet"
        alive.up()
        await asyncio.wait_for(alive.wait_up(), 1)
        assert alive.why_not() == ""
        finish.set()
        await ending
        assert alive.why_not() == "task xdp.events ended"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def test_a_crashed_task_ends_liveness_whatever_the_watched_loops_do() -> None:
    alive = liveness.Liveness()
    alive.up()
    alive.failed("task source.file crashed")
    alive.failed("task scaleup.read crashed")
    assert alive.why_not() == "task source.file crashed"
