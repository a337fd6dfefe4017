"""TLS for the gRPC port: certificate and key, and optionally a CA client certificates chain to."""

from __future__ import annotations

from pathlib import Path

import grpc

from .config import ConfigError, TlsKeys


def read_pem(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file")
    return data


def read_tls(cert: Path, key: Path, client_ca: Path | None = None) -> TlsKeys:
    return TlsKeys(
        cert=read_pem("--tls-cert", cert),
        key=read_pem("--tls-key", key),
        client_ca=read_pem("--tls-client-ca", client_ca) if client_ca else None,
    )


def server_credentials(tls: TlsKeys) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; with a client CA, mutual TLS is required."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )
