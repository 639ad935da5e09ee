"""The real `gossip-agent` console script, run as a subprocess: queries and writes against
agents in this event loop (so the script runs as an asyncio subprocess, never a blocking one),
argument and configuration errors (exit 2), an unreachable target (exit 1, one line), and
`gossip-agent run` refusing a port or a pin directory another agent already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from gossip_agent import cli as cli_mod
from gossip_agent import config
from gossip_agent.dataplane import bpfmap
from gossip_agent.v1 import gossip_pb2 as pb
from lab import localcluster
from tests.conftest import require
from tests.integration import test_grpc_api as api

pytestmark = pytest.mark.integration

SCRIPT = str(Path(sys.executable).with_name("gossip-agent"))
CLI_DEADLINE = 20.0  # one CLI run: interpreter and grpc start-up dominate (well under 1 s)
START_DEADLINE = 15.0  # a `gossip-agent run` subprocess until it answers GetState
STOP_DEADLINE = 10.0  # SIGTERM until exit: the 2 s shutdown grace plus margin


@pytest.fixture(autouse=True)
def _script_installed() -> None:
    require(os.access(SCRIPT, os.X_OK), f"the gossip-agent console script at {SCRIPT}")


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any agent variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in config.NAMES}
    env.update(overrides)
    return env


async def cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Runs the console script without blocking the loop the in-process agents live in."""
    process = await asyncio.create_subprocess_exec(
        SCRIPT, *args, env=dict(env or clean_env()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(CLI_DEADLINE):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"gossip-agent {' '.join(args)} still running after {CLI_DEADLINE:g}s")
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def cli_sync(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """For tests with no agent in this process: a plain blocking run is fine there."""
    return subprocess.run([SCRIPT, *args], env=dict(env or clean_env()), capture_output=True,
                          text=True, timeout=CLI_DEADLINE, check=False)


# -- queries and writes against in-process agents ------------------------------------------------


async def test_state_peers_and_leader_print_readable_text_and_json(tmp_path: Path) -> None:
    async with api.running_agents(2, lease_dir=tmp_path) as agents:
        leader = await api.wait_for_leader(agents)
        follower = next(a for a in agents if a is not leader)
        target = api.address(follower)
        await api.set_service(target, "10.96.0.9", 2, "ns/seed")
        state = await api.get_state(target)
        version = f"{state.version.term}.{state.version.seq}"

        code, out, err = await cli("state", "--target", target)
        assert code == 0, err
        assert f"node        {follower.cfg.node.name}" in out
        assert f"version     {version}" in out
        assert f"leader      {leader.cfg.node.name}" in out
        assert "10.96.0.9" in out and "ns/seed" in out

        code, out, err = await cli("state", "--target", target, "--json")
        assert code == 0, err
        parsed = json.loads(out)
        assert parsed["node"] == follower.cfg.node.name
        assert (int(parsed["version"]["term"]), int(parsed["version"]["seq"])) == (
            state.version.term, state.version.seq)
        assert parsed["entries"] == [{"ip": "10.96.0.9", "replicas": 2, "name": "ns/seed"}]

        code, out, err = await cli("peers", "--target", target)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == ["ADDRESS", "NODE", "STATE", "LAST", "VERSION", "ORIGIN"]
        assert len(rows) == 1 and rows[0].split()[:2] == [api.address(leader),
                                                            leader.cfg.node.name]

        code, out, err = await cli("peers", "--target", target, "--json")
        assert code == 0, err
        assert [p["address"] for p in json.loads(out)["peers"]] == [api.address(leader)]

        code, out, err = await cli("leader", "--target", target)
        assert code == 0, err
        assert f"leader      {leader.cfg.node.name} {api.address(leader)}" in out
        assert "backend     bpffs" in out
        assert "this agent  follower" in out

        code, out, err = await cli("leader", "--target", api.address(leader), "--json")
        assert code == 0, err
        lease = json.loads(out)
        assert lease["is_self"] is True and lease["backend"] == "bpffs"
        assert lease["holder"].startswith(f"{leader.cfg.node.name}#")


async def test_set_then_state_shows_the_service_and_delete_removes_it(tmp_path: Path) -> None:
    async with api.running_agents(2, lease_dir=tmp_path) as agents:
        leader = await api.wait_for_leader(agents)
        follower = next(a for a in agents if a is not leader)
        target = api.address(follower)

        code, out, err = await cli("set", "--target", target, "10.96.0.20", "3",
                                   "--name", "ns/x")
        assert code == 0, err
        assert f"by {leader.cfg.node.name}" in out

        code, out, err = await cli("state", "--target", target, "--json")
        assert code == 0, err
        assert {"ip": "10.96.0.20", "replicas": 3, "name": "ns/x"} in json.loads(out)["entries"]

        code, out, err = await cli("delete", "--target", target, "10.96.0.20", "--json")
        assert code == 0, err
        assert json.loads(out)["leader"] == leader.cfg.node.name

        code, out, err = await cli("state", "--target", target, "--json")
        assert code == 0, err
        assert json.loads(out)["entries"] == []

        # Deleting an address the table does not hold succeeds (idempotent) and says so.
        code, out, err = await cli("delete", "--target", target, "10.96.0.20")
        assert code == 0, err
        assert "10.96.0.20 was not in the table" in out and "nothing to delete" in out


async def test_write_refused_by_the_agent_exits_1_with_the_status(tmp_path: Path) -> None:
    """A refusal only the agent can make (its map is full): a bad IP is refused locally."""
    async with api.running_agents(1, lease_dir=tmp_path, MAP_MAX_ENTRIES="1") as agents:
        await api.wait_for_leader(agents)
        target = api.address(agents[0])
        code, out, err = await cli("set", "--target", target, "10.96.0.1", "1")
        assert code == 0, err
        code, out, err = await cli("set", "--target", target, "10.96.0.2", "1")
        assert code == 1 and out == ""
        assert err.count("\n") == 1, err
        assert target in err and "RESOURCE_EXHAUSTED" in err


# -- argument errors and unreachable targets -----------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (("set", "--target", "x", "10.96.0.1", "notanumber"), "argument replicas"),
    (("set", "--target", "x", "10.96.0.1", "-1"), "argument replicas"),
    (("set", "--target", "x"), "the following arguments are required: ip, replicas"),
    (("delete",), "the following arguments are required: ip"),
    ((), "the following arguments are required: command"),
    (("frobnicate",), "invalid choice"),
    # Refused here, never sent: the target "x" would be a round trip and exit 1.
    (("set", "--target", "x", "10.96.0.300", "1"), "ip must be an IPv4 address"),
    (("set", "--target", "x", "::1", "1"), "ip must be an IPv4 address"),
    (("delete", "--target", "x", "not-an-ip"), "ip must be an IPv4 address"),
    (("state", "--target", "x", "--timeout", "0"), "--timeout must be more than 0 seconds"),
    (("peers", "--target", "x", "--timeout", "-1"), "--timeout must be more than 0 seconds"),
    (("leader", "--target", "x", "--timeout", "5s"), "--timeout is a number of seconds"),
])
def test_bad_arguments_exit_2_with_a_message(args: tuple[str, ...], message: str) -> None:
    result = cli_sync(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("given", "dialled"), [
    ("10.0.0.7", "10.0.0.7:50051"), ("gossip-agent.ns.svc", "gossip-agent.ns.svc:50051"),
    ("10.0.0.7:7000", "10.0.0.7:7000"), ("[::1]", "[::1]:50051"), ("::1", "[::1]:50051"),
    ("[::1]:7000", "[::1]:7000"),
])
def test_a_target_without_a_port_dials_the_agents_port_not_443(given: str, dialled: str) -> None:
    assert cli_mod.main_parser().parse_args(["state", "--target", given]).target == dialled


