"""The agent's security wiring from SecurityConfig: one place that decides plaintext or mutual
TLS, and builds the server credentials, the client channel factory, the Gossip checks
(membership, cluster id) and the admin policy from it."""

from __future__ import annotations

import collections
import dataclasses
import logging
import ssl
from typing import Protocol

import grpc
import grpc.aio

from gossip_agent import config as config_mod
from gossip_agent.security import cluster, identity, members, tls

log = logging.getLogger("gossip_agent.security")

PLAINTEXT_NOTE = ("plaintext: no mutual TLS (TLS_CERT/TLS_KEY/TLS_CA unset); any process that "
                  "reaches the port can gossip and write")


class _HasRejected(Protocol):
    rejected: collections.Counter[str]


@dataclasses.dataclass
class Security:
    cfg: config_mod.SecurityConfig
    files: tls.TlsFiles | None
    channels: tls.ChannelFactory
    policy: identity.Policy

    @classmethod
    def build(cls, cfg: config_mod.SecurityConfig) -> Security:
        """Raises tls.TlsError naming the variable when a file does not load."""
        files = (tls.TlsFiles(cert=cfg.tls_cert, key=cfg.tls_key, ca=cfg.tls_ca,
                              server_name=cfg.server_name) if cfg.tls else None)
        return cls(cfg=cfg, files=files, channels=tls.ChannelFactory(files),
                   policy=identity.Policy(enforced=files is not None, admins=cfg.admins,
                                          member_name=cfg.server_name))

    @property
    def note(self) -> str:
        return "" if self.files is not None else PLAINTEXT_NOTE

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((cluster.CLUSTER_KEY, self.cfg.cluster_id),)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        return None if self.files is None else tls.server_credentials(self.files)

    def push_context(self) -> ssl.SSLContext | None:
        """The push port's server TLS (api/pushport.py), or None for plaintext."""
        return None if self.files is None else tls.server_ssl_context(self.files)

    def gossip_checks(
        self, stats: _HasRejected
    ) -> tuple[grpc.aio.ServerInterceptor, ...]:  # type: ignore[type-arg]
        """The server's interceptors, in the order they judge a Gossip call: membership first
        (a non-member is refused as such whatever cluster id it sends), then the cluster id."""
        return (self.member_check(stats), self.cluster_check(stats))

    def member_check(self, stats: _HasRejected) -> members.MembersOnly:
        def refused() -> None:
            stats.rejected[members.REASON] += 1

        return members.MembersOnly(policy=self.policy, on_refused=refused)

    def cluster_check(self, stats: _HasRejected) -> cluster.ClusterCheck:
        def refused() -> None:
            stats.rejected["cluster"] += 1

        return cluster.ClusterCheck(cluster_id=self.cfg.cluster_id, on_refused=refused)

    def announce(self) -> None:
        if self.files is None:
            log.warning("%s", PLAINTEXT_NOTE, extra={"tls": False})
            return
        log.info("mutual TLS on: certificate %s, CA %s, peers checked as %s; admins: %s; "
                 "cluster id %s", self.files.cert, self.files.ca, self.files.server_name,
                 ", ".join(sorted(self.cfg.admins)) or "(none)",
                 self.cfg.cluster_id or "(none)", extra={"tls": True})
