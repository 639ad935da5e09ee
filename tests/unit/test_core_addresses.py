"""Parsing of PEERS, PEER_SERVICE and DNS_SERVER values (gossip.discovery, pure functions)."""

from __future__ import annotations

import pytest

from gossip_agent.core import addresses

pytestmark = pytest.mark.unit


def test_peers_are_split_on_commas_and_whitespace_in_order() -> None:
    text = " 10.0.0.2:7946,10.0.0.1:7946\n node-c:7000\t[fd00::1]:7946 , "
    assert addresses.parse_peers(text) == [
        "10.0.0.2:7946",
        "10.0.0.1:7946",
        "node-c:7000",
        "[fd00::1]:7946",
    ]


def test_empty_peer_list_is_empty() -> None:
    assert addresses.parse_peers("") == []
    assert addresses.parse_peers(" , ,\n") == []


def test_peers_are_normalised_then_deduplicated_keeping_the_first() -> None:
    text = "Node-A:7946, node-a.:7946, [FD00:0::1]:7946, [fd00::1]:07946, 10.0.0.1:1, node-a:7946"
    assert addresses.parse_peers(text) == ["node-a:7946", "[fd00::1]:7946", "10.0.0.1:1"]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("10.0.0.1", "port is missing"),
        ("node-a", "port is missing"),
        (":7946", "host is missing"),
        ("fd00::1:7946", "needs brackets"),
        ("[fd00::1]", "not host:port"),
        ("[zz::1]:7946", "not host:port"),
        ("10.0.0.256:7946", "not host:port"),
        ("10.0.0:7946", "not host:port"),
        ("node-a:0", "1 to 65535"),
        ("node-a:65536", "1 to 65535"),
        ("node-a:http", "1 to 65535"),
        ("node-a:-1", "1 to 65535"),
        ("-node:7946", "host name label"),
        ("no_underscore:7946", "host name label"),
        ("a..b:7946", "host name label"),
        ("x" * 64 + ":7946", "host name label"),
    ],
)
def test_bad_peer_is_rejected_naming_the_item(item: str, reason: str) -> None:
    with pytest.raises(ValueError, match="peer ") as caught:
        addresses.parse_peers(f"10.0.0.1:7946, {item}, 10.0.0.2:7946")
    assert repr(item) in str(caught.value)
    assert reason in str(caught.value)


def test_peer_service_without_port_takes_the_default() -> None:
    assert addresses.parse_peer_service("gossip-agent", default_port=7946) == (
        "gossip-agent",
        7946,
    )


def test_peer_service_with_port_and_full_name_is_lower_cased() -> None:
    text = " Gossip-Agent.kube-system.svc.cluster.local:7000 "
    assert addresses.parse_peer_service(text, default_port=7946) == (
        "gossip-agent.kube-system.svc.cluster.local",
        7000,
    )


def test_peer_service_keeps_the_trailing_dot_that_skips_search_domains() -> None:
    assert addresses.parse_peer_service("gossip-agent.ns.svc.cluster.local.", default_port=1) == (
        "gossip-agent.ns.svc.cluster.local.",
        1,
    )


@pytest.mark.parametrize(
    "text", ["", "  ", ":7946", "svc:0", "svc:port", "svc:1:2", "a..b", ".", "10.0.0.1", "sv_c"]
)
def test_bad_peer_service_is_rejected_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="peer service") as caught:
        addresses.parse_peer_service(text, default_port=7946)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[FD00:0::1]:53", ("fd00::1", 53)),
    ],
)
def test_nameserver_is_an_ip_with_an_optional_port(text: str, expected: tuple[str, int]) -> None:
    assert addresses.parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["", "localhost", "127.0.0.1:0", "127.0.0.1:", "[::1]"])
def test_bad_nameserver_is_rejected_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="DNS server") as caught:
        addresses.parse_nameserver(text)
    assert repr(text) in str(caught.value)
