"""How every Kubernetes module (leases.kube, sources.kubernetes, scaler.kube) finds the API
server: one rule, so the lease, the source and the scaler can never talk to different clusters.

In a pod (KUBERNETES_SERVICE_HOST set) the service account's in-cluster config; elsewhere
KUBECONFIG, else ~/.kube/config, exactly as kubectl finds its cluster. KUBECONFIG is read at
call time: the client's own default reads it once, when the package is first imported.
"""

from __future__ import annotations

import os

import kubernetes.client
import kubernetes.config

from gossip_agent import errors


def load_configuration(
    *, unavailable: type[errors.GossipAgentError]
) -> kubernetes.client.Configuration:
    """The client configuration; a missing or unreadable one raises `unavailable` (the caller's
    own error, so each backend keeps its retry semantics)."""
    configuration = kubernetes.client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise unavailable(
            f"no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {exc}"
        ) from exc
    return configuration
