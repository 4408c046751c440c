"""The one send policy: the per-contact checks and the bounce table every path classifies refusals with."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from engine import feedback
from engine.sending import policy
from engine.sending.policy import BounceClass, Hold, Row, Skip, TenantPolicy

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
TABLE = Path(policy.__file__).parent / "bounces.toml"


@pytest.mark.parametrize(("code", "enhanced", "text", "category", "expected"), [
    (550, "5.1.1", "<a@b.example>: Recipient address rejected: User unknown", "", ("hard", "bad-mailbox")),
    (550, "5.1.10", "Recipient address rejected: domain has a null MX", "", ("hard", "bad-domain")),
    (550, "5.1.2", "Host unknown", "", ("hard", "bad-domain")),
    (550, "", "No such user here", "", ("hard", "bad-mailbox")),
    (552, "5.2.2", "Mailbox full", "", ("soft", "quota-issues")),
    (553, "5.1.7", "Sender address rejected: malformed", "", ("sender", "invalid-sender")),
    (550, "5.1.8", "Sender address rejected: Domain not found", "bad-domain", ("sender", "bad-domain")),
    (554, "5.7.1", "<x@y.example>: Relay access denied", "", ("sender", "invalid-sender")),
    (535, "5.7.8", "Authentication credentials invalid", "", ("sender", "invalid-sender")),
    (530, "", "Authentication required", "", ("sender", "invalid-sender")),
    (550, "5.7.26", "Unauthenticated email from x.example is not accepted due to DMARC", "", ("sender", "invalid-sender")),
    (554, "5.7.1", "Message rejected as spam", "", ("policy", "spam-related")),
    (550, "5.7.1", "Delivery not authorized", "", ("policy", "policy-related")),
    (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", "", ("policy", "policy-related")),
    (451, "4.3.0", "Temporary failure", "", ("soft", "other")),
    (554, "5.6.0", "Something odd", "", ("policy", "other")),
    (0, "5.1.1", "", "bad-mailbox", ("hard", "bad-mailbox")),
    (0, "", "", "quota-issues", ("soft", "quota-issues")),
    (0, "", "", "my-own-category", ("policy", "my-own-category")),
])
def test_classify(code, enhanced, text, category, expected) -> None:
    found = policy.classify(code, enhanced, text, category)
    assert (found.bounce_class.value, found.category) == expected


def test_the_table_names_only_known_classes_and_categories() -> None:
    raw = tomllib.loads(TABLE.read_text())
    classes = {c.value for c in BounceClass}
    assert set(raw["categories"].values()) <= classes and set(raw["codes"].values()) <= classes
    for rule in raw["status"]:
        assert rule["category"] in raw["categories"], rule
        assert rule.get("why"), rule
    for rule in raw["sender"]:
        assert rule.get("why") and set(rule) & {"enhanced", "code", "text"}, rule


def test_soft_categories_are_the_soft_counters_of_feedback() -> None:
    assert feedback.SOFT_CATEGORIES == policy.categories_of(BounceClass.SOFT) == [
        "no-answer-from-host", "quota-issues", "relaying-issues", "routing-errors"]


def row(status: str, email: str | None = "a@b.example", waiting: dt.datetime | None = None) -> Row:
    return Row(email=email, contact_status=status, waiting_since=waiting)


def test_the_checks_in_order() -> None:
    tenant = TenantPolicy()
    assert policy.verdict(row("valid"), set(), tenant, NOW) is None
    assert policy.verdict(row("risky"), set(), tenant, NOW) is None
    assert policy.verdict(row("risky"), set(), TenantPolicy(mail_risky=False), NOW) == \
        Skip("contact is risky and the tenant mails only valid contacts")
    for status in ("invalid", "unsubscribed", "bounced", "complained"):
        assert policy.verdict(row(status), set(), tenant, NOW) == Skip(f"contact is {status}")
    assert policy.verdict(row("erased", email=None), set(), tenant, NOW) == Skip("contact erased")
    assert policy.verdict(row("valid"), {"a@b.example"}, tenant, NOW) == Skip("suppressed")
    assert isinstance(policy.verdict(row("pending"), set(), tenant, NOW), Hold)
    # a pending contact that is also suppressed waits for nothing
    assert policy.verdict(row("pending"), {"a@b.example"}, tenant, NOW) == Skip("suppressed")
    late = NOW - dt.timedelta(hours=25)
    assert policy.verdict(row("pending", waiting=late), set(), tenant, NOW) == Skip("contact not validated within 24 h")
    assert policy.verdict(row("something-new"), set(), tenant, NOW) == Skip("contact is something-new")


def test_tenant_policy_from_settings() -> None:
    assert TenantPolicy.from_settings(None) == TenantPolicy()
    read = TenantPolicy.from_settings({"mail_risky": False, "validation_wait_hours": 2})
    assert read.mail_risky is False and read.validation_wait == dt.timedelta(hours=2)
