"""Long-lived server streams (PushStream, WatchState), ended by the agent when it stops.

grpc's server.stop(grace) waits for running handlers; these streams never end on their own, so
a clean stop would always wait out the whole grace period and then have grpc cancel them with
an error in the log. The agent closes them first: each handler's task is cancelled, the
cancellation is absorbed at the handler's boundary, and the handler returns normally, so the
peer (a leader's push stream, a watcher) sees an orderly end and reconnects elsewhere or later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class OpenStreams:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self.closing = False

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Wraps a streaming handler's body: close() ends it as a normal return."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self.closing:
                raise  # the client went away or grpc is cancelling: not ours to absorb
            task.uncancel()
        finally:
            self._tasks.discard(task)

    def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
