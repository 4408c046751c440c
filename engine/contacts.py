"""Contacts: batch ingest (one set-based upsert), listing with keyset pages, changes and erasure."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import metrics
from engine.db import json_rows
from engine.errors import Conflict, Invalid, NotFound
from engine.languages import normalise_language
from engine.validation import check_syntax, normalise_email
from sql import q

# A request may carry this many contacts: a batch of 10,000 upserts in well under a second, and a bigger
# one would hold its row locks long enough to stall concurrent batches.
MAX_BATCH = 10_000
PAGE_MAX = 1000

_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
Text = Annotated[str, msgspec.Meta(max_length=1000)]


class ContactStatus(StrEnum):
    PENDING = "pending"
    VALID = "valid"
    RISKY = "risky"
    INVALID = "invalid"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    ERASED = "erased"


class ContactIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One contact as integrators send it (the seed's payload plus the newer optional fields)."""

    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    email: Annotated[str, msgspec.Meta(max_length=320, examples=["avocat@example.fr"])]
    data_source_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])] | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    company: Text | None = None
    website: Text | None = None
    country: Annotated[str, msgspec.Meta(max_length=64, examples=["FR"])] | None = None
    language: Annotated[str, msgspec.Meta(max_length=35, examples=["fr", "pt_BR"],
                                          description="normalised to one of the nine codes when recognised")] | None = None
    category: Annotated[str, msgspec.Meta(max_length=200, examples=["avocat"])] | None = None
    tags: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(
        max_length=100, examples=[["prestataire", "lang-fr"]], description="slugs, created on first use")] = msgspec.field(default_factory=list)
    custom: dict[str, Any] | None = None


class IngestRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    contacts: Annotated[list[ContactIn], msgspec.Meta(description=f"at most {MAX_BATCH:,} contacts")]


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What happened to one contact of a batch, by its position in the request."""

    index: int
    outcome: str  # created | updated | unchanged | rejected
    id: int | None = None
    reason: str | None = None


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    created: int
    updated: int
    unchanged: int
    rejected: int
    results: list[Outcome]
    # ids to validate, per tenant: the new contacts (callers enqueue after commit)
    to_validate: dict[int, list[int]] = msgspec.field(default_factory=dict)


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    data_source_id: int | None
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    website: str | None
    country: str | None
    language: str | None
    category: str | None
    custom: dict[str, Any]
    status: str
    score: float | None
    reasons: list[str]
    suggestion: str | None
    mx_host: str | None
    validated_at: dt.datetime | None
    tags: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class ContactPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Contact]
    total: int
    next_cursor: str | None


class ContactEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    detail: dict[str, Any]
    created_at: dt.datetime


class ContactFilter(msgspec.Struct, frozen=True, kw_only=True):
    status: str | None = None
    tags: list[str] | None = None
    tags_all: bool = False
    language: str | None = None
    category: str | None = None
    data_source_id: int | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    search: str | None = None


@functools.lru_cache(maxsize=4096)
def slugify(raw: str) -> str | None:
    """A tag as a slug: ASCII lower case, words joined by hyphens; None when nothing is left."""
    # cached: an import's rows carry the same few tags, a hundred thousand times over
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode().lower()
    slug = _SLUG_JUNK.sub("-", ascii_text).strip("-")
    return slug[:64].rstrip("-") or None


def email_hash(email: str) -> bytes:
    """The dedup key of a normalised address (and all that erasure keeps)."""
    return hashlib.sha256(email.encode()).digest()


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


class Row(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One row of upsert-contacts' input, by column name (an unset field travels as nothing: NULL)."""

    tenant_id: int
    email: str
    email_hash: str  # hex
    data_source_id: int | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    website: str | None = None
    country: str | None = None
    language: str | None = None
    category: str | None = None
    custom: dict[str, Any] | None = None


class Tagging(msgspec.Struct, frozen=True):
    """The tags of one contact, as link-contact-tags reads them."""

    contact_id: int
    tenant_id: int
    slugs: set[str]


# fields a later duplicate in the same batch overrides when it sets them
_MERGED = ("data_source_id", "first_name", "last_name", "company", "website", "country", "language", "category")


