"""End to end: a real `gossip-agent run` process in a node namespace with XDP_INTERFACES set.

The agent is started with `nsenter --net=/run/netns/<node>` (not `ip netns exec`, which would
hide the host's bpffs) and reads its table from SOURCE=file, so it becomes the leader alone and
writes the map itself. It is queried with the real grpcurl, run in the same namespace. The
test checks what an operator relies on: the program goes on the matching interfaces (and on
new ones as they appear), enforces the file's table on real packets, reports modes and
counters in gossip_agent.v1.DataPlane, survives the agent's shutdown and restart in place,
and `gossip-agent detach` removes program and pins.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_agent.dataplane import layout
from gossip_agent.system import bpfsys
from tests.conftest import BPFFS_TEST_ROOT, remove_bpffs_tree, require, require_bpf
from tests.integration import xdp_net

pytestmark = pytest.mark.e2e

ZERO, TWO = "10.96.0.10", "10.96.0.11"
PORT = 50051  # inside a namespace this test created: nothing else listens there
STOP_GRACE = 10.0


@pytest.fixture
def rig() -> Iterator[xdp_net.Rig]:
    yield from xdp_net.make_rig()


@pytest.fixture
def pin_dir() -> Iterator[str]:
    require_bpf()
    path = f"{BPFFS_TEST_ROOT}/ga4a-agent-{uuid.uuid4().hex}"
    yield path
    remove_bpffs_tree(path)


def grpcurl_path() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    require(os.path.exists(found), "grpcurl")
    return found


class AgentProcess:
    def __init__(self, rig: xdp_net.Rig, *, pin_dir: str, source: Path, log: Path,
                 **extra: str) -> None:
        self.rig = rig
        env = dict(os.environ, PROFILE="local", NODE_NAME=f"node-{rig.tag}",
                   LISTEN_ADDR=f"{xdp_net.NODE_IP}:{PORT}", BPF_PIN_DIR=pin_dir,
                   DATAPLANE="bpf", SOURCE="file", SOURCE_FILE=str(source),
                   XDP_INTERFACES="ga4a*n,ga4a*x", FAIL_OPEN_AFTER="10")
        env.update(extra)
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{rig.node_ns}", sys.executable, "-m",
             "gossip_agent", "run"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_GRACE)
        self.log.close()
        return self.process.returncode


def wait_for(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def dataplane_state(rig: xdp_net.Rig) -> dict[str, Any] | None:
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{rig.node_ns}", grpcurl_path(), "-plaintext",
         "-max-time", "5", f"{xdp_net.NODE_IP}:{PORT}",
         "gossip_agent.v1.DataPlane/GetDataPlane"],
        capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else None


def map_value(pin_dir: str, service: str) -> int | None:
    pinned = bpfsys.PinnedMap.open_existing(f"{pin_dir}/SERVICE_LIST",
                                            layout.service_list_spec())
    if pinned is None:
        return None
    try:
        raw = pinned.lookup(int.from_bytes(bytes(map(int, service.split("."))), "big")
                            .to_bytes(4, sys.byteorder))
    finally:
        pinned.close()
    return None if raw is None else int.from_bytes(raw, sys.byteorder)


def packets(counters: dict[str, Any]) -> int:
    return sum(int(counters.get(key, 0)) for key in ("passed", "dropped", "fail_open"))


def interface(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next((i for i in state.get("interfaces", []) if i["name"] == name), {})


def test_agent_attaches_follows_interfaces_survives_restart_and_detaches(
    rig: xdp_net.Rig, pin_dir: str, tmp_path: Path
) -> None:
    grpcurl_path()
    source = tmp_path / "services.json"
    source.write_text(json.dumps({ZERO: 0, TWO: 2}))
    for service in (ZERO, TWO):
        rig.add_service(service)
    agent = AgentProcess(rig, pin_dir=pin_dir, source=source, log=tmp_path / "agent.log")
    try:
        state = wait_for("the agent to attach and report it", lambda: (
            (s := dataplane_state(rig)) and interface(s, rig.node_if).get("status") == "attached"
            and s))
        first_id = state["program_id"]
        assert interface(state, rig.node_if)["mode"] == "native"
        assert rig.xdp_prog_id() == first_id
        wait_for("the file's table in the map", lambda: map_value(pin_dir, ZERO) == 0)

        assert xdp_net.send_and_count(rig, TWO, packets=10) == 10
        assert xdp_net.send_and_count(rig, ZERO, packets=10, settle=0.5) == 0
        state = wait_for("the scale-up event and all 20 packets counted by the agent", lambda: (
            (s := dataplane_state(rig)) and int(s.get("scale_up_events", 0)) >= 1
            and sum(packets(c) for c in s.get("services", [])) >= 20 and s))
        counters = {s["ip"]: s for s in state["services"]}
        assert int(counters[ZERO]["dropped"]) == 10 and int(counters[TWO]["passed"]) == 10
        assert counters[ZERO]["listed"] and not state.get("failed_open", False)

        # A new interface matching a glob gets the program as it appears.
        new_if = f"ga4a{rig.tag}x"
        xdp_net.sh("ip", "-n", rig.node_ns, "link", "add", new_if, "type", "veth", "peer",
                   "name", f"ga4a{rig.tag}y")
        state = wait_for("the program on the new interface", lambda: (
            (s := dataplane_state(rig)) and interface(s, new_if).get("status") == "attached"
            and s))
        assert interface(state, new_if)["mode"] in ("native", "generic")
    finally:
        assert agent.stop() == 0, (tmp_path / "agent.log").read_text()

    # Shutdown leaves the program attached and enforcing.
    assert rig.xdp_prog_id() == first_id
    assert xdp_net.send_and_count(rig, ZERO, packets=5, settle=0.5) == 0

    restarted = AgentProcess(rig, pin_dir=pin_dir, source=source, log=tmp_path / "agent.log")
    try:
        state = wait_for("the restarted agent to replace its program", lambda: (
            (s := dataplane_state(rig)) and interface(s, rig.node_if).get("status") == "replaced"
            and s))
        assert state["program_id"] != first_id and rig.xdp_prog_id() == state["program_id"]
    finally:
        assert restarted.stop() == 0, (tmp_path / "agent.log").read_text()

    detached = subprocess.run(
        ["nsenter", f"--net=/run/netns/{rig.node_ns}", sys.executable, "-m", "gossip_agent",
         "detach", "--bpf-pin-dir", pin_dir], capture_output=True, text=True, timeout=60)
    assert detached.returncode == 0, detached.stderr
    assert rig.node_if in detached.stdout and new_if in detached.stdout
    assert rig.xdp_prog_id() == 0
    assert xdp_net.send_and_count(rig, ZERO, packets=5) == 5  # nothing enforces any more
    left = os.listdir(pin_dir) if os.path.isdir(pin_dir) else []
    assert not {spec.name for spec in layout.pinned_specs(1024)} & set(left)
    assert layout.XDP_PROG not in left


def test_detach_is_refused_while_an_agent_runs(
    rig: xdp_net.Rig, pin_dir: str, tmp_path: Path
) -> None:
    source = tmp_path / "services.json"
    source.write_text(json.dumps({ZERO: 0}))
    agent = AgentProcess(rig, pin_dir=pin_dir, source=source, log=tmp_path / "agent.log")
    try:
        wait_for("the program on the interface", lambda: rig.xdp_prog_id() != 0)
        refused = subprocess.run(
            ["nsenter", f"--net=/run/netns/{rig.node_ns}", sys.executable, "-m",
             "gossip_agent", "detach", "--bpf-pin-dir", pin_dir],
            capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "stop it before detaching" in refused.stderr
        assert rig.xdp_prog_id() != 0 and os.path.exists(f"{pin_dir}/SERVICE_LIST")
    finally:
        assert agent.stop() == 0, (tmp_path / "agent.log").read_text()


def kill_once_working(agent: AgentProcess, *, rig: xdp_net.Rig, replacing: int,
                      log: Path) -> None:
    """SIGKILLs `agent` as soon as its program replaced `replacing` on the interface: attaching
    is one of its loops' first steps once it is up, so it got up, worked, and died."""
    try:
        wait_for("the restarted agent to attach its program",
                 lambda: rig.xdp_prog_id() not in (0, replacing))
        assert agent.process.poll() is None, log.read_text()
    finally:
        agent.process.kill()
        agent.stop()


def test_a_crash_looping_agent_never_refreshes_the_heartbeat_so_the_node_fails_open(
    rig: xdp_net.Rig, pin_dir: str, tmp_path: Path
) -> None:
    """An agent ran and was killed; its successors crash as a pod in CrashLoopBackOff does:
    during start-up (here: the gRPC port is taken), or once up but within their probation
    (here: SIGKILL as soon as they attach their program). None of them refreshes the heartbeat,
    and FAIL_OPEN_AFTER lets traffic to the service at zero through."""
    source = tmp_path / "services.json"
    source.write_text(json.dumps({ZERO: 0}))
    rig.add_service(ZERO)
    log = tmp_path / "agent.log"
    fail_open_after = 6.0  # FAIL_OPEN_AFTER=0.1 minutes: a probation of 1.5 s
    timers = {"FAIL_OPEN_AFTER": "0.1"}
    agent = AgentProcess(rig, pin_dir=pin_dir, source=source, log=log, **timers)
    try:
        wait_for("the program on the interface and the file's table in the map",
                 lambda: rig.xdp_prog_id() != 0 and map_value(pin_dir, ZERO) == 0)
        wait_for("a heartbeat", lambda: xdp_net.pinned_heartbeat(pin_dir)[0] != 0)
        assert xdp_net.send_and_count(rig, ZERO, packets=5, settle=0.5) == 0
    finally:
        agent.process.kill()  # SIGKILL: no shutdown, the program stays attached
        agent.stop()
    last_beat = xdp_net.pinned_heartbeat(pin_dir)

    squatter = xdp_net.in_netns(rig.node_ns, lambda: socket.create_server((xdp_net.NODE_IP, PORT)))
    try:  # a restart that compiles the program, then dies binding the port
        crashing = AgentProcess(rig, pin_dir=pin_dir, source=source, log=log, **timers)
        assert crashing.process.wait(60) == 1, log.read_text()
        crashing.stop()
        assert xdp_net.pinned_heartbeat(pin_dir) == last_beat, "a start-up crash refreshed"
    finally:
        squatter.close()
    for attempt in range(2):  # restarts that get up, then die well within their probation
        replacing = rig.xdp_prog_id()
        kill_once_working(AgentProcess(rig, pin_dir=pin_dir, source=source, log=log, **timers),
                          rig=rig, replacing=replacing, log=log)
        assert xdp_net.pinned_heartbeat(pin_dir) == last_beat, (
            f"restart {attempt + 1}, killed on probation, refreshed the heartbeat")

    wait_for("FAIL_OPEN_AFTER to pass", lambda: (
        time.monotonic_ns() - last_beat[0] > fail_open_after * 1e9))
    assert rig.xdp_prog_id() != 0  # a program of ours is attached, enforcing...
    assert xdp_net.send_and_count(rig, ZERO, packets=5) == 5  # ...but failed open
