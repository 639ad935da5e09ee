"""config.from_env: defaults per profile, every problem reported at once, derived values."""

from __future__ import annotations

import dataclasses

import pytest

from gossip_agent import config, errors

pytestmark = pytest.mark.unit

# The smallest valid cluster environment: the DaemonSet always sets POD_IP (Downward API), and
# without it a wildcard LISTEN_ADDR has no address to advertise.
CLUSTER_ENV = {"POD_IP": "10.0.0.5"}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_env(env)
    return caught.value.problems


def test_cluster_profile_is_the_default_and_has_cluster_timers() -> None:
    cfg = config.from_env(CLUSTER_ENV, hostname="node-a")
    assert cfg.profile == "cluster"
    assert cfg.node.name == "node-a"
    assert cfg.node.listen_addr == "0.0.0.0:50051"
    assert cfg.gossip.interval == 1.0
    assert cfg.gossip.coalesce_window == 0.02
    assert cfg.gossip.rpc_timeout == 2.0
    assert (cfg.gossip.backoff_base, cfg.gossip.backoff_cap) == (0.2, 5.0)
    assert cfg.gossip.max_message_bytes == 1048576
    assert cfg.discovery.interval == 10.0
    assert (cfg.lease.retry_interval, cfg.lease.renew_interval) == (0.5, 1.0)
    assert cfg.lease.backend == "bpffs"
    assert cfg.dataplane.mode == "bpf"
    assert cfg.dataplane.pin_dir == "/sys/fs/bpf/gossip-agent"
    assert cfg.dataplane.max_entries == 1024
    assert cfg.source.kind == "api"
    assert cfg.log_level == "info"


def test_local_profile_has_short_timers_loopback_and_allows_a_memory_dataplane() -> None:
    cfg = config.from_env({"PROFILE": "local"})
    assert cfg.profile == "local"
    assert cfg.node.listen_addr == "127.0.0.1:50051"
    assert cfg.node.advertise_addr == "127.0.0.1:50051"
    assert cfg.gossip.interval == 1.0  # same as cluster: anti-entropy is background repair
    assert cfg.gossip.coalesce_window == 0.005
    assert (cfg.lease.retry_interval, cfg.lease.renew_interval) == (0.2, 0.5)
    assert cfg.discovery.interval == 2.0
    assert cfg.dataplane.mode == "auto"
    assert cfg.source.poll_interval == 0.2


def test_every_variable_has_a_default_for_every_profile_that_parses() -> None:
    for variable in config.VARIABLES:
        assert set(variable.defaults) == set(config.PROFILES), variable.name
        for profile, text in variable.defaults.items():
            if text:
                variable.parse(text)  # raises if a default breaks its own rule
            assert variable.why, f"{variable.name} ({profile}) says nothing about why"


def test_profile_is_case_insensitive() -> None:
    assert config.from_env({"PROFILE": " Local "}).profile == "local"


def test_an_explicit_value_overrides_the_profile_default() -> None:
    cfg = config.from_env({"PROFILE": "local", "GOSSIP_INTERVAL": "3"})
    assert cfg.gossip.interval == 3.0


def test_empty_values_mean_the_default() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "GOSSIP_INTERVAL": "  ", "BPF_LEASE_DIR": ""})
    assert cfg.gossip.interval == 1.0
    assert cfg.lease.lease_dir == cfg.dataplane.pin_dir


def test_every_invalid_variable_is_reported_at_once_each_by_name() -> None:
    bad = {
        "PROFILE": "wan",
        "LISTEN_ADDR": "nowhere",
        "GOSSIP_INTERVAL": "0",
        "RPC_TIMEOUT": "soon",
        "MAX_MESSAGE_BYTES": "12",
        "MAP_MAX_ENTRIES": "-1",
        "DATAPLANE": "ebpf",
        "SOURCE": "etcd",
        "LOG_LEVEL": "loud",
        "BPF_PIN_DIR": "relative/dir",
        "PEERS": "10.0.0.1:7946, no-port",
        "USE_BPF_FS_COORDINATION": "maybe",
    }
    problems = problems_of(bad)
    for name in bad:
        assert any(p.startswith(name) for p in problems), (name, problems)
    assert len(problems) == len(bad), problems


def test_a_problem_names_the_allowed_range() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "GOSSIP_INTERVAL": "9999"})
    assert "GOSSIP_INTERVAL" in problem
    assert "between 0.01 and 600 seconds" in problem


