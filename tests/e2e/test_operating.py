"""End to end, as an operator: agent processes (lab.localcluster on real pinned BPF maps
and the bpffs lease, as in test_local_cluster) inspected through the aiomonitor console over
telnet, their JSON logs, and a real Prometheus server scraping them.

- The console is driven the way an operator drives it: `python -m aiomonitor.cli` in a
  pseudo-terminal, commands typed, the screen read back (escape sequences stripped).
- Prometheus is Debian's `prometheus` binary on a free loopback port, with its own config and
  data directory under tmp_path, stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster
from tests.conftest import require
from tests.e2e.test_local_cluster import e2e_root, start_cluster  # noqa: F401 - fixtures
from tests.unit.test_monitoring_manifests import dashboard_exprs

pytestmark = pytest.mark.e2e

# Liveness bounds for 3 agents (plus bcc compiles) on a shared 2-core machine.
CLUSTER_DEADLINE = 30.0
CONVERGE_DEADLINE = 10.0
# Prometheus: start-up, then a 1 s scrape interval; generous for a loaded machine.
PROMETHEUS_DEADLINE = 60.0
CONSOLE_DEADLINE = 15.0
SERVICE_IP = "10.96.0.10"
# Terminal escape sequences, carriage returns and other control bytes (the REPL's backspaces).
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]"
                  rb"|[\x00-\x09\x0b-\x1a\x1c-\x1f]")
PROMPT = "monitor >>> "

StartCluster = Callable[..., localcluster.LocalCluster]


# --- the cluster ---------------------------------------------------------------------------


async def converged_cluster(
    start: StartCluster, *, extra_env: dict[str, str] | None = None
) -> tuple[localcluster.LocalCluster, str, pb.WriteResponse]:
    """3 agents, a leader, one service written through it and held everywhere."""
    cluster = start(3, extra_env)
    leader, _ = await localcluster.find_leader(cluster.addresses, CLUSTER_DEADLINE)
    reply = await localcluster.call(leader, "SetService", pb.SetServiceRequest(
        ip=SERVICE_IP, replicas=3, name="default/web"), timeout=10)
    assert isinstance(reply, pb.WriteResponse)
    await localcluster.wait_all(
        cluster.addresses, what="every agent to hold the write", timeout=CONVERGE_DEADLINE,
        check=lambda s: (s.version.term, s.version.seq) >= (reply.version.term,
                                                              reply.version.seq))
    return cluster, leader, reply


def agent_at(cluster: localcluster.LocalCluster, address: str) -> localcluster.AgentProcess:
    return next(a for a in cluster.agents if a.address == address)


# --- the console, as an operator uses it ---------------------------------------------------


class ConsoleSession:
    """`python -m aiomonitor.cli -p PORT` in a pseudo-terminal: type a command, read the screen
    up to the next prompt."""

    def __init__(self, port: int) -> None:
        self._master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 220, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiomonitor.cli", "-H", "127.0.0.1", "-p", str(port)],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**os.environ, "TERM": "dumb"},
        )
        os.close(slave)
        self.banner = self._read_until_prompt()

    def _read_until_prompt(self, prompt: str = PROMPT) -> str:
        data = b""
        deadline = time.monotonic() + CONSOLE_DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if ready:
                try:
                    data += os.read(self._master, 65536)
                except OSError:
                    break
            text = ANSI.sub(b"", data).decode(errors="replace")
            # The whole last line must be the prompt: the Python console's ">>> " is a suffix
            # of "monitor >>> ", which prompt_toolkit may redraw before the command has run.
            last_line = re.split(r"[\r\n]", text)[-1]
            if last_line.strip() == prompt.strip() and "\n" in text:
                return text
        raise AssertionError(f"no console prompt within {CONSOLE_DEADLINE:g}s; screen: "
                             f"{ANSI.sub(b'', data).decode(errors='replace')!r}")

    def run(self, command: str, *, prompt: str = PROMPT) -> str:
        """The command's output: the screen between its echo and the next prompt."""
        os.write(self._master, command.encode() + b"\r")
        screen = self._read_until_prompt(prompt)
        lines = [line for line in screen.split("\n")
                 if line.strip() and not line.startswith(prompt.rstrip())]
        return "\n".join(lines)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, b"exit\r")
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._master)


@contextlib.contextmanager
def console(port: int) -> Iterator[ConsoleSession]:
    session = ConsoleSession(port)
    try:
        yield session
    finally:
        session.close()


def field(output: str, label: str) -> str:
    """The value of a `label   value` row in a command's output."""
    for line in output.splitlines():
        if line.startswith(label) and line[len(label):len(label) + 1] == " ":
            return line[len(label):].strip()
    raise AssertionError(f"no {label!r} row in:\n{output}")


def task_names(ps_output: str) -> list[str]:
    """The Name column of aiomonitor's `ps` table."""
    names = []
    for line in ps_output.splitlines():
        cells = line.strip("|").split()
        if len(cells) >= 3 and cells[0].isdigit():
            names.append(cells[2])
    return names


