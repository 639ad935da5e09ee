"""All configuration, from environment variables, validated in one place.

Every variable is declared once in VARIABLES with its unit, default (per profile) and why; the
README's table is generated from it (`gossip-agent env --markdown`, tools/sync_readme.py) and a
test checks that the README and k8s/ name only variables declared here, and the reverse. Each
dataclass field names its variable (_from): the field carries that entry in its metadata
(variables_of), from_env fills it from that variable (_build), and no default is written twice.

from_env(mapping) is pure: it reads nothing but the mapping, reports every invalid variable at
once (ConfigError.problems, one sentence each naming the variable), and returns frozen
dataclasses grouped by concern. Profiles: "cluster" (the DaemonSet) and "local" (many agents on
one machine: short timers, memory data plane allowed when BPF is missing).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gossip_agent import errors
from gossip_agent.core import addresses, services

PROFILES = ("cluster", "local")
KUBE_BACKENDS = ("configmap", "lease")  # leases/kube.py
BACKENDS = ("bpffs", "redis", *KUBE_BACKENDS)
PLANNED_BACKENDS: tuple[str, ...] = ()
# LEASE_RENEW_DEADLINE's defaults for the Kubernetes backends (client-go's RenewDeadline is 10 s,
# paired with LEASE_DURATION's 15 s); the variable's own defaults are redis's.
KUBE_RENEW_DEADLINE = {"cluster": 10.0, "local": 3.0}
SOURCES = ("api", "file", "kubernetes")
DATAPLANES = ("bpf", "memory", "auto")


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    defaults: Mapping[str, str]  # profile -> default text ("" = unset)
    why: str
    parse: Callable[[str], Any]


def _default(cluster: str, local: str | None = None) -> dict[str, str]:
    return {"cluster": cluster, "local": cluster if local is None else local}


def _text(value: str) -> str:
    return value.strip()


def _number(value: str, unit: str) -> float:
    """float(value), or a sentence naming the unit instead of float()'s own message."""
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"must be a number of {unit}, e.g. 1 or 0.5") from None


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = _number(value, "seconds")
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return number

    return parse


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer between {low} and {high}") from None
        if not low <= number <= high:
            raise ValueError(f"must be an integer between {low} and {high}")
        return number

    return parse


