"""TLS for the gRPC and HTTP ports: certificate and key, and optionally a CA client
certificates chain to.

The files are read and checked when the settings are: gRPC core would find a
key that does not parse or match only later, on its own log lines ending in a
misleading "cannot listen" (or, for a client, in an abort), so Python's ssl
module, which reads the same PEM, checks them first.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

import grpc

from proca_stats.server.checks import ConfigError
from proca_stats.server.settings import TlsKeys


def read_pem(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file")
    return data


def read_certificates(flag: str, path: Path) -> bytes:
    """PEM certificates (a chain, or CAs to trust), checked to parse."""
    data = read_pem(flag, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ConfigError(f"{flag}: {path} holds no certificate that can be read") from None
    return data


def read_key_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """A certificate (chain) and its private key, as PEM, of --tls-cert and --tls-key.

    The files are checked where they are, so the private key is never copied.
    """
    cert_pem = read_certificates("--tls-cert", cert)
    key_pem = read_pem("--tls-key", key)

    def refuse_passphrase() -> NoReturn:
        raise ConfigError(f"--tls-key: {key} is encrypted; gRPC needs a key without a passphrase")

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, refuse_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--tls-key: {key} is not the key of --tls-cert {cert}") from None
        raise ConfigError(f"--tls-key: {key} holds no private key that can be read") from None
    return cert_pem, key_pem


def read_tls(cert: Path, key: Path, client_ca: Path | None = None) -> TlsKeys:
    cert_pem, key_pem = read_key_pair(cert, key)
    return TlsKeys(
        cert=cert_pem,
        key=key_pem,
        client_ca=read_certificates("--tls-client-ca", client_ca) if client_ca else None,
    )


def server_credentials(tls: TlsKeys) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; with a client CA, mutual TLS is required."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )
