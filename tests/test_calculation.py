"""The full calculation (docs/figures.md), one rule per test, on rows checked by hand."""

from __future__ import annotations

import psycopg
import pytest

from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate
from tests.support.proca_data import BASE_TIME, ProcaData


def figures(db: ProcaData) -> dict[int, CampaignCounters]:
    """Every campaign's counters, from a calculation on a connection of its own."""
    info = db.conn.info
    with psycopg.connect(info.dsn, password=info.password) as conn:
        return calculate(conn).campaigns


def counters(
    supporters: int,
    actions: dict[str, int] | None = None,
    areas: dict[str, int] | None = None,
    orgs: dict[int, int] | None = None,
) -> CampaignCounters:
    return CampaignCounters(supporters, actions or {}, areas or {}, orgs or {})


@pytest.fixture
def org(db: ProcaData) -> int:
    return db.org("first")


@pytest.fixture
def campaign(db: ProcaData, org: int) -> int:
    return db.campaign(org)


@pytest.fixture
def page(db: ProcaData, campaign: int, org: int) -> int:
    return db.page(campaign, org)


def test_campaign_without_data_has_zeros(db: ProcaData, campaign: int) -> None:
    other = db.campaign(status=1)
    assert figures(db) == {campaign: counters(0), other: counters(0)}


