"""Discovery: where the addresses of the other agents come from.

Two sources feed core.peers.Membership, each under its own origin:
- a static list (env PEERS, "host:port" items) for local runs, parsed once by parse_peers();
- a headless Service (env PEER_SERVICE, "name" or "name:port"): its A records are one address
  per ready agent pod, re-resolved every interval by run_dns_discovery().

Invariants:
- A failed lookup (timeout, SERVFAIL, no server reachable) never changes the peer set: DNS
  hiccups must not cut an agent off from its peers. Only an answer replaces it, and an
  authoritative "no such name" / "no A records" answer is an answer: the Service has no ready
  endpoints, so the DNS-learned set becomes empty (peers that gossip taught stay).
- dnspython stays behind this module: its exceptions become DiscoveryError here.
- Addresses are "ip:port" (IPv4) or "[ipv6]:port", normalised, so the same peer is one string
  everywhere (Membership keys on it). resolve() returns them sorted, so runs are reproducible.
- Own-address exclusion belongs to Membership (constructed with the agent's address); resolve()
  can also drop extra addresses (e.g. the pod IP under a second port) through `exclude`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Collection

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdtypes.IN.A
import dns.resolver

from gossip_agent import errors
from gossip_agent.core import peers

DNS_PORT = 53

# RFC 1123 host label: letters, digits and inner hyphens, at most 63 characters. Underscores are
# refused: they are legal in DNS but not in host names, and a Service name never has one.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MAX_NAME = 253  # characters of a dotted name without its trailing dot (RFC 1035, 255 octets)
_BRACKETED = re.compile(r"\[([^\]]+)\]:([^:]*)")
_PORT = re.compile(r"[0-9]{1,5}")


class DiscoveryError(errors.GossipAgentError):
    """A DNS lookup failed without an answer (timeout, server failure, no resolver at all)."""


# --- parsing (pure; config.py turns ValueError into a ConfigError naming the variable) ---


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


# --- DNS (the only place that talks to dnspython) ---


async def resolve(
    name: str,
    port: int,
    *,
    nameserver: str | None = None,
    # dnspython's own lifetime, not a cancel scope: it bounds every try and search domain and
    # its error names the server that failed.
    timeout: float = 2.0,  # noqa: ASYNC109
    exclude: Collection[str] = (),
) -> list[str]:
    """Returns the A records of `name` as sorted "ip:port" strings.

    nameserver None uses the system resolver configuration (/etc/resolv.conf) with its search
    domains and ndots, so a short Service name works in a pod as it does for getaddrinfo.
    nameserver "ip[:port]" asks that one server, with no search domains: give the full name.
    NXDOMAIN or no A records -> []. No answer within `timeout` seconds (all tries, all search
    domains), or a server failure -> DiscoveryError. `exclude` drops addresses given as
    "ip:port" or as a bare "ip" (any port).
    """
    server = nameserver or "the system resolver"
    try:
        resolver = _make_resolver(nameserver, timeout)
        answer = await resolver.resolve(name, "A", search=True, lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DiscoveryError(f"DNS lookup of {name} via {server} failed: {exc}") from exc
    ips = {rr.address for rr in answer if isinstance(rr, dns.rdtypes.IN.A.A)}
    addresses = {f"{ip}:{port}" for ip in ips if ip not in exclude}
    return sorted(addresses.difference(exclude))


def _make_resolver(nameserver: str | None, timeout: float) -> dns.asyncresolver.Resolver:
    if nameserver is None:
        # Raises NoResolverConfiguration (a DNSException) when resolv.conf has no server.
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        ip, port = parse_nameserver(nameserver)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)]
        # configure=False still takes a search domain from the host name; a pinned server is
        # asked for exactly the name given.
        resolver.domain = dns.name.root
        resolver.search = []
    # The per-server try keeps resolv.conf's "options timeout" (default 2 s) but never outlasts
    # the whole budget, so with several servers a dead first one does not eat all of it.
    resolver.timeout = min(resolver.timeout, timeout)
    resolver.lifetime = timeout
    return resolver


# --- the loop (a thin caller: Membership decides what an address set means) ---


async def run_dns_discovery(
    *,
    membership: peers.Membership,
    name: str,
    port: int,
    nameserver: str | None,
    interval: float,
    log: logging.Logger,
    timeout: float = 2.0,  # noqa: ASYNC109  (per lookup, handed to resolve())
    exclude: Collection[str] = (),
) -> None:
    """Re-resolves `name` every `interval` seconds into membership's DNS origin. Runs until
    cancelled (run it as the task "discovery.dns").

    A failed lookup keeps the previous set; one warning per failure streak, one info line when
    lookups work again, and an info line whenever the set changes.
    """
    failures = 0
    known: list[str] | None = None
    while True:
        try:
            found = await resolve(
                name, port, nameserver=nameserver, timeout=timeout, exclude=exclude
            )
        except DiscoveryError as exc:
            failures += 1
            if failures == 1:
                log.warning("%s; keeping the %d peers found before", exc, len(known or ()))
        else:
            if failures:
                log.info("DNS discovery of %s works again after %d failures", name, failures)
            failures = 0
            if found != known:
                _log_change(log, name, known or [], found)
                known = found
            membership.set_discovered(peers.DNS, found)
        await asyncio.sleep(interval)


def _log_change(log: logging.Logger, name: str, before: list[str], after: list[str]) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    log.info(
        "DNS discovery of %s: %d addresses (added %s, removed %s)",
        name,
        len(after),
        ", ".join(added) or "none",
        ", ".join(removed) or "none",
    )
