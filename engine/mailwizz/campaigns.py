"""Sending a `mailwizz` campaign: its audience handed to MailWizz in waves, each a list and a campaign of its own.

One pass (`run_campaign`) does what is due and returns; the worker repeats it every few seconds: audience into
`sends` → inside the campaign's sending window, each queued row goes through the one send policy
(engine.sending.policy.verdict with the tenant's TenantPolicy, as the PowerMTA path applies it): skipped with
the reason, held (still queued) while its contact is pending, or given to its language's open wave, at most the
campaign's daily cap per tenant-local day → per open wave: its rows checked again, a list of its own created
and filled with exactly those rows' contacts, a campaign on that list → the rows `injected` (vmta 'mailwizz')
→ stats polled until MailWizz says sent → our campaign completed. Pause, resume and cancel are repeated on
MailWizz at the next pass; outside the window nothing is created, and MailWizz campaigns still sending are
paused until it opens again.

Why a list per wave rather than a segment (the MailWizz REST API reference §6, §6.1, §6.3): a MailWizz
campaign mails the confirmed subscribers of its `list_uid`, narrowed by an optional `segment_uid`. The
reference documents creating a list (`POST lists` → 201 `list_uid`), filling it (`subscribers/bulk`) and
`campaign[list_uid]`; of segments it documents only the listing (`GET lists/{list_uid}/segments`), and a
per-campaign segment would also need a per-campaign field on the tenant's list set by one PUT per subscriber.
A list holding only the rows handed over, mailed by one campaign, is that campaign's audience by construction
and cannot reach another tenant's or campaign's contacts. Rows validated later, or kept for the next day's cap,
go into the next wave's list, never into a list whose campaign already went (MailWizz would mail them or not
depending on how far its send had got). Whoever unsubscribes in a wave list reaches the suppression list
through the hourly pull (engine.mailwizz.sync.pull_unsubscribes walks the tenant's recent wave lists); an
address the engine suppresses is unsubscribed from every list by the propagation job.

Crash safety: the pass holds the campaign's advisory lock, so it is the only writer of the campaign's rows, and
writes a row only while it is still `queued`, i.e. not handed over (no claimed_by/claim_gen fence is needed:
there is no second writer). A wave's rows are recorded (mailwizz_wave_sends) before MailWizz sees anything;
'creating' is committed just before the campaign POST, and found again it means a crash while MailWizz may have
created the campaign: the wave is in_doubt, its rows failed, never created twice.

Personalisation: our template is rendered once per language with MailWizz's list tags in place of contact
fields (MERGE_TAGS), so MailWizz fills them in per subscriber. A variable with no tag (custom fields, say)
renders as its `|default`, or empty.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import asyncpg
import httpx
import msgspec

from engine import campaigns, suppression
from engine.campaigns import Campaign, SendStatus
from engine.db import row_to
from engine.languages import template_language
from engine.layout import RenderedEmail, render_email
from engine.mailwizz.client import NOT_SENT_ERRORS, CampaignIn, CampaignStatus, MailWizzClient, PushOutcome
from engine.mailwizz.sync import (
    PushContact,
    ensure_list_fields,
    get_install,
    make_client,
    subscriber_in,
    try_lock,
)
from engine.mailwizz.wire import MailWizzError, MailWizzNotFound, MailWizzUnavailable, MailWizzValidationError
from engine.rendering import MissingVariable, TemplateRejected
from engine.sending import policy
from engine.sending.policy import Hold, Skip, TenantPolicy
from engine.templates import Template, TemplateBook, load_template_book
from engine.warmup import today_in_timezone
from sql import q

log = logging.getLogger(__name__)

# Our variable -> the MailWizz tag the subscriber's value replaces (FIELD_COLUMNS in mailwizz_sync pushes them).
MERGE_TAGS: dict[str, str] = {
    "first_name": "[FNAME]", "firstName": "[FNAME]", "last_name": "[LNAME]", "lastName": "[LNAME]",
    "email": "[EMAIL]", "company": "[COMPANY]", "website": "[WEBSITE]", "country": "[COUNTRY]",
    "language": "[LANGUAGE]", "category": "[CATEGORY]",
    # MailWizz's own per-subscriber unsubscribe link (it refuses campaigns without one on most installs)
    "unsubscribe_url": "[UNSUBSCRIBE_URL]", "unsubscribeUrl": "[UNSUBSCRIBE_URL]",
}
AUDIENCE_PAGE = 5_000
PREPARE_PAGE = 1_000
VMTA = "mailwizz"
# Statuses at which MailWizz has surely not acted on a request: repeating the POST cannot create a second one.
NOT_PROCESSED = frozenset({429, 503})

Expedite = Callable[[int, list[int]], Awaitable[None]]


class WaveStatus(StrEnum):
    PENDING = "pending"
    CREATING = "creating"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    CANCELLED = "cancelled"


FINAL = frozenset({WaveStatus.SENT, WaveStatus.FAILED, WaveStatus.IN_DOUBT, WaveStatus.CANCELLED})
OPEN = (WaveStatus.PENDING, WaveStatus.CREATING)


class Ended(msgspec.Struct, frozen=True, kw_only=True):
    """A queued row that ends before MailWizz sees it (skipped or failed), with the reason."""

    id: int
    status: str
    detail: str


class Due(msgspec.Struct, frozen=True, kw_only=True):
    """A queued row in no wave, with what the policy reads."""

    id: int
    contact_id: int
    waiting_since: dt.datetime | None
    email: str | None
    contact_status: str
    language: str | None


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """A queued row of a wave; subscriber_uid once it is in the wave's list."""

    id: int
    contact_id: int
    waiting_since: dt.datetime | None
    email: str | None
    contact_status: str
    subscriber_uid: str | None


