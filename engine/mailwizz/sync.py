"""A tenant's MailWizz install: its stored configuration, a client built from it, the subscriber push and the
unsubscribe pull.

The engine's contacts become subscribers of one list (the install's `list_uid`) with the fields below; a
campaign's waves get lists of their own with the same fields (engine.mailwizz.campaigns), so MailWizz's own tags
([FNAME], [COMPANY], ...) personalise them. Who may be pushed is the send policy's call
(engine.sending.policy.verdict): a suppressed, pending or refused contact is never pushed, and an existing
subscriber is never re-confirmed: pushing someone MailWizz already knows only reads back their uid (they may have
unsubscribed there). The hourly pull walks the tenant's list and its recent wave lists.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import httpx
import msgspec

from engine import secrets, suppression
from engine.errors import Invalid, NotFound
from engine.languages import template_language
from engine.mailwizz.client import MailWizzClient, PushOutcome, SubscriberIn, SubscriberPush
from engine.mailwizz.wire import MailWizzNotFound, MailWizzValidationError
from engine.sending import policy
from sql import q

log = logging.getLogger(__name__)

# Field TAG -> contact column. FNAME/LNAME exist on every MailWizz list; the others are created if missing.
# COMPANY, WEBSITE and COUNTRY are there because the starter templates personalise with them.
FIELD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("FNAME", "first_name"), ("LNAME", "last_name"), ("LANGUAGE", "language"), ("CATEGORY", "category"),
    ("TAGS", "tags"), ("COMPANY", "company"), ("WEBSITE", "website"), ("COUNTRY", "country"),
)
LIST_FIELDS = tuple(tag for tag, _ in FIELD_COLUMNS)
# Five bulk requests of the client's 100 per transaction: small enough that a 503 repeats little work.
PUSH_BATCH = 500
# Subscriber statuses (mailwizz-api.md §7) that mean the engine must not mail the address either, with the
# suppression reason each becomes: someone who left the list in MailWizz has left the engine too.
LEFT_IN_MAILWIZZ = {"unsubscribed": "unsubscribe", "blacklisted": "manual"}
PULL_BATCH = 1_000
# Wave lists are mailed once; their unsubscribes come from that one mail, read within weeks. After this many
# days the hourly pull stops walking them (MailWizz keeps them unsubscribed there, and the list is never mailed
# again); an unsubscribe from a later campaign's mail lands in that campaign's list.
WAVE_LISTS_PULLED_FOR_DAYS = 90


class MailWizzConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's MailWizz install as the API shows it: never the keys, only whether they are stored."""

    tenant_id: int
    name: str
    base_url: str
    api_version: int
    has_public_key: bool
    has_private_key: bool
    list_uid: str | None
    active: bool
    created_at: dt.datetime


