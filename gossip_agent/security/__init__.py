"""Who may talk to an agent: mutual TLS (tls.py), caller identities and admin authorisation
(identity.py), the cluster id on gossip calls (cluster.py)."""
