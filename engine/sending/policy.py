"""The send policy: who may be mailed, what a refusal means, and when a campaign must wait.

One module for every way out (PowerMTA injection and MailWizz) and for feedback (accounting files), so the
paths cannot disagree. The per-contact checks are a flat list of small named functions (Postal's outgoing
message processor is the model); each returns None to let the row go on, or a verdict that ends or delays it.
Bounce classification is data: bounces.toml, read once.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec

from engine import dns_checks
from engine.contacts import ContactStatus
from sql import q


class BounceClass(StrEnum):
    HARD = "hard"            # the address is dead: suppress it
    SOFT = "soft"            # may come back: retry (4xx), count toward the soft-bounce limit
    SENDER = "sender"        # the sender's fault: never suppress, pause the campaign
    POLICY = "policy"        # reputation or content: not the contact's fault, not suppressed
    COMPLAINT = "complaint"  # the recipient complained: suppress it


# Validated and mailable; RISKY only when the tenant allows it (the default).
MAILABLE = frozenset({ContactStatus.VALID, ContactStatus.RISKY})
# Statuses that end a row for good: the contact may never be mailed in this state.
NEVER = frozenset({ContactStatus.INVALID, ContactStatus.UNSUBSCRIBED, ContactStatus.BOUNCED,
                   ContactStatus.COMPLAINED, ContactStatus.ERASED})
# A row whose contact is still being validated is looked at again after this long.
VALIDATION_RECHECK_SECONDS = 60.0
# How long a row may wait for its contact's validation before it is skipped (tenant setting
# `validation_wait_hours`): a day covers DNS retries and the ten-minute sweep of lost validation jobs.
DEFAULT_VALIDATION_WAIT = dt.timedelta(hours=24)


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a campaign, an IP or a sending domain pauses itself: a rate of its final results passed."""

    hard_bounce_rate: Annotated[float, msgspec.Meta(ge=0, le=1)]
    complaint_rate: Annotated[float, msgspec.Meta(ge=0, le=1)]
    # below this many final results the rates say too little (a sender-class refusal pauses at once anyway)
    min_results: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]


