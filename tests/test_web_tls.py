"""The HTTP port over TLS, with the gRPC port's --tls-* files: HTTP/1.1, and HTTP/2 chosen by
ALPN (spoken with the h2 library, frame by frame), a client that does not trust the CA
refused, and client certificates required with a client CA."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proca_stats.server.api.tls import read_tls
from proca_stats.server.app import StatsServer
from proca_stats.server.settings import HttpTimeouts
from tests.support.certificates import Authority, Issued
from tests.support.web import SERVICE, closed_within, get_path, h2_exchange, port_of, start_web

INCREMENT = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "web-ca")


def client_context(
    authority: Authority, protocols: list[str], client: Issued | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=authority.cert)
    context.set_alpn_protocols(protocols)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def tls_web(
    start_server: Callable[..., StatsServer],
    database_url: str,
    authority: Authority,
    client_ca: bool = False,
    **config: Any,
) -> StatsServer:
    issued = authority.issue("server", server=True)
    tls = read_tls(issued.cert, issued.key, authority.cert if client_ca else None)
    return start_web(start_server, database_url, tls=tls, **config)


def http1(server: StatsServer, context: ssl.SSLContext, method: str, path: str) -> bytes:
    """One HTTP/1.1 request over TLS; the answer's status line and body, checked to be
    HTTP/1.1 as ALPN agreed."""
    with (
        socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        tls.sendall(head.encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def http2(
    server: StatsServer, context: ssl.SSLContext, path: str, body: bytes
) -> tuple[dict[str, str], bytes]:
    """One Connect POST over HTTP/2 on TLS (ALPN h2): the answer's headers and body."""
    with (
        socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        return h2_exchange(tls, "POST", path, body, (("content-type", "application/json"),))


def test_http_1_1_and_http_2_by_alpn_over_tls(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    server = tls_web(start_server, database_url, authority)
    headers, body = http2(
        server,
        client_context(authority, ["h2", "http/1.1"]),
        f"{SERVICE}/Increment",
        json.dumps(INCREMENT).encode(),
    )
    assert (headers[":status"], json.loads(body)) == ("200", {"counted": True})
    answer = http1(
        server,
        client_context(authority, ["http/1.1"]),
        "GET",
        get_path("GetStats", {"campaignId": 7}),
    )
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    assert b'"supporters":"1"' in body.replace(b" ", b"")  # the Increment sent over HTTP/2
    headers, body = http2(
        server,
        client_context(authority, ["h2"]),
        f"{SERVICE}/GetStats",
        json.dumps({"campaign_id": 7}).encode(),
    )
    assert headers[":status"] == "200"
    assert json.loads(body)["stats"]["supporters"] == "1"


def test_a_client_that_does_not_trust_the_ca_or_speaks_plain_http_is_refused(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    server = tls_web(start_server, database_url, authority)
    stranger = Authority(authority.folder, "other-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        http1(server, client_context(stranger, ["http/1.1"]), "GET", "/readyz")
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as plain:
        plain.sendall(b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        assert not plain.recv(4096).startswith(b"HTTP/1.1 200")
    assert http1(server, client_context(authority, ["http/1.1"]), "GET", "/readyz").startswith(
        b"HTTP/1.1 200"
    )


def test_with_a_client_ca_a_client_certificate_is_required(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    server = tls_web(start_server, database_url, authority, client_ca=True)
    client = authority.issue("client", server=False)
    assert http1(
        server, client_context(authority, ["http/1.1"], client), "GET", "/readyz"
    ).startswith(b"HTTP/1.1 200")
    headers, _ = http2(
        server,
        client_context(authority, ["h2"], client),
        f"{SERVICE}/GetStats",
        json.dumps({"campaign_id": 7}).encode(),
    )
    assert headers[":status"] == "200"
    try:  # TLS 1.3: the refusal of a missing certificate comes after the handshake
        answer = http1(server, client_context(authority, ["http/1.1"]), "GET", "/readyz")
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b"", "answered a client without a certificate"


def test_a_handshake_left_half_done_is_cut_off(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    server = tls_web(start_server, database_url, authority, http_timeouts=HttpTimeouts(idle=1.0))
    hello = client_context(authority, ["h2"]).wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1"
    )
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()  # writes the ClientHello, then would wait for the server
    with socket.create_connection(("127.0.0.1", port_of(server))) as half:
        half.sendall(outgoing.read())
        half.settimeout(4)
        assert half.recv(65536), "the server never answered the ClientHello"
        assert closed_within(half, 4) < 4  # then nothing more came: cut off
    assert http1(server, client_context(authority, ["http/1.1"]), "GET", "/readyz").startswith(
        b"HTTP/1.1 200"
    )
