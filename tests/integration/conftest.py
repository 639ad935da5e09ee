"""Fixtures shared by the integration tests: certificates (lab.certs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gossip_agent.security import tls
from lab import certs


@dataclasses.dataclass
class Pki:
    directory: Path
    ca: certs.Authority
    other: certs.Authority

    def factory(self, leaf: certs.Issued, *, ca: Path | None = None) -> tls.ChannelFactory:
        return tls.ChannelFactory(tls.TlsFiles(cert=str(leaf.cert), key=str(leaf.key),
                                               ca=str(ca or self.ca.cert)))

    def agent_env(self, count: int) -> dict[int, dict[str, str]]:
        return {i: certs.tls_env(ca=self.ca, leaf=self.ca.issue(self.directory, f"node-{i}"))
                for i in range(count)}

    @property
    def admin(self) -> tls.ChannelFactory:
        return self.factory(self.ca.issue(self.directory, "gossip-agent-admin", dns=()))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    return Pki(directory, certs.authority(directory),
               certs.authority(directory / "other", "other-ca"))
