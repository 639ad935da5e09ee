"""gossip-agent: keeps per-node eBPF SERVICE_LIST maps consistent across a cluster.

Layout (one concept per module):
  core/       pure decisions: versions, snapshots and adoption, map diffs, peers, fanout, coalescing
  config      every env var, validated in one place
  errors      the exception hierarchy (mapped to gRPC codes in api/status)
  gossip/     the engine (adopt/publish), push streams, anti-entropy, discovery, peer transport
  leases/     leader lease backends behind one Protocol (bpffs today)
  dataplane/  the pinned SERVICE_LIST map behind one Protocol (bcc/bpf, or memory)
  sources/    where the leader's truth comes from (file, api)
  api/        the gRPC servers (Gossip, State, health, reflection)
  agent       wiring and lifecycle of one agent process
  cli         `gossip-agent run | state | peers | leader | set | delete`
"""

import os

# grpc's EventEngine endpoints (grpcio's default) hand every received frame from an
# epoll thread to a pool thread and on to the completion-queue thread grpc.aio polls: measured
# here, ~10 thread wake-ups per pushed snapshot on the receiving agent, against ~2 with the
# older iomgr endpoints, where the thread that polls the completion queue reads the socket
# itself. On this 2-core machine that cut a follower's CPU per change by ~0.1-0.2 ms and the
# leader's by ~0.1 ms per peer (tools/bench.py at N=2 and N=32).
# grpc reads this once, when its core starts (the first `import grpc`), so it is set here,
# before any module of the package imports grpc. An operator's own GRPC_EXPERIMENTS wins.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