async def test_console_commands_show_a_followers_state_peers_lease_and_counters(
    start_cluster: StartCluster,  # noqa: F811 - the fixture
) -> None:
    cluster, leader, written = await converged_cluster(start_cluster)
    follower = next(a for a in cluster.agents if a.address != leader)
    leader_node = agent_at(cluster, leader).node
    version = f"{written.version.term}.{written.version.seq}"
    with console(follower.monitor_port) as session:
        assert "Asyncio Monitor" in session.banner
        state = await asyncio.to_thread(session.run, "state")
        assert field(state, "node") == follower.node
        assert field(state, "version") == version
        assert field(state, "leader").split()[0] == leader_node
        assert field(state, "ready").startswith("yes")
        assert field(state, "entries") == "1"
        assert re.search(rf"^\s+{re.escape(SERVICE_IP)}\s+3\s+default/web$", state, re.M)

        peers = await asyncio.to_thread(session.run, "peers")
        others = {a.address for a in cluster.agents if a is not follower}
        rows = {line.split()[0]: line.split() for line in peers.splitlines()[1:-1]}
        assert set(rows) == others, peers
        assert rows[leader][1] == leader_node and rows[leader][2] == "alive"
        assert peers.splitlines()[-1] == "2 peers"

        lease = await asyncio.to_thread(session.run, "lease")
        assert field(lease, "backend") == "bpffs"
        assert f"(node {leader_node})" in field(lease, "holder")
        assert field(lease, "term") == str(written.version.term)
        assert field(lease, "this agent") == "follower"

        gossip = await asyncio.to_thread(session.run, "gossip")
        # At least the write. The leader's first snapshot is a second adoption only when it
        # reached this follower before the write: a push worker sends just the newest, so
        # under load the two can arrive as one.
        assert int(field(gossip, "adoptions")) >= 1
        assert "push:adopt=" in field(gossip, "received")
        assert field(gossip, "rejections") == "invalid=0"

        dataplane = await asyncio.to_thread(session.run, "dataplane")
        assert field(dataplane, "kind") == "bpf"
        assert field(dataplane, "map").startswith(os.path.join(follower.pin_dir, "SERVICE_LIST"))
        assert field(dataplane, "entries").startswith("1 in the map, 1 in the snapshot held")
        assert re.search(rf"^\s+{re.escape(version)}\s+1 entries\s+via push", dataplane, re.M)
        assert field(dataplane, "program").startswith("none (XDP_INTERFACES is empty")
        assert field(dataplane, "scale events").startswith("0 read from the program")

        scaling = await asyncio.to_thread(session.run, "scaling")
        # Maps only: no program of ours counts this node's packets, and it says so.
        assert field(scaling, "this node") == (
            "blind: no counting program: XDP_INTERFACES is empty, maps only"), scaling
        assert field(scaling, "verdicts").startswith("none here: the leader decides")

        ae = await asyncio.to_thread(session.run, f"anti-entropy --peer {leader}")
        assert f"exchange with {leader}: ok" in ae
        assert f"version {version} -> {version}" in ae
        ae = await asyncio.to_thread(session.run, "anti-entropy")
        assert re.search(r"exchange with 127\.0\.0\.1:\d+: ok", ae), ae

        python = await asyncio.to_thread(session.run, "console")
        assert "Python console is disabled" in python

    webui = int(follower.env["AIOMONITOR_WEBUI_PORT"])
    assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{webui}/") == 200


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status)


async def test_the_python_console_runs_code_in_the_agent_only_when_explicitly_enabled(
    start_cluster: StartCluster,  # noqa: F811 - the fixture
) -> None:
    cluster = start_cluster(1, {"AIOMONITOR_PYTHON_CONSOLE": "true"})
    await localcluster.find_leader(cluster.addresses, CLUSTER_DEADLINE)
    (agent,) = cluster.agents
    with console(agent.monitor_port) as session:
        banner = await asyncio.to_thread(session.run, "console", prompt=">>> ")
        assert "Python" in banner
        node = await asyncio.to_thread(session.run, "engine.node", prompt=">>> ")
        assert node.splitlines()[-1].strip() == repr(agent.node)


async def test_every_task_in_the_consoles_task_list_has_a_readable_name(
    start_cluster: StartCluster,  # noqa: F811 - the fixture
) -> None:
    cluster, leader, _ = await converged_cluster(start_cluster)
    with console(agent_at(cluster, leader).monitor_port) as session:
        ps = await asyncio.to_thread(session.run, "ps")
    names = task_names(ps)
    assert names, ps
    unnamed = [n for n in names if re.fullmatch(r"Task-\d+", n)]
    assert not unnamed, f"tasks without a readable name:\n{ps}"
    others = [a.address for a in cluster.agents if a.address != leader]
    for expected in ("agent.main", "gossip.anti-entropy", "lease.elect", "gossip.publish",
                     *(f"gossip.push[{address}]" for address in others)):
        assert expected in names, f"{expected} missing from:\n{ps}"


