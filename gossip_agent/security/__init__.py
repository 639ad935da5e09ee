"""Who may talk to an agent: mutual TLS (tls.py), caller identities, membership and admin
authorisation (identity.py), Gossip for members only (members.py), the cluster id on gossip
calls (cluster.py); both run before a Gossip handler (gate.py)."""
