"""One agent process: wiring and lifecycle.

Start-up: open the data plane (owner lock on the pin directory, reuse pinned maps), recover the
version floor, bind the gRPC port (fails fast when taken), then start the named tasks:
`gossip.anti-entropy`, `lease.elect`, `source.<kind>`, `discovery.dns` (when PEER_SERVICE),
`scaleup.read` and `scaleup.report` (scale-up requests to the leader: gossip_agent/scaling).
Only then is the agent up (dataplane/liveness.py), and the XDP heartbeat's probation begins:
its first refresh comes only once the agent has been up and alive for the probation
(dataplane/enforcer.py), so a process that dies during start-up or soon after cannot keep the
node enforcing, however often it is restarted.

Shutdown on SIGTERM/SIGINT, in this order: health NOT_SERVING (probes and peers stop sending),
release the lease (a follower takes over at once), stop the server with a grace period, close
the data plane WITHOUT touching the maps (the XDP program keeps enforcing the last state).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
from collections.abc import Callable
from typing import Any

import grpc.aio
from grpc_health.v1 import health

from gossip_agent import config as config_mod
from gossip_agent import errors
from gossip_agent.api import dataplane as dataplane_api
from gossip_agent.api import probes, pushport
from gossip_agent.api import scale as scale_api
from gossip_agent.api import server as server_mod
from gossip_agent.api import state as state_mod
from gossip_agent.api import streams as streams_mod
from gossip_agent.core import beats as beats_mod
from gossip_agent.core import peers
from gossip_agent.dataplane import base as dataplane_base
from gossip_agent.dataplane import enforcer as enforcer_mod
from gossip_agent.dataplane import events as dataplane_events
from gossip_agent.dataplane import liveness as liveness_mod
from gossip_agent.dataplane import memory as memory_dataplane
from gossip_agent.gossip import antientropy, base, discovery, transport
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import mirror as mirror_mod
from gossip_agent.gossip import proof as proof_mod
from gossip_agent.leases import base as lease_base
from gossip_agent.observability import observe
from gossip_agent.observability import telemetry as telemetry_mod
from gossip_agent.scaling import inbox
from gossip_agent.scaling import loop as scaling_loop
from gossip_agent.scaling import reporter as reporter_mod
from gossip_agent.scaling import scaler as scaler_service
from gossip_agent.scaling import scaleups as scaleup
from gossip_agent.security import setup as security_setup
from gossip_agent.sources import base as source_base
from gossip_agent.sources import file as file_source
from gossip_agent.sources import memory as api_source

log = logging.getLogger("gossip_agent")

SHUTDOWN_GRACE_SECONDS = 2.0
# The loops the XDP heartbeat vouches for (liveness.py): electing or renewing, and reading the
# program's scale-up events. Their end, however it comes, stops the heartbeat.
WATCHED_TASKS = frozenset({"lease.elect", "xdp.events"})


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def open_dataplane(cfg: config_mod.DataPlaneConfig) -> dataplane_base.DataPlane:
    """The pinned BPF maps, or memory where allowed and BPF is unavailable (said loudly)."""
    if cfg.mode == "memory":
        log.warning("DATAPLANE=memory: nothing is enforced on this node")
        return memory_dataplane.MemoryDataPlane(max_entries=cfg.max_entries)
    from gossip_agent.dataplane import bpfmap  # bcc is imported only when BPF is wanted

    available, reason = bpfmap.bpf_available(cfg.pin_dir)
    if not available and cfg.mode == "auto":
        log.warning("BPF unavailable (%s): using an in-memory map, nothing is enforced", reason)
        return memory_dataplane.MemoryDataPlane(max_entries=cfg.max_entries)
    if not available:
        raise errors.DataPlaneError(f"BPF unavailable: {reason} (DATAPLANE=bpf)")
    return bpfmap.open_pinned(pin_dir=cfg.pin_dir, max_entries=cfg.max_entries)


def open_enforcer(
    cfg: config_mod.Config, plane: dataplane_base.DataPlane, hub: dataplane_events.EventHub,
    liveness: liveness_mod.Liveness,
) -> enforcer_mod.Enforcer | None:
    """The XDP program, heartbeat and event reader (dataplane/enforcer.py) for a BPF data
    plane; None for the memory one (nothing to enforce). The heartbeat vouches for
    `liveness`."""
    from gossip_agent.dataplane import bpfmap, interfaces

    if not isinstance(plane, bpfmap.BpfDataPlane):
        if cfg.xdp.interfaces:
            log.warning("XDP_INTERFACES is ignored: no BPF data plane, no program")
        return None
    return enforcer_mod.Enforcer.build(
        plane=plane, patterns=interfaces.parse_patterns(cfg.xdp.interfaces),
        mode=cfg.xdp.mode, fail_open_after=cfg.xdp.fail_open_after, hub=hub,
        liveness=liveness)


def open_lease(cfg: config_mod.Config, *, beats: beats_mod.BeatBoard | None = None
               ) -> lease_base.Lease:
    if cfg.lease.backend == "redis":
        return open_redis_lease(cfg)
    if cfg.lease.backend in config_mod.KUBE_BACKENDS:
        from gossip_agent.leases import kube  # the kubernetes client only when it is used

        name = cfg.lease.configmap if cfg.lease.backend == "configmap" else cfg.lease.lease_name
        return kube.open_lease(
            kind=cfg.lease.backend, namespace=cfg.lease.namespace, name=name,
            node=cfg.node.name, beats=beats or beats_mod.BeatBoard(), timing=kube.KubeTiming(
                duration=cfg.lease.duration, renew_deadline=cfg.lease.renew_deadline,
                retry_interval=cfg.lease.retry_interval,
                renew_interval=cfg.lease.renew_interval),
            configmap=cfg.lease.configmap, mirror_interval=cfg.lease.mirror_interval)
    from gossip_agent.leases import bpffs

    lease = bpffs.BpffsLease(lease_dir=cfg.lease.lease_dir, node=cfg.node.name)
    if lease.note:
        log.warning("lease: %s", lease.note)
    return lease


def open_redis_lease(cfg: config_mod.Config) -> lease_base.Lease:
    from gossip_agent.leases import redis as redis_lease  # redis is imported only when used

    assert cfg.lease.redis is not None  # config sets it for the redis backend
    settings = redis_lease.Settings(
        url=cfg.lease.redis.url, key_prefix=cfg.lease.redis.key_prefix, ttl=cfg.lease.ttl,
        renew_deadline=cfg.lease.renew_deadline, timeout=cfg.lease.redis.timeout,
        retry_base=cfg.lease.retry_interval, retry_cap=cfg.lease.ttl,
        sentinels=cfg.lease.redis.sentinels, sentinel_master=cfg.lease.redis.sentinel_master,
    )
    return redis_lease.RedisLease(settings=settings, node=cfg.node.name)


def lease_location(cfg: config_mod.Config) -> str:
    """Where the lease lives, for the start-up log line (no password)."""
    redis = cfg.lease.redis
    if cfg.lease.backend in ("configmap", "lease"):
        name = cfg.lease.configmap if cfg.lease.backend == "configmap" else cfg.lease.lease_name
        return f"{cfg.lease.backend} {cfg.lease.namespace or '(the pod namespace)'}/{name}"
    if redis is None:
        return cfg.lease.lease_dir
    if redis.sentinels:
        return f"master {redis.sentinel_master} of sentinels {','.join(redis.sentinels)}"
    from gossip_agent.leases import redis as redis_lease

    return redis_lease.describe_url(redis.url)


def open_scaler(
    cfg: config_mod.Config, *, engine: engine_mod.Engine, leadership: leader_mod.Leadership,
    source: source_base.Source,
) -> scaling_loop.Scaler | None:
    """The leader's scaler with SOURCE=kubernetes (the kubernetes client is imported only
    then), over the Services that source watches; None otherwise."""
    if cfg.source.kind != "kubernetes":
        return None
    from gossip_agent.scaling import kube
    from gossip_agent.sources import kubernetes

    assert isinstance(source, kubernetes.KubernetesSource)
    # The client is created on the scaler's first use, as the source's is.
    return scaler_service.build_scaler(
        cfg=cfg.scaling, engine=engine, leadership=leadership, source=source,
        workloads=kube.KubeWorkloads(api_factory=source.api))


def open_scale_ups(
    cfg: config_mod.Config, *, engine: engine_mod.Engine, leadership: leader_mod.Leadership,
    source: source_base.Source, channels: transport.GrpcTransport,
    events: dataplane_events.EventHub, rng: random.Random, delegate: inbox.Delegate | None,
) -> scaleup.ScaleUps:
    """Scale-up requests to the leader, and the leader's inbox handing them to `delegate`."""
    return scaleup.ScaleUps(
        engine=engine, leadership=leadership, source=source, channels=channels,
        events=events, rng=rng, delegate=delegate,
        backoff=peers.BackoffPolicy(base=cfg.gossip.backoff_base, cap=cfg.gossip.backoff_cap),
        rpc_timeout=cfg.gossip.rpc_timeout)


