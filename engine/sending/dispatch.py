"""Sending one campaign: claim rows, run the per-message checks, pick a VMTA with a quota token, inject.

The policy for one message is a flat list of small checks (Postal's outgoing message processor is the model):
the contact may still be mailed → the address is not suppressed → a template exists for its language and
category → it renders → a VMTA of the tenant has a token → the transport accepts it. Each check that fails
ends the message with a recorded reason; nothing raises past `process_batch`.

The transport is anything with `send_many` (engine.transport.Transport); the worker passes PowerMTA's
injector. Rows move queued → claimed → sending → injected/deferred/failed/skipped; 'sending' is written
just before a chunk reaches the SMTP connections, so after a crash only that chunk is ambiguous.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from redis.asyncio import Redis

from engine import campaigns, ips, suppression, unsubscribe
from engine.sending import messages, quotas, sends
from engine.campaigns import Campaign, SendStatus
from engine.errors import Invalid
from engine.layout import render_email
from engine.providers import default_cap, provider_for_mx
from engine.rendering import MissingVariable, TemplateRejected, render_context
from engine.sending.retry import next_retry_delay
from engine.sending.rotation import Rotator, Wait
from engine.templates import TemplateBook, load_template_book
from engine.sending.transport import Outcome, OutgoingMessage, SendResult, Transport
from engine.warmup import seconds_until_tomorrow, today_in_timezone
from sql import q

log = logging.getLogger(__name__)

# Contacts whose status changed after the audience was written are not mailed.
MAILABLE = frozenset({"valid", "risky", "pending"})
AUDIENCE_PAGE = 5_000


class Tuning(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker paces a campaign."""

    batch: int = 512              # rows claimed per round trip
    chunk: int = 64               # rows marked 'sending' and injected together: the in-flight bound
    idle: float = 0.5             # pause when there is nothing to claim but the campaign is not done
    max_wait: float = 5.0         # longest sleep before re-checking the campaign's status
    recover_every: float = 10.0   # seconds between orphan recoveries


class Context(msgspec.Struct, kw_only=True):
    """What a campaign run needs; built once per worker."""

    pool: asyncpg.Pool
    redis: Redis
    namespace: str
    worker_id: str
    transport: Transport
    rotator: Rotator
    secret_key: str
    public_url: str
    live_workers: Callable[[], Awaitable[list[str]]]
    retry_delay: Callable[[int], float | None] = next_retry_delay
    tuning: Tuning = Tuning()


class Prepared(msgspec.Struct, kw_only=True):
    row: sends.Claimed
    template_id: int
    template_version: int
    language: str
    subject: str
    html: str
    text: str
    token: str
    provider: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _window_wait(window: dict[str, Any] | None, now: dt.datetime) -> float:
    """Seconds until the sending window opens (0 inside it); windows may run past midnight."""
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


async def _daily_room(db: asyncpg.Pool, campaign: Campaign, tz: str, now: dt.datetime) -> tuple[int, float]:
    """(messages the campaign may still send today, seconds until its day ends)."""
    if campaign.daily_cap is None:
        return math.inf, 0.0
    local = now.astimezone(ZoneInfo(tz))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    used = await db.fetchval(q("injected-since"), campaign.id, midnight)
    return max(0, campaign.daily_cap - used), seconds_until_tomorrow(tz, now)


async def fill_audience(ctx: Context, campaign: Campaign) -> None:
    """Write the audience into the send log, resumable from the stored cursor, under a Redis lock."""
    lock = ctx.redis.lock(f"{ctx.namespace}:fill:{campaign.id}", timeout=60, blocking=False)
    if not await lock.acquire():
        return
    try:
        cursor = await ctx.pool.fetchval(q("audience-cursor"), campaign.id)
        while True:
            async with ctx.pool.acquire() as db, db.transaction():
                cursor, n = await campaigns.fill_audience_page(db, campaign, cursor, AUDIENCE_PAGE)
                await db.execute(q("audience-advance"), campaign.id, cursor, n < AUDIENCE_PAGE)
            await lock.reacquire()
            if n < AUDIENCE_PAGE:
                return
    finally:
        try:
            await lock.release()
        except Exception:  # the lock expired: another worker may already be filling; it resumes from the cursor
            pass


