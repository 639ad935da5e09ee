"""gossip-agent: keeps per-node eBPF SERVICE_LIST maps consistent across a cluster.

Layout, from the entry points down to the pure core (pyproject.toml's import-linter `layers`
contract enforces this order: a module imports only from the layers below it):
  cli, __main__   `gossip-agent run | state | peers | leader | set | delete | ...`
  agent           wiring and lifecycle of one agent process
  observability/  logs, metrics, the aiomonitor console, the telemetry plug point
  api/            the gRPC servers (Gossip, State, health, reflection)
  scaling/        scale-up reports to the leader, the leader's scaler, the Workloads plug point
  gossip/         the engine (adopt/publish), push streams, anti-entropy, discovery, transport
  leases/ sources/ dataplane/ security/
                  the plug points (one Protocol in base.py, an in-memory twin in memory.py):
                  leader lease backends, where the leader's truth comes from, the pinned
                  SERVICE_LIST map and XDP program; and mTLS between agents
  config          every env var, validated in one place
  system/         bpf() syscalls and the Kubernetes client's configuration, below every backend
  core/           pure decisions: versions, snapshots and adoption, diffs, peers, scaling rules
  errors          the exception hierarchy (mapped to gRPC codes in api/status)
  v1/             generated from proto/gossip_agent/v1/*.proto
The lab (fake Kubernetes API, network namespaces, certificates, local launchers) lives in
tools/lab, outside the package; the product never imports it.
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