def open_scaling(
    cfg: config_mod.Config, *, reporter: reporter_mod.Reporter,
    scaler: scaling_loop.Scaler | None, enforcer: enforcer_mod.Enforcer | None,
    engine: engine_mod.Engine,
) -> scaler_service.Scaling:
    """Traffic summaries where an XDP program counts packets, and the scaler's loop."""
    return scaler_service.Scaling(
        cfg=cfg.scaling, reporter=reporter, scaler=scaler,
        stats=enforcer.plane.stats if enforcer is not None else None,
        blind=blindness_of(enforcer),
        # The held table's keys, not a read of the map: the map holds the same keys (map
        # repair puts hand edits back) and reading 1024 entries every interval cost more
        # than the whole summary.
        listed=lambda: engine.table.keys())


def blindness_of(enforcer: enforcer_mod.Enforcer | None) -> Callable[[], str]:
    """Why this node cannot count its traffic (scaler.service's `blind`)."""
    if enforcer is None:
        return lambda: f"{enforcer_mod.NO_PROGRAM}: no BPF data plane, nothing is enforced"
    return enforcer.blindness


def open_source(cfg: config_mod.Config) -> source_base.Source:
    if cfg.source.kind == "kubernetes":
        from gossip_agent.sources import kubernetes  # the client is imported only when used

        return kubernetes.KubernetesSource(
            namespaces=cfg.source.namespaces, watch_timeout=cfg.source.watch_timeout,
            backoff_base=cfg.source.backoff_base, backoff_cap=cfg.source.backoff_cap,
            coalesce_window=cfg.gossip.coalesce_window, max_entries=cfg.dataplane.max_entries,
            node=cfg.node.name,
        )
    if cfg.source.kind == "file":
        return file_source.FileSource(
            path=cfg.source.file, poll_interval=cfg.source.poll_interval,
            max_entries=cfg.dataplane.max_entries,
        )
    return api_source.ApiSource()


