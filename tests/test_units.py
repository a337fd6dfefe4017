"""Pure pieces, without a database or a network: counting, validation, parsing, backoff."""

from __future__ import annotations

import dis
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proca_stats import client as client_errors
from proca_stats.cli.main import command_of
from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.auth import load_tokens, presented_token
from proca_stats.server.checks import (
    ConfigError,
    parse_count,
    parse_int64,
    parse_listen,
    parse_milliseconds,
    parse_seconds,
)
from proca_stats.server.retry import backoff_delay
from proca_stats.server.state.counters import CampaignCounters, Increment, incremented
from proca_stats.server.state.store import StatsStore
from proca_stats.server.state.validation import ValidationError, increment_from, watch_from
from proca_stats.server.state.watchers import Watchers, WatchersClosed, WatchersFull
from proca_stats.server.sync.worker import Requests

increments = st.builds(
    Increment,
    campaign_id=st.just(1),
    org_id=st.integers(1, 4),
    action_type=st.sampled_from(["signature", "share", "mail2target"]),
    area=st.sampled_from([None, "DE", "FR"]),
    new_supporter=st.booleans(),
)


@given(st.lists(increments, max_size=50))
def test_increments_add_up(actions: list[Increment]) -> None:
    counters = CampaignCounters()
    for action in actions:
        before = counters
        counters = incremented(counters, action)
        assert before is not counters
    new = [a for a in actions if a.new_supporter]
    assert counters.supporters == len(new)
    assert sum(counters.actions_by_type.values()) == len(actions)
    assert sum(counters.supporters_by_org.values()) == len(new)
    assert sum(counters.supporters_by_area.values()) == len([a for a in new if a.area])
    assert set(counters.supporters_by_org) == {a.org_id for a in actions}
    assert set(counters.supporters_by_area) == {a.area for a in actions if a.area}


def test_incremented_leaves_the_original_untouched() -> None:
    original = CampaignCounters(1, {"share": 1}, {"DE": 1}, {2: 1})
    incremented(original, Increment(1, 2, "share", "DE", True))
    assert original == CampaignCounters(1, {"share": 1}, {"DE": 1}, {2: 1})


def test_empty_area_means_no_area() -> None:
    request = stats_pb2.IncrementRequest(campaign_id=1, org_id=1, action_type="a", area="")
    assert increment_from(request).area is None


