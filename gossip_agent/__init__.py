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