def open_transport(cfg: config_mod.Config, security: security_setup.Security
                   ) -> transport.GrpcTransport:
    return transport.GrpcTransport(
        max_message_bytes=cfg.gossip.max_message_bytes, reconnect_cap=cfg.gossip.backoff_cap,
        factory=security.channels, metadata=security.call_metadata)


def open_membership(cfg: config_mod.Config, rng: random.Random) -> peers.Membership:
    return peers.Membership(
        self_address=cfg.node.advertise_addr,
        policy=peers.BackoffPolicy(base=cfg.gossip.backoff_base, cap=cfg.gossip.backoff_cap),
        rng=rng)


def open_engine(
    cfg: config_mod.Config, *, plane: dataplane_base.DataPlane, channels: base.Transport,
    membership: peers.Membership, lease: lease_base.Lease, beats: beats_mod.BeatBoard,
    telemetry: telemetry_mod.Telemetry, rng: random.Random,
) -> engine_mod.Engine:
    """The gossip engine, proving each new (term, leader) pair against the lease record (and
    the backend's mirror, where it keeps one) before adopting under it."""
    proof = proof_mod.TermProof(
        lease=lease,
        mirrored=mirror_mod.pair_of(lease) if isinstance(lease, mirror_mod.Sink) else None)
    return engine_mod.Engine(
        node=cfg.node.name, address=cfg.node.advertise_addr, boot_id=read_boot_id(),
        dataplane=plane, transport=channels, membership=membership,
        rpc_timeout=cfg.gossip.rpc_timeout, rng=rng, beats=beats, telemetry=telemetry,
        proof=proof)