def test_validation_error_names_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        increment_from(stats_pb2.IncrementRequest(campaign_id=1, org_id=1))
    assert error.value.field == "action_type"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("[::1]:0", ("[::1]", 0)), ("host:1", ("host", 1))],
)
def test_parse_listen(text: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["", "50051", ":50051", "host:", "host:http", "h:70000", "[x]:1"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(text)


def test_parse_milliseconds() -> None:
    assert parse_milliseconds("--sync-interval", "0") == 0
    assert parse_milliseconds("--sync-interval", "60000") == 60000
    for bad in ("-1", "1.5", "soon"):
        with pytest.raises(ConfigError, match="--sync-interval"):
            parse_milliseconds("--sync-interval", bad)


def test_parse_count() -> None:
    assert parse_count("--max-watchers", "0", minimum=0) == 0
    assert parse_count("--max-watchers", "1000", minimum=0) == 1000
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="--max-watchers"):
            parse_count("--max-watchers", bad, minimum=0)
    with pytest.raises(ConfigError, match="--max-campaigns: must be >= 1, got 0"):
        parse_count("--max-campaigns", "0")
    assert parse_count("--max-request-bytes", "7", maximum=7) == 7
    with pytest.raises(ConfigError, match="--max-request-bytes: must be <= 7, got 8"):
        parse_count("--max-request-bytes", "8", maximum=7)


def test_milliseconds_stop_at_int32() -> None:
    assert parse_milliseconds("--sync-timeout", str(2**31 - 1)) == 2**31 - 1
    with pytest.raises(ConfigError, match="--sync-timeout: must be <= 2147483647"):
        parse_milliseconds("--sync-timeout", str(2**31))


def test_parse_seconds() -> None:
    assert parse_seconds("--timeout", "2.5") == 2.5
    assert parse_seconds("--grace", "0", zero=True) == 0
    assert parse_seconds("--timeout", "1e9") == 1e9
    for bad in ("0", "-1", "nan", "inf", "-inf", "1e300", "soon", ""):
        with pytest.raises(ConfigError, match=r"^--timeout: expected seconds, a number > 0"):
            parse_seconds("--timeout", bad)
    with pytest.raises(ConfigError, match=r"^--grace: expected seconds, a number >= 0 .*got 'nan'"):
        parse_seconds("--grace", "nan", zero=True)


def test_parse_int64() -> None:
    for good in (2**63 - 1, -(2**63), 0, 42):
        assert parse_int64("--campaign", str(good)) == good
    for bad in (str(2**63), str(-(2**63) - 1), "1.0", "one", ""):
        with pytest.raises(ConfigError, match=r"^--campaign: expected a 64-bit whole number"):
            parse_int64("--campaign", bad)


@pytest.mark.parametrize(("asked", "seconds"), [(0, 1.0), (100, 0.1), (2500, 2.5)])
def test_watch_interval_defaults_and_minimum(asked: int, seconds: float) -> None:
    request = stats_pb2.WatchStatsRequest(campaign_id=1, min_interval_ms=asked)
    assert watch_from(request).min_interval == seconds


def test_watchers_are_capped_released_once_and_closed() -> None:
    watchers = Watchers(limit=2)
    first, second = watchers.open(1), watchers.open(1)
    with pytest.raises(WatchersFull):
        watchers.open(2)
    watchers.release(first)
    watchers.release(first)  # the RPC's callback and the stream's end both release
    assert len(watchers) == 1
    third = watchers.open(2)
    watchers.close()
    assert second.closed
    assert third.closed
    assert not second.wait(not_before=0, timeout=60)  # a closed watcher never blocks
    with pytest.raises(WatchersClosed):
        watchers.open(3)


def test_a_watcher_is_woken_only_by_its_campaign() -> None:
    watchers = Watchers(limit=10)
    one, two = watchers.open(1), watchers.open(2)
    watchers.campaign_changed(1)
    assert one.wait(not_before=0, timeout=0)
    assert not two.wait(not_before=0, timeout=0)
    watchers.campaigns_replaced({1: CampaignCounters(supporters=1)}, {2: CampaignCounters()})
    assert one.wait(not_before=0, timeout=0)  # campaign 1 went from 1 supporter to none
    assert not two.wait(not_before=0, timeout=0)  # campaign 2 had zeros and still has


@pytest.fixture
def rapid_thread_switches() -> Iterator[None]:
    """Threads switch every microsecond, so an unguarded read-modify-write is interrupted often."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("rapid_thread_switches")
def test_many_threads_incrementing_the_store_at_once_lose_nothing() -> None:
    threads, per_thread = 8, 20_000
    store = StatsStore()
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread // 2):
            for campaign_id in (1, 2):
                store.increment(
                    Increment(
                        campaign_id=campaign_id,
                        org_id=100 + n,
                        action_type=("signature", "share")[n % 2],
                        area=f"area-{n % 4}",
                        new_supporter=i % 4 != 0,
                    )
                )

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    # Per thread and campaign: 10,000 actions, 7,500 of them new supporters.
    actions, new = per_thread // 2, per_thread * 3 // 8
    expected = CampaignCounters(
        supporters=threads * new,
        actions_by_type={"signature": threads // 2 * actions, "share": threads // 2 * actions},
        supporters_by_area={f"area-{k}": threads // 4 * new for k in range(4)},
        supporters_by_org={100 + n: new for n in range(threads)},
    )
    assert store.get(1)[0] == expected
    assert store.get(2)[0] == expected


@settings(deadline=None)
@given(
    failures=st.integers(1, 200),
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 600.0),
)
def test_backoff_doubles_and_is_capped(failures: int, base: float, cap: float) -> None:
    """Many draws per example: hypothesis seeds ``random`` alike for every example.

    No deadline: what is checked is the delays' values; hypothesis' default of 200 ms an
    example would time the machine instead, and a busy two-core one can pause that long."""
    ceiling = min(cap, base * 2 ** (failures - 1))
    for _ in range(100):
        assert 0.5 * ceiling <= backoff_delay(failures, base, cap) <= ceiling


@pytest.mark.parametrize("failures", [1, 4, 50])
def test_backoff_is_jittered_over_its_upper_half(failures: int) -> None:
    """Servers that lost the same database must not retry in lockstep.

    500 uniform draws in [0.5, 1] x ceiling all miss the lowest (or the
    highest) tenth of that range with a chance of 0.9^500, about 1e-23.
    """
    ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
    delays = [backoff_delay(failures, 0.5, 30.0) for _ in range(500)]
    assert len(set(delays)) > 450
    assert min(delays) < 0.55 * ceiling
    assert max(delays) > 0.95 * ceiling


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_status_has_its_exception(code: grpc.StatusCode) -> None:
    matching = [
        cls
        for cls in vars(client_errors).values()
        if isinstance(cls, type)
        and issubclass(cls, client_errors.StatsError)
        and cls is not client_errors.StatsError
        and cls.code == code
    ]
    assert len(matching) == 1


@given(
    st.builds(
        stats_pb2.CampaignStats,
        campaign_id=st.integers(1, 2**63 - 1),
        supporters=st.integers(-(2**63), 2**63 - 1),
        actions_by_type=st.dictionaries(st.text(max_size=5), st.integers(0, 2**40)),
        supporters_by_area=st.dictionaries(st.text(max_size=5), st.integers(0, 2**40)),
        supporters_by_org=st.dictionaries(st.integers(1, 2**40), st.integers(-(2**40), 2**40)),
    )
)
def test_a_kept_get_stats_answer_is_a_watch_stats_message(stats: stats_pb2.CampaignStats) -> None:
    """WatchStats streams the bytes kept for GetStats: both answers must stay alike on the wire."""
    answer = stats_pb2.GetStatsResponse(stats=stats).SerializeToString()
    assert stats_pb2.WatchStatsResponse.FromString(answer).stats == stats
    for response in (stats_pb2.GetStatsResponse, stats_pb2.WatchStatsResponse):
        (field,) = response.DESCRIPTOR.fields
        assert (field.number, field.message_type.full_name) == (1, "proca.stats.v1.CampaignStats")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_matched_without_regard_to_case(scheme: str) -> None:
    metadata = [("user-agent", "test"), ("authorization", f"{scheme} alpha-token")]
    assert presented_token(metadata) == b"alpha-token"


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("authorization", "Basic YWxhZGRpbg==")], [("authorization", "alpha-token")],
     [("authorization", "Bearers alpha-token")], [("authorization", b"Bearer alpha-token")]],
)  # fmt: skip
def test_no_bearer_token_is_presented(metadata: list[tuple[str, str | bytes]] | None) -> None:
    assert presented_token(metadata) is None


def test_load_tokens_skips_comments_in_any_text(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes("# für Zürich\xff\n alpha-token \n\n".encode("latin-1") + b"beta token\n")
    assert load_tokens(path) == (b"alpha-token", b"beta token")


@pytest.mark.parametrize(
    "content", [b"alpha\nb\xe9ta\n", "alpha\ntöken\n".encode(), b"alpha\na\tb\n"]
)
def test_load_tokens_refuses_a_token_that_is_not_printable_ascii(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^--token-file: .* line 2: .*printable ASCII"):
        load_tokens(path)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], None),
        (["--help"], None),
        (["get", "1"], "get"),
        (["--log-level", "DEBUG", "increment", "--type", "serve"], "increment"),
        (["--log-level=DEBUG", "get"], "get"),
        (["--log-level", "get", "serve"], "serve"),  # the level, however wrong, is no command
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def test_a_full_calculation_asked_for_while_the_worker_takes_the_last_request_is_kept() -> None:
    """The worker reads and clears the "full" flag while another thread may set it. The
    other thread's request is made at the worst moment, forced rather than hoped for: the
    worker is traced opcode by opcode and stopped just before it stores the cleared flag.
    Without the lock the request is overwritten and the next run is wrongly incremental;
    with it, the request waits for the worker and is taken by the next run."""
    requests = Requests()
    take = Requests.take_full.__code__
    clear_at = next(
        i.offset
        for i in dis.get_instructions(take)
        if i.opname == "STORE_ATTR" and i.argval == "_full"
    )
    asking = threading.Thread(target=lambda: requests.ask(full=True))

    def trace(frame: FrameType, event: str, arg: object) -> object:
        if frame.f_code is take:
            frame.f_trace_opcodes = True
            if event == "opcode" and frame.f_lasti == clear_at and not asking.is_alive():
                asking.start()
                asking.join(0.5)  # done at once unless the lock makes it wait for this run
        return trace

    sys.settrace(trace)
    try:
        assert requests.take_full() is False  # nothing was asked for before this run began
    finally:
        sys.settrace(None)
    asking.join()
    assert requests.take_full() is True