async def run_campaign(ctx: Context, campaign_id: int, *, stop: asyncio.Event | None = None) -> str:
    """Send a campaign until it is done, paused, cancelled, or `stop` is set; return why it stopped."""
    stop = stop or asyncio.Event()
    last_recovery = 0.0
    # Rows this worker still holds for the campaign were left by a loop of its own that broke (a store
    # restarting mid-batch): the worker is alive, so the orphan recovery would never take them back. The
    # first recovery of a loop counts this worker among the dead.
    first_recovery = True
    while not stop.is_set():
        state = await ctx.pool.fetchrow(q("campaign-run-state"), campaign_id)
        if state is None:
            return "deleted"
        tz = state["timezone"]
        if state["status"] == "scheduled":
            if await ctx.pool.fetchval(q("begin-sending"), campaign_id) is None:
                await _sleep(stop, ctx.tuning.idle)
            continue
        if state["status"] != "sending":
            return state["status"]
        camp = await campaigns.get_campaign(ctx.pool, state["tenant_id"], campaign_id)
        now = _now()
        if first_recovery or time.monotonic() - last_recovery > ctx.tuning.recover_every:
            live = [w for w in await ctx.live_workers() if not (first_recovery and w == ctx.worker_id)]
            total, in_flight = await sends.recover_orphans(ctx.pool, campaign_id, live)
            if total:
                log.warning("campaign %s: requeued %s rows of dead workers or of a broken loop (%s were in flight)",
                            campaign_id, total, in_flight)
            last_recovery, first_recovery = time.monotonic(), False
        if not camp.audience_ready:
            await fill_audience(ctx, camp)
        wait = _window_wait(camp.send_window, now)
        if wait > 0:
            await _sleep(stop, min(wait, ctx.tuning.max_wait))
            continue
        room, day_left = await _daily_room(ctx.pool, camp, tz, now)
        if room <= 0:
            await _sleep(stop, min(day_left, ctx.tuning.max_wait))
            continue
        # A fresh book per batch: a template edited mid-campaign is used from the next batch on.
        book = await load_template_book(ctx.pool, camp.tenant_id)
        rows = await sends.claim(ctx.pool, campaign_id, ctx.worker_id, int(min(ctx.tuning.batch, room)))
        if not rows:
            if await campaigns.complete_if_done(ctx.pool, campaign_id):
                log.info("campaign %s completed", campaign_id)
                return "completed"
            left = await sends.progress(ctx.pool, campaign_id)
            pause = ctx.tuning.idle
            if left["active"] == 0 and left["next_retry"] is not None:
                pause = max(0.05, (left["next_retry"] - _now()).total_seconds())
            await _sleep(stop, min(pause, ctx.tuning.max_wait))
            continue
        wait = await process_batch(ctx, camp, tz, book, rows)
        if wait > 0:
            await _sleep(stop, min(wait, ctx.tuning.max_wait))
    return "stopped"


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass


async def process_batch(ctx: Context, campaign: Campaign, tz: str, book: TemplateBook,
                        rows: list[sends.Claimed]) -> float:
    """Run the checks on claimed rows and inject those that pass; return how long to wait (0 = go on)."""
    done: list[sends.Outcome] = []
    emails = [r.email for r in rows if r.email]
    blocked = await suppression.suppressed_among(ctx.pool, campaign.tenant_id, emails)
    ready: list[Prepared] = []
    for row in rows:
        outcome = _check(row, blocked)
        if outcome is not None:
            done.append(sends.Outcome(id=row.id, status=SendStatus.SKIPPED, attempted=0, detail=outcome))
            continue
        prepared_or_reason = _prepare(ctx, campaign, book, row)
        if isinstance(prepared_or_reason, sends.Outcome):
            done.append(prepared_or_reason)
        else:
            ready.append(prepared_or_reason)
    await sends.record(ctx.pool, done)

    now = _now()
    day = today_in_timezone(tz, now).isoformat()
    day_ends_in = seconds_until_tomorrow(tz, now)
    wait = 0.0
    unpicked: list[int] = []
    allowed = await _campaign_tokens(ctx, campaign, tz, day, len(ready))
    if allowed < len(ready):
        unpicked.extend(p.row.id for p in ready[allowed:])
        ready = ready[:allowed]
        wait = day_ends_in
    candidates = await ips.sending_candidates(ctx.pool, campaign.tenant_id, today_in_timezone(tz, now))
    by_provider: dict[str, list[Prepared]] = {}
    for p in ready:
        by_provider.setdefault(p.provider, []).append(p)
    picked: list[tuple[Prepared, int, str]] = []
    for provider, group in by_provider.items():
        picks = await ctx.rotator.pick(ctx.redis, campaign.tenant_id, candidates, len(group), day=day,
                                       day_ends_in=day_ends_in, provider=provider,
                                       provider_cap=default_cap(provider))
        if isinstance(picks, Wait):
            unpicked.extend(p.row.id for p in group)
            wait = max(wait, picks.seconds)
            continue
        for p, pick in zip(group, picks, strict=False):
            picked.append((p, pick.ip_id, pick.vmta_name))
        if len(picks) < len(group):
            unpicked.extend(p.row.id for p in group[len(picks):])
            wait = max(wait, 0.2)
    if campaign.daily_cap is not None and len(picked) < len(ready):
        await quotas.refund(ctx.redis, f"{ctx.namespace}:campaign", campaign.id, day, len(ready) - len(picked))
    await sends.release(ctx.pool, unpicked)

    await _inject(ctx, campaign, picked)
    return 0.0 if not unpicked else (wait if math.isfinite(wait) else ctx.tuning.max_wait)


async def _campaign_tokens(ctx: Context, campaign: Campaign, tz: str, day: str, n: int) -> int:
    """How many of `n` messages the campaign's daily cap still allows, taken atomically across workers.

    The cap is a token bucket like an IP's quota (same Lua script, its own key space), rebuilt from the send
    log if Redis loses it, so any number of workers together stop at the cap.
    """
    if campaign.daily_cap is None or n == 0:
        return n

    async def used_today(campaign_id: int, on_day: str) -> int:
        midnight = dt.datetime.combine(dt.date.fromisoformat(on_day), dt.time(), ZoneInfo(tz))
        return await ctx.pool.fetchval(q("injected-since"), campaign_id, midnight)

    grant = await quotas.take(ctx.redis, f"{ctx.namespace}:campaign", campaign.id, day, n,
                              daily_quota=campaign.daily_cap, used_today=used_today)
    return grant.granted


def _check(row: sends.Claimed, blocked: set[str]) -> str | None:
    """The checks before any work: why this row must be skipped, or None."""
    if not row.email:
        return "contact erased"
    if row.contact_status not in MAILABLE:
        return f"contact is {row.contact_status}"
    if row.email in blocked:
        return "suppressed"
    return None


def _prepare(ctx: Context, campaign: Campaign, book: TemplateBook, row: sends.Claimed) -> Prepared | sends.Outcome:
    template = book.choose(row.language, row.category or campaign.category, campaign.templates)
    if template is None:
        return sends.Outcome(id=row.id, status=SendStatus.SKIPPED, attempted=0,
                             detail=f"no template for language {row.language!r} and category {row.category!r}")
    token = unsubscribe.make_token(ctx.secret_key, tenant_id=campaign.tenant_id, email=row.email,
                                   contact_id=row.contact_id, campaign_id=campaign.id, language=template.language)
    url = unsubscribe.unsubscribe_url(ctx.public_url, token)
    contact = {"email": row.email, "first_name": row.first_name, "last_name": row.last_name,
               "company": row.company, "website": row.website, "country": row.country,
               "language": row.language, "category": row.category}
    try:
        rendered = render_email(book.compiled(template), render_context(contact, row.custom, url))
    except (MissingVariable, TemplateRejected) as exc:
        return sends.Outcome(id=row.id, status=SendStatus.FAILED, attempted=0, detail=f"render: {exc.message}")
    return Prepared(row=row, template_id=template.id, template_version=template.version,
                    language=template.language, subject=rendered.subject, html=rendered.html, text=rendered.text,
                    token=token, provider=provider_for_mx(row.mx_host))


class Chunk(msgspec.Struct, kw_only=True):
    """Messages built for one chunk, ready for the transport."""

    rows: list[sends.Claimed]
    outgoing: list[OutgoingMessage]
    in_flight: list[sends.InFlight]
    refused: list[sends.Outcome]      # rows whose message could not be built: failed, never sent


