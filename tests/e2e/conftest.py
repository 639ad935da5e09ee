"""Fixtures shared by the end-to-end tests: the agent-cluster fixtures defined with the first
e2e tests (a unique bpffs root, clusters stopped in teardown, long-lived gRPC clients),
re-exported here so every e2e module (the bpffs and the redis clusters) can use them."""

from tests.e2e.test_local_cluster import clients, e2e_root, start_cluster

__all__ = ["clients", "e2e_root", "start_cluster"]
