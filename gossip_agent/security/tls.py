"""Mutual TLS for every gRPC port, with grpcio's own TLS, reloaded when the files change.

Files (TLS_CERT, TLS_KEY, TLS_CA) are PEM and usually mounted from a Kubernetes Secret, which
the kubelet updates by swapping a symlink: a reader sees the old set or the new set, never a
mix. Rotation needs no restart:
- server: grpc.dynamic_ssl_server_credentials calls our fetcher before each new handshake; the
  fetcher stats the three files (a few microseconds) and hands grpc a new configuration only
  when one changed. Connections already established keep the session they negotiated.
- client: channels carry their credentials for life, so ChannelFactory notices a change (at
  most one stat round per CHECK_INTERVAL) and bumps `generation`; the transport then drops its
  channels and streams and opens new ones with the new files.
A set of files that does not load (a half-written copy, a key that does not match) is logged
and ignored: the previous certificates stay in use.

Peers are addressed by IP, so the peer's certificate is checked against one shared name
(TLS_SERVER_NAME, default `gossip-agent`) that every agent certificate carries as a DNS SAN,
not against the address (grpc's ssl_target_name_override).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
import time
from collections.abc import Callable

import grpc
import grpc.aio

from gossip_agent import errors

log = logging.getLogger("gossip_agent.tls")

# How often clients look at the files: rotation is rare (days), a few seconds of delay is fine.
CHECK_INTERVAL = 1.0


class TlsError(errors.GossipAgentError):
    """The configured files cannot be read or do not form a usable set."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str
    server_name: str = "gossip-agent"


@dataclasses.dataclass(frozen=True)
class Material:
    cert: bytes
    key: bytes
    ca: bytes


Stamp = tuple[tuple[int, int, int], ...]


def stamp(files: TlsFiles) -> Stamp:
    """What changes when a file is replaced: (inode, size, mtime) of each resolved path."""
    result = []
    for path in (files.cert, files.key, files.ca):
        try:
            info = os.stat(path)
        except OSError:
            result.append((0, 0, 0))
            continue
        result.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(result)


def load(files: TlsFiles) -> Material:
    """Reads the three PEM files; TlsError naming the file when one is missing or not PEM."""
    parts: list[bytes] = []
    for variable, path in (("TLS_CERT", files.cert), ("TLS_KEY", files.key),
                           ("TLS_CA", files.ca)):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise TlsError(f"{variable} {path}: cannot read ({exc.strerror})") from exc
        if b"-----BEGIN " not in data:
            raise TlsError(f"{variable} {path}: not a PEM file")
        parts.append(data)
    return Material(cert=parts[0], key=parts[1], ca=parts[2])


def _server_config(material: Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.ca)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Requires a client certificate signed by TLS_CA; follows the files as they change."""
    current = stamp(files)
    initial = _server_config(load(files))

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        nonlocal current
        now = stamp(files)
        if now == current:
            return None  # grpc keeps the configuration it has
        current = now
        try:
            config = _server_config(load(files))
        except (TlsError, RuntimeError, ValueError) as exc:
            log.error("TLS files changed but do not load; keeping the previous ones: %s", exc)
            return None
        log.info("TLS files changed: new handshakes use the new certificates")
        return config

    # grpc-stubs says the fetcher returns a configuration; grpc documents None as "unchanged".
    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=True)  # type: ignore[arg-type]


def _ssl_context(files: TlsFiles, purpose: int) -> ssl.SSLContext:
    """The push port's TLS (gossip/pushlink.py, api/pushport.py): the same files and checks as
    the gRPC port's: our certificate, peers' certificates signed by TLS_CA and required both
    ways, TLS 1.2 at least. Raises TlsError naming the problem when the files do not load."""
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TlsError(f"TLS_CERT/TLS_KEY/TLS_CA do not load for the push port: {exc}") from exc
    return context


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The push port's server side, following the files as they change: before each handshake
    (the SNI callback: our clients always name TLS_SERVER_NAME), the files are stat'ed and,
    when they changed, the connection is switched to a context built from the new ones."""
    current = {"stamp": stamp(files), "context": _ssl_context(files, ssl.PROTOCOL_TLS_SERVER)}

    def newest(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        now = stamp(files)
        if now != current["stamp"]:
            current["stamp"] = now
            try:
                current["context"] = _ssl_context(files, ssl.PROTOCOL_TLS_SERVER)
                log.info("TLS files changed: new push-port handshakes use the new certificates")
            except TlsError as exc:
                log.error("TLS files changed but do not load; keeping the previous ones: %s",
                          exc)
        context = current["context"]
        assert isinstance(context, ssl.SSLContext)
        if connection.context is not context:
            connection.context = context

    first = current["context"]
    assert isinstance(first, ssl.SSLContext)
    first.sni_callback = newest
    return first


def peer_names(certificate: object) -> frozenset[str]:
    """identity.names_of for a certificate as ssl.SSLObject.getpeercert() gives it: the subject
    common name and every subject alternative name."""
    if not isinstance(certificate, dict):
        return frozenset()
    names = {value for rdn in certificate.get("subject", ()) for key, value in rdn
             if key == "commonName"}
    names.update(value for _, value in certificate.get("subjectAltName", ()))
    return frozenset(names)


class ChannelFactory:
    """Opens client channels: TLS with this agent's certificate when configured, else plaintext.

    `generation` increases when the files change; callers holding channels compare it with the
    one they opened them at (GrpcTransport drops and reopens its channels).
    """

    def __init__(self, files: TlsFiles | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.files = files
        self.generation = 0
        self._clock = clock
        self._checked = clock()
        self._stamp: Stamp = ()
        self._credentials: grpc.ChannelCredentials | None = None
        self._ssl: tuple[int, ssl.SSLContext] | None = None  # (generation, push-port client)
        if files is not None:
            self._stamp = stamp(files)
            self._credentials = _channel_credentials(load(files))

    @property
    def secure(self) -> bool:
        return self.files is not None

    def check(self) -> int:
        """Re-reads the files when they changed (at most once per CHECK_INTERVAL)."""
        files = self.files
        now = self._clock()
        if files is None or now - self._checked < CHECK_INTERVAL:
            return self.generation
        self._checked = now
        current = stamp(files)
        if current == self._stamp:
            return self.generation
        self._stamp = current
        try:
            self._credentials = _channel_credentials(load(files))
        except TlsError as exc:
            log.error("TLS files changed but do not load; keeping the previous ones: %s", exc)
            return self.generation
        self.generation += 1
        log.info("TLS files changed: reopening peer channels with the new certificates")
        return self.generation

    def ssl_context(self) -> ssl.SSLContext | None:
        """The push port's client side (None: plaintext): built again when `generation` moves,
        so new connections use the files the channels use. The server is checked against
        TLS_SERVER_NAME, as grpc's ssl_target_name_override does on the gRPC port."""
        self.check()
        if self.files is None:
            return None
        if self._ssl is None or self._ssl[0] != self.generation:
            self._ssl = (self.generation, _ssl_context(self.files, ssl.PROTOCOL_TLS_CLIENT))
        return self._ssl[1]

    def open(self, address: str, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        self.check()
        if self._credentials is None or self.files is None:
            return grpc.aio.insecure_channel(address, options=options)
        secure_options: list[tuple[str, int | str]] = [
            *options, ("grpc.ssl_target_name_override", self.files.server_name)]
        return grpc.aio.secure_channel(
            address, self._credentials, options=secure_options)


def _channel_credentials(material: Material) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key,
        certificate_chain=material.cert)
