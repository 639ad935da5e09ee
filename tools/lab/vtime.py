"""An asyncio event loop on virtual time, for simulations of many agents in one process.

loop.time() is a number this loop moves itself: whenever nothing is ready to run, it jumps to
the next timer instead of sleeping. So `asyncio.sleep(0.5)` costs no wall time, and a
simulated cluster's timings (timeouts, backoffs, intervals, modelled CPU and network delays)
are exact and reproducible, however slow the real code that runs between them is.

The loop has no real I/O: its selector holds registrations (asyncio registers its self-pipe)
but never waits on them. Code that needs sockets or threads cannot run on it; the in-memory
network (gossip_agent.gossip.memory) and the in-memory lease, source and data plane can.
With nothing scheduled and nothing ready the loop would wait for ever: it raises instead, so a
deadlocked simulation fails at once.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: the simulation can never go on."""


class _ClockSelector(selectors.BaseSelector):
    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int)
                                    else fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise Deadlock("nothing is ready and no timer is set")
        self.loop.advance(timeout)
        return []

    def close(self) -> None:
        self._keys.clear()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _ClockSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
