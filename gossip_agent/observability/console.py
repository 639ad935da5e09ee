"""The aiomonitor console inside a running agent: the only module that imports aiomonitor.

    python -m aiomonitor.cli -H 127.0.0.1 -p $AIOMONITOR_PORT      (or: telnet 127.0.0.1 PORT)

aiomonitor's own commands (ps, where, cancel, signal, stacktrace, help) show and steer the
agent's named tasks; this module adds the agent's commands to aiomonitor's click group:

    state [-n N]        version, leader, hash, readiness and the first N entries
    peers               membership: state, last contact, version known, failures, origin
    lease               backend, holder, term, this agent's role, time left, timers
    gossip              counters: messages received by path and decision, adoptions,
                        rejections, pushes, exchanges, bytes
    dataplane [-n N]    map kind and path, entries in the map now, last apply time, repairs,
                        the last N map writes
    scaling             whether this node counts its traffic (or why it is blind), and on the
                        leader why each awake Service may or may not be scaled down
    anti-entropy [--peer ADDR]   run one anti-entropy round now (with a map check) and show it

aiomonitor serves the console (AIOMONITOR_PORT), a web UI (AIOMONITOR_WEBUI_PORT) and, only when
AIOMONITOR_PYTHON_CONSOLE=true, a Python REPL (AIOMONITOR_CONSOLE_PORT, opened by the `console`
command) from a thread of its own, all on AIOMONITOR_HOST (loopback by default). Commands run in
that thread, so each one reads the agent's state as a coroutine on the agent's event loop
(run_coroutine_threadsafe): between two loop steps, never half-way through an adoption.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiomonitor
import click
from aiomonitor.termui import commands as aiomonitor_commands

from gossip_agent.api import probes
from gossip_agent.core import scaling, snapshots
from gossip_agent.dataplane import enforcer as enforcer_mod
from gossip_agent.dataplane import events
from gossip_agent.gossip import antientropy
from gossip_agent.gossip import leader as leader_mod

# A command waits this long for the agent's loop; an anti-entropy round is bounded by
# RPC_TIMEOUT (at most 60 s by config), so this is a liveness bound, not a tuning knob.
COMMAND_TIMEOUT_SECONDS = 65.0


@dataclasses.dataclass(frozen=True)
class Ports:
    host: str
    console: int
    webui: int
    python: int
    python_enabled: bool


class AgentMonitor(aiomonitor.Monitor):
    """aiomonitor's Monitor that knows the agent its commands inspect."""

    failure: BaseException | None = None

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, leadership: leader_mod.Leadership,
        timers: dict[str, float], scale_events: events.EventHub,
        enforcer: enforcer_mod.Enforcer | None, scaling: scaling.Status, **monitor: Any,
    ) -> None:
        """`monitor`: aiomonitor.Monitor's own keywords (ports, host, locals)."""
        self.leadership = leadership
        self.timers = timers
        self.scale_events = scale_events
        self.enforcer = enforcer
        self.scaling = scaling
        super().__init__(loop, **monitor)

    def _ui_main(self) -> None:
        # aiomonitor's thread: if it dies before it is up (web UI port taken), start() would
        # wait for it forever; record why and let start() return instead.
        try:
            super()._ui_main()
        except BaseException as exc:
            self.failure = exc
            self._ui_started.set()

    def on_agent_loop(self, make: Callable[[], Coroutine[Any, Any, str]]) -> str:
        future = asyncio.run_coroutine_threadsafe(make(), self._monitored_loop)
        return future.result(COMMAND_TIMEOUT_SECONDS)