def test_config_error_message_lists_every_problem() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_env({**CLUSTER_ENV, "GOSSIP_INTERVAL": "x", "LOG_LEVEL": "loud"})
    assert "GOSSIP_INTERVAL" in str(caught.value)
    assert "LOG_LEVEL" in str(caught.value)


def test_backoff_cap_below_base_is_reported() -> None:
    (problem,) = problems_of(
        {**CLUSTER_ENV, "PEER_BACKOFF_BASE": "2", "PEER_BACKOFF_CAP": "1"})
    assert "PEER_BACKOFF_CAP" in problem and "PEER_BACKOFF_BASE" in problem


# -- backend ------------------------------------------------------------------------------------


def test_use_bpf_fs_coordination_true_is_an_alias_for_the_bpffs_backend() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "USE_BPF_FS_COORDINATION": "true"})
    assert cfg.lease.backend == "bpffs"
    both = {**CLUSTER_ENV, "USE_BPF_FS_COORDINATION": "true", "COORDINATION_BACKEND": "bpffs"}
    assert config.from_env(both).lease.backend == "bpffs"


def test_use_bpf_fs_coordination_false_changes_nothing() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "USE_BPF_FS_COORDINATION": "false"})
    assert cfg.lease.backend == "bpffs"


def test_use_bpf_fs_coordination_with_another_backend_is_a_conflict() -> None:
    problems = problems_of(
        {**CLUSTER_ENV, "USE_BPF_FS_COORDINATION": "true", "COORDINATION_BACKEND": "redis"})
    assert any("USE_BPF_FS_COORDINATION" in p and "COORDINATION_BACKEND=redis" in p
               for p in problems), problems


def test_unknown_backend_is_refused_naming_the_allowed_ones() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "etcd"})
    assert "COORDINATION_BACKEND" in problem and "bpffs" in problem


def test_backend_name_is_case_insensitive() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "COORDINATION_BACKEND": "BPFFS"})
    assert cfg.lease.backend == "bpffs"


# -- addresses ----------------------------------------------------------------------------------


def test_advertise_addr_is_pod_ip_with_the_listen_port() -> None:
    cfg = config.from_env({"POD_IP": "10.0.0.5", "LISTEN_ADDR": "0.0.0.0:7000"})
    assert cfg.node.advertise_addr == "10.0.0.5:7000"


def test_advertise_addr_brackets_an_ipv6_pod_ip() -> None:
    cfg = config.from_env({"POD_IP": "fd00::5", "LISTEN_ADDR": "[::]:50051"})
    assert cfg.node.advertise_addr == "[fd00::5]:50051"


def test_explicit_advertise_addr_wins_over_pod_ip() -> None:
    cfg = config.from_env({"POD_IP": "10.0.0.5", "ADVERTISE_ADDR": "agent-a.example:9000"})
    assert cfg.node.advertise_addr == "agent-a.example:9000"


def test_a_specific_listen_addr_is_advertised_as_is() -> None:
    cfg = config.from_env({"LISTEN_ADDR": "127.0.0.7:50052"})
    assert cfg.node.advertise_addr == "127.0.0.7:50052"


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051"])
def test_wildcard_listen_addr_without_pod_ip_or_advertise_addr_is_an_error(listen: str) -> None:
    (problem,) = problems_of({"LISTEN_ADDR": listen})
    assert problem.startswith("ADVERTISE_ADDR")
    assert "POD_IP" in problem


def test_peers_are_normalised_and_deduplicated() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "PEERS": "10.0.0.1:1, 10.0.0.2:2 10.0.0.1:1"})
    assert cfg.discovery.peers == ("10.0.0.1:1", "10.0.0.2:2")


def test_peer_service_port_defaults_to_the_listen_port() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "LISTEN_ADDR": "0.0.0.0:6000",
                           "PEER_SERVICE": "gossip-agent.default.svc.cluster.local"})
    assert cfg.discovery.service == "gossip-agent.default.svc.cluster.local"
    assert cfg.discovery.service_port == 6000


def test_peer_service_with_a_port_uses_that_port() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "PEER_SERVICE": "gossip-agent.kube-system:7946"})
    assert cfg.discovery.service == "gossip-agent.kube-system"
    assert cfg.discovery.service_port == 7946


@pytest.mark.parametrize("value", ["gossip-agent:0", "gossip-agent:70000", "gossip-agent:grpc"])
def test_peer_service_with_a_bad_port_is_reported(value: str) -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "PEER_SERVICE": value})
    assert problem.startswith("PEER_SERVICE") and "1 to 65535" in problem


