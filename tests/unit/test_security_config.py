"""Security configuration (config.SecurityConfig) and the admin policy (security/identity.py):
pure functions, no I/O."""

from __future__ import annotations

import pytest

from gossip_agent import config, errors
from gossip_agent.security import identity

pytestmark = pytest.mark.unit

BASE = {"PROFILE": "local", "LISTEN_ADDR": "127.0.0.1:50051"}


def test_without_tls_variables_the_agent_is_plaintext_with_the_default_admin_name() -> None:
    security = config.from_env(BASE).security
    assert not security.tls
    assert security.admins == frozenset({"gossip-agent-admin"})
    assert security.server_name == "gossip-agent" and security.cluster_id == ""
    assert security.health_port == 0


def test_tls_needs_all_three_files_and_names_the_missing_ones() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_env({**BASE, "TLS_CERT": "/etc/tls/tls.crt"})
    (problem,) = caught.value.problems
    assert problem.startswith("TLS_KEY, TLS_CA: required with TLS_CERT")


def test_bad_cluster_id_and_relative_tls_paths_are_each_reported() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_env({**BASE, "CLUSTER_ID": "has space", "TLS_CERT": "tls.crt",
                         "TLS_KEY": "/k", "TLS_CA": "/c"})
    problems = "\n".join(caught.value.problems)
    assert "CLUSTER_ID='has space'" in problems and "TLS_CERT='tls.crt'" in problems


def test_full_tls_configuration_parses_admin_list_and_health_port() -> None:
    security = config.from_env({**BASE, "TLS_CERT": "/t/c", "TLS_KEY": "/t/k", "TLS_CA": "/t/a",
                                "ADMIN_IDENTITIES": " ops , admin@example.com,",
                                "CLUSTER_ID": "prod-eu.1", "HEALTH_PORT": "50052"}).security
    assert security.tls and security.admins == frozenset({"ops", "admin@example.com"})
    assert security.cluster_id == "prod-eu.1" and security.health_port == 50052


POLICY = identity.Policy(enforced=True, admins=frozenset({"gossip-agent-admin"}),
                         member_name="gossip-agent")


def test_a_certificate_naming_an_admin_may_write() -> None:
    decision = POLICY.authorise_write(names=frozenset({"gossip-agent-admin"}), metadata={},
                                      peer="ipv4:10.0.0.5:1")
    assert decision.allowed and decision.caller == "gossip-agent-admin"


def test_a_member_may_forward_an_admins_name_but_nobody_else_may_claim_one() -> None:
    forwarded = {identity.FORWARDED_FOR: "gossip-agent-admin"}
    member = POLICY.authorise_write(names=frozenset({"node-a", "gossip-agent"}),
                                    metadata=forwarded, peer="ipv4:10.0.0.6:1")
    assert member.allowed and member.caller == "gossip-agent-admin"
    outsider = POLICY.authorise_write(names=frozenset({"reader"}), metadata=forwarded,
                                      peer="ipv4:10.0.0.7:1")
    assert not outsider.allowed and "ipv4:10.0.0.7:1 [reader]" in outsider.reason
    lying_member = POLICY.authorise_write(names=frozenset({"gossip-agent"}),
                                          metadata={identity.FORWARDED_FOR: "someone"},
                                          peer="p")
    assert not lying_member.allowed


def test_a_member_without_a_forwarded_admin_is_refused_and_plaintext_is_open() -> None:
    assert not POLICY.authorise_write(names=frozenset({"gossip-agent"}), metadata={},
                                      peer="p").allowed
    open_policy = identity.Policy(enforced=False, admins=frozenset(), member_name="")
    assert open_policy.authorise_write(names=frozenset(), metadata={}, peer="p").allowed


def test_names_come_from_the_common_name_and_every_subject_alternative_name() -> None:
    names = identity.names_of({"x509_common_name": [b"node-a"],
                               "x509_subject_alternative_name": [b"gossip-agent", b"10.0.0.1"],
                               "transport_security_type": [b"ssl"]})
    assert names == frozenset({"node-a", "gossip-agent", "10.0.0.1"})


@pytest.mark.parametrize(("auth_context", "member"), [
    ({"x509_common_name": [b"gossip-agent"]}, True),  # k8s/tls's agent certificate: CN
    ({"x509_common_name": [b"node-a"], "x509_subject_alternative_name": [b"gossip-agent"]},
     True),  # the test certificates: a DNS SAN
    ({"x509_common_name": [b"gossip-agent-admin"]}, False),  # k8s/tls's admin certificate
    ({"x509_common_name": [b"reader"],
      "x509_subject_alternative_name": [b"gossip-agent.example", b"gossip-agent-x"]}, False),
    ({"transport_security_type": [b"insecure"]}, False),  # plaintext: no names at all
])
def test_a_member_carries_the_shared_name_and_only_a_member_forwards_an_admins_name(
    auth_context: dict[str, list[bytes]], member: bool
) -> None:
    """One test of membership (Policy.is_member) for gossip and for forwarded writes: the
    forwarded name ("ops") is taken exactly when the caller is a member."""
    policy = identity.Policy(enforced=True, admins=frozenset({"gossip-agent-admin", "ops"}),
                             member_name="gossip-agent")
    names = identity.names_of(auth_context)
    assert policy.is_member(names) is member
    decision = policy.authorise_write(names=names, metadata={identity.FORWARDED_FOR: "ops"},
                                      peer="ipv4:10.0.0.8:1")
    assert (decision.allowed and decision.caller == "ops") is member


def test_without_a_shared_name_nobody_is_a_member() -> None:
    unnamed = identity.Policy(enforced=True, admins=frozenset(), member_name="")
    assert not unnamed.is_member(frozenset({""}))
