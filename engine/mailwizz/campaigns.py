"""Sending a `mailwizz` campaign: one MailWizz campaign per language group, created once, polled to the end.

One pass (`run_campaign`) does what is due and returns; the worker repeats it every few seconds:
audience into `sends` → each queued row checked (suppressed, no template, not subscribable: skipped) and its
contact made a subscriber → suppressed subscribers unsubscribed in MailWizz → per language: a template, a
segment on LANGUAGE, a campaign → its rows `injected` (vmta 'mailwizz') → stats polled until MailWizz says
sent → our campaign completed. Pause, resume and cancel are repeated on MailWizz at the next pass.

Personalisation: our template is rendered once per language with MailWizz's list tags in place of contact
fields (MERGE_TAGS), so MailWizz fills them in per subscriber. A variable with no tag (custom fields, say)
renders as its `|default`, or empty.

Known limit: a segment is "LANGUAGE is xx" on the tenant's whole list, so MailWizz mails every confirmed
subscriber of that language, not only the campaign's audience filter (tags, categories, sources). Send
windows and daily caps are PowerMTA-path settings and are not applied here.
"""

from __future__ import annotations

import datetime as dt
import logging
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
    LIST_FIELDS,
    PUSHABLE,
    Install,
    PushContact,
    ensure_list_fields,
    get_install,
    make_client,
    subscribe,
    try_lock,
    unsubscribe_suppressed,
)
from engine.mailwizz.wire import MailWizzError, MailWizzUnavailable, MailWizzValidationError
from engine.rendering import MissingVariable, TemplateRejected
from engine.templates import Template, TemplateBook, load_template_book
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


class GroupStatus(StrEnum):
    PENDING = "pending"
    CREATING = "creating"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"
    CANCELLED = "cancelled"


FINAL = frozenset({GroupStatus.SENT, GroupStatus.FAILED, GroupStatus.IN_DOUBT, GroupStatus.CANCELLED})


class Ended(msgspec.Struct, frozen=True, kw_only=True):
    """A queued row that ends before MailWizz sees it (skipped or failed), with the reason."""

    id: int
    status: str
    detail: str
    attempted: int = 0


