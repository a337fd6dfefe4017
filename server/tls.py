"""TLS for the gRPC port: certificate and key, and optionally a CA client certificates chain to."""

from __future__ import annotations

from pathlib import Path

import grpc

from .config import ConfigError, TlsFiles


def read_pem(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file")
    return data


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; with a client CA, mutual TLS is required."""
    key_pair = (read_pem("--tls-key", tls.key), read_pem("--tls-cert", tls.cert))
    client_ca = read_pem("--tls-client-ca", tls.client_ca) if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