def test_one_accepted_supporter_counts_everywhere(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    db.person(campaign, page, b"alice", area="DE")
    assert figures(db)[campaign] == counters(1, {"signature": 1}, {"DE": 1}, {org: 1})


@pytest.mark.parametrize(
    ("dupe_rank", "counted"), [(0, True), (1, False), (2, False), (None, False)]
)
def test_only_dupe_rank_zero_is_a_supporter(
    db: ProcaData, campaign: int, page: int, org: int, dupe_rank: int | None, counted: bool
) -> None:
    supporter = db.supporter(campaign, page, b"alice", area="DE", dupe_rank=dupe_rank)
    db.action(campaign, page, supporter)
    expected = (
        counters(1, {"signature": 1}, {"DE": 1}, {org: 1})
        if counted
        else counters(0, {"signature": 1})
    )
    assert figures(db)[campaign] == expected


@pytest.mark.parametrize(
    ("status", "counted"), [(0, False), (1, False), (2, False), (3, True), (4, False)]
)
def test_only_accepted_supporters_count(
    db: ProcaData, campaign: int, page: int, org: int, status: int, counted: bool
) -> None:
    supporter = db.supporter(campaign, page, b"alice", status=status)
    db.action(campaign, page, supporter)
    assert figures(db)[campaign] == (
        counters(1, {"signature": 1}, orgs={org: 1}) if counted else counters(0, {"signature": 1})
    )


@pytest.mark.parametrize(
    ("status", "counted"), [(0, False), (1, False), (2, False), (3, True), (4, True)]
)
def test_only_accepted_or_delivered_actions_count(
    db: ProcaData, campaign: int, page: int, org: int, status: int, counted: bool
) -> None:
    supporter = db.supporter(campaign, page, b"alice")
    db.action(campaign, page, supporter, status=status)
    assert figures(db)[campaign] == (
        counters(1, {"signature": 1}, orgs={org: 1}) if counted else counters(0)
    )


def test_testing_actions_count_for_supporters_not_for_actions(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    supporter = db.supporter(campaign, page, b"alice", area="PL")
    db.action(campaign, page, supporter, testing=True)
    assert figures(db)[campaign] == counters(1, {}, {"PL": 1}, {org: 1})


def test_actions_are_counted_per_type_without_deduplication(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    supporter = db.supporter(campaign, page, b"alice")
    for action_type in ("signature", "share", "share", "mail2target"):
        db.action(campaign, page, supporter, action_type=action_type)
    assert figures(db)[campaign] == counters(
        1, {"signature": 1, "share": 2, "mail2target": 1}, orgs={org: 1}
    )


def test_actions_without_a_supporter_count(db: ProcaData, campaign: int, page: int) -> None:
    db.action(campaign, page, None, action_type="share")
    db.action(campaign, page, None, action_type="share", status=4)
    db.action(campaign, page, None, action_type="share", status=1)
    assert figures(db)[campaign] == counters(0, {"share": 2})


def test_a_null_fingerprint_is_no_supporter(db: ProcaData, campaign: int, page: int) -> None:
    supporter = db.supporter(campaign, page, None, area="DE")
    db.action(campaign, page, supporter)
    assert figures(db)[campaign] == counters(0, {"signature": 1})


def test_a_person_who_acted_twice_counts_once(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    supporter = db.supporter(campaign, page, b"alice", area="DE")
    db.action(campaign, page, supporter)
    db.action(campaign, page, supporter, action_type="share")
    assert figures(db)[campaign] == counters(1, {"signature": 1, "share": 1}, {"DE": 1}, {org: 1})


def test_the_org_of_the_first_action_gets_the_supporter(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    second_org = db.org("second")
    second_page = db.page(campaign, second_org)
    # The same person (two dupe_rank 0 records) acted on the second org's page first.
    later = db.supporter(campaign, page, b"alice")
    earlier = db.supporter(campaign, second_page, b"alice")
    db.action(campaign, page, later, at=BASE_TIME.replace(hour=14))
    db.action(campaign, second_page, earlier, at=BASE_TIME.replace(hour=13))
    assert figures(db)[campaign] == counters(1, {"signature": 2}, orgs={second_org: 1})


@pytest.mark.parametrize("rewritten", ["lower id", "higher id"])
def test_within_the_same_second_the_lowest_action_id_wins(
    db: ProcaData, campaign: int, page: int, org: int, rewritten: str
) -> None:
    """The id decides, not the order rows happen to be read in.

    An UPDATE writes a new version of the row after the other one in the
    table, so a scan meets the rewritten row last. Each order is tried: a
    calculation that kept whichever row it read first would fail one of them.
    """
    second_org = db.org("second")
    second_page = db.page(campaign, second_org)
    supporter = db.supporter(campaign, page, b"alice")
    lower = db.action(campaign, second_page, supporter, at=BASE_TIME)
    higher = db.action(campaign, page, supporter, at=BASE_TIME)
    moved = lower if rewritten == "lower id" else higher
    db.conn.execute("UPDATE actions SET updated_at = updated_at WHERE id = %s", [moved])
    order = db.conn.execute("SELECT id FROM actions ORDER BY ctid").fetchall()
    assert order[-1] == (moved,)  # the rewritten row is now the last one in the table
    assert figures(db)[campaign] == counters(1, {"signature": 2}, orgs={second_org: 1})


def test_the_first_action_whose_supporter_has_an_area_decides_the_area(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    without_area = db.supporter(campaign, page, b"alice", area=None)
    in_de = db.supporter(campaign, page, b"alice", area="DE")
    in_fr = db.supporter(campaign, page, b"alice", area="FR")
    db.action(campaign, page, without_area)  # first overall, but no area
    db.action(campaign, page, in_de)  # first with an area
    db.action(campaign, page, in_fr)
    assert figures(db)[campaign] == counters(1, {"signature": 3}, {"DE": 1}, {org: 1})


def test_a_supporter_without_area_counts_in_total_and_org_only(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    db.person(campaign, page, b"alice", area=None)
    db.person(campaign, page, b"bob", area="IT")
    assert figures(db)[campaign] == counters(2, {"signature": 2}, {"IT": 1}, {org: 2})


def test_extra_supporters_add_to_total_and_org_but_not_area(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    db.person(campaign, page, b"alice", area="DE")
    db.page(campaign, org, extra_supporters=10)
    db.page(campaign, org, extra_supporters=5)
    negative_org = db.org("negative")
    db.page(campaign, negative_org, extra_supporters=-3)
    extras_only_org = db.org("extras only")
    db.page(campaign, extras_only_org, extra_supporters=7)
    zero_org = db.org("zero")
    db.page(campaign, zero_org, extra_supporters=0)  # adds no key
    assert figures(db)[campaign] == counters(
        1 + 10 + 5 - 3 + 7,
        {"signature": 1},
        {"DE": 1},
        {org: 1 + 10 + 5, negative_org: -3, extras_only_org: 7},
    )


def test_a_page_without_org_counts_in_the_total_only(db: ProcaData, campaign: int) -> None:
    orphan_page = db.page(campaign, None, extra_supporters=4)
    db.person(campaign, orphan_page, b"alice", area="DE")
    assert figures(db)[campaign] == counters(5, {"signature": 1}, {"DE": 1})


def test_the_same_fingerprint_counts_in_each_campaign(
    db: ProcaData, campaign: int, page: int, org: int
) -> None:
    other = db.campaign(org)
    other_page = db.page(other, org)
    db.person(campaign, page, b"alice", area="DE")
    db.person(other, other_page, b"alice", area="DE")
    both = counters(1, {"signature": 1}, {"DE": 1}, {org: 1})
    assert figures(db) == {campaign: both, other: both}


def test_campaigns_are_counted_apart(db: ProcaData, campaign: int, page: int, org: int) -> None:
    other = db.campaign(org)
    other_page = db.page(other, org)
    db.person(campaign, page, b"alice")
    db.person(other, other_page, b"bob", action_type="share")
    db.person(other, other_page, b"carol", action_type="share")
    assert figures(db) == {
        campaign: counters(1, {"signature": 1}, orgs={org: 1}),
        other: counters(2, {"share": 2}, orgs={org: 2}),
    }


def test_snapshot_time_is_the_transactions_start(db: ProcaData, campaign: int) -> None:
    info = db.conn.info
    with psycopg.connect(info.dsn, password=info.password) as conn:
        before = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        conn.rollback()
        snapshot = calculate(conn)
        after = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    assert before <= snapshot.taken_at <= after
