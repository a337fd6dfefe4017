"""A person's mistake on the command line, in the environment or in a file it names ends
with one line and a non-zero exit, before anything has started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.certificates import Authority
from tests.support.command_line import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("serve", "--listen", "nonsense"), ("--listen", "HOST:PORT")),
        (("serve", "--listen", "127.0.0.1:99999"), ("--listen",)),
        (("serve", "--sync-interval", "-5", "--database-url", "x"), ("--sync-interval",)),
        (("serve", "--sync-interval", "soon", "--database-url", "x"), ("--sync-interval",)),
        (("serve", "--max-watchers", "-1", "--database-url", "x"), ("--max-watchers",)),
        (("serve", "--slow-sync-interval", "-1", "--database-url", "x"), ("--slow-sync-interval",)),
        (("serve", "--full-sync-interval", "1h", "--database-url", "x"), ("--full-sync-interval",)),
        (("serve", "--change-overlap", "-2", "--database-url", "x"), ("--change-overlap",)),
        *(
            (
                ("serve", flag, str(2**31), "--database-url", "x"),
                (f"{flag}: must be <= {2**31 - 1}",),
            )
            for flag in (
                "--sync-interval",
                "--sync-timeout",
                "--slow-sync-interval",
                "--full-sync-interval",
                "--change-overlap",
                "--max-request-bytes",
            )
        ),
        (("get", "1", "--target", ""), ("--target: expected HOST:PORT",)),
        (
            ("increment", "--campaign", "1", "--org", "1", "--type", "x", "--target", " "),
            ("--target",),
        ),
        (("dump", "--database-url", "postgresql://127.0.0.1:1/nowhere"), ("127.0.0.1",)),
        (("dump", "--database-url", "not a url"), ("--database-url: not a PostgreSQL URL",)),
        (("db", "init", "--database-url", "postgresql://127.0.0.1:1/x"), ("127.0.0.1",)),
    ],
)
def test_mistakes_end_with_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("get", "99999999999999999999"), ("CAMPAIGN_ID: expected a 64-bit whole number",)),
        (("get", "one"), ("CAMPAIGN_ID: expected a 64-bit whole number",)),
        (("increment", "--campaign", str(2**63), "--org", "1", "--type", "x"), ("--campaign: ",)),
        (("increment", "--campaign", "1", "--org", str(-(2**63) - 1), "--type", "x"), ("--org: ",)),
        (("increment", "--campaign", "1", "--org", "1", "--type", "x", "--action-id", "1e30"),
         ("--action-id: expected a 64-bit whole number",)),
        *((("get", "1", "--timeout", t), ("--timeout: expected seconds, a number > 0",))
          for t in ("nan", "inf", "0", "-1", "1e300", "soon")),
        *((("serve", f"--grace={g}"), ("--grace: expected seconds, a number >= 0",))
          for g in ("nan", "-inf", "-5", "1e300", "later")),
        (("serve", "--log-level", "LOUD"), ("--log-level: invalid choice: 'LOUD'",)),
        (("nonsense",), ("COMMAND: invalid choice",)),
    ],
)  # fmt: skip
def test_a_malformed_command_line_ends_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run_cli(*args), *fragments, status=2)


def test_other_mistakes_are_reported_while_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--sync-interval", "-5")
    assert_one_line_error(done, "--sync-interval: must be >= 0")


@pytest.mark.parametrize("flag", ["--listen", "--http-listen"])
def test_port_in_use_ends_with_one_line(flag: str, database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", flag, f"127.0.0.1:{port}", "--database-url", database_url)
    assert_one_line_error(done, f"{flag}: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--listen", "0.0.0.0:0"), ("--listen: 0.0.0.0 is reachable", "--insecure")),
        (("--tls-cert", "/nonexistent.crt"), ("--tls-cert and --tls-key",)),
        (("--tls-cert", "/no.crt", "--tls-key", "/no.key"), ("--tls-cert: cannot read /no.crt",)),
        (("--token-file", "/nonexistent"), ("--token-file: cannot read /nonexistent",)),
        (("--protect-reads",), ("--protect-reads: needs --token-file",)),
        (("--max-campaigns", "0"), ("--max-campaigns: must be >= 1",)),
        (("--max-action-ids", "0"), ("--max-action-ids: must be >= 1",)),
        (("--metrics-listen", "nowhere"), ("--metrics-listen: expected HOST:PORT",)),
        (("--fanout", "--fanout-channel", "Stats"), ("--fanout-channel: expected a PostgreSQL",)),
        (("--fanout-channel", "1st"), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--fanout-channel", "a-b"), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--fanout-channel", "c" * 64), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--sync-database-url", "not a url"), ("--sync-database-url: not a PostgreSQL URL",)),
        (("--http-listen", "nowhere"), ("--http-listen: expected HOST:PORT",)),
        (("--http-listen", "0.0.0.0:0"), ("--http-listen: 0.0.0.0 is reachable", "--insecure")),
        (("--http-max-age", "-1"), ("--http-max-age: must be >= 0",)),
        (("--cors-origin", "http://127.0.0.1:8000"), ("--cors-origin: needs --http-listen",)),
        (
            ("--http-listen", "127.0.0.1:0", "--cors-origin", "*", "--cors-origin", "example.org"),
            ("--cors-origin: expected an origin", "'example.org'"),
        ),
    ],
)
def test_serve_mistakes_end_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...], database_url: str
) -> None:
    done = run_cli("serve", "--database-url", database_url, *args)
    assert_one_line_error(done, *fragments)


@pytest.mark.parametrize(
    "args",
    [("--tls-cert", "/no.crt", "--tls-key", "/no.key"), ("--token-file", "/nonexistent")],
)
def test_serve_mistakes_end_before_the_embedded_postgres_starts(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    done = run_cli("serve", "--data-dir", str(tmp_path), *args)
    assert_one_line_error(done, "cannot read /no")
    assert not (tmp_path / "pgdata").exists(), "started an embedded PostgreSQL for nothing"


@pytest.mark.parametrize(
    "command",
    [
        ("serve", "--listen", "127.0.0.1:0", "--database-url", "postgresql://127.0.0.1:1/x"),
        ("get", "1"),
    ],
)
def test_a_token_file_that_is_not_ascii_text_ends_with_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes("secret-token\n".encode("utf-16"))  # as some editors save
    done = run_cli(*command, "--token-file", str(tokens))
    assert_one_line_error(done, f"--token-file: {tokens} line 1: a token must be printable ASCII")


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    """Paths of a CA, a server certificate and key, another key, the server key encrypted, and a PEM
    file of garbage."""
    authority = Authority(tmp_path, "ca")
    issued = authority.issue("server", server=True)
    other = authority.issue("other", server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(issued.key_pem, None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    paths = {"ca": authority.cert, "cert": issued.cert, "key": issued.key, "other_key": other.key}
    more = {"encrypted_key": encrypted, "garbage": garbage}
    return {name: str(path) for name, path in (paths | more).items()}


SERVE = ("serve", "--listen", "127.0.0.1:0", "--database-url", "postgresql://127.0.0.1:1/x")


GET = ("get", "1", "--target", "127.0.0.1:1", "--timeout", "2")


INCREMENT = ("increment", "--campaign", "1", "--org", "1", "--type", "x", "--target", "127.0.0.1:1")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{other_key}"),
         ("--tls-key: {other_key} is not the key of --tls-cert {cert}",)),
        ((*SERVE, "--tls-cert", "{garbage}", "--tls-key", "{key}"),
         ("--tls-cert: {garbage} holds no certificate",)),
        ((*SERVE, "--tls-cert", "{key}", "--tls-key", "{key}"),
         ("--tls-cert: {key} holds no certificate",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{garbage}"),
         ("--tls-key: {garbage} holds no private key",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{encrypted_key}"),
         ("--tls-key: {encrypted_key} is encrypted",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"),
         ("--tls-client-ca: {key} holds no certificate",)),
        ((*SERVE, "--tls-client-ca", "{ca}"), ("--tls-client-ca: needs --tls-cert and --tls-key",)),
        ((*GET, "--tls-cert", "{cert}"), ("--tls-cert and --tls-key",)),
        ((*INCREMENT, "--tls-key", "{key}"), ("--tls-cert and --tls-key",)),
        ((*GET, "--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{other_key}"),
         ("--tls-key: {other_key} is not the key of --tls-cert {cert}",)),
        ((*GET, "--tls-ca", "{garbage}"), ("--tls-ca: {garbage} holds no certificate",)),
        ((*INCREMENT, "--tls-ca", "{key}"), ("--tls-ca: {key} holds no certificate",)),
    ],
)  # fmt: skip
def test_tls_files_that_do_not_fit_end_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...], pem_files: dict[str, str]
) -> None:
    done = run_cli(*(arg.format(**pem_files) for arg in args))
    assert_one_line_error(done, *(fragment.format(**pem_files) for fragment in fragments))
