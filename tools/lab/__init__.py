"""The lab: stand-ins for the outside world and launchers for local runs, never shipped.

What runs on a node is the gossip_agent package (its in-memory twins included: they are plug
points). Everything here only helps to try, test and measure it on one machine, over real I/O:
  fakekube, kubepatch  a stateful fake Kubernetes API server over real HTTP
  netns                a cluster of agent processes in network namespaces (XDP on veth)
  certs                certificate authorities and leaf certificates (the `test` extra)
  localcluster         agent processes on loopback, and small gRPC client helpers
  localredis           redis-server processes (single, replicas, Sentinel, cluster)
  churn, chaoscheck    pod-IP churn and the chaos campaign's checker

Import it as `lab`: tools/ scripts have tools/ on sys.path already (it holds the script), and
pytest adds tools/ through `pythonpath` in pyproject.toml. The product never imports the lab:
an import-linter contract in pyproject.toml forbids it.
"""
