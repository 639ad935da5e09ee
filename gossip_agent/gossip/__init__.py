"""Gossip: the engine, push streams, anti-entropy, discovery and the peer transport."""