@pytest.mark.parametrize("command", [("state",), ("peers",), ("leader",),
                                     ("set", "10.96.0.1", "1"), ("delete", "10.96.0.1")])
def test_unreachable_target_exits_1_with_one_line_naming_it(command: tuple[str, ...]) -> None:
    port, = localcluster.free_ports(1)
    target = f"127.0.0.1:{port}"
    name, *rest = command
    result = cli_sync(name, "--target", target, "--timeout", "3", *rest)
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert target in lines[0] and "UNAVAILABLE" in lines[0]


# -- run: configuration ---------------------------------------------------------------------------


def test_run_with_invalid_configuration_exits_2_naming_every_bad_variable() -> None:
    env = clean_env(GOSSIP_INTERVAL="-1", PEERS="bad", DATAPLANE="nope",
                    LISTEN_ADDR="127.0.0.1:1")
    result = cli_sync("run", env=env)
    assert result.returncode == 2, result
    for variable in ("GOSSIP_INTERVAL", "PEERS", "DATAPLANE"):
        assert variable in result.stderr, f"{variable} not named in: {result.stderr}"
    assert "LISTEN_ADDR" not in result.stderr  # only the bad ones


def test_run_flags_are_validated_like_the_variables() -> None:
    result = cli_sync("run", "--gossip-interval", "-1", "--listen-addr", "127.0.0.1:1",
                      env=clean_env())
    assert result.returncode == 2, result
    assert "GOSSIP_INTERVAL" in result.stderr