def _push_port(value: str) -> int | None:
    """None for off, else a port (0: any free one)."""
    if value.strip().lower() == "off":
        return None
    try:
        return _int_range(0, 65535)(value)
    except ValueError:
        raise ValueError("must be a port (0-65535, 0 = any free port) or off") from None


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return lowered

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def parse_hostport(value: str) -> tuple[str, int]:
    """host:port or [v6]:port; the port must be 1..65535 (0 is allowed only for tests)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    return host, port


def _hostport(value: str) -> str:
    host, port = parse_hostport(value)
    return join_hostport(host, port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_list(value: str) -> tuple[str, ...]:
    return tuple(addresses.parse_peers(value))


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _dns_server(value: str) -> str:
    addresses.parse_nameserver(value)  # raises ValueError naming what is wrong
    return value.strip()


def _namespaces(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for name in names:
        if not services.is_dns_label(name):
            raise ValueError(f"{name!r} is not a namespace name (DNS-1123 label)")
    return names


def _redis_url(value: str) -> str:
    text = value.strip()
    scheme = text.partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def _k8s_name(value: str) -> str:
    """A DNS-1123 subdomain, as Kubernetes requires of object and namespace names."""
    text = value.strip()
    if len(text) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", text):
        raise ValueError("must be a Kubernetes name: lower-case letters, digits, '-' and '.', "
                         "starting and ending with a letter or digit, at most 253 characters")
    return text


def _interface_list(value: str) -> str:
    names = [item.strip() for item in value.split(",") if item.strip()]
    for name in names:
        if len(name) > 15 or any(ch.isspace() or ch == "/" for ch in name):
            raise ValueError(f"{name!r} is not an interface name or glob (max 15 characters, "
                             "no spaces or slashes)")
    return ",".join(names)


def _minutes(low: float, high: float) -> Callable[[str], float]:
    """Minutes in, seconds out."""
    def parse(value: str) -> float:
        number = _number(value, "minutes")
        if not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g} minutes")
        return number * 60

    return parse


def _path(value: str) -> str:
    text = value.strip()
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return text.rstrip("/") or "/"


def _cluster_id(value: str) -> str:
    text = value.strip()
    if len(text) > 63 or not all(ch.isalnum() or ch in "-_." for ch in text):
        raise ValueError("must be at most 63 letters, digits, '-', '_' or '.'")
    return text


def _name_list(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


_LOCAL = "local"
VARIABLES: tuple[Variable, ...] = (
    Variable("PROFILE", "-", _default("cluster"),
             "Timer and fallback defaults: cluster (DaemonSet) or local (many agents on one "
             "machine, shorter timers, memory data plane allowed without BPF).",
             _choice(*PROFILES)),
    Variable("NODE_NAME", "-", _default(""),
             "This agent's node name (the Downward API's spec.nodeName in k8s/). Default: the "
             "host name. Part of the lease holder identity and shown as leader.", _text),
    Variable("LISTEN_ADDR", "host:port", _default("0.0.0.0:50051", "127.0.0.1:50051"),
             "Where the gRPC server (Gossip, State, health, reflection) listens.", _hostport),
    Variable("ADVERTISE_ADDR", "host:port", _default(""),
             "The address peers and forwarded writes use to reach this agent. Default: "
             "POD_IP with LISTEN_ADDR's port, or LISTEN_ADDR when it names one address.",
             _hostport),
    Variable("POD_IP", "IPv4/IPv6", _default(""),
             "The pod's IP from the Downward API; used to derive ADVERTISE_ADDR.", _ip),
    Variable("PEERS", "host:port,...", _default(""),
             "Static peers (local runs, or a fixed seed list). Merged with PEER_SERVICE.",
             _peer_list),
    Variable("PEER_SERVICE", "name[:port]", _default(""),
             "Headless Service DNS name whose A records are the peers; re-resolved every "
             "DISCOVERY_INTERVAL. Port defaults to LISTEN_ADDR's port.", _text),
    Variable("DNS_SERVER", "ip[:port]", _default(""),
             "Query this DNS server instead of /etc/resolv.conf (tests, special setups).",
             _dns_server),
    Variable("DISCOVERY_INTERVAL", "seconds", _default("10", "2"),
             "How often PEER_SERVICE is re-resolved: pods come and go at rollout speed, and "
             "gossip spreads new members in between.", _seconds(0.1, 3600)),
    Variable("GOSSIP_INTERVAL", "seconds", _default("1"),
             "Anti-entropy period: each round exchanges digests with one random peer, so a "
             "missed push is repaired within a few rounds (about log2(N) rounds to spread).",
             _seconds(0.01, 600)),
    Variable("COALESCE_WINDOW", "seconds", _default("0.02", "0.005"),
             "Source changes within this window after a publish become one snapshot; an "
             "isolated change is published at once.", _seconds(0, 10)),
    Variable("RPC_TIMEOUT", "seconds", _default("2", "1"),
             "Deadline of one peer call (push ack, exchange, forwarded write). A peer that "
             "misses it is suspected and retried with backoff.", _seconds(0.05, 60)),
    Variable("PEER_BACKOFF_BASE", "seconds", _default("0.2", "0.1"),
             "First retry delay after a failed peer call, doubled per consecutive failure.",
             _seconds(0.001, 60)),
    Variable("PEER_BACKOFF_CAP", "seconds", _default("5", "2"),
             "Longest retry delay: a dead peer costs one failed call per this period.",
             _seconds(0.01, 600)),
    Variable("WRITE_ACK_TIMEOUT", "seconds", _default("2", "1"),
             "How long an admin write waits for its quorum of peers (with the leader a "
             "majority) to hold its snapshot before replying; after that it replies with "
             "acked_peers below quorum: not yet durable.", _seconds(0, 60)),
    Variable("MAX_MESSAGE_BYTES", "bytes", _default("1048576"),
             "Largest gRPC message accepted or sent. 1024 entries with names take ~80 KiB.",
             _int_range(4096, 64 * 1024 * 1024)),
    Variable("PUSH_PORT", "port|off", _default("50053", "0"),
             "TCP port of the push port, on LISTEN_ADDR's host: the leader's pushes as frames "
             "on a plain connection (same mutual TLS and checks as the gRPC port) instead of "
             "gRPC messages, at a fraction of the CPU. Announced to the leader on the gRPC "
             "port, so it may differ per node; 0 = any free port; off = pushes stay on gRPC. "
             "A leader that cannot reach it pushes over gRPC.", _push_port),
    Variable("COORDINATION_BACKEND", "-", _default("bpffs"),
             "Leader lease backend. bpffs: flock under BPF_LEASE_DIR, spans one host only. "
             "redis: a TTL key in REDIS_URL's Redis with a fencing counter, spans nodes. "
             "configmap / lease: client-go's leader-election record on the ConfigMap "
             "COORDINATION_CONFIGMAP / the Lease COORDINATION_LEASE_NAME.", _text),
    Variable("USE_BPF_FS_COORDINATION", "bool", _default(""),
             "The seed's switch: true is an alias for COORDINATION_BACKEND=bpffs.", _bool),
    Variable("BPF_PIN_DIR", "path", _default("/sys/fs/bpf/gossip-agent"),
             "This agent's pin directory: SERVICE_LIST and SERVICE_LIST_META live here. One "
             "agent per directory (an owner lock enforces it).", _path),
    Variable("BPF_LEASE_DIR", "path", _default(""),
             "Directory of the bpffs lease lock and its LEADER record; agents competing for "
             "one lease share it. Default: BPF_PIN_DIR.", _path),
    Variable("LEASE_RETRY_INTERVAL", "seconds", _default("0.5", "0.2"),
             "How often a follower tries to take a free lease: with bpffs the kernel frees "
             "a dead holder's lock at once, so failover takes at most this long.",
             _seconds(0.01, 60)),
    Variable("LEASE_RENEW_INTERVAL", "seconds", _default("1", "0.5"),
             "How often the leader proves it still holds the lease.", _seconds(0.01, 60)),
    Variable("LEASE_TTL", "seconds", _default("5", "2"),
             "redis: the lease key's time to live, refreshed by every renewal. A leader that "
             "dies (SIGKILL, node lost) keeps the lease until it expires, so failover takes "
             "at most LEASE_TTL + LEASE_RETRY_INTERVAL. Shorter means faster failover but "
             "more renewals lost to a slow Redis.", _seconds(0.1, 600)),
    Variable("LEASE_RENEW_DEADLINE", "seconds", _default("3.5", "1.4"),
             "redis: the leader steps down when it has not proven it holds the lease for this "
             "long (local monotonic clock, from the start of its last successful renewal). "
             "Below LEASE_TTL, so it stops acting before the key can expire on the server; "
             "above LEASE_RENEW_INTERVAL, so one slow renewal is tolerated. configmap / "
             "lease: default 10 (local 3), client-go's RenewDeadline, below LEASE_DURATION.",
             _seconds(0.05, 600)),
    Variable("REDIS_URL", "URL", _default(""),
             "The seed's variable: redis://[:password@]host:port/db, rediss:// for TLS. "
             "Required with COORDINATION_BACKEND=redis unless REDIS_SENTINELS is set; with "
             "sentinels only its password, database and scheme are used.", _redis_url),
    Variable("REDIS_KEY_PREFIX", "-", _default("ebpf:"),
             "Prefix of every key (the seed's ebpf:leader, ebpf:service_list, "
             "ebpf:coordination); give each cluster its own to share one Redis.", _text),
    Variable("REDIS_SENTINELS", "host:port,...", _default(""),
             "Redis Sentinel addresses (the seed's HA mode): the agent asks them for the "
             "current master of REDIS_SENTINEL_MASTER instead of using REDIS_URL's host.",
             _peer_list),
    Variable("REDIS_SENTINEL_MASTER", "-", _default("mymaster"),
             "The master name the sentinels monitor (sentinel.conf's `sentinel monitor`).",
             _text),
    Variable("REDIS_TIMEOUT", "seconds", _default("1", "0.5"),
             "Connect and per-command timeout for Redis: an unreachable or silent server is "
             "reported (and retried with backoff) after this long. Below LEASE_RENEW_DEADLINE "
             "so a hung renewal cannot outlive the leader's right to act.", _seconds(0.01, 60)),
    Variable("COORDINATION_NAMESPACE", "-", _default(""),
             "Namespace of the configmap/lease backends' objects (the seed's variable). "
             "Default: the pod's own namespace (service account), else the kubeconfig "
             "context's, else default.", _k8s_name),
    Variable("COORDINATION_CONFIGMAP", "-", _default("ebpf-service-list"),
             "ConfigMap holding the leader record (configmap backend) and, with either "
             "Kubernetes backend, the leader's mirror of SERVICE_LIST for kubectl (the "
             "seed's name).", _k8s_name),
    Variable("COORDINATION_LEASE_NAME", "-", _default("gossip-agent"),
             "coordination.k8s.io/v1 Lease holding the leader record (lease backend).",
             _k8s_name),
    Variable("LEASE_DURATION", "seconds", _default("15", "4"),
             "Kubernetes backends: how long a follower waits, from when it last saw the record "
             "change, before taking over (client-go's LeaseDuration, default 15). Failover "
             "after a leader dies takes about this long.", _int_range(1, 3600)),
    Variable("COORDINATION_MIRROR_INTERVAL", "seconds", _default("1", "0.2"),
             "Kubernetes backends: at most one write of the leader's SERVICE_LIST into "
             "COORDINATION_CONFIGMAP's data per this period (a view for kubectl).",
             _seconds(0.05, 3600)),
    Variable("MAP_MAX_ENTRIES", "entries", _default("1024"),
             "SERVICE_LIST capacity (the XDP program's map size). Larger snapshots are refused.",
             _int_range(1, 1 << 20)),
    Variable("DATAPLANE", "-", _default("bpf", "auto"),
             "bpf: pinned BPF maps, required; memory: nothing enforced (tests); auto: bpf "
             "when available, else memory with a warning.", _choice(*DATAPLANES)),
    Variable("SOURCE", "-", _default("api"),
             "Where the leader's truth comes from: api (SetService/DeleteService), file "
             "(SOURCE_FILE) or kubernetes (opted-in Services and their EndpointSlices).",
             _choice(*SOURCES)),
    Variable("SOURCE_FILE", "path", _default(""),
             "JSON or YAML file of services for SOURCE=file, re-read on change.", _path),
    Variable("SOURCE_POLL_INTERVAL", "seconds", _default("1", "0.2"),
             "How often SOURCE_FILE is checked for changes (mtime, size, then content).",
             _seconds(0.01, 600)),
    Variable("XDP_INTERFACES", "names,globs", _default(""),
             "Interfaces that get the XDP program, e.g. eth0,veth*,cali*,lxc* (followed as "
             "they appear). Empty: maps only, no program. An interface carrying another "
             "component's XDP program is skipped.", _interface_list),
    Variable("XDP_MODE", "-", _default("auto"),
             "auto: native (driver) mode where the driver supports it, else generic (SKB); "
             "native or generic force one.", _choice("auto", "native", "generic")),
    Variable("FAIL_OPEN_AFTER", "minutes", _default("10"),
             "The XDP program passes everything once the agent's heartbeat is older than "
             "this, so a dead, crash-looping or uninstalled agent cannot leave zeros dropping "
             "traffic forever. The heartbeat is written only while the agent is up and its "
             "loops run, whatever its lease backend does, and only once it has been so for a "
             "probation of min(FAIL_OPEN_AFTER/4, 60 s). 0 disables (and the probation). Long "
             "enough to ride out a restart or an eviction.",
             _minutes(0, 7 * 24 * 60)),
    Variable("SOURCE_NAMESPACES", "name,...", _default(""),
             "SOURCE=kubernetes: namespaces whose Services are watched (one watch pair each, "
             "a Role per namespace is enough). Empty: all namespaces (needs a ClusterRole).",
             _namespaces),
    Variable("SOURCE_WATCH_TIMEOUT", "seconds", _default("300", "30"),
             "SOURCE=kubernetes: a watch asks the API server to end it after this long and "
             "resumes from its resourceVersion, so a silently dead connection lasts no longer.",
             _seconds(1, 3600)),
    Variable("SOURCE_BACKOFF_BASE", "seconds", _default("0.5", "0.1"),
             "SOURCE=kubernetes: first retry delay after a failed list or watch, doubled per "
             "consecutive failure (a 410 Gone relists at once: it is not a failure).",
             _seconds(0.01, 60)),
    Variable("SOURCE_BACKOFF_CAP", "seconds", _default("30", "2"),
             "SOURCE=kubernetes: longest retry delay, so an API server in trouble sees at most "
             "one list per watched kind per this period from the leader.", _seconds(0.01, 600)),
    # -- the scaling loop (gossip_agent.scaler, core.scaling) --
    Variable("TRAFFIC_REPORT_INTERVAL", "seconds", _default("5", "0.5"),
             "How often each node sends the leader its traffic summary (packets and idle age "
             "per listed service). Bounds the leader's load to nodes/interval reports, and "
             "delays a scale-down by at most one interval past the idle time.",
             _seconds(0.05, 300)),
    Variable("SCALE_REPORT_WINDOW", "seconds", _default("15", "1.5"),
             "A live node whose latest summary is older than this blocks every scale-down "
             "(missing facts are never idleness); a new leader waits this long before its "
             "first one. At least 2x TRAFFIC_REPORT_INTERVAL, so one lost report does not "
             "block.", _seconds(0.1, 3600)),
    Variable("SCALE_UP_COOLDOWN", "seconds", _default("5"),
             "The leader scales a workload up at most once per this period, however many "
             "nodes and packets ask (the original controller's 5 s).", _seconds(0, 3600)),
    Variable("LOG_LEVEL", "-", _default("info"),
             "debug, info, warning or error.", _choice("debug", "info", "warning", "error")),
    # -- operating a live agent: logs, metrics, console (gossip_agent.logs/metrics/console) --
    Variable("LOG_FORMAT", "-", _default("text"),
             "text: one human-readable line per record; json: one JSON object per line (time, "
             "level, node, logger, event, fields) for log collectors.", _choice("text", "json")),
    Variable("METRICS_PORT", "port", _default("0"),
             "Port of the Prometheus /metrics endpoint; 0 = off. k8s/monitoring scrapes 9102.",
             _int_range(0, 65535)),
    Variable("METRICS_HOST", "IPv4/IPv6", _default("0.0.0.0", "127.0.0.1"),
             "Address /metrics listens on: every interface in a cluster so Prometheus can "
             "scrape the pod (read-only data), loopback locally.", _ip),
    Variable("AIOMONITOR_PORT", "port", _default("0"),
             "aiomonitor console (telnet: `python -m aiomonitor.cli -p PORT`); 0 = off. The "
             "local cluster turns it on with a free port per agent.", _int_range(0, 65535)),
    Variable("AIOMONITOR_HOST", "IPv4/IPv6", _default("127.0.0.1"),
             "Address of the console, its web UI and Python console. Loopback: the console "
             "can cancel tasks, and a hostNetwork pod's loopback is only the node's.", _ip),
    Variable("AIOMONITOR_WEBUI_PORT", "port", _default("0"),
             "aiomonitor's web UI (task list over HTTP) when the console is on; 0 = "
             "AIOMONITOR_PORT+1.", _int_range(0, 65535)),
    Variable("AIOMONITOR_CONSOLE_PORT", "port", _default("0"),
             "Port of the Python console (the console's `console` command) when enabled; 0 = "
             "AIOMONITOR_PORT+2.", _int_range(0, 65535)),
    Variable("AIOMONITOR_PYTHON_CONSOLE", "bool", _default("false"),
             "Allow the console's `console` command: a Python REPL inside the agent that runs "
             "arbitrary code as root. Off in every profile unless set to true.", _bool),
    # -- security: mutual TLS, cluster identity, admin writes (gossip_agent.security) --
    Variable("TLS_CERT", "path", _default(""),
             "This agent's certificate (PEM, from a Secret). With TLS_KEY and TLS_CA it turns "
             "on mutual TLS on the gRPC port and for every call to peers; reloaded when the "
             "files change. Unset: plaintext, announced in the log and GetLeader.", _path),
    Variable("TLS_KEY", "path", _default(""),
             "The private key of TLS_CERT (PEM).", _path),
    Variable("TLS_CA", "path", _default(""),
             "The cluster's CA (PEM): peers and clients must present a certificate it signed.",
             _path),
    Variable("TLS_SERVER_NAME", "DNS name", _default("gossip-agent"),
             "The name every agent certificate carries as a DNS SAN: peers are dialled by IP, "
             "so their certificates are checked against this name (grpcurl: -servername). "
             "A caller with it (CN or SAN) is a member: only members may call the Gossip "
             "service (others get PERMISSION_DENIED) or forward an admin's identity; the admin "
             "certificate must not carry it.", _text),
    Variable("CLUSTER_ID", "-", _default(""),
             "Sent on every gossip call; calls from another cluster id are refused "
             "(FAILED_PRECONDITION) and counted, so clusters sharing a network, a Redis or a "
             "Service name never mix state.", _cluster_id),
    Variable("HEALTH_PORT", "port", _default("0"),
             "A second port, plaintext, serving only grpc.health.v1 on LISTEN_ADDR's host: "
             "Kubernetes' gRPC probes cannot present a client certificate. 0 = off (health is "
             "on the main port too). k8s/ sets 50052 since its agents run mutual TLS.",
             _int_range(0, 65535)),
    Variable("ADMIN_IDENTITIES", "names,...", _default("gossip-agent-admin"),
             "Client certificate subject CNs or SANs allowed to call SetService and "
             "DeleteService when TLS is on (reads stay open to any certificate of TLS_CA).",
             _name_list),
)
NAMES = frozenset(variable.name for variable in VARIABLES)


BY_NAME = {variable.name: variable for variable in VARIABLES}


def _from(name: str, *, also: tuple[str, ...] = (), note: str = "") -> Any:
    """A config field set from the variable `name` (and derived with `also`): its unit, default
    and reason are that variable's entry in VARIABLES, carried in the field's metadata, never
    written again here. `note`: how the field differs from the variable (a unit, a fallback).
    from_env fills the field from it (_build) unless it derives the value itself."""
    return dataclasses.field(metadata={
        "variable": BY_NAME[name], "also": tuple(BY_NAME[a] for a in also), "note": note})


def variables_of(cls: type[Any]) -> dict[str, tuple[Variable, ...]]:
    """Field name -> the variables it is set from (the first one names it), for one config
    dataclass; groups of fields (Config.gossip, LeaseConfig.redis) have none."""
    return {f.name: (f.metadata["variable"], *f.metadata["also"])
            for f in dataclasses.fields(cls) if "variable" in f.metadata}


# Frozen and keyword-only: each is built by keyword, from the variables its fields name.


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeConfig:
    name: str = _from("NODE_NAME", note="the host name when unset")
    listen_addr: str = _from("LISTEN_ADDR")
    advertise_addr: str = _from("ADVERTISE_ADDR", also=("POD_IP", "LISTEN_ADDR"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscoveryConfig:
    peers: tuple[str, ...] = _from("PEERS")
    service: str = _from("PEER_SERVICE", note='its name; "" = no DNS discovery')
    service_port: int = _from("PEER_SERVICE", also=("LISTEN_ADDR",), note="its port")
    dns_server: str = _from("DNS_SERVER")
    interval: float = _from("DISCOVERY_INTERVAL")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GossipConfig:
    interval: float = _from("GOSSIP_INTERVAL")
    coalesce_window: float = _from("COALESCE_WINDOW")
    rpc_timeout: float = _from("RPC_TIMEOUT")
    backoff_base: float = _from("PEER_BACKOFF_BASE")
    backoff_cap: float = _from("PEER_BACKOFF_CAP")
    write_ack_timeout: float = _from("WRITE_ACK_TIMEOUT")
    max_message_bytes: int = _from("MAX_MESSAGE_BYTES")
    push_port: int | None = _from("PUSH_PORT", note="None: off (pushes stay on gRPC)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisConfig:
    url: str = _from("REDIS_URL")
    key_prefix: str = _from("REDIS_KEY_PREFIX")
    sentinels: tuple[str, ...] = _from("REDIS_SENTINELS")
    sentinel_master: str = _from("REDIS_SENTINEL_MASTER")
    timeout: float = _from("REDIS_TIMEOUT")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaseConfig:
    backend: str = _from("COORDINATION_BACKEND", also=("USE_BPF_FS_COORDINATION",))
    lease_dir: str = _from("BPF_LEASE_DIR", also=("BPF_PIN_DIR",))
    retry_interval: float = _from("LEASE_RETRY_INTERVAL")
    renew_interval: float = _from("LEASE_RENEW_INTERVAL")
    ttl: float = _from("LEASE_TTL")
    renew_deadline: float = _from("LEASE_RENEW_DEADLINE",
                                  note="per backend: KUBE_RENEW_DEADLINE for Kubernetes")
    redis: RedisConfig | None  # set when backend is redis
    namespace: str = _from("COORDINATION_NAMESPACE")
    configmap: str = _from("COORDINATION_CONFIGMAP")
    lease_name: str = _from("COORDINATION_LEASE_NAME")
    duration: int = _from("LEASE_DURATION")
    mirror_interval: float = _from("COORDINATION_MIRROR_INTERVAL")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataPlaneConfig:
    mode: str = _from("DATAPLANE")
    pin_dir: str = _from("BPF_PIN_DIR")
    max_entries: int = _from("MAP_MAX_ENTRIES")


@dataclasses.dataclass(frozen=True, kw_only=True)
class XdpConfig:
    interfaces: str = _from("XDP_INTERFACES")
    mode: str = _from("XDP_MODE")
    fail_open_after: float = _from("FAIL_OPEN_AFTER", note="in seconds; 0 = never fail open")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceConfig:
    kind: str = _from("SOURCE")
    file: str = _from("SOURCE_FILE")
    poll_interval: float = _from("SOURCE_POLL_INTERVAL")
    namespaces: tuple[str, ...] = _from("SOURCE_NAMESPACES")
    watch_timeout: float = _from("SOURCE_WATCH_TIMEOUT")
    backoff_base: float = _from("SOURCE_BACKOFF_BASE")
    backoff_cap: float = _from("SOURCE_BACKOFF_CAP")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """The leader's scaling loop (issue 8)."""

    report_interval: float = _from("TRAFFIC_REPORT_INTERVAL")
    report_window: float = _from("SCALE_REPORT_WINDOW")
    scale_up_cooldown: float = _from("SCALE_UP_COOLDOWN")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObserveConfig:
    """Logs, metrics and the console (issue 7). Ports are 0 when the feature is off."""

    log_format: str = _from("LOG_FORMAT")
    metrics_host: str = _from("METRICS_HOST")
    metrics_port: int = _from("METRICS_PORT")
    monitor_host: str = _from("AIOMONITOR_HOST")
    monitor_port: int = _from("AIOMONITOR_PORT")
    monitor_webui_port: int = _from("AIOMONITOR_WEBUI_PORT", also=("AIOMONITOR_PORT",))
    monitor_console_port: int = _from("AIOMONITOR_CONSOLE_PORT", also=("AIOMONITOR_PORT",))
    python_console: bool = _from("AIOMONITOR_PYTHON_CONSOLE")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    """Mutual TLS, cluster id, admin writes (gossip_agent.security). tls_* "" = plaintext."""

    tls_cert: str = _from("TLS_CERT")
    tls_key: str = _from("TLS_KEY")
    tls_ca: str = _from("TLS_CA")
    server_name: str = _from("TLS_SERVER_NAME")
    cluster_id: str = _from("CLUSTER_ID")
    admins: frozenset[str] = _from("ADMIN_IDENTITIES")
    health_port: int = _from("HEALTH_PORT", note="plaintext grpc.health.v1 only")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    profile: str = _from("PROFILE")
    log_level: str = _from("LOG_LEVEL")
    node: NodeConfig
    discovery: DiscoveryConfig
    gossip: GossipConfig
    lease: LeaseConfig
    dataplane: DataPlaneConfig
    source: SourceConfig
    xdp: XdpConfig
    observe: ObserveConfig
    security: SecurityConfig
    scaling: ScalingConfig