async def test_json_logs_are_one_object_a_line_and_quiet_at_info_in_steady_state(
    start_cluster: StartCluster,  # noqa: F811 - the fixture
) -> None:
    cluster, leader, written = await converged_cluster(
        start_cluster, extra_env={"LOG_FORMAT": "json"})
    before = {a.node: len(read_json_log(a)) for a in cluster.agents}
    for replicas in range(1, 21):  # steady state: 20 more writes in the same term
        reply = await localcluster.call(leader, "SetService", pb.SetServiceRequest(
            ip=SERVICE_IP, replicas=replicas), timeout=10)
        assert isinstance(reply, pb.WriteResponse)
    await localcluster.wait_all(
        cluster.addresses, what="every agent to hold the 20th write", timeout=CONVERGE_DEADLINE,
        check=lambda s: s.version.seq >= reply.version.seq)
    for agent in cluster.agents:
        records = read_json_log(agent)
        for record in records:
            assert {"time", "level", "node", "logger", "event"} <= record.keys(), record
            assert record["node"] == agent.node
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert len(records) == before[agent.node], (
            f"{agent.node} logged at INFO during steady-state gossip: "
            f"{records[before[agent.node]:]}")
        if agent.address == leader:
            won = [r for r in records if r["event"].startswith("won the bpffs lease")]
            assert len(won) == 1 and won[0]["fields"]["term"] == written.version.term
        else:
            adopted = [r for r in records if r["event"].startswith("adopted term")]
            assert len(adopted) == 1, adopted
            assert adopted[0]["fields"]["term"] == written.version.term
            assert adopted[0]["fields"]["leader"] == agent_at(cluster, leader).node


def read_json_log(agent: localcluster.AgentProcess) -> list[dict[str, Any]]:
    """Every line of the agent's log as JSON (a line that does not parse fails the test)."""
    with open(agent.log_path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{agent.node}: a log line is not JSON: {line!r}")
    return records


# --- a real Prometheus -------------------------------------------------------------------


@contextlib.contextmanager
def prometheus(tmp_path: Path, targets: list[str]) -> Iterator[str]:
    """Debian's Prometheus on a free loopback port scraping `targets` every second; yields its
    base URL; stopped by PID (SIGTERM, then SIGKILL)."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus (Debian package prometheus)")
    assert binary is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "gossip-agent",
                            "static_configs": [{"targets": targets}]}],
    }))
    port = localcluster.free_ports(1)[0]
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-3000:])


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def poll_query(base: str, promql: str, *, what: str,
                     done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + PROMETHEUS_DEADLINE
    last: list[dict[str, Any]] | str = "no answer yet"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = await asyncio.to_thread(query, base, promql)
            if done(last):
                return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {PROMETHEUS_DEADLINE:g}s waiting for {what} "
                         f"({promql}); last answer: {last}")


async def test_a_real_prometheus_scrapes_every_agents_adopted_version(
    start_cluster: StartCluster, tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    cluster, leader, written = await converged_cluster(start_cluster)
    targets = cluster.metrics_targets
    assert len(targets) == 3
    states = {a.address: s for a, s in zip(
        cluster.agents, await localcluster.states(cluster.addresses), strict=True)}
    with prometheus(tmp_path, targets) as base:
        await poll_query(base, 'up{job="gossip-agent"} == 1', what="every target up",
                         done=lambda r: len(r) == 3)
        for metric, expected in (("gossip_agent_adopted_term", "term"),
                                 ("gossip_agent_adopted_seq", "seq")):
            result = await poll_query(
                base, metric, what=f"{metric} of every agent",
                done=lambda r: len(r) == 3)
            by_target = {r["metric"]["instance"]: float(r["value"][1]) for r in result}
            for agent in cluster.agents:
                state = states[agent.address]
                assert state is not None
                assert by_target[f"127.0.0.1:{agent.metrics_port}"] == getattr(
                    state.version, expected), (metric, by_target)
                assert getattr(state.version, expected) == getattr(written.version, expected)
        leaders = await poll_query(base, "gossip_agent_is_leader == 1",
                                   what="the leader flag", done=lambda r: len(r) >= 1)
        assert [r["metric"]["instance"] for r in leaders] == [
            f"127.0.0.1:{agent_at(cluster, leader).metrics_port}"]
        await dashboard_queries_evaluate(base, nodes=[a.node for a in cluster.agents])


async def dashboard_queries_evaluate(base: str, *, nodes: list[str]) -> None:
    """Every query of k8s/monitoring/grafana-dashboard.json is valid PromQL to this Prometheus
    (Grafana's $__rate_interval made concrete), and the per-node join finds every node."""
    for expr in dashboard_exprs():
        await asyncio.to_thread(query, base, expr.replace("$__rate_interval", "30s"))
    per_node = next(e for e in dashboard_exprs() if "group_left(node)" in e
                    and "adopted_seq" in e)
    result = await poll_query(base, per_node, what="the dashboard's version-per-node query",
                              done=lambda r: len(r) == len(nodes))
    assert sorted(r["metric"]["node"] for r in result) == sorted(nodes)
    assert len({r["value"][1] for r in result}) == 1, f"versions differ: {result}"
    behind = await asyncio.to_thread(query, base, next(
        e for e in dashboard_exprs() if e.startswith("count(")))
    assert [float(r["value"][1]) for r in behind] == [0.0]
