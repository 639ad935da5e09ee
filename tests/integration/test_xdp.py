"""The XDP program on a real veth: real packets, real bcc, real bpffs (see xdp_net.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from gossip_agent.dataplane import bpfmap, events, layout, liveness, xdp
from gossip_agent.dataplane import enforcer as enforcer_mod
from gossip_agent.system import bpfsys
from tests.conftest import BPFFS_TEST_ROOT, remove_bpffs_tree
from tests.integration import xdp_net

pytestmark = pytest.mark.integration

ZERO, TWO, UNLISTED = xdp_net.ZERO, "10.96.0.11", "10.96.0.12"


@pytest.fixture
def rig() -> Iterator[xdp_net.Rig]:
    yield from xdp_net.make_rig()


@pytest.fixture
def plane(bpffs_dir: str) -> Iterator[bpfmap.BpfDataPlane]:
    opened = bpfmap.open_pinned(pin_dir=bpffs_dir, max_entries=layout.DEFAULT_MAX_ENTRIES)
    yield opened
    opened.close()


def load(plane: bpfmap.BpfDataPlane) -> xdp.Program:
    return xdp.Program(pin_dir=plane.pin_dir, max_entries=plane.max_entries,
                       table_map_id=plane.table_map_id)


@pytest.fixture
def program(plane: bpfmap.BpfDataPlane) -> Iterator[xdp.Program]:
    loaded = load(plane)
    yield loaded
    loaded.close()


def attach(rig: xdp_net.Rig, program: xdp.Program, *, mode: str = "auto") -> xdp.InterfaceState:
    ifindex = rig.ifindex()
    return xdp_net.in_netns(rig.node_ns,
                            lambda: program.attach_to(rig.node_if, ifindex, mode=mode))


def serving(rig: xdp_net.Rig, *services: str) -> None:
    for service in services:
        rig.add_service(service)


def test_zero_is_dropped_while_positive_and_unlisted_pass(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    state = attach(rig, program)
    assert (state.status, state.mode) == ("attached", "native")
    assert rig.xdp_prog_id() == program.prog_id
    serving(rig, ZERO, TWO, UNLISTED)
    xdp_net.put(plane, {ZERO: 0, TWO: 2})

    assert xdp_net.send_and_count(rig, TWO, packets=20) == 20
    assert xdp_net.send_and_count(rig, UNLISTED, packets=20) == 20
    assert xdp_net.send_and_count(rig, ZERO, packets=20, settle=0.5) == 0
    assert xdp_net.counted(plane, ZERO, (0, 20, 0))
    assert xdp_net.counted(plane, TWO, (20, 0, 0))
    assert xdp_net.ip(UNLISTED) not in plane.stats()  # only listed services are counted


def test_a_service_raised_from_zero_passes_again(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    serving(rig, ZERO)
    xdp_net.put(plane, {ZERO: 0})
    assert xdp_net.send_and_count(rig, ZERO, packets=5, settle=0.5) == 0
    xdp_net.put(plane, {ZERO: 2}, seq=2)
    assert xdp_net.send_and_count(rig, ZERO, packets=5) == 5


def test_counters_are_kept_per_cpu_and_read_from_every_cpu(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    serving(rig, TWO)
    xdp_net.put(plane, {TWO: 2})
    cpus = sorted(os.sched_getaffinity(0))
    for cpu in cpus[:2]:
        # veth delivery runs on the sending CPU: pin the sending thread to one CPU at a time.
        def send_from(cpu: int = cpu) -> None:
            os.sched_setaffinity(0, {cpu})
            assert xdp_net.send_and_count(rig, TWO, packets=10) == 10

        worker = threading.Thread(target=send_from)
        worker.start()
        worker.join()

    per_cpu = plane.stats()[xdp_net.ip(TWO)]
    assert len(per_cpu) == bpfsys.possible_cpus()
    assert sum(passed for passed, _, _ in per_cpu) == 10 * len(cpus[:2])
    assert sum(1 for passed, _, _ in per_cpu if passed) == len(cpus[:2])


async def test_scale_up_events_name_service_source_and_time_and_are_rate_limited(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    other = "10.96.0.20"
    serving(rig, ZERO, other)
    xdp_net.put(plane, {ZERO: 0, other: 0})
    hub = events.EventHub()
    reader = asyncio.create_task(program.read_events(hub), name="xdp.events")
    try:
        with hub.subscribe() as subscription:
            before = time.monotonic_ns()
            started = time.monotonic()
            for service in (ZERO, other):
                await asyncio.to_thread(xdp_net.send_and_count, rig, service, packets=50,
                                        settle=0.2)
            elapsed = time.monotonic() - started
            seen: list[events.ScaleUpEvent] = []
            while len(seen) < 2:
                seen.append(await asyncio.wait_for(anext(subscription), 10))
            after = time.monotonic_ns()
            while (extra := subscription.get_nowait()) is not None:
                seen.append(extra)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    by_service: dict[str, list[events.ScaleUpEvent]] = {}
    for event in seen:
        by_service.setdefault(event.service, []).append(event)
    assert set(by_service) == {ZERO, other}
    # 50 packets each, but at most one event per service per interval (plus one per CPU race).
    bound = 1 + int(elapsed * 1e9 // layout.EVENT_INTERVAL_NS) + bpfsys.possible_cpus()
    for service, found in by_service.items():
        assert 1 <= len(found) <= bound, (service, len(found), bound)
        assert all(e.source == xdp_net.CLIENT_IP for e in found)
        assert all(before <= e.timestamp_ns <= after for e in found)
    assert xdp_net.counted(plane, ZERO, (0, 50, 0)) and xdp_net.counted(plane, other, (0, 50, 0))


def test_stale_heartbeat_fails_open_and_counts_it(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    serving(rig, ZERO)
    xdp_net.put(plane, {ZERO: 0})
    second = 1_000_000_000
    plane.write_heartbeat(refreshed_ns=time.monotonic_ns() - 5 * second,
                          fail_open_after_ns=2 * second)
    assert xdp_net.send_and_count(rig, ZERO, packets=10) == 10
    assert xdp_net.counted(plane, ZERO, (0, 0, 10))

    plane.write_heartbeat(refreshed_ns=time.monotonic_ns(), fail_open_after_ns=2 * second)
    assert xdp_net.send_and_count(rig, ZERO, packets=10, settle=0.5) == 0
    assert xdp_net.counted(plane, ZERO, (0, 10, 10))


def test_heartbeat_stamped_ahead_of_the_kernel_clock_is_fresh_and_a_stale_one_fails_open(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    serving(rig, ZERO)
    xdp_net.put(plane, {ZERO: 0})
    second = 1_000_000_000
    # A refresh stamped slightly ahead of the program's bpf_ktime_get_ns(): its age is
    # negative, which an unsigned comparison reads as about 2^64 ns (584 years): failed open.
    plane.write_heartbeat(refreshed_ns=time.monotonic_ns() + second,
                          fail_open_after_ns=2 * second)
    assert xdp_net.send_and_count(rig, ZERO, packets=10, settle=0.5) == 0
    assert xdp_net.counted(plane, ZERO, (0, 10, 0))

    plane.write_heartbeat(refreshed_ns=time.monotonic_ns() - 3 * second,
                          fail_open_after_ns=2 * second)
    assert xdp_net.send_and_count(rig, ZERO, packets=10) == 10
    assert xdp_net.counted(plane, ZERO, (0, 10, 10))


def test_fail_open_after_zero_never_fails_open(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    attach(rig, program)
    serving(rig, ZERO)
    xdp_net.put(plane, {ZERO: 0})
    plane.write_heartbeat(refreshed_ns=1, fail_open_after_ns=0)  # ancient, but disabled
    assert xdp_net.send_and_count(rig, ZERO, packets=10, settle=0.5) == 0
    assert xdp_net.counted(plane, ZERO, (0, 10, 0))


@pytest.fixture
def foreign_dir() -> Iterator[str]:
    path = f"{BPFFS_TEST_ROOT}/ga4a-foreign-{uuid.uuid4().hex}"
    yield path
    remove_bpffs_tree(path)


def test_another_components_program_is_left_alone(
    rig: xdp_net.Rig, program: xdp.Program, foreign_dir: str
) -> None:
    other_plane = bpfmap.open_pinned(pin_dir=foreign_dir, max_entries=16)
    other = load(other_plane)
    try:
        assert attach(rig, other).status == "attached"
        state = attach(rig, program)
        assert state.status == "foreign" and str(other.prog_id) in state.detail
        assert rig.xdp_prog_id() == other.prog_id
    finally:
        other.close()
        other_plane.close()


def test_an_interface_carrying_another_program_makes_the_node_blind_until_it_is_ours(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, foreign_dir: str
) -> None:
    """Blindness (issue 14): a node whose program cannot count all the traffic it should
    reports why, so the leader never takes its "saw nothing" for idleness."""
    maps_only = enforcer_mod.Enforcer.build(plane=plane, patterns=(), mode="auto",
                                            fail_open_after=0, hub=events.EventHub(),
                                            liveness=liveness.Liveness())
    assert maps_only.blindness().startswith(enforcer_mod.NO_PROGRAM)
    maps_only.close()
    enforcer = enforcer_mod.Enforcer.build(plane=plane, patterns=(rig.node_if,), mode="auto",
                                           fail_open_after=0, hub=events.EventHub(),
                                           liveness=liveness.Liveness())
    other_plane = bpfmap.open_pinned(pin_dir=foreign_dir, max_entries=16)
    other = load(other_plane)
    try:
        assert "not scanned yet" in enforcer.blindness()
        xdp_net.in_netns(rig.node_ns, lambda: enforcer.sync({}))
        assert enforcer.blindness() == "", "no matching interface yet: it would see pod traffic"
        assert attach(rig, other).status == "attached"
        ifindex = rig.ifindex()
        xdp_net.in_netns(rig.node_ns, lambda: enforcer.sync({rig.node_if: ifindex}))
        blind = enforcer.blindness()
        assert rig.node_if in blind and str(other.prog_id) in blind, blind
        xdp_net.sh("ip", "-n", rig.node_ns, "link", "set", "dev", rig.node_if, "xdp", "off")
        xdp_net.in_netns(rig.node_ns, lambda: enforcer.sync({rig.node_if: ifindex}))
        assert enforcer.interfaces[rig.node_if].status == "attached"
        assert enforcer.blindness() == ""
    finally:
        xdp_net.sh("ip", "-n", rig.node_ns, "link", "set", "dev", rig.node_if, "xdp", "off")
        other.close()
        other_plane.close()
        enforcer.close()


def test_restart_replaces_the_program_with_no_moment_without_one(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program
) -> None:
    first = attach(rig, program, mode="generic")
    assert (first.status, first.mode) == ("attached", "generic")
    serving(rig, ZERO)
    xdp_net.put(plane, {ZERO: 0})
    listener = rig.listener(ZERO)
    port = listener.getsockname()[1]
    sender = rig.sender()
    seen_ids: set[int] = set()
    stop = threading.Event()
    sent = 0

    def hammer() -> None:
        nonlocal sent
        ifindex = rig.ifindex()
        while not stop.is_set():
            sender.sendto(b"x", (ZERO, port))
            sent += 1
            seen_ids.add(xdp_net.in_netns(rig.node_ns, lambda: _prog_id(ifindex)))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        xdp_net.wait_for("packets before the restart", lambda: sent > 20)
        second = load(plane)  # a restarted agent compiles and loads its own program
        try:
            state = attach(rig, second)
            sent_at_swap = sent
            xdp_net.wait_for("packets after the restart", lambda: sent > sent_at_swap + 20)
        finally:
            stop.set()
            worker.join()
        assert (state.status, state.mode) == ("replaced", "generic")
        assert rig.xdp_prog_id() == second.prog_id
        second.close()
    finally:
        stop.set()
        worker.join()
    assert 0 not in seen_ids and seen_ids <= {program.prog_id, second.prog_id}
    assert xdp_net.counted(plane, ZERO, (0, sent, 0))  # every packet met a program, and was dropped
    assert xdp_net.received(listener) == 0  # not one packet slipped through
    listener.close()
    sender.close()


def _prog_id(ifindex: int) -> int:
    from gossip_agent.dataplane import xdpsys

    return xdpsys.query(ifindex, name="probe").prog_id


def test_new_max_entries_migrates_table_and_counters_and_the_new_program_uses_them(
    rig: xdp_net.Rig, bpffs_dir: str
) -> None:
    plane = bpfmap.open_pinned(pin_dir=bpffs_dir, max_entries=1024)
    old = load(plane)
    old.pin()
    attach(rig, old)
    serving(rig, ZERO, TWO)
    xdp_net.put(plane, {ZERO: 0, TWO: 2})
    assert xdp_net.send_and_count(rig, TWO, packets=7) == 7
    assert xdp_net.counted(plane, TWO, (7, 0, 0))
    old_map_id = plane.table_map_id
    plane.close()

    bigger = bpfmap.open_pinned(pin_dir=bpffs_dir, max_entries=2048)  # MAP_MAX_ENTRIES raised
    try:
        assert bigger.table_map_id != old_map_id and bigger.max_entries == 2048
        assert bigger.read() == {xdp_net.ip(ZERO): 0, xdp_net.ip(TWO): 2}
        assert xdp_net.totals(bigger, TWO) == (7, 0, 0)  # the per-CPU counters were copied too
        new = load(bigger)
        try:
            state = attach(rig, new)  # the old program still uses the old map: ours, replaced
            assert state.status == "replaced" and rig.xdp_prog_id() == new.prog_id
            assert xdp_net.send_and_count(rig, ZERO, packets=5, settle=0.5) == 0
            assert xdp_net.send_and_count(rig, TWO, packets=3) == 3
            assert xdp_net.counted(bigger, ZERO, (0, 5, 0))
            assert xdp_net.counted(bigger, TWO, (10, 0, 0))
        finally:
            new.close()
    finally:
        old.close()
        bigger.close()


def test_auto_mode_falls_back_to_generic_where_the_driver_has_no_native_xdp(
    rig: xdp_net.Rig, program: xdp.Program
) -> None:
    bridge = f"ga4a{rig.tag}b"  # a bridge device: its driver has no native XDP support
    xdp_net.sh("ip", "-n", rig.node_ns, "link", "add", bridge, "type", "bridge")
    ifindex = xdp_net.in_netns(rig.node_ns, lambda: socket.if_nametoindex(bridge))

    forced = xdp_net.in_netns(rig.node_ns,
                              lambda: program.attach_to(bridge, ifindex, mode="native"))
    assert forced.status == "failed" and bridge in forced.detail
    state = xdp_net.in_netns(rig.node_ns, lambda: program.attach_to(bridge, ifindex, mode="auto"))
    assert (state.status, state.mode) == ("attached", "generic")
    assert xdp_net.in_netns(rig.node_ns, lambda: _prog_id(ifindex)) == program.prog_id


def test_detach_removes_only_this_pin_dirs_program_and_its_pins(
    rig: xdp_net.Rig, plane: bpfmap.BpfDataPlane, program: xdp.Program, foreign_dir: str
) -> None:
    from gossip_agent.dataplane import detach

    other_if = f"ga4a{rig.tag}b"
    xdp_net.sh("ip", "-n", rig.node_ns, "link", "add", other_if, "type", "bridge")
    other_index = xdp_net.in_netns(rig.node_ns, lambda: socket.if_nametoindex(other_if))
    other_plane = bpfmap.open_pinned(pin_dir=foreign_dir, max_entries=16)
    other = load(other_plane)
    try:
        program.pin()
        attach(rig, program)
        assert xdp_net.in_netns(rig.node_ns, lambda: other.attach_to(
            other_if, other_index, mode="auto")).status == "attached"
        pin_dir = plane.pin_dir
        plane.close()  # the agent is gone: detach may take the pin directory

        done = xdp_net.in_netns(rig.node_ns, lambda: detach.detach(pin_dir=pin_dir))

        assert done.interfaces == (rig.node_if,) and not done.failed
        assert any(line.startswith(f"{other_if}:") for line in done.skipped)
        assert rig.xdp_prog_id() == 0
        assert xdp_net.in_netns(rig.node_ns, lambda: _prog_id(other_index)) == other.prog_id
        assert not os.path.exists(pin_dir)
        assert os.path.exists(f"{foreign_dir}/SERVICE_LIST")
    finally:
        other.close()
        other_plane.close()