async def _inject(ctx: Context, campaign: Campaign, picked: list[tuple[Prepared, int, str]]) -> None:
    """Hand the picked rows to the transport one chunk at a time, as a pipeline.

    The statement that marks a chunk as sending also records the results of the chunk before it, so a
    crash leaves at most one chunk ambiguous (in flight), and the next chunk's messages are built while
    the current one is on the wire.
    """
    step = ctx.tuning.chunk
    pieces = [picked[start:start + step] for start in range(0, len(picked), step)]
    if not pieces:
        return
    results_so_far: list[sends.Outcome] = []
    chunk = _build_chunk(ctx, campaign, pieces[0])
    for i in range(len(pieces)):
        await sends.advance(ctx.pool, [*results_so_far, *chunk.refused], ctx.worker_id, chunk.in_flight)
        sending = asyncio.ensure_future(ctx.transport.send_many(chunk.outgoing))
        upcoming = None
        if i + 1 < len(pieces):
            await asyncio.sleep(0)  # the chunk reaches the connections first
            upcoming = _build_chunk(ctx, campaign, pieces[i + 1])
        results = await sending
        results_so_far = [_outcome(ctx, row, result) for row, result in zip(chunk.rows, results, strict=True)]
        # RFC 3463 5.1.x: the mailbox does not exist. Never mail it again, from any campaign of the tenant.
        bounced = [row.email for row, result in zip(chunk.rows, results, strict=True)
                   if result.outcome is Outcome.HARD and result.enhanced.startswith("5.1.")]
        if bounced:
            async with ctx.pool.acquire() as db, db.transaction():
                await suppression.add_suppressions(db, campaign.tenant_id, bounced, reason="hard_bounce",
                                                   source="smtp")
        if upcoming is not None:
            chunk = upcoming
    await sends.record(ctx.pool, results_so_far)


def _build_chunk(ctx: Context, campaign: Campaign, piece: list[tuple[Prepared, int, str]]) -> Chunk:
    chunk = Chunk(rows=[], outgoing=[], in_flight=[], refused=[])
    for p, ip_id, vmta in piece:
        envelope = str(p.row.id)
        headers = unsubscribe.list_unsubscribe_headers(ctx.public_url, p.token)
        headers["Feedback-ID"] = f"{campaign.id}:{campaign.tenant_id}:email-engine"
        try:
            data, mid = messages.build_message(
                from_name=campaign.from_name, from_email=campaign.from_email, to_email=p.row.email,
                subject=p.subject, html=p.html, text=p.text, envelope_id=envelope, campaign_id=campaign.id,
                reply_to=campaign.reply_to, headers=headers)
        except Invalid as exc:  # a header the checks refuse (a line break): never sent
            chunk.refused.append(sends.Outcome(id=p.row.id, status=SendStatus.FAILED, attempted=0,
                                               detail=f"message: {exc.message}"))
            continue
        chunk.rows.append(p.row)
        chunk.outgoing.append(OutgoingMessage(envelope_id=envelope, rcpt_to=p.row.email, data=data, vmta=vmta,
                                              mail_from=messages.bounce_address(envelope, campaign.from_email)))
        chunk.in_flight.append(sends.InFlight(id=p.row.id, ip_id=ip_id, vmta=vmta, template_id=p.template_id,
                                              template_version=p.template_version, message_id=mid,
                                              language=p.language))
    return chunk


def _outcome(ctx: Context, row: sends.Claimed, result: SendResult) -> sends.Outcome:
    common = {"id": row.id, "code": result.code or None, "enhanced": result.enhanced or None,
              "detail": result.text[:500] or None}
    if result.outcome is Outcome.SENT:
        return sends.Outcome(status=SendStatus.INJECTED, **common)
    if result.outcome is Outcome.HARD:
        return sends.Outcome(status=SendStatus.FAILED, **common)
    delay = ctx.retry_delay(row.attempts + 1)
    if delay is None:
        return sends.Outcome(status=SendStatus.FAILED, **{**common, "detail": f"retries exhausted: {result.text}"[:500]})
    return sends.Outcome(status=SendStatus.DEFERRED, next_attempt_at=_now() + dt.timedelta(seconds=delay), **common)