# What an unset variable without a default (values[...] None) gives a field of each type.
_UNSET = {"str": "", "tuple[str, ...]": (), "frozenset[str]": frozenset()}

_T = TypeVar("_T")


def _build(cls: type[_T], values: Mapping[str, Any], **derived: Any) -> _T:
    """One config dataclass, by keyword: each field from its variable's value (an unset one is
    the empty value of the field's type), except those `derived` gives."""
    fields = {}
    for name, variables in variables_of(cls).items():
        if name not in derived:
            value = values[variables[0].name]
            field_type = next(f.type for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                              if f.name == name)
            fields[name] = _UNSET.get(str(field_type), None) if value is None else value
    return cls(**fields, **derived)


def _raw_values(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    profile_text = env.get("PROFILE", "").strip().lower() or "cluster"
    profile = profile_text if profile_text in PROFILES else "cluster"
    values: dict[str, Any] = {}
    for variable in VARIABLES:
        text = env.get(variable.name, "")
        explicit = text.strip() != ""
        if not explicit:
            text = variable.defaults[profile]
        if text.strip() == "":
            values[variable.name] = None
            continue
        try:
            values[variable.name] = variable.parse(text)
        except ValueError as exc:
            problems.append(f"{variable.name}={text!r}: {exc}")
            values[variable.name] = None
    return values


def _backend(values: Mapping[str, Any], problems: list[str]) -> str:
    backend = str(values["COORDINATION_BACKEND"] or "bpffs").lower()
    if values["USE_BPF_FS_COORDINATION"] is True:
        if backend != "bpffs":
            problems.append(
                f"USE_BPF_FS_COORDINATION=true conflicts with COORDINATION_BACKEND={backend}"
            )
        backend = "bpffs"
    if backend in PLANNED_BACKENDS:
        problems.append(f"COORDINATION_BACKEND={backend}: not available in this version; "
                        f"use {' or '.join(BACKENDS)}")
    elif backend not in BACKENDS:
        problems.append(f"COORDINATION_BACKEND={backend!r}: must be one of {', '.join(BACKENDS)}")
    return backend


def _check_redis(values: Mapping[str, Any], backend: str, problems: list[str]) -> None:
    """The redis backend needs somewhere to connect and timers that keep the lease safe:
    renew interval < renew deadline < TTL, and the Redis timeout below the deadline."""
    if backend != "redis":
        return
    url_invalid = any(p.startswith("REDIS_URL=") for p in problems)
    if not values["REDIS_URL"] and not values["REDIS_SENTINELS"] and not url_invalid:
        problems.append("REDIS_URL: required when COORDINATION_BACKEND=redis "
                        "(or set REDIS_SENTINELS)")
    interval, deadline = values["LEASE_RENEW_INTERVAL"], values["LEASE_RENEW_DEADLINE"]
    ttl, timeout = values["LEASE_TTL"], values["REDIS_TIMEOUT"]
    if None in (interval, deadline, ttl, timeout):
        return  # already reported
    if not interval < deadline < ttl:
        problems.append(
            f"LEASE_RENEW_DEADLINE={deadline:g} must be above LEASE_RENEW_INTERVAL="
            f"{interval:g} and below LEASE_TTL={ttl:g}")
    if timeout >= deadline:
        problems.append(f"REDIS_TIMEOUT={timeout:g} must be below LEASE_RENEW_DEADLINE="
                        f"{deadline:g}")


def _redis_config(values: Mapping[str, Any], backend: str) -> RedisConfig | None:
    if backend != "redis":
        return None
    return _build(RedisConfig, values)


def _advertise(values: Mapping[str, Any], problems: list[str]) -> str:
    listen = values["LISTEN_ADDR"]
    if values["ADVERTISE_ADDR"]:
        return str(values["ADVERTISE_ADDR"])
    if listen is None:
        return ""
    host, port = parse_hostport(listen)
    if values["POD_IP"]:
        return join_hostport(values["POD_IP"], port)
    if _is_wildcard(host):
        problems.append(
            f"ADVERTISE_ADDR: required when LISTEN_ADDR={listen} listens on every interface "
            "(set ADVERTISE_ADDR or POD_IP)"
        )
        return ""
    return str(listen)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _service(values: Mapping[str, Any], problems: list[str]) -> tuple[str, int]:
    text = values["PEER_SERVICE"] or ""
    listen = values["LISTEN_ADDR"]
    default_port = parse_hostport(listen)[1] if listen else 0
    if not text:
        return "", default_port
    try:
        return addresses.parse_peer_service(text, default_port=default_port)
    except ValueError as exc:
        problems.append(f"PEER_SERVICE: {exc}")  # exc quotes the value
        return "", default_port


def _check_source(values: Mapping[str, Any], problems: list[str]) -> None:
    if values["SOURCE"] == "file" and not values["SOURCE_FILE"]:
        problems.append("SOURCE_FILE: required when SOURCE=file")
    base, cap = values["SOURCE_BACKOFF_BASE"], values["SOURCE_BACKOFF_CAP"]
    if base is not None and cap is not None and cap < base:
        problems.append(f"SOURCE_BACKOFF_CAP={cap:g} must be >= SOURCE_BACKOFF_BASE={base:g}")


def _check_backoff(values: Mapping[str, Any], problems: list[str]) -> None:
    base, cap = values["PEER_BACKOFF_BASE"], values["PEER_BACKOFF_CAP"]
    if base is not None and cap is not None and cap < base:
        problems.append(f"PEER_BACKOFF_CAP={cap:g} must be >= PEER_BACKOFF_BASE={base:g}")


def _check_kube_timing(backend: str, values: Mapping[str, Any], problems: list[str]) -> None:
    """client-go's rule: LeaseDuration > RenewDeadline > 1.2 x RetryPeriod (jitter); the leader
    must also get a renewal attempt in before its deadline."""
    duration, deadline = values["LEASE_DURATION"], values["LEASE_RENEW_DEADLINE"]
    retry, renew = values["LEASE_RETRY_INTERVAL"], values["LEASE_RENEW_INTERVAL"]
    if backend not in KUBE_BACKENDS or None in (duration, deadline, retry, renew):
        return
    if not duration > deadline:
        problems.append(f"LEASE_RENEW_DEADLINE={deadline:g} must be < LEASE_DURATION="
                        f"{duration} (client-go's rule)")
    if not deadline > 1.2 * max(retry, renew):
        problems.append(f"LEASE_RENEW_DEADLINE={deadline:g} must be > 1.2 x "
                        f"max(LEASE_RETRY_INTERVAL, LEASE_RENEW_INTERVAL)={max(retry, renew):g}")
def _check_monitor_ports(values: Mapping[str, Any], problems: list[str]) -> None:
    port = values["AIOMONITOR_PORT"]
    derived = not values["AIOMONITOR_WEBUI_PORT"] or not values["AIOMONITOR_CONSOLE_PORT"]
    if port and derived and port > 65533:
        problems.append(f"AIOMONITOR_PORT={port}: must be <= 65533 when the web UI and Python "
                        "console ports are derived from it (+1, +2)")


def _check_scaling(values: Mapping[str, Any], problems: list[str]) -> None:
    interval, window = values["TRAFFIC_REPORT_INTERVAL"], values["SCALE_REPORT_WINDOW"]
    if interval is not None and window is not None and window < 2 * interval:
        problems.append(f"SCALE_REPORT_WINDOW={window:g}: must be at least 2x "
                        f"TRAFFIC_REPORT_INTERVAL ({2 * interval:g} seconds)")


def from_env(env: Mapping[str, str], *, hostname: str = "localhost") -> Config:
    """The validated configuration, or ConfigError listing every bad variable."""
    problems: list[str] = []
    values = _raw_values(env, problems)
    backend = _backend(values, problems)
    if backend in KUBE_BACKENDS and not env.get("LEASE_RENEW_DEADLINE", "").strip():
        values["LEASE_RENEW_DEADLINE"] = KUBE_RENEW_DEADLINE[values["PROFILE"] or "cluster"]
    advertise = _advertise(values, problems)
    service, service_port = _service(values, problems)
    _check_source(values, problems)
    _check_backoff(values, problems)
    _check_redis(values, backend, problems)
    _check_kube_timing(backend, values, problems)
    _check_monitor_ports(values, problems)
    _check_tls(values, problems)
    _check_scaling(values, problems)
    if problems:
        raise errors.ConfigError(problems)
    return _build(
        Config, values,
        node=_build(NodeConfig, values, name=values["NODE_NAME"] or hostname,
                    advertise_addr=advertise),
        discovery=_build(DiscoveryConfig, values, service=service, service_port=service_port),
        gossip=_build(GossipConfig, values),
        lease=_build(LeaseConfig, values, backend=backend,
                     lease_dir=values["BPF_LEASE_DIR"] or values["BPF_PIN_DIR"],
                     redis=_redis_config(values, backend)),
        dataplane=_build(DataPlaneConfig, values),
        source=_build(SourceConfig, values),
        xdp=_build(XdpConfig, values),
        observe=_observe(values),
        scaling=_build(ScalingConfig, values),
        security=_build(SecurityConfig, values),
    )


_TLS_FILES = ("TLS_CERT", "TLS_KEY", "TLS_CA")


def _check_tls(values: Mapping[str, Any], problems: list[str]) -> None:
    """Mutual TLS needs all three files; two of three would silently fall back to plaintext."""
    given = [name for name in _TLS_FILES if values[name]]
    if given and len(given) < len(_TLS_FILES):
        missing = [name for name in _TLS_FILES if not values[name]]
        problems.append(f"{', '.join(missing)}: required with {', '.join(given)} (mutual TLS "
                        "needs a certificate, its key and the CA)")


def _observe(values: Mapping[str, Any]) -> ObserveConfig:
    """aiomonitor's own convention: web UI and Python console on the two ports after the
    console's, unless given."""
    port = values["AIOMONITOR_PORT"]
    return _build(
        ObserveConfig, values,
        monitor_webui_port=values["AIOMONITOR_WEBUI_PORT"] or (port + 1 if port else 0),
        monitor_console_port=values["AIOMONITOR_CONSOLE_PORT"] or (port + 2 if port else 0),
    )


def markdown_table() -> str:
    """The README's env var table, generated so it cannot drift from the code."""
    lines = [
        "| Variable | Unit | Default (cluster / local) | Why |",
        "|---|---|---|---|",
    ]
    for v in VARIABLES:
        cluster, local = v.defaults["cluster"] or "-", v.defaults["local"] or "-"
        default = f"`{cluster}`" if cluster == local else f"`{cluster}` / `{local}`"
        lines.append(f"| `{v.name}` | {v.unit} | {default} | {v.why} |")
    return "\n".join(lines)