class Wave(msgspec.Struct, frozen=True, kw_only=True):
    """One MailWizz campaign of ours: a language, a list of its own, the rows in it."""

    id: int
    campaign_id: int
    tenant_id: int
    language: str
    wave: int
    template_id: int | None
    template_version: int | None
    list_uid: str | None
    template_uid: str | None
    campaign_uid: str | None
    status: str
    stats: dict[str, Any]
    error: str | None


def render_for_mailwizz(book: TemplateBook, template: Template) -> RenderedEmail:
    """The template rendered once with MailWizz tags for contact fields; other variables default or empty."""
    compiled = book.compiled(template)
    context: dict[str, Any] = {**book.sender, **MERGE_TAGS, "today": dt.date.today()}
    for _ in range(len(compiled.variables) + 1):
        try:
            return render_email(compiled, context)
        except MissingVariable as exc:
            if exc.name in context:
                raise
            context[exc.name] = ""
    raise MissingVariable(next(iter(compiled.variables), "?"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _verdict(row: Due | Member, blocked: set[str], tenant: TenantPolicy, now: dt.datetime) -> policy.Verdict:
    return policy.verdict(policy.Row(email=row.email, contact_status=row.contact_status,
                                     waiting_since=row.waiting_since), blocked, tenant, now)


async def run_campaign(pool: asyncpg.Pool, secret_key: str, campaign_id: int, *,
                       http: httpx.AsyncClient | None = None, expedite: Expedite | None = None) -> str:
    """One pass over a MailWizz campaign; returns what state it is in (or why nothing was done)."""
    async with try_lock(pool, f"mailwizz-campaign:{campaign_id}") as got:
        if not got:
            return "busy"
        camp = row_to(Campaign, await pool.fetchrow(q("get-campaign-by-id"), campaign_id))
        if camp is None or camp.transport != "mailwizz":
            return "not a mailwizz campaign"
        if camp.status == "scheduled":
            if not await campaigns.begin_sending(pool, campaign_id):
                return "scheduled"
            camp = await campaigns.get_campaign(pool, camp.tenant_id, campaign_id)
        install = await get_install(pool, camp.tenant_id)
        client = make_client(install, secret_key, http) if install is not None else None
        if client is None:
            log.warning("campaign %s: tenant %s has no usable MailWizz install (API key)", campaign_id,
                        camp.tenant_id)
            return "no mailwizz install"
        async with client:
            if camp.status == "sending":
                return await _send(pool, client, camp, expedite)
            await _follow(pool, client, camp, inside=True)
            return camp.status


async def _send(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign, expedite: Expedite | None) -> str:
    if not camp.audience_ready:
        await _fill_audience(pool, camp)
    state = await pool.fetchrow(q("campaign-run-state"), camp.id)
    tenant = TenantPolicy.from_settings(state["settings"])
    now = _now()
    inside = policy.window_wait(camp.send_window, now) == 0
    hold = await policy.sender_hold(pool, camp.tenant_id, camp.from_email) if inside else None
    # A held From domain stops the campaign as a closed window does: nothing handed over, waves paused.
    await campaigns.set_wait_reason(pool, camp.id, hold or (None if inside else "outside the sending window"))
    inside = inside and hold is None
    for wave in await _waves(pool, camp.id, (WaveStatus.CREATING,)):
        # We hold the campaign lock, so the pass that wrote 'creating' died mid-POST: MailWizz may have it.
        await _give_up(pool, camp, wave, WaveStatus.IN_DOUBT, "interrupted while MailWizz was creating the "
                       "campaign; not repeated so nobody is mailed twice (check MailWizz)")
    if inside:
        book = await load_template_book(pool, camp.tenant_id, camp.id)
        await _assign(pool, camp, book, tenant, today_in_timezone(state["timezone"], now), expedite)
        for wave in await _waves(pool, camp.id, (WaveStatus.PENDING,)):
            await _launch(pool, client, camp, book, tenant, wave)
    await _follow(pool, client, camp, inside=inside)
    waves = await _waves(pool, camp.id, tuple(WaveStatus))
    if all(w.status in FINAL for w in waves) and not await pool.fetchval(q("mwc-unassigned-left"), camp.id):
        if await campaigns.complete_if_done(pool, camp.id):
            log.info("campaign %s completed (MailWizz)", camp.id)
            return "completed"
    return "sending" if inside else (hold or "outside the sending window")


async def _fill_audience(pool: asyncpg.Pool, camp: Campaign) -> None:
    """The audience into `sends`, resumable from the stored cursor (the campaign lock keeps it single)."""
    cursor = await pool.fetchval(q("audience-cursor"), camp.id)
    while True:
        async with pool.acquire() as db, db.transaction():
            cursor, n = await campaigns.fill_audience_page(db, camp, cursor, AUDIENCE_PAGE)
            await db.execute(q("audience-advance"), camp.id, cursor, n < AUDIENCE_PAGE)
        if n < AUDIENCE_PAGE:
            return


async def _assign(pool: asyncpg.Pool, camp: Campaign, book: TemplateBook, tenant: TenantPolicy, day: dt.date,
                  expedite: Expedite | None) -> None:
    """Run the policy on the rows in no wave: skip them, hold them, or give them to their language's open wave.

    At most the daily cap's room of the tenant-local `day` joins a wave; once it is used the rest of the queue
    is not even read (it waits for tomorrow).
    """
    room: float = math.inf
    if camp.daily_cap is not None:
        room = camp.daily_cap - await pool.fetchval(q("mwc-handed-on-day"), camp.id, day)
    cursor = 0
    waves: dict[str, int] = {}
    while room > 0:
        rows = [Due(**r) for r in await pool.fetch(q("mwc-due-sends"), camp.id, cursor, PREPARE_PAGE)]
        if not rows:
            return
        cursor = rows[-1].id
        now = _now()
        blocked = await suppression.suppressed_among(pool, camp.tenant_id, [r.email for r in rows if r.email])
        ended: list[Ended] = []
        held: list[Due] = []
        joined: list[tuple[int, int, str, int]] = []
        for row in rows:
            found = _verdict(row, blocked, tenant, now)
            if isinstance(found, Skip):
                ended.append(Ended(id=row.id, status=SendStatus.SKIPPED, detail=found.reason))
                continue
            if isinstance(found, Hold):
                held.append(row)
                continue
            language = template_language(row.language)
            template = book.choose(language, camp.category, camp.templates)
            if template is None:
                ended.append(Ended(id=row.id, status=SendStatus.SKIPPED, detail=f"no template for language {language!r}"))
                continue
            if room <= 0:
                continue   # passes, but today's cap is used: stays queued for tomorrow
            if language not in waves:
                waves[language] = await pool.fetchval(q("mwc-open-wave"), camp.id, camp.tenant_id, language,
                                                      template.id, template.version)
            joined.append((row.id, waves[language], language, template.id))
            room -= 1
        async with pool.acquire() as db, db.transaction():
            await _end(db, camp.id, ended)
            await _hold(db, camp.id, [r.id for r in held])
            await db.execute(q("mwc-join-wave"), camp.id, day, [j[0] for j in joined], [j[1] for j in joined],
                             [j[2] for j in joined], [j[3] for j in joined])
        if held and expedite is not None:
            await expedite(camp.tenant_id, [r.contact_id for r in held])


async def _end(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, ended: list[Ended]) -> None:
    if ended:
        await db.execute(q("mwc-end-sends"), campaign_id, [e.id for e in ended], [e.status for e in ended],
                         [e.detail for e in ended])


async def _hold(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, ids: list[int]) -> None:
    if ids:
        await db.execute(q("mwc-hold-sends"), campaign_id, ids, "waiting for the contact's validation",
                         policy.VALIDATION_RECHECK_SECONDS)


async def _waves(pool: asyncpg.Pool, campaign_id: int, statuses: tuple[WaveStatus, ...]) -> list[Wave]:
    return [Wave(**r) for r in await pool.fetch(q("mwc-list-waves"), campaign_id, [s.value for s in statuses])]


async def _set_status(pool: asyncpg.Pool | asyncpg.Connection, wave: Wave, status: WaveStatus,
                      sources: tuple[WaveStatus, ...], error: str | None = None) -> bool:
    return await pool.fetchval(q("mwc-set-wave-status"), wave.id, status.value, [s.value for s in sources],
                               error) is not None


async def _give_up(pool: asyncpg.Pool, camp: Campaign, wave: Wave, status: WaveStatus, error: str) -> None:
    """A wave whose campaign will never be created: its rows fail with the reason (the campaign can complete)."""
    async with pool.acquire() as db, db.transaction():
        await _set_status(db, wave, status, OPEN, error)
        await db.execute(q("mwc-fail-wave-sends"), wave.id, f"MailWizz: {error}")
    log.error("campaign %s, language %s, wave %s: %s (%s)", camp.id, wave.language, wave.wave, error, status.value)


async def _recheck(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign, tenant: TenantPolicy,
                   wave: Wave) -> None:
    """The policy again on the wave's rows, just before MailWizz gets them (a pass may have died in between).

    A row that no longer passes leaves the wave's list (DELETE, not unsubscribe: the hourly pull would read an
    unsubscribe as the contact's own); skipped, or back in the queue when its contact is pending again.
    """
    cursor = 0
    while True:
        rows = [Member(**r) for r in await pool.fetch(q("mwc-wave-members"), wave.id, cursor, PREPARE_PAGE)]
        if not rows:
            return
        cursor = rows[-1].id
        now = _now()
        blocked = await suppression.suppressed_among(pool, camp.tenant_id, [r.email for r in rows if r.email])
        ended: list[Ended] = []
        held: list[int] = []
        for row in rows:
            found = _verdict(row, blocked, tenant, now)
            if found is None:
                continue
            if row.subscriber_uid and wave.list_uid:
                try:
                    await client.delete_subscriber(wave.list_uid, row.subscriber_uid)
                except MailWizzNotFound:
                    pass
            if isinstance(found, Skip):
                ended.append(Ended(id=row.id, status=SendStatus.SKIPPED, detail=found.reason))
            else:
                held.append(row.id)
        async with pool.acquire() as db, db.transaction():
            await _end(db, camp.id, ended)
            if held:
                await db.execute(q("mwc-leave-wave"), wave.id, held)
                await _hold(db, camp.id, held)


async def _fill_list(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign, wave: Wave, list_uid: str) -> None:
    """Make each row of the wave not yet in its list a confirmed subscriber of it; a refused one ends."""
    cursor = 0
    while True:
        rows = [Member(**r) for r in await pool.fetch(q("mwc-wave-members"), wave.id, cursor, PREPARE_PAGE)]
        if not rows:
            return
        cursor = rows[-1].id
        missing = [r for r in rows if not r.subscriber_uid]
        if not missing:
            continue
        contacts = {c["id"]: PushContact(**c) for c in await pool.fetch(
            q("mailwizz-contacts-by-id"), camp.tenant_id, [r.contact_id for r in missing])}
        wanted = [contacts[r.contact_id] for r in missing if r.contact_id in contacts and contacts[r.contact_id].email]
        pushes = {p.email: p for p in await client.create_subscribers(list_uid, [subscriber_in(c) for c in wanted])}
        stored: list[tuple[int, str]] = []
        ended: list[Ended] = []
        for row in missing:
            contact = contacts.get(row.contact_id)
            push = pushes.get(contact.email) if contact is not None and contact.email else None
            if push is not None and push.uid and push.outcome in (PushOutcome.CREATED, PushOutcome.EXISTS):
                stored.append((row.id, push.uid))
            elif push is not None and push.outcome is PushOutcome.BLACKLISTED:
                ended.append(Ended(id=row.id, status=SendStatus.SKIPPED, detail="blacklisted in MailWizz"))
            else:
                error = push.error if push is not None else "no answer for this address"
                ended.append(Ended(id=row.id, status=SendStatus.FAILED,
                                   detail=f"MailWizz refused the subscriber: {error}"))
        async with pool.acquire() as db, db.transaction():
            if stored:
                await db.execute(q("mwc-set-wave-subscribers"), wave.id, [s[0] for s in stored],
                                 [s[1] for s in stored])
            await _end(db, camp.id, ended)


async def _launch(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign, book: TemplateBook,
                  tenant: TenantPolicy, wave: Wave) -> None:
    """Check the open wave's rows again, put them in a list of their own, create its campaign, hand them over."""
    template = book.choose(wave.language, camp.category, camp.templates)
    if template is None:
        await _give_up(pool, camp, wave, WaveStatus.FAILED, f"no template for language {wave.language!r}")
        return
    try:
        rendered = render_for_mailwizz(book, template)
    except (MissingVariable, TemplateRejected) as exc:
        await _give_up(pool, camp, wave, WaveStatus.FAILED, f"template {template.id}: {exc.message}")
        return
    await _recheck(pool, client, camp, tenant, wave)
    if not await pool.fetchval(q("mwc-wave-left"), wave.id):
        if await pool.fetchval(q("mwc-drop-empty-wave"), wave.id) is None:
            await _set_status(pool, wave, WaveStatus.CANCELLED, (WaveStatus.PENDING,),
                              "every row ended before its MailWizz campaign was created")
        return
    label = f"{camp.name[:120]} [{wave.language}] #{camp.id}" + (f" wave {wave.wave}" if wave.wave > 1 else "")
    list_uid = wave.list_uid
    if not list_uid:
        # A POST that got no clear answer and is repeated leaves at most an empty list behind: nobody is mailed.
        list_uid = await client.create_list(label, from_name=camp.from_name, from_email=camp.from_email,
                                            reply_to=camp.reply_to or camp.from_email,
                                            description=f"email-engine campaign {camp.id}, {wave.language}, "
                                                        f"wave {wave.wave}")
        await pool.execute(q("mwc-set-wave-list"), wave.id, list_uid)
    await ensure_list_fields(client, list_uid)
    await _fill_list(pool, client, camp, wave, list_uid)
    if not await pool.fetchval(q("mwc-wave-left"), wave.id):
        await _set_status(pool, wave, WaveStatus.CANCELLED, (WaveStatus.PENDING,),
                          "MailWizz refused every subscriber of the wave")
        return
    template_uid = wave.template_uid
    if not template_uid or wave.template_id != template.id or wave.template_version != template.version:
        template_uid = await client.create_template(label, rendered.html)
        await pool.execute(q("mwc-set-template-uid"), wave.id, template_uid, template.id, template.version)
    if await pool.fetchval(q("mwc-claim-wave"), wave.id) is None:
        return
    spec = CampaignIn(name=label, list_uid=list_uid, template_uid=template_uid,
                      from_name=camp.from_name, from_email=camp.from_email,
                      reply_to=camp.reply_to or camp.from_email, subject=rendered.subject,
                      send_at=_now())
    try:
        campaign_uid = await client.create_campaign(spec)
    except MailWizzValidationError as exc:
        await _give_up(pool, camp, wave, WaveStatus.FAILED, exc.message)
        return
    except MailWizzError as exc:
        if _surely_not_created(exc):
            await _set_status(pool, wave, WaveStatus.PENDING, (WaveStatus.CREATING,), exc.message)
            raise
        await _give_up(pool, camp, wave, WaveStatus.IN_DOUBT, f"no clear answer to the campaign POST: {exc.message}")
        return
    async with pool.acquire() as db, db.transaction():
        await db.execute(q("mwc-wave-created"), wave.id, campaign_uid)
        await db.execute(q("mwc-inject-wave-sends"), wave.id, template.id, template.version, campaign_uid)
        await db.execute(q("mwc-fail-wave-sends"), wave.id, "MailWizz: not in the campaign's list")
    log.info("campaign %s, language %s, wave %s: MailWizz campaign %s on list %s", camp.id, wave.language,
             wave.wave, campaign_uid, list_uid)


def _surely_not_created(exc: MailWizzError) -> bool:
    """Whether MailWizz certainly did not create anything: refused outright, or never reached."""
    if isinstance(exc, MailWizzUnavailable):
        return exc.status in NOT_PROCESSED or isinstance(exc.__cause__, NOT_SENT_ERRORS)
    return exc.status != 0 and exc.status < 500


async def _follow(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign, *, inside: bool) -> None:
    """Bring the MailWizz side in line with our status and the window, and poll the stats of campaigns going."""
    for wave in await _waves(pool, camp.id, tuple(WaveStatus)):
        status = WaveStatus(wave.status)
        if camp.status == "cancelled" and status is WaveStatus.PENDING:
            await _set_status(pool, wave, WaveStatus.CANCELLED, (WaveStatus.PENDING,))
            continue
        if not wave.campaign_uid or status not in (WaveStatus.SENDING, WaveStatus.PAUSED):
            continue
        if camp.status in ("paused", "cancelled") or not inside:
            # MailWizz's API has no cancel; a paused campaign sends nothing more. Outside the sending window
            # the wave is paused too, and resumed below once the window opens (the campaign still sending).
            if camp.status == "sending" and status is WaveStatus.PAUSED:
                continue
            remote = await client.pause_campaign(wave.campaign_uid)
            target = WaveStatus.CANCELLED if camp.status == "cancelled" else WaveStatus.PAUSED
            if remote is CampaignStatus.SENT:
                target = WaveStatus.SENT
            await _set_status(pool, wave, target, (WaveStatus.SENDING, WaveStatus.PAUSED))
            continue
        if status is WaveStatus.PAUSED:
            await client.resume_campaign(wave.campaign_uid)
            await _set_status(pool, wave, WaveStatus.SENDING, (WaveStatus.PAUSED,))
        stats = await client.campaign_stats(wave.campaign_uid)
        await pool.execute(q("mwc-set-wave-stats"), wave.id, msgspec.to_builtins(stats))
        if stats.status is CampaignStatus.SENT:
            await _set_status(pool, wave, WaveStatus.SENT, (WaveStatus.SENDING,))
