"""Peer and server addresses as users write them: parsed, checked and normalised (pure).

config.py parses PEERS, PEER_SERVICE and DNS_SERVER with these and turns their ValueError into
a ConfigError naming the variable; discovery uses the same normal form, so one peer is one
string everywhere (Membership keys on it): "ip:port", "[ipv6]:port" or "host:port".
"""

from __future__ import annotations

import ipaddress
import re

DNS_PORT = 53

# RFC 1123 host label: letters, digits and inner hyphens, at most 63 characters. Underscores are
# refused: they are legal in DNS but not in host names, and a Service name never has one.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MAX_NAME = 253  # characters of a dotted name without its trailing dot (RFC 1035, 255 octets)
_BRACKETED = re.compile(r"\[([^\]]+)\]:([^:]*)")
_PORT = re.compile(r"[0-9]{1,5}")



def parse_peers(text: str) -> list[str]:
    """Parses a comma- or whitespace-separated list of host:port into normalised addresses.

    Hosts are IPv4, [IPv6] or DNS host names (lower-cased, trailing dot dropped). Duplicates
    (after normalisation) are dropped, first occurrence kept. Raises ValueError naming the bad
    item.
    """
    result: dict[str, None] = {}  # an ordered set
    for item in re.split(r"[,\s]+", text.strip()):
        if item:
            result.setdefault(_parse_peer(item), None)
    return list(result)


def parse_peer_service(text: str, *, default_port: int) -> tuple[str, int]:
    """Parses "name" or "name:port" (a headless Service DNS name) into (name, port).

    The name is lower-cased and keeps a trailing dot if given (it means "absolute: do not apply
    the search domains"). Raises ValueError naming the bad value.
    """
    value = text.strip()
    name, sep, port_text = value.partition(":")
    if not name:
        raise ValueError(f"peer service {text!r}: empty name")
    try:
        port = _parse_port(port_text) if sep else default_port
        _check_service_name(name.lower().rstrip("."))
    except ValueError as exc:
        raise ValueError(f"peer service {text!r}: {exc}") from None
    return name.lower(), port


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parses a DNS server "ip", "ip:port", "ipv6" or "[ipv6]:port" into (ip, port)."""
    value = text.strip()
    try:
        bracketed = _BRACKETED.fullmatch(value)
        if bracketed:
            return str(ipaddress.IPv6Address(bracketed[1])), _parse_port(bracketed[2])
        if value.count(":") > 1:  # a bare IPv6 address, no port
            return str(ipaddress.IPv6Address(value)), DNS_PORT
        host, sep, port_text = value.partition(":")
        return str(ipaddress.IPv4Address(host)), _parse_port(port_text) if sep else DNS_PORT
    except ValueError as exc:
        raise ValueError(f"DNS server {text!r}: {exc}") from None


def _parse_peer(item: str) -> str:
    try:
        return _normalise_peer(item)
    except ValueError as exc:
        raise ValueError(f"peer {item!r} is not host:port: {exc}") from None


def _normalise_peer(item: str) -> str:
    bracketed = _BRACKETED.fullmatch(item)
    if bracketed:
        return f"[{ipaddress.IPv6Address(bracketed[1])}]:{_parse_port(bracketed[2])}"
    if item.count(":") > 1:
        raise ValueError("an IPv6 address needs brackets, as in [fd00::1]:7946")
    host, sep, port_text = item.partition(":")
    if not sep:
        raise ValueError("the port is missing")
    if not host:
        raise ValueError("the host is missing")
    return f"{_normalise_host(host)}:{_parse_port(port_text)}"


def _normalise_host(host: str) -> str:
    # All digits and dots can only be an IPv4 address (no top-level domain is numeric), so
    # "10.0.0.256" is reported as a bad address, not accepted as a host name.
    if re.fullmatch(r"[0-9.]+", host):
        return str(ipaddress.IPv4Address(host))
    name = host.lower().rstrip(".")
    _check_host_name(name)
    return name


def _check_service_name(name: str) -> None:
    if re.fullmatch(r"[0-9.]+", name):
        raise ValueError("an IP address is not a Service name (list fixed addresses in PEERS)")
    _check_host_name(name)


def _check_host_name(name: str) -> None:
    if not name or len(name) > _MAX_NAME:
        raise ValueError(f"a host name has 1 to {_MAX_NAME} characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{label!r} is not a host name label (letters, digits, inner hyphens, 1-63)"
            )


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)
