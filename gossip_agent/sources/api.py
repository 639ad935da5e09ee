"""SOURCE=api: the desired table is the held snapshot, edited by SetService / DeleteService."""

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
