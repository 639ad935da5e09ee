"""localcluster.free_ports: listening ports for local agents come from below the kernel's
ephemeral range, so no outgoing connection can take one between its choice and the agent's bind
(an agent that lost its metrics port that way once hung a 32-agent benchmark for 300 s)."""

from __future__ import annotations

import random
import socket

import pytest

from lab import localcluster

pytestmark = pytest.mark.unit


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = localcluster.free_ports(160, rng=random.Random(3))
    assert len(set(ports)) == 160
    assert all(localcluster.LOWEST_PORT <= p < localcluster.ephemeral_start() for p in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out() -> None:
    (port,) = localcluster.free_ports(1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))  # in the range free_ports draws from
        taken.listen()
        rng = random.Random(1)
        handed = set()
        for _ in range(150):  # were it not excluded, it would be drawn (p > 0.999)
            handed.update(localcluster.free_ports(1000, rng=rng))
        assert port not in handed
        assert len(handed) > 15_000  # the draws covered nearly all of the range


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: object) -> None:
    path = f"{tmp_path}/range"
    with open(path, "w", encoding="utf-8") as f:
        f.write("40000\t60999\n")
    assert localcluster.ephemeral_start(path) == 40000
    assert localcluster.ephemeral_start(f"{tmp_path}/missing") == 32768