class Install(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    base_url: str
    api_version: int
    public_key_enc: bytes | None
    private_key_enc: bytes | None
    list_uid: str | None


class PushContact(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    website: str | None
    country: str | None
    language: str | None
    category: str | None
    status: str
    mailwizz_subscriber_uid: str | None
    tags: str


class PushReport(msgspec.Struct, frozen=True, kw_only=True):
    taken: int = 0
    pushed: int = 0           # created, or found already in the list (uid stored either way)
    suppressed: int = 0
    dropped: int = 0          # erased or no longer valid
    rejected: int = 0         # MailWizz refused the record (422) or blacklisted the address


async def get_config(db: asyncpg.Connection, tenant_id: int) -> MailWizzConfig:
    row = await db.fetchrow(q("mailwizz-get-config"), tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id} has no MailWizz install")
    return MailWizzConfig(**row)


async def put_config(db: asyncpg.Connection, secret_key: str, tenant_id: int, *, base_url: str, api_version: int,
                     public_key: str, private_key: str | None, list_uid: str | None) -> MailWizzConfig:
    """Create or replace the tenant's install; keys are stored encrypted with the engine's secret key."""
    private_enc = secrets.encrypt(secret_key, private_key) if private_key else None
    public_enc = secrets.encrypt(secret_key, public_key)
    install_id = await db.fetchval(q("mailwizz-install-id"), tenant_id)
    if install_id is None:
        if api_version == 1 and private_enc is None:
            raise Invalid("private_key: MailWizz 1.x signs every request with the private key", field="private_key")
        await db.execute(q("mailwizz-insert-config"), tenant_id, base_url, api_version, private_enc, public_enc,
                         list_uid)
    else:
        await db.execute(q("mailwizz-update-config"), tenant_id, install_id, base_url, api_version, private_enc,
                         public_enc, list_uid)
    config = await get_config(db, tenant_id)
    if config.api_version == 1 and not config.has_private_key:
        raise Invalid("private_key: MailWizz 1.x signs every request with the private key", field="private_key")
    return config


async def get_install(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int) -> Install | None:
    row = await db.fetchrow(q("mailwizz-install"), tenant_id)
    return None if row is None else Install(**row)


def make_client(install: Install, secret_key: str, http: httpx.AsyncClient | None = None) -> MailWizzClient | None:
    """A client for a stored install, or None when it cannot be used (no key, 1.x without private key)."""
    if install.public_key_enc is None:
        return None
    public = secrets.decrypt(secret_key, install.public_key_enc)
    private = None if install.private_key_enc is None else secrets.decrypt(secret_key, install.private_key_enc)
    try:
        return MailWizzClient(install.base_url, public, private, api_version=install.api_version, http=http)
    except ValueError as exc:
        log.warning("tenant %s: MailWizz install %s unusable: %s", install.tenant_id, install.id, exc)
        return None


async def client_for(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, secret_key: str,
                     http: httpx.AsyncClient | None = None) -> MailWizzClient | None:
    """A client for the tenant's active install, or None if it has none usable."""
    install = await get_install(db, tenant_id)
    return None if install is None else make_client(install, secret_key, http)


@asynccontextmanager
async def try_lock(pool: asyncpg.Pool, key: str) -> AsyncIterator[bool]:
    """A session advisory lock on its own connection: yields False at once if another worker holds it."""
    async with pool.acquire() as conn:
        got = await conn.fetchval(q("mailwizz-try-lock"), key)
        try:
            yield got
        finally:
            if got:
                await conn.fetchval(q("mailwizz-unlock"), key)


def subscriber_in(contact: PushContact) -> SubscriberIn:
    """The subscriber record of a contact; LANGUAGE is one of the nine (what templates and segments use)."""
    values = msgspec.structs.asdict(contact)
    fields = {tag: str(values[column]) for tag, column in FIELD_COLUMNS if values[column]}
    fields["LANGUAGE"] = template_language(contact.language)
    assert contact.email is not None
    return SubscriberIn(email=contact.email, fields=fields)


async def ensure_list_fields(client: MailWizzClient, list_uid: str) -> None:
    """The engine's fields on the list; a field created meanwhile by another worker is not an error."""
    try:
        await client.ensure_fields(list_uid, LIST_FIELDS)
    except MailWizzValidationError:
        await client.ensure_fields(list_uid, LIST_FIELDS)


async def subscribe(db: asyncpg.Connection | asyncpg.Pool, client: MailWizzClient, list_uid: str, tenant_id: int,
                    contacts: Sequence[PushContact]) -> dict[int, SubscriberPush]:
    """Push contacts in bulk and store the uids MailWizz gives back; the caller has filtered suppressions."""
    if not contacts:
        return {}
    pushes = await client.create_subscribers(list_uid, [subscriber_in(c) for c in contacts])
    by_email = {p.email: p for p in pushes}
    found = {c.id: by_email[c.email] for c in contacts if c.email in by_email}
    stored = [(cid, p.uid) for cid, p in found.items() if p.uid and p.outcome in (PushOutcome.CREATED, PushOutcome.EXISTS)]
    if stored:
        await db.execute(q("mailwizz-set-subscriber-uids"), tenant_id, [i for i, _ in stored], [u for _, u in stored])
    return found


async def push_outbox(pool: asyncpg.Pool, client: MailWizzClient, install: Install,
                      batch: int = PUSH_BATCH) -> PushReport:
    """Drain the tenant's outbox; a MailWizzUnavailable leaves the current batch for the next attempt."""
    assert install.list_uid
    tenant_id, list_uid = install.tenant_id, install.list_uid
    tenant = policy.TenantPolicy.from_settings(await pool.fetchval(q("get-tenant-settings"), tenant_id))
    totals = PushReport()
    fields_checked = False
    while True:
        async with pool.acquire() as db, db.transaction():
            taken = [PushContact(**r) for r in await db.fetch(q("mailwizz-outbox-take"), tenant_id, batch)]
            if not taken:
                return totals
            now = dt.datetime.now(dt.UTC)
            # The send policy decides who may become a subscriber; judged without the suppression list first,
            # the difference is who only the suppression list stops (the report counts them apart).
            rows = [policy.Row(email=c.email, contact_status=c.status) for c in taken]
            live = [c for c, row in zip(taken, rows, strict=True)
                    if policy.verdict(row, set(), tenant, now) is None]
            blocked = await suppression.suppressed_among(db, tenant_id, [c.email for c in live if c.email])
            wanted = [c for c in live
                      if policy.verdict(policy.Row(email=c.email, contact_status=c.status), blocked, tenant, now) is None]
            if wanted and not fields_checked:
                await ensure_list_fields(client, list_uid)
                fields_checked = True
            pushes = await subscribe(db, client, list_uid, tenant_id, wanted)
        ok = sum(1 for p in pushes.values() if p.uid)
        totals = PushReport(taken=totals.taken + len(taken), pushed=totals.pushed + ok,
                            suppressed=totals.suppressed + len(live) - len(wanted),
                            dropped=totals.dropped + len(taken) - len(live),
                            rejected=totals.rejected + len(wanted) - ok)


async def pull_unsubscribes(pool: asyncpg.Pool, client: MailWizzClient, install: Install) -> int:
    """Suppress every address the tenant's lists mark unsubscribed or blacklisted; returns how many changed.

    The lists: the install's own, and the lists of the tenant's campaign waves of the last
    WAVE_LISTS_PULLED_FOR_DAYS days (whoever unsubscribes from a campaign's mail does it in its wave's list).
    MailWizz's API has no "changed since", so this walks whole lists; the suppression upsert makes a second walk
    a no-op. The addresses are not propagated back: MailWizz is where they came from.
    """
    lists = [install.list_uid] if install.list_uid else []
    waves = await pool.fetch(q("mwc-wave-lists"), install.tenant_id, WAVE_LISTS_PULLED_FOR_DAYS)
    lists += [r["list_uid"] for r in waves if r["list_uid"] not in lists]
    changed = 0
    waiting: dict[str, list[str]] = {}

    async def flush() -> None:
        nonlocal changed
        async with pool.acquire() as db, db.transaction():
            for reason, emails in waiting.items():
                report = await suppression.add_suppressions(db, install.tenant_id, emails, reason=reason,
                                                            source="mailwizz")
                changed += report.added + report.upgraded
        waiting.clear()

    for list_uid in lists:
        try:
            async for sub in client.subscribers(list_uid):
                reason = LEFT_IN_MAILWIZZ.get(sub.status)
                if reason is None or not sub.email:
                    continue
                waiting.setdefault(reason, []).append(sub.email)
                if sum(map(len, waiting.values())) >= PULL_BATCH:
                    await flush()
        except MailWizzNotFound:
            if list_uid == install.list_uid:
                raise
            log.warning("tenant %s: wave list %s is gone from MailWizz; skipped", install.tenant_id, list_uid)
    if waiting:
        await flush()
    return changed