def test_no_peer_service_means_no_dns_discovery() -> None:
    assert config.from_env(CLUSTER_ENV).discovery.service == ""


# -- source and paths ---------------------------------------------------------------------------


def test_source_file_requires_source_file() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "SOURCE": "file"})
    assert problem.startswith("SOURCE_FILE") and "SOURCE=file" in problem


def test_source_file_with_a_path_is_valid() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "SOURCE": "FILE", "SOURCE_FILE": "/etc/svc.yaml"})
    assert (cfg.source.kind, cfg.source.file) == ("file", "/etc/svc.yaml")


def test_lease_dir_defaults_to_the_pin_dir_and_trailing_slashes_are_dropped() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "BPF_PIN_DIR": "/sys/fs/bpf/agent-a/"})
    assert cfg.dataplane.pin_dir == "/sys/fs/bpf/agent-a"
    assert cfg.lease.lease_dir == "/sys/fs/bpf/agent-a"


def test_a_separate_lease_dir_is_kept() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "BPF_LEASE_DIR": "/sys/fs/bpf/shared"})
    assert cfg.lease.lease_dir == "/sys/fs/bpf/shared"


def test_from_env_reads_only_the_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIP_INTERVAL", "not a number")
    assert config.from_env(CLUSTER_ENV).gossip.interval == 1.0


def test_unknown_variables_are_ignored() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "POD_NAMESPACE": "default", "HOME": "/root"})
    assert cfg.profile == "cluster"


def test_markdown_table_has_one_row_per_variable() -> None:
    rows = config.markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [v.name for v in config.VARIABLES]


def test_kubernetes_source_watches_all_namespaces_unless_told_otherwise() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "SOURCE": "kubernetes"})
    assert cfg.source.kind == "kubernetes"
    assert cfg.source.namespaces == ()
    assert (cfg.source.watch_timeout, cfg.source.backoff_base, cfg.source.backoff_cap) == (
        300.0, 0.5, 30.0)
    narrowed = config.from_env({**CLUSTER_ENV, "SOURCE": "kubernetes",
                                "SOURCE_NAMESPACES": " shop, web ,shop,"})
    assert narrowed.source.namespaces == ("shop", "web")


def test_kubernetes_source_settings_are_checked_and_named() -> None:
    problems = problems_of({**CLUSTER_ENV, "SOURCE_NAMESPACES": "shop,Web_1",
                            "SOURCE_BACKOFF_BASE": "5", "SOURCE_BACKOFF_CAP": "1",
                            "SOURCE_WATCH_TIMEOUT": "0"})
    assert len(problems) == 3
    assert any(p.startswith("SOURCE_NAMESPACES=") and "'Web_1'" in p for p in problems)
    assert any(p.startswith("SOURCE_WATCH_TIMEOUT=") for p in problems)
    assert any(p.startswith("SOURCE_BACKOFF_CAP=1 must be >= SOURCE_BACKOFF_BASE=5")
               for p in problems)


# -- the redis backend -------------------------------------------------------------------------


def test_redis_backend_reads_url_prefix_and_timers() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis",
                           "REDIS_URL": "rediss://:pw@redis:6380/2", "REDIS_KEY_PREFIX": "c1:"})
    assert cfg.lease.backend == "redis"
    assert cfg.lease.redis is not None
    assert (cfg.lease.redis.url, cfg.lease.redis.key_prefix) == ("rediss://:pw@redis:6380/2", "c1:")
    assert cfg.lease.renew_interval < cfg.lease.renew_deadline < cfg.lease.ttl
    assert cfg.lease.redis.timeout < cfg.lease.renew_deadline


def test_redis_backend_without_url_or_sentinels_is_refused_naming_redis_url() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis"})
    assert problem.startswith("REDIS_URL: required")


def test_redis_sentinels_replace_the_url() -> None:
    cfg = config.from_env({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis",
                           "REDIS_SENTINELS": "s1:26379,s2:26379",
                           "REDIS_SENTINEL_MASTER": "coord"})
    assert cfg.lease.redis is not None
    assert cfg.lease.redis.sentinels == ("s1:26379", "s2:26379")
    assert cfg.lease.redis.sentinel_master == "coord"