def start(
    *, leadership: leader_mod.Leadership, ports: Ports, timers: dict[str, float],
    scale_events: events.EventHub, enforcer: enforcer_mod.Enforcer | None,
    scaling: scaling.Status,
) -> AgentMonitor:
    """Starts the console thread on the running loop; close() it at shutdown. Raises OSError
    naming the variable when a port cannot be bound."""
    _check_free(ports.host, ports.console, "AIOMONITOR_PORT")
    _check_free(ports.host, ports.webui, "AIOMONITOR_WEBUI_PORT")
    monitor = AgentMonitor(
        asyncio.get_running_loop(),
        host=ports.host,
        termui_port=ports.console,
        webui_port=ports.webui,
        console_port=ports.python,
        console_enabled=ports.python_enabled,
        locals={"leadership": leadership, "engine": leadership.engine} if ports.python_enabled
        else {},
        leadership=leadership, timers=timers, scale_events=scale_events, enforcer=enforcer,
        scaling=scaling,
    )
    monitor.start()
    if monitor.failure is not None:
        raise OSError(f"aiomonitor console on {ports.host}: {monitor.failure}")
    return monitor


def _check_free(host: str, port: int, variable: str) -> None:
    """aiomonitor binds its telnet port inside a task of its thread and only logs a failure,
    and binds the web UI with SO_REUSEPORT (silently sharing a taken port): check first, so a
    taken port stops the agent with a sentence instead of a console that is not there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # SO_REUSEADDR as aiomonitor's own listener: old connections in TIME_WAIT are fine,
        # another listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"{variable} {port} on {host}: cannot listen: {exc}") from exc


def _command(
    name: str, *options: Callable[[Any], Any], aliases: tuple[str, ...] = ()
) -> Callable[[Callable[..., None]], Any]:
    """Registers an agent command in aiomonitor's click group, with aiomonitor's --help and
    its command-done signal (the console waits for it before the next prompt)."""

    def register(function: Callable[..., None]) -> Any:
        command: Any = aiomonitor_commands.auto_command_done(function)
        command = aiomonitor_commands.custom_help_option(command)
        for option in reversed(options):
            command = option(command)
        extra = {"aliases": list(aliases)} if aliases else {}
        return aiomonitor.monitor_cli.command(name=name, **extra)(command)

    return register


def _run(ctx: click.Context, make: Callable[[AgentMonitor], Coroutine[Any, Any, str]]) -> None:
    monitor: AgentMonitor = ctx.obj
    try:
        click.echo(monitor.on_agent_loop(lambda: make(monitor)))
    except Exception as exc:  # the console must survive any failure of one command
        aiomonitor_commands.print_fail(f"failed: {exc!r}")


# -- state ----------------------------------------------------------------------------------


@_command(
    "state",
    click.option("-n", "limit", default=20, show_default=True, help="entries to list"),
)
def do_state(ctx: click.Context, limit: int) -> None:
    """Version, leader and entries of the snapshot held"""
    _run(ctx, lambda m: render_state(m.leadership, limit=limit))


async def render_state(leadership: leader_mod.Leadership, *, limit: int) -> str:
    engine = leadership.engine
    held = engine.held.snapshot
    names = held.name_map() if held is not None else {}
    table = engine.table
    ready = probes.why_ready(engine)
    lines = [
        _row("node", engine.node),
        _row("version", str(engine.held.version)),
        _row("leader", f"{engine.leader_node or '-'} {engine.leader_address}".rstrip()),
        _row("hash", engine.held.content_hash.hex()[:16] or "-"),
        _row("complete", "yes" if engine.held.complete else "no"),
        _row("ready", f"yes ({ready})" if ready else "no (waiting for a snapshot or exchange)"),
        _row("max term seen", str(engine.max_term_seen)),
        _row("entries", str(len(table))),
    ]
    for key in sorted(table)[:limit]:
        lines.append(f"  {snapshots.format_ip(key):15} {table[key]:>8}  {names.get(key, '')}")
    if len(table) > limit:
        lines.append(f"  ... {len(table) - limit} more (state -n {len(table)})")
    return "\n".join(lines)


def _row(label: str, value: str) -> str:
    return f"{label:14}{value}"


# -- peers ----------------------------------------------------------------------------------


@_command("peers")
def do_peers(ctx: click.Context) -> None:
    """Known peers: state, last contact, version known"""
    _run(ctx, lambda m: render_peers(m.leadership))


async def render_peers(leadership: leader_mod.Leadership) -> str:
    engine = leadership.engine
    now = engine.clock()
    header = (f"{'ADDRESS':22} {'NODE':14} {'STATE':8} {'LAST CONTACT':>13} {'VERSION':>9} "
              f"{'FAILURES':>8} ORIGIN")
    lines = [header]
    for peer in sorted(engine.membership.peers(), key=lambda p: p.address):
        contact = "never" if peer.last_contact is None else f"{now - peer.last_contact:.1f}s ago"
        lines.append(f"{peer.address:22} {peer.node or '-':14} {peer.state.value:8} "
                     f"{contact:>13} {str(peer.version_known):>9} {peer.failures:>8} "
                     f"{peer.origin}")
    lines.append(f"{len(lines) - 1} peers")
    return "\n".join(lines)


# -- lease ----------------------------------------------------------------------------------


@_command("lease")
def do_lease(ctx: click.Context) -> None:
    """The leader lease: backend, holder, term, time left"""
    _run(ctx, lambda m: render_lease(m.leadership, m.timers))


async def render_lease(leadership: leader_mod.Leadership, timers: dict[str, float]) -> str:
    lease = leadership.lease
    try:
        record = await lease.read()
        holder = f"{record.holder} (node {record.node})" if record and record.holder else "-"
        term = str(record.term) if record else "-"
    except Exception as exc:  # a backend failure is part of what the operator needs to see
        holder, term = f"unreadable: {exc}", "-"
    if leadership.leading:
        role = f"leader at term {leadership.term}"
    elif leadership.holds_lease:
        role = f"taking office at term {leadership.term}"
    else:
        role = "follower"
    lines = [
        _row("backend", lease.backend),
        _row("holder", holder),
        _row("term", term),
        _row("this agent", role),
        _row("refusal", leadership.refusal or "-"),
        _row("lease error", leadership.lease_error or "-"),
        _row("time left", _time_left(lease.backend)),
        _row("renew every", f"{timers.get('renew_interval', 0):g}s (while leading)"),
        _row("retry every", f"{timers.get('retry_interval', 0):g}s (while following)"),
    ]
    if lease.note:
        lines.append(_row("note", lease.note))
    return "\n".join(lines)


def _time_left(backend: str) -> str:
    if backend == "bpffs":
        return "no expiry: the flock is held until released or its holder dies"
    return "-"


# -- gossip ---------------------------------------------------------------------------------


@_command("gossip")
def do_gossip(ctx: click.Context) -> None:
    """Gossip counters: pushes, pulls, adoptions, rejections, bytes"""
    _run(ctx, lambda m: render_gossip(m.leadership))


async def render_gossip(leadership: leader_mod.Leadership) -> str:
    stats = leadership.engine.stats
    adopting = {d.value for d in snapshots.Decision if d.adopts}
    adoptions = sum(n for key, n in stats.received.items()
                    if key.partition(":")[2] in adopting)
    received = " ".join(f"{key}={n}" for key, n in sorted(stats.received.items())) or "-"
    lines = [
        _row("adoptions", str(adoptions)),
        _row("received", received),
        _row("rejections", f"invalid={stats.rejected['invalid']}"),
        _row("pushes sent", f"ok={stats.pushes_sent} failed={stats.push_failures}"),
        _row("pulls", str(stats.pulls)),
        _row("exchanges", f"ok={stats.exchanges_ok} failed={stats.exchanges_failed} "
                          f"snapshots-sent={stats.pushes_in_exchange}"),
        _row("bytes in", f"push={stats.bytes_received['push']} "
                         f"push-port={stats.bytes_received['push-port']} "
                         f"exchange={stats.bytes_received['exchange']}"),
        _row("bytes out", f"push={stats.bytes_sent['push']}"),
    ]
    return "\n".join(lines)


# -- dataplane ------------------------------------------------------------------------------


@_command(
    "dataplane",
    click.option("-n", "limit", default=5, show_default=True, help="recent map writes to list"),
)
def do_dataplane(ctx: click.Context, limit: int) -> None:
    """The map and XDP program: entries, last apply, interfaces, events, recent writes"""
    _run(ctx, lambda m: render_dataplane(m, limit=limit))


async def render_dataplane(monitor: AgentMonitor, *, limit: int) -> str:
    engine = monitor.leadership.engine
    plane = engine.dataplane
    try:
        in_map = str(len(plane.read()))
    except Exception as exc:  # show the failure; the console stays up
        in_map = f"unreadable: {exc}"
    lines = [
        _row("kind", plane.kind + ("" if plane.kind == "bpf" else " (nothing enforced)")),
        _row("map", f"{plane.location or '-'} (max {plane.max_entries})"),
        _row("entries", f"{in_map} in the map, {len(engine.table)} in the snapshot held"),
        _row("last apply", f"{engine.stats.last_apply_seconds * 1000:.3f} ms"),
        _row("repairs", f"{engine.stats.repairs} entries rewritten"),
        *_xdp_rows(monitor.enforcer),
        _row("scale events", f"{monitor.scale_events.published} read from the program, "
                             f"{monitor.scale_events.dropped} dropped by slow readers, "
                             f"{monitor.scale_events.subscribers} readers"),
        f"last {limit} map writes:",
    ]
    now_ns = time.monotonic_ns()
    for event in list(engine.history)[-limit:][::-1]:
        ago = ("-" if not event.applied_monotonic_ns
               else f"{(now_ns - event.applied_monotonic_ns) / 1e9:.1f}s ago")
        lines.append(f"  {str(event.version):>9} {event.entry_count:>6} entries  "
                     f"via {event.via:9} {ago}")
    return "\n".join(lines)


def _xdp_rows(enforcer: enforcer_mod.Enforcer | None) -> list[str]:
    if enforcer is None or enforcer.program is None:
        return [_row("program", "none (XDP_INTERFACES is empty: maps only)")]
    rows = [_row("program", f"id {enforcer.program.prog_id} at {enforcer.program.pin_path}")]
    for state in sorted(enforcer.interfaces.values(), key=lambda s: s.name):
        detail = f" ({state.detail})" if state.detail else ""
        rows.append(_row("  interface", f"{state.name} {state.status} {state.mode}{detail}"))
    return rows


# -- scaling --------------------------------------------------------------------------------


@_command("scaling")
def do_scaling(ctx: click.Context) -> None:
    """Whether this node counts its traffic, and the leader's scale-down verdicts"""
    _run(ctx, render_scaling)


