"""Campaigns: drafts, their audience, the start/pause/resume/cancel state machine, and statistics."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import alert_events, events
from engine.errors import Conflict, Invalid, NotFound
from engine.languages import LANGUAGES, normalise_language
from sql import q


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class CampaignTransport(StrEnum):
    PMTA = "pmta"
    MAILWIZZ = "mailwizz"


class SendStatus(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    SENDING = "sending"
    INJECTED = "injected"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    SKIPPED = "skipped"


# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[tuple[CampaignStatus, ...], CampaignStatus]] = {
    "start": ((CampaignStatus.DRAFT,), CampaignStatus.SCHEDULED),
    "pause": ((CampaignStatus.SCHEDULED, CampaignStatus.SENDING), CampaignStatus.PAUSED),
    "resume": ((CampaignStatus.PAUSED,), CampaignStatus.SENDING),
    "cancel": ((CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED),
               CampaignStatus.CANCELLED),
}

CONTACT_STATUSES = ("pending", "valid", "risky", "invalid", "unsubscribed", "bounced", "complained")
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]{1,64}@[^@\s]{1,253}$", max_length=254,
                                    examples=["hello@sos-expat-mail-01.example"])]
NoBreak = msgspec.Meta(pattern=r"^[^\r\n]*$", description="a header value: no CR or LF")


class Audience(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tags: list[str] = msgspec.field(default_factory=list)
    tags_mode: Annotated[str, msgspec.Meta(pattern=r"^(any|all)$")] = "any"
    languages: list[str] = msgspec.field(default_factory=list)
    categories: list[str] = msgspec.field(default_factory=list)
    data_source_ids: list[int] = msgspec.field(default_factory=list)
    statuses: list[str] = msgspec.field(default_factory=lambda: ["valid"])


class Window(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"])]
    end: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["18:00"])]
    timezone: str = "UTC"


class CampaignDraft(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of POST /campaigns and PUT /campaigns/{tenant}/{id}."""

    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Avocats FR - novembre"])]
    from_name: Annotated[str, msgspec.Meta(min_length=1, max_length=120, pattern=r"^[^\r\n]*$",
                                           examples=["SOS-Expat"])]
    from_email: Email
    reply_to: Email | None = None
    category: Annotated[str, msgspec.Meta(max_length=100, examples=["avocat"])] | None = None
    templates: dict[str, int] = msgspec.field(default_factory=dict)
    audience: Audience = msgspec.field(default_factory=Audience)
    transport: Annotated[str, msgspec.Meta(pattern=r"^(pmta|mailwizz)$")] = "pmta"
    send_at: dt.datetime | None = None
    window: Window | None = None
    daily_cap: Annotated[int, msgspec.Meta(gt=0)] | None = None


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    name: str
    from_name: str
    from_email: str
    reply_to: str | None
    category: str | None
    templates: dict[str, int]
    audience: dict[str, Any]
    transport: str
    send_at: dt.datetime | None
    send_window: dict[str, Any] | None
    daily_cap: int | None
    status: str
    audience_ready: bool
    recovered_in_flight: int      # rows that may have reached their contact twice (a crash, a cut connection)
    stale_results: int            # results dropped because their rows had been taken back from the worker
    pause_reason: str | None      # why the engine paused the campaign itself (None: running, or an operator)
    wait_reason: str | None       # what a sending campaign waits for now (window, daily cap, a held domain)
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class StatusCount(msgspec.Struct, frozen=True, kw_only=True):
    """A row of campaign-stats (the named-query test checks the SQL against it)."""

    status: str
    count: int


class GroupCount(msgspec.Struct, frozen=True, kw_only=True):
    """A row of campaign-stats-by-ip / -by-language."""

    key: str
    status: str
    count: int


class SendRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    contact_id: int
    email: str | None
    status: str
    attempts: int
    language: str | None
    template_id: int | None
    template_version: int | None
    vmta: str | None
    smtp_code: int | None
    smtp_status: str | None
    detail: str | None
    message_id: str | None
    injected_at: dt.datetime | None
    finished_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    step: int = 1                 # the step of the campaign's sequence (1: the opening message)


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    by_status: dict[str, int]
    by_ip: dict[str, dict[str, int]]
    by_language: dict[str, dict[str, int]]
    recovered_in_flight: int
    stale_results: int


def check_draft(draft: CampaignDraft) -> CampaignDraft:
    """Rules a Struct cannot express: languages, statuses, window zone, template keys."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    for lang in draft.templates:
        if lang not in LANGUAGES:
            raise Invalid(f"templates: {lang!r} is not one of {sorted(LANGUAGES)}", field="templates")
    for status in draft.audience.statuses:
        if status not in CONTACT_STATUSES:
            raise Invalid(f"audience.statuses: {status!r} is not one of {list(CONTACT_STATUSES)}",
                          field="audience.statuses")
    if draft.window is not None:
        try:
            ZoneInfo(draft.window.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise Invalid(f"window.timezone: expected an IANA zone, got {draft.window.timezone!r}",
                          field="window.timezone") from exc
        if draft.window.start == draft.window.end:
            raise Invalid("window: start and end must differ", field="window")
    if draft.send_at is not None and draft.send_at.tzinfo is None:
        raise Invalid("send_at: expected a timestamp with a timezone (e.g. 2026-12-01T09:00:00+01:00)",
                      field="send_at")
    languages = [normalise_language(lang) or lang for lang in draft.audience.languages]
    return msgspec.structs.replace(draft, audience=msgspec.structs.replace(draft.audience, languages=languages))


async def _check_templates(db: asyncpg.Connection, tenant_id: int, templates: dict[str, int]) -> None:
    if not templates:
        return
    ids = list(templates.values())
    found = {r["id"] for r in await db.fetch(
        "SELECT id FROM email_templates WHERE tenant_id = $1 AND id = ANY($2::bigint[]) AND deleted_at IS NULL", tenant_id, ids)}
    for lang, template_id in templates.items():
        if template_id not in found:
            raise Invalid(f"templates.{lang}: template {template_id} not found", field=f"templates.{lang}")


def _params(draft: CampaignDraft) -> list[Any]:
    return [draft.name, draft.from_name, draft.from_email, draft.reply_to, draft.category, draft.templates,
            msgspec.to_builtins(draft.audience), draft.transport, draft.send_at,
            msgspec.to_builtins(draft.window) if draft.window else None, draft.daily_cap]


async def create_campaign(db: asyncpg.Connection, draft: CampaignDraft) -> Campaign:
    draft = check_draft(draft)
    await _check_templates(db, draft.tenant_id, draft.templates)
    return Campaign(**await db.fetchrow(q("create-campaign"), draft.tenant_id, *_params(draft)))


async def get_campaign(db: asyncpg.Connection, tenant_id: int, campaign_id: int) -> Campaign:
    row = await db.fetchrow(q("get-campaign"), tenant_id, campaign_id)
    if row is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return Campaign(**row)


async def list_campaigns(db: asyncpg.Connection, tenant_id: int, *, before: int | None, status: str | None,
                         limit: int) -> list[Campaign]:
    return [Campaign(**r) for r in await db.fetch(q("list-campaigns"), tenant_id, before, status, limit)]


async def update_campaign(db: asyncpg.Connection, campaign_id: int, draft: CampaignDraft) -> Campaign:
    draft = check_draft(draft)
    current = await get_campaign(db, draft.tenant_id, campaign_id)
    await _check_templates(db, draft.tenant_id, draft.templates)
    row = await db.fetchrow(q("update-campaign"), draft.tenant_id, campaign_id, *_params(draft))
    if row is None:
        raise Conflict(f"campaign {campaign_id} is {current.status}; only a draft can be edited", field="status")
    return Campaign(**row)


async def delete_campaign(db: asyncpg.Connection, tenant_id: int, campaign_id: int) -> None:
    current = await get_campaign(db, tenant_id, campaign_id)
    if await db.fetchval(q("delete-campaign"), tenant_id, campaign_id) is None:
        raise Conflict(f"campaign {campaign_id} is {current.status}; cancel it before deleting it", field="status")


async def transition(db: asyncpg.Connection, tenant_id: int, campaign_id: int, action: str) -> Campaign:
    """Apply start/pause/resume/cancel; a transition from a state that doesn't allow it is a 409."""
    sources, target = TRANSITIONS[action]
    current = await get_campaign(db, tenant_id, campaign_id)
    if action == "start" and current.transport == "pmta" and not await _has_sending_ips(db, tenant_id):
        raise Conflict("the tenant has no IP that may send (warming or active)", field="transport")
    if action == "start" and (current.send_at is None or current.send_at <= dt.datetime.now(dt.UTC)):
        target = CampaignStatus.SENDING
    status = await db.fetchval(q("set-campaign-status"), tenant_id, campaign_id, target.value,
                               [s.value for s in sources])
    if status is None:
        raise Conflict(f"cannot {action} a campaign that is {current.status}", field="status")
    if action == "cancel":
        await db.execute(q("cancel-pending-sends"), campaign_id)
    if action == "resume":
        await db.execute(q("health-rearm"), "campaign", campaign_id)  # engine.health: the check starts afresh
    await state_changed(db, tenant_id, campaign_id, status, previous=current.status, by="operator")
    return await get_campaign(db, tenant_id, campaign_id)