def open_leadership(
    cfg: config_mod.Config, *, engine: engine_mod.Engine, lease: lease_base.Lease,
    source: source_base.Source,
) -> leader_mod.Leadership:
    """Election and publishing; a LeaderOnly source watches only while this agent leads."""
    leadership = leader_mod.Leadership(
        engine=engine, lease=lease, source=source,
        timing=leader_mod.Timing(
            retry_interval=cfg.lease.retry_interval,
            renew_interval=cfg.lease.renew_interval,
            coalesce_window=cfg.gossip.coalesce_window,
            write_ack_timeout=cfg.gossip.write_ack_timeout,
        ),
    )
    if isinstance(source, source_base.LeaderOnly):
        source.follow(leadership)
    return leadership


def open_push_port(
    cfg: config_mod.Config, engine: engine_mod.Engine, security: security_setup.Security
) -> pushport.PushPort | None:
    """PUSH_PORT, bound now (a port in use fails start-up here), or None when off."""
    if cfg.gossip.push_port is None:
        return None
    host, _ = config_mod.parse_hostport(cfg.node.listen_addr)
    return pushport.PushPort(
        engine=engine, host=host, port=cfg.gossip.push_port,
        limit=cfg.gossip.max_message_bytes, policy=security.policy,
        cluster_id=cfg.security.cluster_id, context=security.push_context())


def open_health_server(cfg: config_mod.Config, servicer: server_mod.HealthServicer
                       ) -> grpc.aio.Server | None:
    """HEALTH_PORT: the probes' plaintext health service, bound now; None when off."""
    if not cfg.security.health_port:
        return None
    server = server_mod.build_health_only(servicer)
    host, _ = config_mod.parse_hostport(cfg.node.listen_addr)
    server_mod.bind(server, config_mod.join_hostport(host, cfg.security.health_port))
    return server