async def render_scaling(monitor: AgentMonitor) -> str:
    status = monitor.scaling
    lines = [_row("this node", f"blind: {status.blind}" if status.blind
                  else "counts its traffic")]
    if not monitor.leadership.leading:
        lines.append(_row("verdicts", "none here: the leader decides scale-downs"))
    elif not status.outlooks:
        lines.append(_row("verdicts", "no awake opted-in Service (or no round yet)"))
    for outlook in status.outlooks:
        lines.append(f"  {status.describe(outlook)}")
    return "\n".join(lines)


# -- anti-entropy now -----------------------------------------------------------------------


@_command(
    "anti-entropy",
    click.option("--peer", default="", help="exchange with this peer address (default: random)"),
    aliases=("ae",),
)
def do_anti_entropy(ctx: click.Context, peer: str) -> None:
    """Run one anti-entropy round now and show what it did"""
    _run(ctx, lambda m: anti_entropy_now(m.leadership, peer=peer))


async def anti_entropy_now(leadership: leader_mod.Leadership, *, peer: str) -> str:
    engine = leadership.engine
    before = engine.held.version
    if peer:
        results = {peer: await engine.exchange_with(peer)}
    else:
        results = await antientropy.run_round(engine, rng=random.Random(), repair=True)
    if not results:
        return f"no ready peer to exchange with; version {before}"
    lines = [f"exchange with {address}: {'ok' if ok else 'failed'}"
             for address, ok in results.items()]
    lines.append(f"version {before} -> {engine.held.version}")
    return "\n".join(lines)