def test_a_redis_url_with_another_scheme_is_refused() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis",
                              "REDIS_URL": "http://redis:6379"})
    assert problem.startswith("REDIS_URL=") and "redis://" in problem


@pytest.mark.parametrize(("deadline", "ttl"), [("5", "5"), ("0.5", "5"), ("6", "5")])
def test_a_renew_deadline_outside_interval_and_ttl_is_refused(deadline: str, ttl: str) -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis",
                              "REDIS_URL": "redis://r:6379", "LEASE_RENEW_INTERVAL": "1",
                              "REDIS_TIMEOUT": "0.1", "LEASE_RENEW_DEADLINE": deadline,
                              "LEASE_TTL": ttl})
    assert problem.startswith(f"LEASE_RENEW_DEADLINE={deadline}")


def test_a_redis_timeout_beyond_the_renew_deadline_is_refused() -> None:
    (problem,) = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "redis",
                              "REDIS_URL": "redis://r:6379", "REDIS_TIMEOUT": "4"})
    assert problem.startswith("REDIS_TIMEOUT=4")


# -- Kubernetes backends (issue 6) --------------------------------------------------------------

@pytest.mark.parametrize("backend", config.KUBE_BACKENDS)
def test_kubernetes_backends_are_accepted_with_client_go_default_timing(backend: str) -> None:
    cfg = config.from_env({**CLUSTER_ENV, "COORDINATION_BACKEND": backend})
    assert cfg.lease.backend == backend
    assert (cfg.lease.duration, cfg.lease.renew_deadline) == (15, 10.0)
    assert cfg.lease.configmap == "ebpf-service-list" and cfg.lease.namespace == ""


def test_kubernetes_names_are_validated_naming_the_variable() -> None:
    problems = problems_of({**CLUSTER_ENV, "COORDINATION_BACKEND": "configmap",
                            "COORDINATION_CONFIGMAP": "Bad_Name",
                            "COORDINATION_NAMESPACE": "-x"})
    assert any(p.startswith("COORDINATION_CONFIGMAP=") for p in problems), problems
    assert any(p.startswith("COORDINATION_NAMESPACE=") for p in problems), problems


@pytest.mark.parametrize(("duration", "deadline", "retry", "expected"), [
    ("10", "10", "0.5", "LEASE_RENEW_DEADLINE=10 must be < LEASE_DURATION=10"),
    ("15", "1", "1", "LEASE_RENEW_DEADLINE=1 must be > 1.2 x"),
])
def test_client_go_timing_rule_is_enforced_for_kubernetes_backends(
        duration: str, deadline: str, retry: str, expected: str) -> None:
    env = {**CLUSTER_ENV, "LEASE_DURATION": duration, "LEASE_RENEW_DEADLINE": deadline,
           "LEASE_RETRY_INTERVAL": retry}
    problems = problems_of({**env, "COORDINATION_BACKEND": "lease"})
    assert any(expected in p for p in problems), problems
    assert config.from_env(env).lease.backend == "bpffs"  # bpffs does not use these timers


CONFIG_CLASSES = (config.Config, config.NodeConfig, config.DiscoveryConfig, config.GossipConfig,
                  config.RedisConfig, config.LeaseConfig, config.DataPlaneConfig,
                  config.XdpConfig, config.SourceConfig, config.ScalingConfig,
                  config.ObserveConfig, config.SecurityConfig)


def test_every_config_field_is_documented_by_its_variable_and_every_variable_sets_a_field(
) -> None:
    """Units, defaults and reasons live once, in VARIABLES: each field that is not a group of
    fields carries its variable's entry, and no variable is declared for nothing."""
    used: set[str] = set()
    for cls in CONFIG_CLASSES:
        documented = config.variables_of(cls)
        for field in dataclasses.fields(cls):
            if field.name in documented:
                assert all(v in config.VARIABLES for v in documented[field.name])
                used.update(v.name for v in documented[field.name])
            else:  # a group: one of the config dataclasses, never a plain value
                assert str(field.type).removesuffix(" | None") in {
                    c.__name__ for c in CONFIG_CLASSES}, (cls.__name__, field.name)
    assert used == config.NAMES


def test_config_dataclasses_are_built_by_keyword_only() -> None:
    cfg = config.from_env({"PROFILE": "local"})
    with pytest.raises(TypeError):
        config.ScalingConfig(5.0, 15.0, 5.0)  # type: ignore[misc]
    assert config.ScalingConfig(**dataclasses.asdict(cfg.scaling)) == cfg.scaling
