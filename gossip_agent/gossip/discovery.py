"""Discovery: where the addresses of the other agents come from.

Two sources feed core.peers.Membership, each under its own origin:
- a static list (env PEERS, "host:port" items, parsed by config with core.addresses);
- a headless Service (env PEER_SERVICE, "name" or "name:port"): its A records are one address
  per agent pod (with publishNotReadyAddresses, ready or not), re-resolved every interval by
  run_dns_discovery().

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
import logging
from collections.abc import Collection

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdtypes.IN.A
import dns.resolver

from gossip_agent import errors
from gossip_agent.core import addresses, peers


class DiscoveryError(errors.GossipAgentError):
    """A DNS lookup failed without an answer (timeout, server failure, no resolver at all)."""


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
        ip, port = addresses.parse_nameserver(nameserver)
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
