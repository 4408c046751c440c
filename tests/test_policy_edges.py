"""The send policy at its edges: what mutation testing (mutation/run.sh) showed the other tests let change.

Each case is a decision that costs a sender its reputation when it goes the other way: a bounce that is hard
read as anything else keeps an address mailed; a contact without an address, or one whose validation wait
is over, must not be held or mailed.
"""

from __future__ import annotations

import datetime as dt

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
