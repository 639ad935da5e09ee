"""The scaling loop around the pure rules in core.scaling and core.policy.

From a packet to a /scale write:
  reporter, route, wire, compat  every node reports the XDP program's scale-up events and
                                 traffic counts to the leader (compat: agents before 0.2)
  inbox, hub                     the leader takes each report once; WatchScaleRequests readers
  scaleups                       the above wired into one agent
  loop, scaler                   the leader's scaler (task `scaler.loop`), wired into one agent
  base, memory, kube             the Workloads plug point: Protocol, in-memory twin, Kubernetes
"""
