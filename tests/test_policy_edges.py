"""The send policy at its edges: what mutation testing (mutation/run.sh) showed the other tests let change.

Each case is a decision that costs a sender its reputation when it goes the other way: a bounce that is hard
read as anything else keeps an address mailed; a contact without an address, or one whose validation wait
is over, must not be held or mailed; a paused From domain holds its own tenant's campaigns however the
address spells it (the campaign tests in test_sending_core.py run whole campaigns, too slow for mutmut);
a sending window opens and closes at its minute, in its timezone, across midnight too; a tenant's auto-pause
override changes the limit it names and nothing else, and a broken one leaves its target at the default.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from engine.sending import policy
from engine.sending.policy import VALIDATION_RECHECK_SECONDS, BounceClass, Hold, Row, Skip, TenantPolicy

NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("kwargs", "bounce_class", "category"), [
    # Accounting records often carry the enhanced status alone (dsnStatus, no 3-digit code)
    ({"enhanced": "5.1.1"}, BounceClass.HARD, "bad-mailbox"),
    ({"enhanced": "4.2.2"}, BounceClass.SOFT, "quota-issues"),
    # ...and then its class digit stands for the missing code, so a 5xx wording still reads as one
    ({"enhanced": "5.0.0", "text": "user unknown"}, BounceClass.HARD, "bad-mailbox"),
    # A 5xx wording without an enhanced code: every 5xx, 500 as much as 599
    ({"code": 500, "text": "user unknown"}, BounceClass.HARD, "bad-mailbox"),
    ({"code": 599, "text": "no such mailbox"}, BounceClass.HARD, "bad-mailbox"),
    ({"code": 450, "text": "user unknown"}, BounceClass.SOFT, "other"),
    # Nothing matched: the reply's class digit decides, 400 as much as 499
    ({"code": 400}, BounceClass.SOFT, "other"),
    ({"code": 499}, BounceClass.SOFT, "other"),
    ({"code": 700}, BounceClass.POLICY, "other"),
    ({}, BounceClass.POLICY, ""),
])
def test_classify_from_what_the_reply_carries(kwargs, bounce_class, category) -> None:
    assert policy.classify(**kwargs) == policy.Classified(bounce_class=bounce_class, category=category)


def test_a_row_without_an_address_is_skipped_whatever_its_status() -> None:
    for status in ("valid", "risky", "pending"):
        assert policy.verdict(Row(email=None, contact_status=status), set(), TenantPolicy(), NOW) == \
            Skip("contact erased")


def test_the_validation_wait_ends_exactly_at_its_length() -> None:
    wait = TenantPolicy(validation_wait=dt.timedelta(hours=24))
    row = Row(email="a@example.com", contact_status="pending", waiting_since=NOW - dt.timedelta(hours=24))
    assert policy.verdict(row, set(), wait, NOW) == Skip("contact not validated within 24 h")
    just_before = Row(email="a@example.com", contact_status="pending",
                      waiting_since=NOW - dt.timedelta(hours=24) + dt.timedelta(seconds=1))
    assert policy.verdict(just_before, set(), wait, NOW) == \
        Hold("waiting for the contact's validation", VALIDATION_RECHECK_SECONDS)


def test_a_tenants_auto_pause_override_changes_what_it_names() -> None:
    default = policy.AutoPause()
    read = TenantPolicy.from_settings({"auto_pause": {"campaign": {"hard_bounce_rate": 0.05},
                                                      "domain": {"min_results": 50, "complaint_rate": 0.01}}})
    assert read.auto_pause == policy.AutoPause(
        campaign=policy.Limits(hard_bounce_rate=0.05, complaint_rate=0.001, min_results=200),
        ip=default.ip,
        domain=policy.Limits(hard_bounce_rate=0.05, complaint_rate=0.01, min_results=50))
    assert TenantPolicy.from_settings({"auto_pause": {}}).auto_pause == default


def test_a_broken_auto_pause_override_keeps_its_targets_default_not_no_limit() -> None:
    stored = {"campaign": {"hard_bounce_rate": 2}, "ip": {"min_results": "many"}, "domain": None,
              "unknown": {"min_results": 1}}
    assert policy.auto_pause(stored) == policy.AutoPause()
    mixed = policy.auto_pause({"campaign": {"threshold": 1}, "ip": {"complaint_rate": 0.002}})
    assert (mixed.campaign, mixed.ip.complaint_rate) == (policy.AutoPause().campaign, 0.002)


def _at(hhmmss: str, tz: str = "UTC") -> dt.datetime:
    return dt.datetime.fromisoformat(f"2026-11-02T{hhmmss}").replace(tzinfo=ZoneInfo(tz))


DAYTIME = {"start": "09:00", "end": "17:00", "timezone": "UTC"}
OVERNIGHT = {"start": "22:00", "end": "06:00", "timezone": "UTC"}


@pytest.mark.parametrize(("window", "now", "seconds"), [
    (None, _at("03:00:00"), 0.0),
    ({}, _at("03:00:00"), 0.0),
    (DAYTIME, _at("09:00:00"), 0.0),                  # open from its first minute
    (DAYTIME, _at("16:59:59"), 0.0),
    (DAYTIME, _at("17:00:00"), 16 * 3600.0),          # closed at its end: tomorrow 09:00
    (DAYTIME, _at("08:00:30.5"), 3569.5),             # to the opening minute, not the current second
    (DAYTIME, _at("18:00:00"), 15 * 3600.0),
    (OVERNIGHT, _at("22:00:00"), 0.0),
    (OVERNIGHT, _at("23:00:00"), 0.0),
    (OVERNIGHT, _at("05:59:59"), 0.0),
    (OVERNIGHT, _at("06:00:00"), 16 * 3600.0),        # closed from its end to tonight's opening
    (OVERNIGHT, _at("12:00:00"), 10 * 3600.0),
    # the window's own timezone (Paris is UTC+1 in November), UTC when none is given
    ({"start": "09:00", "end": "17:00", "timezone": "Europe/Paris"}, _at("07:30:00"), 1800.0),
    ({"start": "09:00", "end": "17:00", "timezone": "Europe/Paris"}, _at("08:30:00"), 0.0),
    ({"start": "09:00", "end": "17:00", "timezone": "Europe/Paris"}, _at("16:30:00"), 15.5 * 3600),
    ({"start": "09:00", "end": "17:00"}, _at("08:30:00", "Europe/Paris"), 5400.0),  # 07:30 UTC
    ({"start": "09:00", "end": "17:00", "timezone": None}, _at("08:30:00"), 1800.0),
    ({"start": "09:30", "end": "17:00", "timezone": "UTC"}, _at("09:00:00"), 1800.0),
])
def test_window_wait(window, now, seconds) -> None:
    assert policy.window_wait(window, now) == seconds


async def _domain(db, tenant_id: int, name: str, **state) -> None:
    columns = ", ".join(["tenant_id", "name", *state])
    values = ", ".join(f"${i}" for i in range(1, len(state) + 3))
    await db.execute(f"INSERT INTO domains ({columns}) VALUES ({values})", tenant_id, name, *state.values())


@pytest.fixture
async def two_tenants(db) -> tuple[int, int]:
    rows = await db.fetch("INSERT INTO tenants (slug, name) VALUES ('one', 'One'), ('two', 'Two') RETURNING id")
    return rows[0]["id"], rows[1]["id"]


async def test_sender_hold_reads_the_from_domain_as_the_domains_table_spells_it(db, two_tenants) -> None:
    one, two = two_tenants
    await _domain(db, one, "paused.example", paused_reason="auto-paused: complaints")
    await _domain(db, one, "clean.example")
    await _domain(db, one, "paused.box", paused_reason="manual")
    await _domain(db, two, "theirs.example", paused_reason="manual")
    held = "domain paused.example is paused: auto-paused: complaints"
    # the domain is what follows the last "@", trimmed, without its root dot, lower-cased
    for from_email in ("news@paused.example", '"a@b"@paused.example', "news@Paused.Example.", " news@PAUSED.example "):
        assert await policy.sender_hold(db, one, from_email) == held, from_email
    assert await policy.sender_hold(db, one, "news@PAUSED.BOX.") == "domain paused.box is paused: manual"
    assert await policy.sender_hold(db, one, "news@clean.example") is None
    assert await policy.sender_hold(db, one, "news@unknown.example") is None
    # another tenant's paused domain holds only that tenant's campaigns
    assert await policy.sender_hold(db, one, "news@theirs.example") is None
    assert await policy.sender_hold(db, two, "news@theirs.example") == "domain theirs.example is paused: manual"


async def test_sender_hold_gives_the_dns_reason_before_the_pause(db, two_tenants) -> None:
    one, _ = two_tenants
    await _domain(db, one, "spf.example", spf_status="wrong", paused_reason="manual")
    await _domain(db, one, "listed.example", held_reason="listed on dbl.example")
    assert await policy.sender_hold(db, one, "news@spf.example") == "SPF of spf.example is wrong"
    assert await policy.sender_hold(db, one, "news@listed.example") == \
        "domain listed.example is held: listed on dbl.example"