async def state_changed(db: asyncpg.Connection, tenant_id: int, campaign_id: int, status: str, *,
                        previous: str | None, by: str, reason: str | None = None) -> None:
    """The campaign.state event of a transition, written in the transition's transaction."""
    await events.emit(db, tenant_id, events.EventType.CAMPAIGN_STATE,
                      {"campaign_id": campaign_id, "status": status, "previous": previous, "by": by,
                       "reason": reason})


async def begin_sending(pool: asyncpg.Pool, campaign_id: int) -> bool:
    """A scheduled campaign whose time has come starts sending; False if it is not (yet) due."""
    async with pool.acquire() as db, db.transaction():
        row = await db.fetchrow(q("begin-sending"), campaign_id)
        if row is not None:
            await state_changed(db, row["tenant_id"], campaign_id, CampaignStatus.SENDING,
                                previous=CampaignStatus.SCHEDULED, by="engine")
    return row is not None


async def pause_itself(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, reason: str) -> bool:
    """The engine pauses a sending campaign with the reason (resume clears it); False if it was not sending.

    The one way the engine pauses a campaign (a sender-side refusal, an automatic pause of engine.health): the
    change and its campaign.state event are written together, in the caller's transaction when given one."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            return await pause_itself(conn, campaign_id, reason)
    row = await db.fetchrow(q("pause-campaign-itself"), campaign_id, reason)
    if row is not None:
        await state_changed(db, row["tenant_id"], campaign_id, CampaignStatus.PAUSED,
                            previous=CampaignStatus.SENDING, by="engine", reason=reason)
    return row is not None


async def _has_sending_ips(db: asyncpg.Connection, tenant_id: int) -> bool:
    return await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM ips WHERE tenant_id = $1 AND status IN ('warming', 'active'))", tenant_id)


async def _tag_ids(db: asyncpg.Connection, tenant_id: int, audience: dict[str, Any]) -> list[int] | None:
    slugs = audience.get("tags") or []
    if not slugs:
        return None
    ids = [r["id"] for r in await db.fetch(q("audience-tag-ids"), tenant_id, slugs)]
    if audience.get("tags_mode") == "all" and len(ids) < len(set(slugs)):
        return [0]  # a tag nobody has: "all" can match no contact (0 is never a tag id)
    return ids or [0]


def _filters(audience: dict[str, Any]) -> tuple[list[str], list[str] | None, list[str] | None, list[int] | None]:
    return (audience.get("statuses") or ["valid"], audience.get("languages") or None,
            audience.get("categories") or None, audience.get("data_source_ids") or None)


async def audience_count(db: asyncpg.Connection, tenant_id: int, audience: dict[str, Any]) -> int:
    statuses, languages, categories, sources = _filters(audience)
    tag_ids = await _tag_ids(db, tenant_id, audience)
    return await db.fetchval(q("audience-count"), tenant_id, statuses, languages, categories, sources, tag_ids,
                             audience.get("tags_mode", "any"))


async def fill_audience_page(db: asyncpg.Connection, campaign: Campaign, cursor: int, page: int) -> tuple[int, int]:
    """Write one keyset page of the audience into `sends`; return (next cursor, rows in the page)."""
    audience = campaign.audience
    statuses, languages, categories, sources = _filters(audience)
    tag_ids = await _tag_ids(db, campaign.tenant_id, audience)
    row = await db.fetchrow(q("audience-fill-page"), campaign.tenant_id, campaign.id, cursor, statuses, languages,
                            categories, sources, tag_ids, audience.get("tags_mode", "any"), page)
    return (row["last_id"] or cursor), row["n"]


async def stats(db: asyncpg.Connection, campaign: Campaign) -> Stats:
    by_status = {r["status"]: r["count"] for r in await db.fetch(q("campaign-stats"), campaign.id)}

    def grouped(rows: list[asyncpg.Record]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["key"], {})[r["status"]] = r["count"]
        return out

    return Stats(
        total=sum(by_status.values()),
        by_status={s.value: by_status.get(s.value, 0) for s in SendStatus},
        by_ip=grouped(await db.fetch(q("campaign-stats-by-ip"), campaign.id)),
        by_language=grouped(await db.fetch(q("campaign-stats-by-language"), campaign.id)),
        recovered_in_flight=campaign.recovered_in_flight,
        stale_results=campaign.stale_results,
    )


async def list_sends(db: asyncpg.Connection, campaign: Campaign, *, after: int, status: str | None,
                     limit: int) -> list[SendRow]:
    return [SendRow(**r) for r in await db.fetch(q("list-campaign-sends"), campaign.id, campaign.tenant_id, after,
                                                 status, limit)]


async def complete_if_done(pool: asyncpg.Pool, campaign_id: int) -> bool:
    """Mark a sending campaign completed once its whole audience is written and every row is final.

    Its campaign.state event and its alert go in the same transaction: `campaign_completed`, or
    `campaign_failed` when rows were attempted and not one message was accepted.
    """
    async with pool.acquire() as db, db.transaction():
        row = await db.fetchrow(q("complete-campaign"), campaign_id)
        if row is None:
            return False
        counts = {r["status"]: r["count"] for r in await db.fetch(q("campaign-stats"), campaign_id)}
        accepted = sum(counts.get(s, 0) for s in (SendStatus.INJECTED, SendStatus.DELIVERED, SendStatus.BOUNCED))
        failed = counts.get(SendStatus.FAILED, 0)
        kind = "campaign_failed" if accepted == 0 and failed > 0 else "campaign_completed"
        await state_changed(db, row["tenant_id"], campaign_id, CampaignStatus.COMPLETED,
                            previous=CampaignStatus.SENDING, by="engine",
                            reason="no message was accepted" if kind == "campaign_failed" else None)
        await alert_events.raise_alert(db, row["tenant_id"], kind, f"campaign:{campaign_id}",
                                       {"name": row["name"], **{s: n for s, n in sorted(counts.items())}})
    return True


async def set_wait_reason(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, reason: str | None) -> None:
    await db.execute(q("set-campaign-wait-reason"), campaign_id, reason)