class Agent:
    """Everything one agent owns; start() and stop() are the only lifecycle calls.

    reports: who the leader's inbox hands node reports to besides the source
    (scaling.inbox.Delegate); by default the scaler that SOURCE=kubernetes builds, none with
    other sources. Tests and the lab pass their own to watch what the leader takes."""

    def __init__(self, cfg: config_mod.Config, *, rng: random.Random | None = None,
                 reports: inbox.Delegate | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.Random()
        self.dataplane = open_dataplane(cfg.dataplane)
        # Scale-up events from the XDP program: `with agent.scale_events.subscribe() as s`.
        self.scale_events = dataplane_events.EventHub()
        self.enforcer: enforcer_mod.Enforcer | None = None
        self.liveness = liveness_mod.Liveness()  # what the XDP heartbeat vouches for
        try:
            self.enforcer = open_enforcer(cfg, self.dataplane, self.scale_events, self.liveness)
            self._build(cfg, reports=reports)
        except BaseException:
            push_port: pushport.PushPort | None = getattr(self, "push_port", None)
            if push_port is not None:
                push_port.close()  # bound, never started: LISTEN_ADDR failed after it
            if self.enforcer is not None:
                self.enforcer.close()
            self.dataplane.close()  # frees the pin-directory lock for whoever comes next
            raise

    def _build(self, cfg: config_mod.Config, *, reports: inbox.Delegate | None) -> None:
        """The parts in the order they need each other; each step takes only what it uses."""
        self._open_gossip(cfg)
        self._open_scaling(cfg, reports=reports)
        self._open_api(cfg)
        self.tasks: list[asyncio.Task[Any]] = []
        self.failed = asyncio.Event()  # a long-running task crashed: the process must exit

    def _open_gossip(self, cfg: config_mod.Config) -> None:
        """The lease, the source, peers and the engine, and leadership over them."""
        self.beats = beats_mod.BeatBoard()  # lease heartbeats in gossip (Kubernetes backends)
        self.lease = open_lease(cfg, beats=self.beats)
        self.source = open_source(cfg)
        self.security = security_setup.Security.build(cfg.security)  # mTLS, cluster id, admins
        self.transport = open_transport(cfg, self.security)
        self.membership = open_membership(cfg, self.rng)
        self.observer = observe.Observer(cfg)  # metrics, console (issue 7)
        self.engine = open_engine(
            cfg, plane=self.dataplane, channels=self.transport, membership=self.membership,
            lease=self.lease, beats=self.beats, telemetry=self.observer.telemetry, rng=self.rng)
        self.leadership = open_leadership(cfg, engine=self.engine, lease=self.lease,
                                          source=self.source)

    def _open_scaling(self, cfg: config_mod.Config, *, reports: inbox.Delegate | None) -> None:
        """Scale-up requests and traffic summaries to the leader, and its scaler (issue 8)."""
        scaler = open_scaler(cfg, engine=self.engine, leadership=self.leadership,
                             source=self.source)
        self.scale_ups = open_scale_ups(
            cfg, engine=self.engine, leadership=self.leadership, source=self.source,
            channels=self.transport, events=self.scale_events, rng=self.rng,
            delegate=reports if reports is not None else scaler)
        self.scaling = open_scaling(cfg, reporter=self.scale_ups.reporter, scaler=scaler,
                                    enforcer=self.enforcer, engine=self.engine)

    def _open_api(self, cfg: config_mod.Config) -> None:
        """The push port, the gRPC services and the servers, bound now (a port in use fails
        start-up here)."""
        self.streams = streams_mod.OpenStreams()
        self.push_port = open_push_port(cfg, self.engine, self.security)
        self.health: server_mod.HealthServicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.state_service = state_mod.StateService(
            engine=self.engine, leadership=self.leadership, lease=self.lease,
            channels=self.transport,
            forward_timeout=cfg.gossip.write_ack_timeout + 2 * cfg.gossip.rpc_timeout,
            streams=self.streams, scale_hub=self.scale_ups.hub,
            policy=self.security.policy, security_note=self.security.note,
            scaling_status=self.scaling.status,
        )
        self.dataplane_service = dataplane_api.DataPlaneService(
            node=cfg.node.name, plane=self.dataplane, enforcer=self.enforcer,
            hub=self.scale_events)
        self.server = server_mod.build(
            engine=self.engine, state_service=self.state_service, health_servicer=self.health,
            max_message_bytes=cfg.gossip.max_message_bytes, streams=self.streams,
            dataplane_service=self.dataplane_service,
            extra_handlers=(scale_api.report_handler(self.scale_ups.inbox, self.streams),),
            interceptors=self.security.gossip_checks(self.engine.stats),
            push_port=self.push_port.port if self.push_port is not None else 0,
        )
        self.port = server_mod.bind(self.server, cfg.node.listen_addr,
                                    self.security.server_credentials())
        self.health_server = open_health_server(cfg, self.health)

    async def start(self) -> None:
        self.engine.load()
        self.membership.set_discovered(peers.STATIC, self.cfg.discovery.peers)
        if self.push_port is not None:
            await self.push_port.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        await server_mod.set_health(self.health, serving=True, names=(
            "", server_mod.GOSSIP_SERVICE, server_mod.STATE_SERVICE, server_mod.LEASE_HEALTH,
            probes.LIVE))
        await server_mod.set_health(self.health, serving=False, names=(probes.READY,))
        await server_mod.set_health(self.health, serving=self.security.files is not None,
                                    names=(server_mod.TLS_HEALTH,))
        await self.observer.start(leadership=self.leadership, scale_events=self.scale_events,
                                  enforcer=self.enforcer, scaling=self.scaling.status)
        await self._first_discovery()
        self._spawn(antientropy.run(self.engine, interval=self.cfg.gossip.interval,
                                    rng=self.rng), "gossip.anti-entropy")
        self._spawn(self.leadership.run(), "lease.elect")
        self._spawn(self.source.watch(self.leadership.source_changed),
                    f"source.{self.source.kind}")
        self._spawn(self._watch_refusal(), "lease.refusal-health")
        self._spawn(probes.watch_readiness(self.engine, self.health), "health.readiness")
        for coro, name in self.enforcer.tasks() if self.enforcer is not None else ():
            self._spawn(coro, name)
        for name, coro in self.scale_ups.tasks():
            self._spawn(coro, name)
        for name, coro in self.scaling.tasks():
            self._spawn(coro, name)
        if isinstance(self.lease, mirror_mod.Sink):  # redis: ebpf:service_list, coordination
            self._spawn(mirror_mod.Mirror(
                engine=self.engine, leadership=self.leadership, sink=self.lease,
                period=self.cfg.lease.renew_interval).run(), "lease.mirror")
        if self.cfg.discovery.service:
            self._spawn(discovery.run_dns_discovery(
                membership=self.membership, name=self.cfg.discovery.service,
                port=self.cfg.discovery.service_port,
                nameserver=self.cfg.discovery.dns_server or None,
                interval=self.cfg.discovery.interval, log=log,
            ), "discovery.dns")
        log.info("agent %s serving on %s (advertised %s), data plane %s %s, lease %s at %s",
                 self.cfg.node.name, self.cfg.node.listen_addr, self.cfg.node.advertise_addr,
                 self.dataplane.kind, self.dataplane.location, self.lease.backend,
                 lease_location(self.cfg))
        self.security.announce()
        self.liveness.up()  # serving, every loop started: the heartbeat's probation begins

    async def _first_discovery(self) -> None:
        """Resolves PEER_SERVICE once before campaigning, so the first election knows the peers
        (bounded: a DNS failure here only delays discovery to its loop)."""
        if not self.cfg.discovery.service:
            return
        try:
            found = await discovery.resolve(
                self.cfg.discovery.service, self.cfg.discovery.service_port,
                nameserver=self.cfg.discovery.dns_server or None,
                timeout=min(2.0, self.cfg.discovery.interval),
            )
        except discovery.DiscoveryError as exc:
            log.warning("first lookup of PEER_SERVICE failed: %s", exc)
            return
        self.membership.set_discovered(peers.DNS, found)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        self.tasks.append(task)
        if name in WATCHED_TASKS:
            self.liveness.watch(task)

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s crashed; stopping the agent", task.get_name(),
                      exc_info=task.exception())
            self.liveness.failed(f"task {task.get_name()} crashed")
            self.failed.set()

    async def _watch_refusal(self) -> None:
        """Mirrors the refusal to lead into health (gossip_agent.v1.Lease) and the log."""
        while True:
            await self.leadership.refusal_changed.wait()
            self.leadership.refusal_changed.clear()
            refusal = self.leadership.refusal
            if refusal:
                log.error("refusing to lead: %s", refusal, extra={"reason": refusal})
            else:
                log.info("no longer refusing to lead")
            await server_mod.set_health(
                self.health, serving=not refusal, names=(server_mod.LEASE_HEALTH,))

    async def stop(self) -> None:
        log.info("shutting down: health NOT_SERVING, releasing the lease, stopping the server")
        await self.health.enter_graceful_shutdown()
        self.streams.close()  # push and watch streams end now, not after the grace period
        if self.push_port is not None:
            await self.push_port.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.stop(SHUTDOWN_GRACE_SECONDS)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.transport.close()
        await self.lease.close()
        await self.observer.stop()
        if self.enforcer is not None:
            self.enforcer.close()  # the program stays attached, the maps pinned
        self.dataplane.close()
        log.info("stopped; the pinned maps keep the last state")


def freeze_long_lived() -> None:
    """Takes what exists after start-up out of the cyclic collector's sight (this process only
    runs the agent; tests that start agents in-process never call it).

    Almost all of it lives as long as the process: every imported module, the Kubernetes
    client's hundreds of model classes, grpc and protobuf descriptors, the compiled program's
    tables. Each full collection walked all of it: 120 to 230 ms of CPU per collection on the
    development machine, during which nothing else in the agent ran, and the wake-up
    benchmark's slowest wakes (about 120 ms against 4 ms typical) were exactly such pauses.
    Start-up garbage is collected first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()


async def serve(cfg: config_mod.Config) -> int:
    loop = asyncio.get_running_loop()
    observe.name_unnamed_tasks(loop)
    current = asyncio.current_task()
    if current is not None:
        current.set_name("agent.main")
    agent = Agent(cfg)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
        freeze_long_lived()
        stopped = asyncio.create_task(stop.wait(), name="agent.signal")
        crashed = asyncio.create_task(agent.failed.wait(), name="agent.crash")
        await asyncio.wait((stopped, crashed), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        crashed.cancel()
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
    return 1 if agent.failed.is_set() else 0
