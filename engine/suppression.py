"""The per-tenant suppression list: addresses and whole domains that must never be mailed."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

import asyncpg
import msgspec

from engine import tenants
from engine.contacts import email_hash
from engine.errors import Invalid, NotFound
from engine.validation import check_syntax, normalise_email
from sql import q

# Same bound as a contacts batch: 10,000 values upsert in one statement well under a second.
MAX_BATCH = 10_000
PAGE_MAX = 1000


class SuppressionReason(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    ERASED = "erased"


# Weakest first. A value suppressed again keeps its row; its reason changes only to a stronger one. `manual`
# is an operator's catch-all, so any evidence replaces it; a complaint is the strongest mailbox-provider
# signal (Gmail/Yahoo spam rate, reference §1); `erased` is a legal obligation and is never overwritten.
STRENGTH: tuple[str, ...] = ("manual", "unsubscribe", "hard_bounce", "complaint", "erased")

# The contact status a suppressed address implies. `manual` and `erased` leave the contact alone: the
# suppression list alone keeps the address from being mailed, and erasure is the contacts module's job.
CONTACT_STATUS: dict[str, str] = {"unsubscribe": "unsubscribed", "hard_bounce": "bounced", "complaint": "complained"}


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    value: str
    is_domain: bool
    reason: str
    source: str | None
    created_at: dt.datetime


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """An entry that could not be stored, by its position in the request."""

    index: int
    entry: str
    reason: str  # empty | syntax | too_long | quoted_local


class AddReport(msgspec.Struct, frozen=True, kw_only=True):
    added: int
    upgraded: int
    unchanged: int
    rejected: list[Rejected]
    # addresses (not domains) newly suppressed or upgraded: what the caller propagates (MailWizz)
    changed_addresses: list[str] = msgspec.field(default_factory=list)


class SuppressionPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Suppression]
    next_cursor: str | None


def parse_reason(raw: str) -> str:
    try:
        return SuppressionReason(raw).value
    except ValueError:
        raise Invalid(f"reason: expected one of {', '.join(r.value for r in SuppressionReason)}, got {raw!r}",
                      field="reason") from None


def parse_entry(raw: str) -> tuple[str | None, str | None]:
    """(value, None) for a normalised address or bare domain; (None, reason) for something unusable.

    `example.com` and `@example.com` both mean the whole domain.
    """
    text = raw.strip()
    if not text:
        return None, "empty"
    domain_form = "@" not in text or (text.startswith("@") and text.count("@") == 1)
    # A domain goes through the address normaliser behind a stand-in local part, so both get the same
    # lower-casing, IDNA mapping and label rules.
    if domain_form:
        email = normalise_email("x" + text if text.startswith("@") else "x@" + text)
    else:
        email = normalise_email(text)
    if email is None:
        return None, "syntax"
    problem = check_syntax(email)
    if problem is not None:
        return None, problem
    return (email.rpartition("@")[2] if domain_form else email), None


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2]


async def add_suppressions(db: asyncpg.Connection, tenant_id: int, entries: list[str], *, reason: str,
                           source: str | None = None) -> AddReport:
    """Suppress many addresses/domains in one upsert; bad entries are reported, the good ones stored."""
    reason = parse_reason(reason)
    await tenants.get_tenant(db, tenant_id)
    rejected: list[Rejected] = []
    values: dict[str, None] = {}  # insertion-ordered set: a repeated entry is stored once
    for i, raw in enumerate(entries):
        value, problem = parse_entry(raw)
        if value is None:
            rejected.append(Rejected(index=i, entry=raw[:320], reason=problem or "syntax"))
        else:
            values[value] = None
    rows = await db.fetch(q("add-suppressions"), tenant_id, list(values), reason, source, list(STRENGTH)) if values else []
    added = sum(1 for r in rows if r["inserted"])
    changed = [r["value"] for r in rows if "@" in r["value"]]
    if changed:
        await mark_contacts(db, tenant_id, changed, reason, source=source)
    return AddReport(added=added, upgraded=len(rows) - added, unchanged=len(entries) - len(rejected) - len(rows),
                     rejected=rejected, changed_addresses=changed)


async def mark_contacts(db: asyncpg.Connection, tenant_id: int, emails: list[str], reason: str, *,
                        source: str | None = None) -> list[int]:
    """Give the tenant's contacts at these addresses the status the reason implies; return their ids."""
    status = CONTACT_STATUS.get(reason)
    if status is None or not emails:
        return []
    stronger = STRENGTH[STRENGTH.index(reason):]
    keep = ["erased", *(CONTACT_STATUS[r] for r in stronger if r in CONTACT_STATUS)]
    rows = await db.fetch(q("suppression-mark-contacts"), tenant_id, [email_hash(e) for e in emails], status, keep)
    if rows:
        details = [msgspec.json.encode({"from": r["old_status"], "to": status, "reason": reason,
                                        "by": "suppression", "source": source}).decode() for r in rows]
        await db.execute(q("record-contact-events"), tenant_id, [r["id"] for r in rows],
                         ["status_changed"] * len(rows), details)
    return [r["id"] for r in rows]


async def list_suppressions(db: asyncpg.Connection, tenant_id: int, *, reason: str | None = None,
                            cursor: str | None = None, limit: int = 100) -> SuppressionPage:
    """One keyset page; the cursor is the last id of the previous page."""
    if reason is not None:
        reason = parse_reason(reason)
    after = 0
    if cursor:
        if not cursor.isdigit() or len(cursor) > 19:
            raise Invalid("cursor: pass back the next_cursor of the previous page", field="cursor")
        after = int(cursor)
    items = [Suppression(**r) for r in await db.fetch(q("list-suppressions"), tenant_id, after, reason, limit)]
    return SuppressionPage(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


def _value(entry: str, field: str) -> str:
    value, problem = parse_entry(entry)
    if value is None:
        raise Invalid(f"{field}: not an address or a domain ({problem})", field=field)
    return value


async def check_suppression(db: asyncpg.Connection, tenant_id: int, email: str) -> Suppression | None:
    """The entry that suppresses this address (its own, else its domain's), or None."""
    value = _value(email, "email")
    row = await db.fetchrow(q("check-suppression"), tenant_id, value, _domain_of(value))
    return None if row is None else Suppression(**row)


async def remove_suppression(db: asyncpg.Connection, tenant_id: int, entry: str) -> None:
    """Lift one entry (exact value). Contact statuses stay as they are: changing them back is a decision."""
    value = _value(entry, "email")
    if await db.fetchval(q("remove-suppression"), tenant_id, value) is None:
        raise NotFound(f"{value} is not on this tenant's suppression list")


async def suppressed_among(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, emails: list[str]) -> set[str]:
    """Which of these normalised addresses are suppressed (by address or domain): one query per batch."""
    if not emails:
        return set()
    return {r["email"] for r in await db.fetch(q("suppressed-among"), tenant_id, emails)}