@pytest.mark.parametrize(("variable", "value", "sentence"), [
    ("GOSSIP_INTERVAL", "1s", "must be a number of seconds"),
    ("FAIL_OPEN_AFTER", "ten", "must be a number of minutes"),
    ("MAP_MAX_ENTRIES", "1k", "must be an integer between"),
])
def test_a_value_that_is_not_a_number_is_named_with_its_unit(
    variable: str, value: str, sentence: str,
) -> None:
    result = cli_sync("run", env=clean_env(**{variable: value, "LISTEN_ADDR": "127.0.0.1:1"}))
    assert result.returncode == 2, result
    assert f"{variable}={value!r}: {sentence}" in result.stderr, result.stderr
    assert "could not convert" not in result.stderr and "invalid literal" not in result.stderr


def test_env_markdown_prints_the_variable_table() -> None:
    result = cli_sync("env", "--markdown")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| Variable |")
    rows = {line.split("|")[1].strip().strip("`") for line in lines[2:]}
    assert {"NODE_NAME", "BPF_PIN_DIR", "LISTEN_ADDR"} <= rows
    assert rows == set(config.NAMES)


# -- run: exclusivity -----------------------------------------------------------------------------


class Agents:
    """`gossip-agent run` subprocesses; every one is stopped (then killed) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    async def start(self, name: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
        with self.log_path(name).open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                SCRIPT, "run", env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.processes[name] = process
        return process

    async def run_to_exit(
        self, name: str, env: Mapping[str, str], *, timeout: float
    ) -> tuple[int, str]:
        process = await self.start(name, env)
        try:
            async with asyncio.timeout(timeout):
                code = await process.wait()
        except TimeoutError:
            pytest.fail(f"{name} still running after {timeout:g}s; expected it to exit")
        return code, self.log(name)

    async def stop_all(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                async with asyncio.timeout(STOP_DEADLINE):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def agent_processes(log_dir: Path) -> AsyncIterator[Agents]:
    agents = Agents(log_dir)
    try:
        yield agents
    finally:
        await agents.stop_all()


async def wait_serving(target: str, agents: Agents, name: str) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        (state,) = await localcluster.states([target], timeout=1.0)
        if isinstance(state, pb.GetStateResponse):
            return
        process = agents.processes[name]
        if process.returncode is not None:
            pytest.fail(f"{name} exited with {process.returncode}: {agents.log(name)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name} not serving on {target} after {START_DEADLINE:g}s")
        await asyncio.sleep(0.05)


async def test_second_run_on_the_same_port_exits_naming_listen_addr(tmp_path: Path) -> None:
    port, = localcluster.free_ports(1)
    target = f"127.0.0.1:{port}"

    def env(node: str) -> dict[str, str]:
        return clean_env(PROFILE="local", DATAPLANE="memory", NODE_NAME=node,
                         LISTEN_ADDR=target, BPF_PIN_DIR=str(tmp_path / node),
                         BPF_LEASE_DIR=str(tmp_path / node), LOG_LEVEL="warning")

    async with agent_processes(tmp_path) as agents:
        first = await agents.start("first", env("first"))
        await wait_serving(target, agents, "first")

        code, output = await agents.run_to_exit("second", env("second"), timeout=START_DEADLINE)
        assert code != 0, output
        assert f"LISTEN_ADDR {target}" in output
        assert "add_port" not in output, output  # grpc core's own error line, before ours
        assert first.returncode is None  # the first one keeps serving
        (state,) = await localcluster.states([target])
        assert state is not None and state.node == "first"


async def test_second_run_on_the_same_pin_dir_exits_1_naming_it(tmp_path: Path) -> None:
    ok, why = bpfmap.bpf_available()
    require(ok, f"bpffs and bpf() map creation: {why}")
    root = f"{api.BPF_TEST_ROOT}/{os.urandom(8).hex()}"
    pin_dir = f"{root}/shared"
    ports = localcluster.free_ports(2)

    def env(node: str, port: int) -> dict[str, str]:
        return clean_env(PROFILE="local", DATAPLANE="bpf", NODE_NAME=node,
                         LISTEN_ADDR=f"127.0.0.1:{port}", BPF_PIN_DIR=pin_dir,
                         BPF_LEASE_DIR=f"{root}/lease", LOG_LEVEL="warning")

    try:
        async with agent_processes(tmp_path) as agents:
            first = await agents.start("first", env("first", ports[0]))
            await wait_serving(f"127.0.0.1:{ports[0]}", agents, "first")

            code, output = await agents.run_to_exit("second", env("second", ports[1]),
                                                    timeout=START_DEADLINE)
            assert code == 1, output
            assert f"BPF_PIN_DIR {pin_dir}" in output and "already used" in output
            assert first.returncode is None
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(api.BPF_TEST_ROOT)