class PreparedBatch(msgspec.Struct, kw_only=True):
    """A batch checked and deduplicated in Python, ready for the upsert (no database needed to make one)."""

    size: int
    rejected: dict[int, str]
    merged: list[Row]  # one row per distinct (tenant, address)
    tags: list[set[str]]  # the tag slugs of each merged row
    members: list[list[int]]  # positions in the batch of each merged row


async def ingest(db: asyncpg.Connection, contacts: list[ContactIn], *, tenant_id: int | None) -> IngestReport:
    """Upsert a batch (call inside a transaction); tenant_id None = the admin, who may name any tenant."""
    tenant_ids = {c.tenant_id for c in contacts}
    if tenant_id is None:
        known = {r["id"] for r in await db.fetch(q("contacts-known-tenants"), list(tenant_ids))}
    else:
        known = {tenant_id}
    source_ids = {c.data_source_id for c in contacts if c.data_source_id is not None}
    owners = {r["id"]: r["tenant_id"] for r in await db.fetch(q("contacts-source-owners"), list(source_ids))} \
        if source_ids else {}
    return await write_batch(db, prepare_batch(contacts, known=known, owners=owners))


def prepare_batch(contacts: list[ContactIn], *, known: set[int], owners: dict[int, int]) -> PreparedBatch:
    """Check and merge a batch: `known` are the tenants it may write to, `owners` each data source's tenant.

    Pure Python, so a caller streaming a file can prepare the next batch while the database writes this one.
    """
    rejected: dict[int, str] = {}
    rows: dict[tuple[int, str], int] = {}  # (tenant, address) -> position in merged; duplicates merge into one
    merged: list[Row] = []
    tags: list[set[str]] = []
    members: list[list[int]] = []
    for index, c in enumerate(contacts):
        if c.tenant_id not in known:
            rejected[index] = "tenant_id: not a tenant this key may write to"
            continue
        if c.data_source_id is not None and owners.get(c.data_source_id) != c.tenant_id:
            rejected[index] = "data_source_id: no such data source for this tenant"
            continue
        email = normalise_email(c.email)
        problem = "syntax" if email is None else check_syntax(email)
        if problem is not None:
            rejected[index] = f"email: not a usable address ({problem})"
            continue
        slugs = [slugify(t) for t in c.tags]
        if None in slugs:
            rejected[index] = f"tags[{slugs.index(None)}]: a tag needs at least one ASCII letter or digit"
            continue
        new = Row(tenant_id=c.tenant_id, data_source_id=c.data_source_id, email=email,
                  email_hash=email_hash(email).hex(), first_name=_blank(c.first_name),
                  last_name=_blank(c.last_name), company=_blank(c.company), website=_blank(c.website),
                  country=_blank(c.country), language=normalise_language(c.language),
                  category=_blank(c.category), custom=c.custom or None)
        key = (c.tenant_id, email)
        at = rows.get(key)
        if at is None:
            rows[key] = len(merged)
            merged.append(new)
            tags.append(set(slugs))
            members.append([index])
        else:  # the same address twice in one batch: later non-null fields win, tags add up
            row = merged[at]
            for name in _MERGED:
                value = getattr(new, name)
                if value is not None:
                    setattr(row, name, value)
            row.custom = {**(row.custom or {}), **(new.custom or {})} or None
            tags[at].update(slugs)
            members[at].append(index)
    return PreparedBatch(size=len(contacts), rejected=rejected, merged=merged, tags=tags, members=members)


