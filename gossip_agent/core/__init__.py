"""The pure core: decisions with no I/O (no asyncio, grpc, bcc, sockets).

Push and anti-entropy both go through snapshots.decide(), so a snapshot is judged the same
way whichever path brought it (memberlist merges full-state sync through the same transitions).
"""
