"""The client commands: they call a running server, with the client options every one of
them takes (the settings table's CALLS: --target, --timeout, --tls, --tls-ca, --tls-cert,
--tls-key, --token-file). A new one is a function here and an entry in COMMANDS, its name
added to CALLS."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from proca_stats.cli.options import Command, key_pair
from proca_stats.cli.output import to_json
from proca_stats.client import NotFound, StatsClient
from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.api.tls import read_certificates, read_key_pair
from proca_stats.server.checks import ConfigError


def _client(args: argparse.Namespace) -> StatsClient:
    """A client with the TLS and token options of the client commands."""
    pair = key_pair(args)
    credentials = None
    if args.tls or args.tls_ca or pair:
        cert, key = read_key_pair(*pair) if pair else (None, None)
        ca = read_certificates("--tls-ca", Path(args.tls_ca)) if args.tls_ca else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
    token = load_tokens(Path(args.token_file))[0].decode() if args.token_file else None
    return StatsClient(args.target, timeout=args.timeout, credentials=credentials, token=token)


def cmd_get(args: argparse.Namespace) -> None:
    with _client(args) as client:
        stats = client.get_stats(args.campaign_id)
    print(to_json(stats_pb2.GetStatsResponse(stats=stats), indent=2))


def cmd_increment(args: argparse.Namespace) -> None:
    with _client(args) as client:
        counted = client.increment(
            args.campaign,
            args.org,
            args.type,
            area=args.area,
            new_supporter=args.new_supporter,
            action_id=args.action_id,
        )
    print(to_json(stats_pb2.IncrementResponse(counted=counted)))


def cmd_health(args: argparse.Namespace) -> None:
    """One line, exit status 0 when SERVING: for Docker's HEALTHCHECK and exec probes."""
    with _client(args) as client:
        try:
            status = client.health(args.service)
        except NotFound:
            raise ConfigError(f"--service: the server knows no service {args.service!r}") from None
    print(json.dumps({"status": status}))
    if status != "SERVING":
        sys.exit(1)


COMMANDS = (
    Command("get", "print a campaign's stats as JSON", cmd_get),
    Command("increment", "count one action", cmd_increment),
    Command("health", "exit 0 when the server says SERVING, else 1", cmd_health),
)
