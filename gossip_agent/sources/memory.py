"""SOURCE=api, the sources' in-memory twin: the desired table is the snapshot the agent holds,
edited by SetService / DeleteService. No state of its own and nothing to watch, so simulations
and local runs use it as they are (tools/lab/simcluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gossip_agent.sources import base


class ApiSource(base.RecordsScaleUps):
    kind = "api"
    accepts_writes = True

    def read(self) -> base.Desired | None:
        return None

    async def watch(self, on_change: Callable[[base.Desired], None]) -> None:
        await asyncio.Event().wait()  # nothing to watch: writes arrive through the State API
