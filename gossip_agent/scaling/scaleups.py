"""Scale-up requests wired together for one agent: the hub readers watch, the leader's inbox,
the reporter and its route to the leader. agent.py builds one and spawns its tasks()."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from typing import Any

from gossip_agent.core import peers
from gossip_agent.dataplane import events as events_mod
from gossip_agent.gossip import engine as engine_mod
from gossip_agent.gossip import leader as leader_mod
from gossip_agent.gossip import transport
from gossip_agent.scaling import hub as hub_mod
from gossip_agent.scaling import inbox as inbox_mod
from gossip_agent.scaling import reporter as reporter_mod
from gossip_agent.scaling import route
from gossip_agent.sources import base as source_base


def name_in(engine: engine_mod.Engine) -> Callable[[int], str]:
    """The "namespace/name" the held snapshot gives a service key, "" when it has none."""

    def name_of(key: int) -> str:
        held = engine.held.snapshot
        return held.name_map().get(key, "") if held is not None else ""

    return name_of


class ScaleUps:
    def __init__(
        self,
        *,
        engine: engine_mod.Engine,
        leadership: leader_mod.Leadership,
        source: source_base.Source,
        channels: transport.GrpcTransport,
        events: events_mod.EventHub,
        backoff: peers.BackoffPolicy,
        rpc_timeout: float,
        rng: random.Random,
        delegate: inbox_mod.Delegate | None = None,
    ) -> None:
        """delegate: who acts on the reports this agent takes as leader, besides its source
        (scaling.inbox.Delegate: the scaler, with SOURCE=kubernetes)."""
        # Subscribed now, before any task runs, so no event published from here on is missed.
        self.subscription = events.subscribe()
        self.hub = hub_mod.Hub()
        name_of = name_in(engine)
        self.inbox = inbox_mod.Inbox(
            node=engine.node, leadership=leadership, source=source, hub=self.hub,
            name_of=name_of, delegate=delegate)
        self.route = route.ToLeader(engine=engine, leadership=leadership, inbox=self.inbox,
                                    channels=channels, timeout=rpc_timeout)
        self.reporter = reporter_mod.Reporter(
            node=engine.node, incarnation=rng.getrandbits(63) + 1,
            deliver=self.route,
            hub=self.hub, name_of=name_of, backoff=backoff, rng=rng,
            leader_may_have_changed=engine.changed,
        )

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [
            ("scaleup.read", self.reporter.read(self.subscription)),
            ("scaleup.report", self.reporter.run()),
        ]
