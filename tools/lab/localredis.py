"""Runs redis-server processes on this machine: free loopback port, own temp dir, killed by PID.

Like localcluster, for local runs, the benchmark (tools/failover.py) and tests: the
`redis_server` fixture in tests/conftest.py starts one per test; `RedisServer(...)` starts more
(replicas, a second cluster). It never imports redis-py (it speaks RESP PING itself), so the
rule that only leases.redis imports redis holds. No persistence unless asked
(`--save "" --appendonly no`): a restart then loses every key, exactly the case the lease must
survive.

`netns`: run the server inside a network namespace (`ip netns exec`), for tests that slow the
path to Redis with tc netem without touching the host's loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from lab import localcluster

START_TIMEOUT = 10.0  # seconds for redis-server to answer PING (it takes ~10 ms when idle)


def available() -> bool:
    return shutil.which("redis-server") is not None


def ping(host: str, port: int, *, password: str = "", timeout: float = 0.5) -> bool:
    """A raw RESP PING (AUTH first if a password is set): no client library involved."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server. start() waits until it answers; kill() is SIGKILL by PID."""

    def __init__(
        self, *, port: int | None = None, host: str = "127.0.0.1", password: str = "",
        netns: str = "", extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or localcluster.free_ports(1)[0]
        self.password = password
        self.netns = netns
        self.extra_args = list(extra_args)
        self.dir = tempfile.mkdtemp(prefix="gossip-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        args = [
            "redis-server", "--port", str(self.port), "--bind", self.host,
            "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", self.log_path, "--protected-mode", "no",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        args += self.extra_args
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else args

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if ping(self.host, self.port, password=self.password):
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server on {self.address} did not answer PING in "
                           f"{START_TIMEOUT:g}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL by PID (never by name: other tests run their own servers)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> None:
        """Kill and start again on the same port: without persistence every key is gone."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as handle:
            return b"".join(handle.readlines()[-lines:]).decode(errors="replace")
        return "(no log)"


class SentinelServer:
    """One redis-sentinel monitoring `master` as `name` (quorum 1: enough for one machine).

    Timers are short so a failover completes in seconds: the master is judged down after
    down_after_ms without answers, and a failed failover is retried after 5 s.
    """

    def __init__(self, *, master: RedisServer, name: str = "mymaster",
                 down_after_ms: int = 1000) -> None:
        self.host = "127.0.0.1"
        self.port = localcluster.free_ports(1)[0]
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="gossip-sentinel-")
        self.conf = os.path.join(self.dir, "sentinel.conf")  # sentinel rewrites it: writable
        self.log_path = os.path.join(self.dir, "sentinel.log")
        auth = (f"sentinel auth-pass {name} {master.password}\n" if master.password else "")
        with open(self.conf, "w", encoding="utf-8") as conf:
            conf.write(
                f"port {self.port}\nbind {self.host}\ndir {self.dir}\n"
                f"logfile {self.log_path}\nprotected-mode no\n"
                f"sentinel monitor {name} {master.host} {master.port} 1\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} 5000\n{auth}")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> SentinelServer:
        self.process = subprocess.Popen(["redis-sentinel", self.conf],  # Debian redis-sentinel
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.cleanup()
                raise RuntimeError(f"redis-sentinel on {self.address} did not start")
            time.sleep(0.02)
        return self

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
