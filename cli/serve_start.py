"""What `serve` does before and beside serving: the databases checked, the demo loaded and
its simulated actions started."""

from __future__ import annotations

import logging

from proca_stats.server.checks import ConfigError, parse_listen
from proca_stats.server.database_check import check_database
from proca_stats.server.demo import DemoRefused, Trickle, load_demo
from proca_stats.server.settings import ServeConfig

log = logging.getLogger("proca_stats")


def check_databases(config: ServeConfig, database_url: str) -> None:
    """End `serve` now when a database cannot be used and waiting will not change that;
    say so and go on when the trouble can pass (the sync retries)."""
    for flag, url in (
        ("--database-url", database_url),
        ("--sync-database-url", config.sync_database_url),
    ):
        if url:
            passing = check_database(url, flag, config.connect_timeout)
            if passing:
                log.warning("%s: %s; serving without figures until it can be read", flag, passing)


def load_demo_once(database_url: str) -> None:
    """The demo data set, unless the embedded database holds rows already (an earlier
    demo's, which the trickle kept adding to)."""
    try:
        loaded = load_demo(database_url)
    except DemoRefused:
        log.info("demo: the database holds rows already (an earlier demo's): kept as they are")
        return
    log.info(
        "demo: loaded %d campaigns, %d supporters, %d actions",
        loaded.campaigns,
        loaded.supporters,
        loaded.actions,
    )


def start_trickle(config: ServeConfig, database_url: str, port: int) -> Trickle:
    """Simulated actions, announced to this server like any client's."""
    if config.tls is not None:
        raise ConfigError("--demo: plaintext only (leave out --tls-cert and --tls-key)")
    host = parse_listen(config.listen)[0]
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    token = config.tokens[0].decode() if config.tokens else None
    trickle = Trickle(database_url, f"{host}:{port}", token=token)
    trickle.start()
    log.info("demo: a few simulated actions a second on the live campaigns")
    return trickle
