"""The leader's scaling of workloads: cluster-wide facts in, /scale writes out."""
