"""A cluster in network namespaces on this machine, with the XDP program on each pod veth.

    tools/netns_cluster.py --nodes 3     build it, start one agent per node namespace, print how
                                         to reach each agent and send packets; Ctrl-C removes it

Needs root, iproute2, nsenter, a mounted bpffs and bcc (tools/lab/netns.py). Each
agent's gRPC port is forwarded to 127.0.0.1, so grpcurl works from this shell; packets from a
node's pod namespace cross the node's veth (and its XDP program) to the service IPs given.
Everything is removed on exit, also when the script fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import uuid

from lab import netns

PREFIX = "gademo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help=f"nodes (1..{netns.MAX_NODES})")
    parser.add_argument("--services", default="10.96.0.10,10.96.0.11",
                        help="service IPs put on each node's lo (comma list)")
    parser.add_argument("--log-dir", default="", help="agent logs (default: a temp dir)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= netns.MAX_NODES:
        parser.error(f"--nodes must be between 1 and {netns.MAX_NODES}")
    return args


def explain(cluster: netns.Cluster, services: list[str]) -> None:
    print(f"cluster {cluster.run_id}: {len(cluster.nodes)} nodes, logs in {cluster.log_dir}")
    for node in cluster.nodes:
        print(f"  {node.name}: grpcurl -plaintext {node.api_address} "
              f"gossip_agent.v1.State/GetState   (netns {node.netns}, pod {node.pod_netns})")
    first = cluster.nodes[0]
    print("send UDP from a pod to a service (dropped while it is at 0 replicas):")
    print(f"  nsenter --net=/run/netns/{first.pod_netns} "
          f"python3 -c \"import socket; socket.socket(2, 2).sendto(b'x', ('{services[0]}', 80))\"")
    print(f"watch the scale-up requests: grpcurl -plaintext {first.api_address} "
          "gossip_agent.v1.State/WatchScaleRequests")
    print("Ctrl-C removes everything")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gaps = netns.missing()
    if gaps:
        print("cannot build a namespaced cluster here: " + ", ".join(gaps), file=sys.stderr)
        return 2
    netns.sweep_stale(PREFIX)
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="gossip-agent-netns-")
    root = f"/sys/fs/bpf/gossip-agent-netns-demo/{uuid.uuid4().hex[:12]}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with netns.Cluster(args.nodes, prefix=PREFIX, bpffs_root=root, log_dir=log_dir,
                       services=services) as cluster:
        cluster.start()
        explain(cluster, services)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    try:
        os.rmdir(os.path.dirname(root))
    except OSError:
        pass  # another demo still runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