async def write_batch(db: asyncpg.Connection, batch: PreparedBatch, *,
                      locked: Callable[[], None] | None = None) -> IngestReport:
    """The upsert of a prepared batch, its tags and the outcome of each of its contacts (inside a transaction).

    `locked` is called once the batch holds every row lock another batch could need (its contacts and new
    tags): a batch started after that waits for this one's commit where they overlap, never the other way.
    """
    merged, members = batch.merged, batch.members
    found = await db.fetch(q("upsert-contacts"), json_rows(merged)) if merged else []

    outcomes: list[str] = []
    ids: list[int] = []
    for record in found:
        outcomes.append(record["outcome"])
        ids.append(record["id"])
    late = [i for i, contact_id in enumerate(ids) if contact_id is None]
    if late:
        # rows the batch before inserted and committed after this statement took its snapshot: ON CONFLICT
        # found and locked them, left them unchanged, and neither half of the statement saw their id
        pairs = [(merged[i].tenant_id, bytes.fromhex(merged[i].email_hash)) for i in late]
        known = {(r["tenant_id"], r["email_hash"]): r["id"] for r in await db.fetch(
            q("contact-ids-by-hash"), [t for t, _ in pairs], [h for _, h in pairs])}
        for i, pair in zip(late, pairs, strict=True):
            ids[i] = known[pair]
    await _tag(db, merged, batch.tags, ids, outcomes, locked or _nothing)

    results: list[Outcome | None] = [None] * batch.size
    for index, reason in batch.rejected.items():
        results[index] = Outcome(index=index, outcome="rejected", reason=reason)
    to_validate: dict[int, list[int]] = {}
    for row, contact_id, outcome, positions in zip(merged, ids, outcomes, members, strict=True):
        if outcome == "erased":
            result = dict(outcome="rejected", id=None, reason="erased: this address was erased and is not taken again")
        else:
            result = dict(outcome=outcome, id=contact_id)
            if outcome == "created":
                to_validate.setdefault(row.tenant_id, []).append(contact_id)
        first, *repeats = positions
        results[first] = Outcome(index=first, **result)
        for index in repeats:  # the same address again in this batch: merged into the first, counted once
            results[index] = Outcome(index=index, outcome="unchanged" if result["id"] else "rejected",
                                     id=result["id"], reason=result.get("reason"))
    counted: Counter[tuple[str, str, str]] = Counter()
    for row, outcome, positions in zip(merged, outcomes, members, strict=True):
        counted[(str(row.tenant_id), "" if row.data_source_id is None else str(row.data_source_id), outcome)] \
            += len(positions)
    for labels, n in counted.items():
        metrics.CONTACTS_INGESTED.labels(*labels).inc(n)
    counts = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    for r in results:
        counts[r.outcome] += 1
    return IngestReport(**counts, results=results, to_validate=to_validate)


def _nothing() -> None:
    return None


async def _tag(db: asyncpg.Connection, merged: list[Row], tags: list[set[str]], ids: list[int],
               outcomes: list[str], locked: Callable[[], None]) -> None:
    """Create missing tags and link them; an unchanged contact that gains a tag becomes updated."""
    taggings: list[Tagging] = []
    wanted: dict[int, set[str]] = {}  # tenant -> slugs
    for row, slugs, contact_id, outcome in zip(merged, tags, ids, outcomes, strict=True):
        if outcome == "erased" or not slugs:
            continue
        taggings.append(Tagging(contact_id, row.tenant_id, slugs))
        wanted.setdefault(row.tenant_id, set()).update(slugs)
    if not taggings:
        locked()
        return
    pairs = [(tenant, slug) for tenant, slugs in wanted.items() for slug in sorted(slugs)]
    await db.execute(q("ensure-tags"), [t for t, _ in pairs], [s for _, s in pairs])
    locked()
    gained = {r["contact_id"] for r in await db.fetch(q("link-contact-tags"), json_rows(taggings))}
    newly: dict[int, list[int]] = {}
    for i, (row, contact_id) in enumerate(zip(merged, ids, strict=True)):
        if outcomes[i] == "unchanged" and contact_id in gained:
            outcomes[i] = "updated"
            newly.setdefault(row.tenant_id, []).append(contact_id)
    for tenant, changed in newly.items():
        await db.execute(q("record-contact-events"), tenant, changed, ["updated"] * len(changed),
                         ['{"fields": ["tags"]}'] * len(changed))


def _filter_args(f: ContactFilter) -> list[Any]:
    tags = sorted({s for s in (slugify(t) for t in f.tags or ()) if s}) or None
    search = None
    if f.search:
        escaped = f.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        search = f"%{escaped}%"
    return [f.status, tags, f.tags_all, normalise_language(f.language), f.category, f.data_source_id,
            f.created_from, f.created_to, search]


