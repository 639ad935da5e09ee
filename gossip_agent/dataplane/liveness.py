"""Whether this agent's own loops are alive: what the XDP program's heartbeat vouches for.

The XDP program drops traffic to services at zero only while the HEARTBEAT map is fresher than
FAIL_OPEN_AFTER (dataplane/enforcer.py refreshes it). A fresh heartbeat must therefore mean
"an agent is up on this node and doing its work", so that a dead, wedged or crash-looping agent
lets FAIL_OPEN_AFTER take effect instead of leaving zeros dropping traffic with nobody to read
the scale-up events. The agent is alive when all of these hold:
- it is up: the gRPC server serves and its tasks were started (`up()`, the last step of
  Agent.start; nothing before it counts, so a process that dies during start-up, however often
  it restarts, never refreshes the heartbeat);
- every watched loop still runs: `lease.elect` (campaigning or renewing) and, when a program is
  loaded, `xdp.events` (the reader of its scale-up events);
- no task of the agent crashed (`failed()`: a crash stops the process; no refresh in between).

Once the agent is no longer alive it never is again (a watched task does not restart, a crash
is kept), so alive at every look is alive all along. The heartbeat relies on that for its
probation: it starts vouching only after the agent has been up and alive for
enforcer.probation(FAIL_OPEN_AFTER) (a minute by default), so an agent that gets up and crashes
soon after, restart after restart (CrashLoopBackOff), never refreshes it either.

What the agent depends on does not count, on purpose. A Redis or Kubernetes API outage leaves
every loop running and retrying: `lease.elect` alive while the lease cannot be reached is the
agent working. Failing open on it would turn one backend outage into every node failing open
at once.

Cost: why_not() looks at each watched task (two at most), once per heartbeat interval (also
during the probation).
"""

from __future__ import annotations

import asyncio
from typing import Any


class Liveness:
    """Fed by the agent (watch, up, failed), read by the heartbeat (wait_up, why_not)."""

    def __init__(self) -> None:
        self._watched: list[asyncio.Task[Any]] = []
        self._up = asyncio.Event()
        self._failure = ""

    def watch(self, task: asyncio.Task[Any]) -> None:
        """A loop the agent is not alive without: its end, however it ends, is the agent's."""
        self._watched.append(task)

    def up(self) -> None:
        """The agent serves and its loops were started."""
        self._up.set()

    def failed(self, reason: str) -> None:
        """A task crashed: the agent is going down (the first reason is kept)."""
        self._failure = self._failure or reason

    async def wait_up(self) -> None:
        await self._up.wait()

    def why_not(self) -> str:
        """"" while the agent is alive; else a sentence saying why it is not."""
        if not self._up.is_set():
            return "the agent is not up yet"
        if self._failure:
            return self._failure
        ended = [task.get_name() for task in self._watched if task.done()]
        if ended:
            return f"task {', '.join(ended)} ended"
        return ""
