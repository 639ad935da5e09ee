"""Wires what operators look through into one agent: /metrics and the aiomonitor console.

The agent holds one Observer. Its `telemetry` goes to the engine (the one small object the
engine and the leader report events to): Prometheus metrics when METRICS_PORT is set, the
in-memory recorder otherwise. prometheus_client and aiomonitor are imported only when their
feature is on, so an agent without them starts no faster or slower than before them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gossip_agent import config as config_mod
from gossip_agent.core import scaling as scaling_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.observability import telemetry as telemetry_mod

if TYPE_CHECKING:
    from gossip_agent.dataplane import enforcer as enforcer_mod
    from gossip_agent.dataplane import events
    from gossip_agent.observability import console, metrics

log = logging.getLogger("gossip_agent")


def name_unnamed_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks created without a name (grpc's server loop and per-call tasks, aiohttp's) get
    "<package>.<coroutine>" (or "AioServer._server_main_loop" for compiled code) instead of
    "Task-17", so every task in the console's `ps` says what
    it is. Named tasks keep their names (create_task names the task after the factory)."""

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        qualname = getattr(coro, "__qualname__", "")
        package = _package_of(coro)
        if qualname:
            # Compiled coroutines (grpc's Cython server) report a private module name.
            task.set_name(qualname if package.startswith("_") else f"{package}.{qualname}")
        return task

    loop.set_task_factory(factory)


def _package_of(coro: Any) -> str:
    """The top-level package the coroutine's code lives in (grpc, aiohttp, gossip_agent)."""
    frame = getattr(coro, "cr_frame", None)
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return str(module or type(coro).__module__).partition(".")[0]


class Observer:
    def __init__(self, cfg: config_mod.Config) -> None:
        self._cfg = cfg
        self.metrics: metrics.Metrics | None = None
        self.metrics_server: metrics.MetricsServer | None = None
        self.monitor: console.AgentMonitor | None = None
        if cfg.observe.metrics_port:
            from gossip_agent.observability import metrics

            self.metrics = metrics.Metrics()
        self.telemetry: telemetry_mod.Telemetry = self.metrics or telemetry_mod.Recorder()

    async def start(
        self, *, leadership: leader_mod.Leadership, scale_events: events.EventHub,
        enforcer: enforcer_mod.Enforcer | None, scaling: scaling_mod.Status,
    ) -> None:
        """scale_events and enforcer: the node's XDP side (events read, interfaces, program);
        scaling: whether this node is blind and the leader's scale-down verdicts."""
        observe = self._cfg.observe
        if self.metrics is not None:
            from gossip_agent.observability import metrics

            self.metrics.watch(leadership=leadership, node=self._cfg.node.name,
                               scale_events=scale_events, enforcer=enforcer, scaling=scaling)
            server = metrics.MetricsServer(self.metrics)
            await server.start(host=observe.metrics_host, port=observe.metrics_port)
            self.metrics_server = server
        if observe.monitor_port:
            self.monitor = self._start_console(leadership, scale_events, enforcer, scaling)

    def _start_console(
        self, leadership: leader_mod.Leadership, scale_events: events.EventHub,
        enforcer: enforcer_mod.Enforcer | None, scaling: scaling_mod.Status,
    ) -> console.AgentMonitor:
        from gossip_agent.observability import console

        observe = self._cfg.observe
        ports = console.Ports(
            host=observe.monitor_host, console=observe.monitor_port,
            webui=observe.monitor_webui_port, python=observe.monitor_console_port,
            python_enabled=observe.python_console,
        )
        monitor = console.start(leadership=leadership, ports=ports, scale_events=scale_events,
                                enforcer=enforcer, scaling=scaling, timers={
            "renew_interval": self._cfg.lease.renew_interval,
            "retry_interval": self._cfg.lease.retry_interval,
        })
        log.info("aiomonitor console at %s:%d (web UI :%d, Python console %s)", ports.host,
                 ports.console, ports.webui,
                 f":{ports.python}" if ports.python_enabled else "disabled")
        return monitor

    async def stop(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.monitor is not None:
            # close() joins the console's thread: off the loop, which that thread may wait on.
            await asyncio.to_thread(self.monitor.close)
            self.monitor = None