async def list_contacts(db: asyncpg.Connection, tenant_id: int, f: ContactFilter, *, cursor: str | None = None,
                        limit: int = 100) -> ContactPage:
    """One keyset page; the cursor is the last id of the previous page."""
    after = 0
    if cursor:
        if not cursor.isdigit() or len(cursor) > 19:
            raise Invalid("cursor: pass back the next_cursor of the previous page", field="cursor")
        after = int(cursor)
    args = _filter_args(f)
    records = await db.fetch(q("list-contacts"), tenant_id, after, *args, limit)
    total = await db.fetchval(q("count-contacts"), tenant_id, *args)
    items = [Contact(**r) for r in records]
    next_cursor = str(items[-1].id) if len(items) == limit else None
    return ContactPage(items=items, total=total, next_cursor=next_cursor)


async def get_contact(db: asyncpg.Connection, tenant_id: int, contact_id: int) -> Contact:
    row = await db.fetchrow(q("get-contact"), tenant_id, contact_id)
    if row is None:
        raise NotFound(f"contact {contact_id} not found")
    return Contact(**row)


async def list_events(db: asyncpg.Connection, tenant_id: int, contact_id: int) -> list[ContactEvent]:
    await get_contact(db, tenant_id, contact_id)
    return [ContactEvent(**r) for r in await db.fetch(q("list-contact-events"), tenant_id, contact_id)]


async def erase_contact(db: asyncpg.Connection, tenant_id: int, contact_id: int) -> None:
    """Drop every personal field, keep the address hash; erasing twice is a no-op."""
    await get_contact(db, tenant_id, contact_id)
    if await db.fetchval(q("erase-contact"), tenant_id, contact_id) is not None:
        await db.execute(q("record-contact-events"), tenant_id, [contact_id], ["erased"], ["{}"])


EDITABLE = ("data_source_id", "first_name", "last_name", "company", "website", "country", "language",
            "category", "custom")


async def patch_contact(db: asyncpg.Connection, tenant_id: int, contact_id: int, changes: dict[str, Any],
                        *, add_tags: list[str], remove_tags: list[str], status: str | None,
                        reason: str | None) -> Contact:
    """Apply an operator's change (fields given in `changes`, tags, status with its reason), with events."""
    row = await db.fetchrow(q("lock-contact"), tenant_id, contact_id)
    if row is None:
        raise NotFound(f"contact {contact_id} not found")
    if row["status"] == "erased":
        raise Conflict("this contact was erased; it cannot be changed", field="status")
    if status is not None and not reason:
        raise Invalid("reason: a status set by hand needs a reason", field="reason")
    current = dict(row)
    if "language" in changes:
        changes["language"] = normalise_language(changes["language"])
    if changes.get("data_source_id") is not None:
        owner = await db.fetchval("SELECT tenant_id FROM data_sources WHERE id = $1", changes["data_source_id"])
        if owner != tenant_id:
            raise Invalid("data_source_id: no such data source for this tenant", field="data_source_id")
    changed = [k for k in EDITABLE if k in changes and changes[k] != current[k]]
    new = {**current, **changes}
    new_status = status or current["status"]
    await db.execute(q("update-contact"), tenant_id, contact_id, *(new[k] for k in EDITABLE), new_status)
    events: list[tuple[str, dict]] = []
    if add_tags:
        slugs = [slugify(t) or "" for t in add_tags]
        if "" in slugs:
            raise Invalid("add_tags: a tag needs at least one ASCII letter or digit", field="add_tags")
        await db.execute(q("ensure-tags"), [tenant_id] * len(slugs), slugs)
        added = await db.fetch(q("link-contact-tags"), json_rows([Tagging(contact_id, tenant_id, set(slugs))]))
        if added:
            changed.append("tags")
    if remove_tags:
        slugs = [s for s in (slugify(t) for t in remove_tags) if s]
        if await db.fetch(q("unlink-contact-tags"), contact_id, tenant_id, slugs) and "tags" not in changed:
            changed.append("tags")
    if changed:
        events.append(("updated", {"fields": changed, "by": "operator"}))
    if status is not None and status != current["status"]:
        events.append(("status_changed", {"from": current["status"], "to": status, "reason": reason,
                                          "by": "operator"}))
    if events:
        await db.execute(q("record-contact-events"), tenant_id, [contact_id] * len(events),
                         [k for k, _ in events], [msgspec.json.encode(d).decode() for _, d in events])
    return await get_contact(db, tenant_id, contact_id)