class Unprepared(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    contact_id: int
    email: str | None
    contact_status: str
    language: str | None
    mailwizz_subscriber_uid: str | None


class Group(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    campaign_id: int
    tenant_id: int
    language: str
    template_id: int | None
    list_uid: str | None
    template_uid: str | None
    segment_uid: str | None
    campaign_uid: str | None
    status: str
    stats: dict[str, Any]
    error: str | None


def render_for_mailwizz(book: TemplateBook, template: Template) -> RenderedEmail:
    """The template rendered once with MailWizz tags for contact fields; other variables default or empty."""
    compiled = book.compiled(template)
    context: dict[str, Any] = {**MERGE_TAGS, "today": dt.date.today()}
    for _ in range(len(compiled.variables) + 1):
        try:
            return render_email(compiled, context)
        except MissingVariable as exc:
            if exc.name in context:
                raise
            context[exc.name] = ""
    raise MissingVariable(next(iter(compiled.variables), "?"))


async def run_campaign(pool: asyncpg.Pool, secret_key: str, campaign_id: int, *,
                       http: httpx.AsyncClient | None = None) -> str:
    """One pass over a MailWizz campaign; returns what state it is in (or why nothing was done)."""
    async with try_lock(pool, f"mailwizz-campaign:{campaign_id}") as got:
        if not got:
            return "busy"
        camp = row_to(Campaign, await pool.fetchrow(q("get-campaign-by-id"), campaign_id))
        if camp is None or camp.transport != "mailwizz":
            return "not a mailwizz campaign"
        if camp.status == "scheduled":
            if await pool.fetchval(q("begin-sending"), campaign_id) is None:
                return "scheduled"
            camp = await campaigns.get_campaign(pool, camp.tenant_id, campaign_id)
        install = await get_install(pool, camp.tenant_id)
        client = make_client(install, secret_key, http) if install is not None and install.list_uid else None
        if install is None or client is None:
            log.warning("campaign %s: tenant %s has no usable MailWizz install (key and list_uid)",
                        campaign_id, camp.tenant_id)
            return "no mailwizz install"
        async with client:
            if camp.status == "sending":
                return await _send(pool, client, install, camp)
            await _follow(pool, client, camp)
            return camp.status


async def _send(pool: asyncpg.Pool, client: MailWizzClient, install: Install, camp: Campaign) -> str:
    if not camp.audience_ready:
        await _fill_audience(pool, camp)
    book = await load_template_book(pool, camp.tenant_id)
    await _prepare(pool, client, install, camp, book)
    languages = [r["language"] for r in await pool.fetch(q("mwc-queued-languages"), camp.id)]
    if languages:
        swept = await unsubscribe_suppressed(pool, client, install)
        if swept:
            log.info("campaign %s: %d suppressed subscribers unsubscribed in MailWizz first", camp.id, swept)
    for language in languages:
        await _launch(pool, client, install, camp, book, language)
    await _follow(pool, client, camp)
    groups = await _groups(pool, camp.id)
    if all(g.status in FINAL for g in groups) and not await pool.fetchval(q("mwc-unprepared-left"), camp.id):
        if await campaigns.complete_if_done(pool, camp.id):
            log.info("campaign %s completed (MailWizz)", camp.id)
            return "completed"
    return "sending"


async def _fill_audience(pool: asyncpg.Pool, camp: Campaign) -> None:
    """The audience into `sends`, resumable from the stored cursor (the campaign lock keeps it single)."""
    cursor = await pool.fetchval(q("audience-cursor"), camp.id)
    while True:
        async with pool.acquire() as db, db.transaction():
            cursor, n = await campaigns.fill_audience_page(db, camp, cursor, AUDIENCE_PAGE)
            await db.execute(q("audience-advance"), camp.id, cursor, n < AUDIENCE_PAGE)
        if n < AUDIENCE_PAGE:
            return


async def _prepare(pool: asyncpg.Pool, client: MailWizzClient, install: Install, camp: Campaign,
                   book: TemplateBook) -> None:
    """Give each queued row its language group and template, or skip it; make its contact a subscriber."""
    assert install.list_uid
    cursor, fields_checked = 0, False
    while True:
        rows = [Unprepared(**r) for r in await pool.fetch(q("mwc-unprepared-sends"), camp.id, cursor, PREPARE_PAGE)]
        if not rows:
            return
        cursor = rows[-1].id
        blocked = await suppression.suppressed_among(pool, camp.tenant_id, [r.email for r in rows if r.email])
        done: list[Ended] = []
        live: list[Unprepared] = []
        for row in rows:
            reason = _skip_reason(row, blocked)
            if reason:
                done.append(Ended(id=row.id, status=SendStatus.SKIPPED, attempted=0, detail=reason))
            else:
                live.append(row)
        missing = [r.contact_id for r in live if not r.mailwizz_subscriber_uid]
        pushes = {}
        if missing:
            if not fields_checked:
                await ensure_list_fields(client, install.list_uid)
                fields_checked = True
            contacts = [PushContact(**c) for c in await pool.fetch(q("mailwizz-contacts-by-id"), camp.tenant_id, missing)]
            pushes = await subscribe(pool, client, install.list_uid, camp.tenant_id, contacts)
        ready: list[tuple[int, str, int, int]] = []
        for row in live:
            push = pushes.get(row.contact_id)
            if not row.mailwizz_subscriber_uid and (push is None or not push.uid):
                blacklisted = push is not None and push.outcome is PushOutcome.BLACKLISTED
                done.append(Ended(
                    id=row.id, status=SendStatus.SKIPPED if blacklisted else SendStatus.FAILED, attempted=0,
                    detail="blacklisted in MailWizz" if blacklisted else f"MailWizz refused the subscriber: "
                    f"{push.error if push else 'no answer'}"))
                continue
            language = template_language(row.language)
            template = book.choose(language, camp.category, camp.templates)
            if template is None:
                done.append(Ended(id=row.id, status=SendStatus.SKIPPED, attempted=0,
                                          detail=f"no template for language {language!r}"))
                continue
            ready.append((row.id, language, template.id, template.version))
        await pool.execute(q("mwc-end-sends"), camp.id, [d.id for d in done], [d.status for d in done],
                           [d.detail for d in done])
        await pool.execute(q("mwc-prepare-sends"), camp.id, [r[0] for r in ready], [r[1] for r in ready],
                           [r[2] for r in ready], [r[3] for r in ready])


def _skip_reason(row: Unprepared, blocked: set[str]) -> str | None:
    if not row.email:
        return "contact erased"
    if row.contact_status not in PUSHABLE:
        return f"contact is {row.contact_status}"
    if row.email in blocked:
        return "suppressed"
    return None


async def _groups(pool: asyncpg.Pool, campaign_id: int) -> list[Group]:
    return [Group(**r) for r in await pool.fetch(q("mwc-list-groups"), campaign_id)]


async def _set_status(pool: asyncpg.Pool | asyncpg.Connection, group: Group, status: GroupStatus,
                      sources: tuple[GroupStatus, ...], error: str | None = None) -> bool:
    return await pool.fetchval(q("mwc-set-group-status"), group.id, status.value, [s.value for s in sources],
                               error) is not None


async def _give_up(pool: asyncpg.Pool, camp: Campaign, group: Group, status: GroupStatus, error: str) -> None:
    """A group that will never be created: its rows fail with the reason (the campaign can still complete)."""
    async with pool.acquire() as db, db.transaction():
        await _set_status(db, group, status, (GroupStatus.PENDING, GroupStatus.CREATING), error)
        await db.execute(q("mwc-fail-group-sends"), camp.id, group.language, f"MailWizz: {error}")
    log.error("campaign %s, language %s: %s (%s)", camp.id, group.language, error, status.value)


async def _launch(pool: asyncpg.Pool, client: MailWizzClient, install: Install, camp: Campaign,
                  book: TemplateBook, language: str) -> None:
    """Create the language group's MailWizz campaign unless it exists; hand its queued rows over."""
    assert install.list_uid
    template = book.choose(language, camp.category, camp.templates)
    await pool.execute(q("mwc-insert-group"), camp.id, camp.tenant_id, language,
                       template.id if template else None, install.list_uid)
    group = Group(**await pool.fetchrow(q("mwc-get-group"), camp.id, language))
    status = GroupStatus(group.status)
    if status is GroupStatus.CREATING:
        # We hold the campaign lock, so the pass that wrote 'creating' died mid-POST: MailWizz may have it.
        await _give_up(pool, camp, group, GroupStatus.IN_DOUBT, "interrupted while MailWizz was creating the "
                       "campaign; not repeated so nobody is mailed twice (check MailWizz)")
        return
    if status in (GroupStatus.SENDING, GroupStatus.PAUSED, GroupStatus.SENT):
        await pool.execute(q("mwc-inject-group-sends"), camp.id, language, group.template_id, None, group.campaign_uid)
        return
    if status is not GroupStatus.PENDING:
        await pool.execute(q("mwc-fail-group-sends"), camp.id, language, f"MailWizz group {status.value}")
        return
    if template is None:
        await _give_up(pool, camp, group, GroupStatus.FAILED, f"no template for language {language!r}")
        return
    try:
        rendered = render_for_mailwizz(book, template)
    except (MissingVariable, TemplateRejected) as exc:
        await _give_up(pool, camp, group, GroupStatus.FAILED, f"template {template.id}: {exc.message}")
        return
    label = f"{camp.name} [{language}] #{camp.id}"
    template_uid = group.template_uid
    if not template_uid or group.template_id != template.id:
        template_uid = await client.create_template(label, rendered.html)
        await pool.execute(q("mwc-set-template-uid"), group.id, template_uid, template.id)
    if not group.segment_uid:
        fields = await client.ensure_fields(install.list_uid, LIST_FIELDS)
        segment_uid = await client.create_language_segment(install.list_uid, language, fields["LANGUAGE"])
        await pool.execute(q("mwc-set-segment-uid"), group.id, segment_uid)
    else:
        segment_uid = group.segment_uid
    if await pool.fetchval(q("mwc-claim-group"), group.id) is None:
        return
    spec = CampaignIn(name=label, list_uid=install.list_uid, segment_uid=segment_uid, template_uid=template_uid,
                      from_name=camp.from_name, from_email=camp.from_email,
                      reply_to=camp.reply_to or camp.from_email, subject=rendered.subject,
                      send_at=dt.datetime.now(dt.UTC))
    try:
        campaign_uid = await client.create_campaign(spec)
    except MailWizzValidationError as exc:
        await _give_up(pool, camp, group, GroupStatus.FAILED, exc.message)
        return
    except MailWizzError as exc:
        if _surely_not_created(exc):
            await _set_status(pool, group, GroupStatus.PENDING, (GroupStatus.CREATING,), exc.message)
            raise
        await _give_up(pool, camp, group, GroupStatus.IN_DOUBT, f"no clear answer to the campaign POST: {exc.message}")
        return
    async with pool.acquire() as db, db.transaction():
        await db.execute(q("mwc-group-created"), group.id, campaign_uid)
        await db.execute(q("mwc-inject-group-sends"), camp.id, language, template.id, template.version, campaign_uid)
    log.info("campaign %s, language %s: MailWizz campaign %s", camp.id, language, campaign_uid)


def _surely_not_created(exc: MailWizzError) -> bool:
    """Whether MailWizz certainly did not create anything: refused outright, or never reached."""
    if isinstance(exc, MailWizzUnavailable):
        return exc.status in NOT_PROCESSED or isinstance(exc.__cause__, NOT_SENT_ERRORS)
    return exc.status != 0 and exc.status < 500


async def _follow(pool: asyncpg.Pool, client: MailWizzClient, camp: Campaign) -> None:
    """Bring the MailWizz side in line with our status, and poll the stats of campaigns still going."""
    for group in await _groups(pool, camp.id):
        status = GroupStatus(group.status)
        if camp.status == "cancelled" and status is GroupStatus.PENDING:
            await _set_status(pool, group, GroupStatus.CANCELLED, (GroupStatus.PENDING,))
            continue
        if not group.campaign_uid or status not in (GroupStatus.SENDING, GroupStatus.PAUSED):
            continue
        if camp.status in ("paused", "cancelled"):
            # MailWizz's API has no cancel; a paused campaign sends nothing more.
            remote = await client.pause_campaign(group.campaign_uid)
            target = GroupStatus.CANCELLED if camp.status == "cancelled" else GroupStatus.PAUSED
            if remote is CampaignStatus.SENT:
                target = GroupStatus.SENT
            await _set_status(pool, group, target, (GroupStatus.SENDING, GroupStatus.PAUSED))
            continue
        if status is GroupStatus.PAUSED:
            await client.resume_campaign(group.campaign_uid)
            await _set_status(pool, group, GroupStatus.SENDING, (GroupStatus.PAUSED,))
        stats = await client.campaign_stats(group.campaign_uid)
        await pool.execute(q("mwc-set-group-stats"), group.id, msgspec.to_builtins(stats))
        if stats.status is CampaignStatus.SENT:
            await _set_status(pool, group, GroupStatus.SENT, (GroupStatus.SENDING,))