class AutoPause(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The tenant's limits per target: a campaign over its whole run, an IP and a domain over 24 hours."""

    # 2% hard bounces once 200 results are in: Woodpecker's Bounce Shield threshold (deliverability.md §4),
    # counted after more results than its 20 so one unlucky chunk does not stop a campaign; 0.1% complaints:
    # Gmail's "keep it below 0.1%" (§1.1, and the engine requirement in §1.4).
    campaign: Limits = Limits(hard_bounce_rate=0.02, complaint_rate=0.001, min_results=200)
    # An IP or a domain carries every campaign of the tenant: it stops at the warmup's step-back line (5%
    # bounces, engine.warmup.Thresholds) and at 0.3% complaints, the Gmail and Yahoo hard limit (§1.1-1.2).
    ip: Limits = Limits(hard_bounce_rate=0.05, complaint_rate=0.003, min_results=500)
    domain: Limits = Limits(hard_bounce_rate=0.05, complaint_rate=0.003, min_results=500)


class TenantPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's knobs (tenants.settings) that the checks read."""

    mail_risky: bool = True
    validation_wait: dt.timedelta = DEFAULT_VALIDATION_WAIT
    auto_pause: AutoPause = AutoPause()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> TenantPolicy:
        settings = settings or {}
        hours = settings.get("validation_wait_hours")
        return cls(mail_risky=bool(settings.get("mail_risky", True)),
                   validation_wait=dt.timedelta(hours=float(hours)) if hours is not None else DEFAULT_VALIDATION_WAIT,
                   auto_pause=auto_pause(settings.get("auto_pause")))


def auto_pause(stored: Mapping[str, Any] | None) -> AutoPause:
    """The stored overrides ({"campaign": {"hard_bounce_rate": 0.05}, ...}) over the defaults; a broken
    override falls back to the default of its target, never to no limit at all."""
    default = AutoPause()
    if not stored:
        return default
    found = {}
    for target in AutoPause.__struct_fields__:
        base = msgspec.structs.asdict(getattr(default, target))
        try:
            found[target] = msgspec.convert({**base, **(stored.get(target) or {})}, Limits)
        except (msgspec.ValidationError, TypeError):
            found[target] = getattr(default, target)
    return AutoPause(**found)


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """What the checks need to know about one send row and its contact."""

    email: str | None
    contact_status: str
    waiting_since: dt.datetime | None = None


class Skip(msgspec.Struct, frozen=True):
    """The row ends without a message, for this reason."""

    reason: str


class Hold(msgspec.Struct, frozen=True):
    """The row waits: looked at again in `seconds`."""

    reason: str
    seconds: float


Verdict = Skip | Hold | None
Check = Callable[[Row, set[str], TenantPolicy, dt.datetime], Verdict]


def contact_erased(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    if not row.email or row.contact_status == ContactStatus.ERASED:
        return Skip("contact erased")
    return None


def contact_never_mailed(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    if row.contact_status in NEVER:
        return Skip(f"contact is {row.contact_status}")
    return None


def contact_risky(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    if row.contact_status == ContactStatus.RISKY and not policy.mail_risky:
        return Skip("contact is risky and the tenant mails only valid contacts")
    return None


def contact_validated(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    """Cold mail lives by its bounce rate: a contact still pending waits for its validation."""
    if row.contact_status != ContactStatus.PENDING:
        return None
    if row.waiting_since is not None and now - row.waiting_since >= policy.validation_wait:
        hours = policy.validation_wait.total_seconds() / 3600
        return Skip(f"contact not validated within {hours:g} h")
    return Hold("waiting for the contact's validation", VALIDATION_RECHECK_SECONDS)


def address_suppressed(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    if row.email in blocked:
        return Skip("suppressed")
    return None


def contact_mailable(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    """The last word: anything not known to be mailable is not mailed."""
    if row.contact_status not in MAILABLE:
        return Skip(f"contact is {row.contact_status}")
    return None


# Definitive refusals first, so a suppressed contact is skipped rather than waited for.
CHECKS: tuple[Check, ...] = (contact_erased, contact_never_mailed, address_suppressed, contact_risky,
                             contact_validated, contact_mailable)


def verdict(row: Row, blocked: set[str], policy: TenantPolicy, now: dt.datetime) -> Verdict:
    """The first check that stops the row, or None when it may be mailed."""
    for check in CHECKS:
        found = check(row, blocked, policy, now)
        if found is not None:
            return found
    return None


def window_wait(window: Mapping[str, Any] | None, now: dt.datetime) -> float:
    """Seconds until the campaign's sending window opens (0 inside it); windows may run past midnight."""
    if not window:
        return 0.0
    local = now.astimezone(ZoneInfo(window.get("timezone") or "UTC"))
    start = dt.time.fromisoformat(window["start"])
    end = dt.time.fromisoformat(window["end"])
    t = local.time()
    inside = start <= t < end if start < end else (t >= start or t < end)
    if inside:
        return 0.0
    opening = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if opening <= local:
        opening += dt.timedelta(days=1)
    return (opening - local).total_seconds()


# --- bounce classification ------------------------------------------------------------------------------

class _Rule(msgspec.Struct, frozen=True, kw_only=True):
    why: str
    enhanced: str = ""        # exact ("5.1.1"), or a prefix when it ends with a dot ("5.7.")
    code: int = 0             # exact (530), or the class digit (5)
    text: str = ""            # a regex searched in the reply text, case-insensitive
    category: str = ""        # [[status]] rules: the PowerMTA category the reply stands for


class _Table(msgspec.Struct, frozen=True, kw_only=True):
    sender: list[_Rule]
    categories: dict[str, BounceClass]
    status: list[_Rule]
    codes: dict[str, BounceClass]


class Classified(msgspec.Struct, frozen=True, kw_only=True):
    bounce_class: BounceClass
    category: str             # the PowerMTA category given, or the one the reply stands for ("" if none)


@cache
def _table() -> tuple[_Table, dict[int, re.Pattern[str]]]:
    raw = tomllib.loads((Path(__file__).parent / "bounces.toml").read_text())
    table = msgspec.convert(raw, _Table)
    patterns = {id(rule): re.compile(rule.text, re.IGNORECASE)
                for rule in (*table.sender, *table.status) if rule.text}
    return table, patterns


def _matches(rule: _Rule, code: int, enhanced: str, text: str, patterns: dict[int, re.Pattern[str]]) -> bool:
    if rule.enhanced and not (enhanced.startswith(rule.enhanced) if rule.enhanced.endswith(".")
                              else enhanced == rule.enhanced):
        return False
    if rule.code and not (code == rule.code if rule.code >= 10 else code // 100 == rule.code):
        return False
    return not rule.text or patterns[id(rule)].search(text) is not None


def classify(code: int = 0, enhanced: str = "", text: str = "", category: str = "") -> Classified:
    """What a refusal means: its class, and the PowerMTA category it stands for."""
    table, patterns = _table()
    enhanced = enhanced.strip()
    category = category.strip().lower()
    if not code and enhanced[:1].isdigit():
        code = int(enhanced[0]) * 100
    for rule in table.sender:
        if _matches(rule, code, enhanced, text, patterns):
            return Classified(bounce_class=BounceClass.SENDER, category=category or "invalid-sender")
    if category:
        return Classified(bounce_class=table.categories.get(category, BounceClass.POLICY), category=category)
    for rule in table.status:
        if _matches(rule, code, enhanced, text, patterns):
            return Classified(bounce_class=table.categories[rule.category], category=rule.category)
    digit = str(code // 100) if code else enhanced[:1]
    return Classified(bounce_class=table.codes.get(digit, BounceClass.POLICY), category="other" if digit else "")


def categories_of(bounce_class: BounceClass) -> list[str]:
    """The PowerMTA categories of one class (the soft-bounce counter reads the send log by these)."""
    return sorted(name for name, cls in _table()[0].categories.items() if cls is bounce_class)


# --- campaign-level checks --------------------------------------------------------------------------------

async def sender_hold(db: Any, tenant_id: int, from_email: str) -> str | None:
    """Why the campaign's From domain may not send now (a wrong SPF or DKIM record, a domain blocklist
    listing: engine.dns_checks; the domain paused itself: engine.health), or None. Both transports ask before
    handing anything over."""
    hold = await dns_checks.sending_hold(db, tenant_id, from_email)
    if hold is not None:
        return hold
    domain = from_email.rpartition("@")[2].strip().rstrip(".").lower()
    paused = await db.fetchval(q("health-domain-paused"), tenant_id, domain)
    return None if paused is None else f"domain {domain} is paused: {paused}"
