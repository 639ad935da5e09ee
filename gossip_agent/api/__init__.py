"""The gRPC servers: Gossip (peers), State (operators), grpc.health.v1 and reflection."""
