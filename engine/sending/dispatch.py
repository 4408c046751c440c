"""Sending one campaign: claim rows, apply the send policy, take quota tokens, inject, record.

Per row: the policy's checks (engine.sending.policy: erased, never-mail statuses, validated, suppressed) →
a template for its language and category → it renders → a VMTA of the tenant has a token, recorded in the
send log and the quota ledger before anything leaves (engine.sending.grants) → the transport's answer,
classified by the one bounce table. Each step that stops a row records why; nothing raises past
`process_batch`. A batch's answers also move the automatic pauses' figures (engine.health: the campaign
stops when it passes its tenant's limits; a chunk with a hard bounce is judged before the next one leaves)
and count reputation deferrals for the provider holds
(engine.sending.backoff), which the grant honours.

The transport is anything with `send_many` (engine.sending.transport.Transport); the worker passes PowerMTA's
injector. Rows move queued → claimed → sending → injected/deferred/failed/skipped; 'sending' is written
while the chunk before is on the wire, so after a crash at most two chunks are ambiguous (and counted). Every write
is fenced by the claim (engine.sending.sends): a worker whose rows were taken back sends and writes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from redis.asyncio import Redis

from engine import campaigns, health, replies, sequences, suppression, unsubscribe
from engine.campaigns import Campaign, CampaignStatus, SendStatus
from engine.errors import Invalid
from engine.layout import RenderedEmail, render_email
from engine.providers import provider_for_mx
from engine.rendering import CompiledTemplate, MissingVariable, TemplateRejected, render_context
from engine.sending import backoff, grants, messages, policy, sends, steps
from engine.sending.grants import Item
from engine.sending.policy import BounceClass, Hold, Skip, TenantPolicy
from engine.sending.retry import next_retry_delay
from engine.sending.rotation import Rotator
from engine.sending.transport import Outcome, OutgoingMessage, SendResult, Transport
from engine.templates import Template, TemplateBook, load_template_book
from engine.warmup import seconds_until_tomorrow, today_in_timezone
from sql import q

log = logging.getLogger(__name__)

AUDIENCE_PAGE = 5_000


class Tuning(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker paces a campaign."""

    # Rows claimed, checked and granted together. Each batch costs the worker a fixed amount (the campaign's
    # reads, the claim, the grant transaction, the template book), so larger batches cost less per message.
    # Claimed rows are not in flight (a dead worker's are requeued whole): the crash bound is the chunk's.
    # An operator's pause is seen between batches.
    batch: int = 2048
    chunk: int = 64               # rows marked 'sending' and injected together: the in-flight bound
    idle: float = 0.5             # pause when there is nothing to claim but the campaign is not done
    max_wait: float = 5.0         # longest sleep before re-checking the campaign's status
    recover_every: float = 10.0   # seconds between orphan recoveries
    # a row whose contact is being validated is looked at again after this long
    validation_recheck: float = policy.VALIDATION_RECHECK_SECONDS
    # PowerMTA unreachable: the untouched rows are retried after this long (no attempt counted)
    unreachable_retry: float = 5.0


Expedite = Callable[[int, list[int]], Awaitable[None]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    # moves the validation of these contacts (tenant, ids) to the front of the queue
    expedite_validation: Expedite | None = None
    retry_delay: Callable[[int], float | None] = next_retry_delay
    tuning: Tuning = Tuning()
    # the time every decision is taken at (windows, days, due rows); a test drives it
    clock: Callable[[], dt.datetime] = _now


class Prepared(msgspec.Struct, kw_only=True):
    row: sends.Claimed
    template: Template
    compiled: CompiledTemplate
    token: str
    provider: str
    sender: dict[str, str]               # the sender identity every message shows (the book's)
    plan: steps.RowPlan | None = None    # the row's step, variant and thread (a campaign with a sequence)

    def item(self) -> Item:
        return Item(held=sends.Held(self.row.id, self.row.claim_gen), provider=self.provider)


class Batch(msgspec.Struct, kw_only=True):
    """One claimed batch as it goes through: the campaign, its day, and what it must wait for."""

    campaign: Campaign
    day: dt.date
    day_ends_in: float
    sequence: sequences.Sequence | None = None
    timezone: str = "UTC"      # the tenant's: a recipient's zone when the contact names none
    book: TemplateBook | None = None
    reply_address: str | None = None    # a plus-addressed reply mailbox: Reply-To carries each row's token


async def _daily_room(db: asyncpg.Pool, campaign: Campaign, tz: str, now: dt.datetime) -> tuple[float, float]:
    """(messages the campaign may still send today, seconds until its day ends), from the quota ledger."""
    if campaign.daily_cap is None:
        return math.inf, 0.0
    used = await db.fetchval(q("campaign-granted-on-day"), campaign.id, today_in_timezone(tz, now))
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
    # The batch on the wire: the next one is claimed, checked and granted meanwhile and handed to the
    # transport once this one is done, so one batch's chunks are in flight at a time (the bound above holds).
    sending: asyncio.Future[tuple[float, bool]] | None = None
    try:
        while not stop.is_set():
            state = await ctx.pool.fetchrow(q("campaign-run-state"), campaign_id)
            if state is None:
                return "deleted"
            tz = state["timezone"]
            if state["status"] == CampaignStatus.SCHEDULED:
                if not await campaigns.begin_sending(ctx.pool, campaign_id):
                    await _sleep(stop, ctx.tuning.idle)
                continue
            if state["status"] != CampaignStatus.SENDING:
                return state["status"]
            camp, seq = await asyncio.gather(campaigns.get_campaign(ctx.pool, state["tenant_id"], campaign_id),
                                             sequences.get_sequence(ctx.pool, campaign_id))
            now = ctx.clock()
            if first_recovery or time.monotonic() - last_recovery > ctx.tuning.recover_every:
                live = [w for w in await ctx.live_workers() if not (first_recovery and w == ctx.worker_id)]
                total, in_flight = await sends.recover_orphans(ctx.pool, campaign_id, live)
                if total:
                    log.warning("campaign %s: requeued %s rows of dead workers or of a broken loop (%s were in flight)",
                                campaign_id, total, in_flight)
                if seq is not None and seq.winner_after is not None:
                    await sequences.decide_winners(ctx.pool, seq)
                last_recovery, first_recovery = time.monotonic(), False
            if not camp.audience_ready:
                await fill_audience(ctx, camp)
            if seq is not None and len(seq.steps) > 1:
                await steps.write_next_steps(ctx.pool, camp, seq, tz, now)
            wait = policy.window_wait(camp.send_window, now)
            if wait > 0:
                await campaigns.set_wait_reason(ctx.pool, campaign_id, "outside the sending window")
                await _sleep(stop, min(wait, ctx.tuning.max_wait))
                continue
            # Independent reads, each on a connection of its own: one round trip's wait instead of four. A fresh
            # book per batch: a template edited mid-campaign is used from the next batch on.
            hold, (room, day_left), book, reply_address = await asyncio.gather(
                policy.sender_hold(ctx.pool, camp.tenant_id, camp.from_email), _daily_room(ctx.pool, camp, tz, now),
                load_template_book(ctx.pool, camp.tenant_id, camp.id),
                ctx.pool.fetchval(q("tenant-reply-address"), camp.tenant_id))
            if hold is not None:
                await campaigns.set_wait_reason(ctx.pool, campaign_id, hold)
                await _sleep(stop, ctx.tuning.max_wait)
                continue
            if room <= 0:
                await campaigns.set_wait_reason(ctx.pool, campaign_id, "daily cap reached")
                await _sleep(stop, min(day_left, ctx.tuning.max_wait))
                continue
            if camp.wait_reason is not None:
                await campaigns.set_wait_reason(ctx.pool, campaign_id, None)
            rows = await sends.claim(ctx.pool, campaign_id, ctx.worker_id, int(min(ctx.tuning.batch, room)), now=now)
            if not rows:
                if sending is not None:   # what the batch on the wire leaves (deferred, released) is looked at next
                    wait, _ = await sending
                    sending = None
                    await _sleep(stop, min(wait, ctx.tuning.max_wait))
                    continue
                complete = steps.complete_if_done if seq is not None and len(seq.steps) > 1 else campaigns.complete_if_done
                if await complete(ctx.pool, campaign_id):
                    log.info("campaign %s completed", campaign_id)
                    return "completed"
                left = await sends.progress(ctx.pool, campaign_id)
                pause = ctx.tuning.idle
                if left["active"] == 0 and left["next_retry"] is not None:
                    pause = max(0.05, (left["next_retry"] - ctx.clock()).total_seconds())
                await _sleep(stop, min(pause, ctx.tuning.max_wait))
                continue
            batch = Batch(campaign=camp, day=today_in_timezone(tz, now), day_ends_in=seconds_until_tomorrow(tz, now),
                          sequence=seq, timezone=tz, book=book, reply_address=reply_address)
            staged = await process_batch(ctx, batch, TenantPolicy.from_settings(state["settings"]), book, rows)
            wait = 0.0
            if sending is not None:
                wait, stopped = await sending
                sending = None
                if stopped:
                    # The batch before ended the run (a pause, PowerMTA unreachable): this one waits untouched.
                    await _give_back(ctx, batch, [(p, ip_id) for p, ip_id, _ in staged.picked], retry=False)
                    await _sleep(stop, min(wait, ctx.tuning.max_wait))
                    continue
            if staged.picked:
                sending = asyncio.ensure_future(_inject(ctx, batch, staged.picked))
            wait = max(wait, staged.wait)
            if wait > 0:
                if sending is not None:
                    wait = max(wait, (await sending)[0])
                    sending = None
                await _sleep(stop, min(wait, ctx.tuning.max_wait))
        return "stopped"
    except BaseException:
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            sending = None
        raise
    finally:
        if sending is not None:
            await sending


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        pass


def _held(row: sends.Claimed) -> sends.Held:
    return sends.Held(row.id, row.claim_gen)


class Staged(msgspec.Struct, kw_only=True):
    """A batch past its checks and its grant: the rows to inject, each with its IP and VMTA."""

    batch: Batch
    picked: list[tuple[Prepared, int, str]]
    wait: float = 0.0    # rows got no token: how long to wait after this batch (0 = go on)


async def process_batch(ctx: Context, batch: Batch, tenant: TenantPolicy, book: TemplateBook,
                        rows: list[sends.Claimed]) -> Staged:
    """Run the checks on claimed rows and take the tokens of those that pass; `_inject` sends them."""
    campaign = batch.campaign
    now = ctx.clock()
    done: list[sends.Outcome] = []
    validating: list[int] = []
    emails = [r.email for r in rows if r.email]
    blocked = await suppression.suppressed_among(ctx.pool, campaign.tenant_id, emails)
    ready: list[Prepared] = []
    plans: dict[int, steps.RowPlan] = {}
    if batch.sequence is not None:
        plans, stopped = await steps.plan(ctx.pool, ctx.redis, ctx.namespace, ctx.worker_id, campaign, batch.sequence,
                                          batch.timezone, rows, now)
        done.extend(stopped)
        rows = [r for r in rows if r.id in plans]
    for row in rows:
        found = policy.verdict(policy.Row(email=row.email, contact_status=row.contact_status,
                                          waiting_since=row.waiting_since), blocked, tenant, now)
        if isinstance(found, Skip):
            done.append(sends.Outcome(id=row.id, gen=row.claim_gen, status=SendStatus.SKIPPED, attempted=0,
                                      detail=found.reason))
            continue
        if isinstance(found, Hold):
            validating.append(row.contact_id)
            done.append(sends.Outcome(
                id=row.id, gen=row.claim_gen, status=SendStatus.DEFERRED, attempted=0, detail=found.reason,
                waiting=True, next_attempt_at=now + dt.timedelta(seconds=ctx.tuning.validation_recheck)))
            continue
        prepared_or_reason = _prepare(ctx, campaign, book, row, batch.sequence, plans.get(row.id))
        if isinstance(prepared_or_reason, sends.Outcome):
            done.append(prepared_or_reason)
        else:
            ready.append(prepared_or_reason)
    await sends.record(ctx.pool, campaign.id, ctx.worker_id, done)
    if validating and ctx.expedite_validation is not None:
        await ctx.expedite_validation(campaign.tenant_id, validating)
    if not ready:
        return Staged(batch=batch, picked=[])

    granted = await grants.grant(
        ctx.pool, ctx.redis, ctx.rotator, ctx.namespace, ctx.worker_id, tenant_id=campaign.tenant_id,
        campaign_id=campaign.id, daily_cap=campaign.daily_cap, day=batch.day, day_ends_in=batch.day_ends_in,
        items=[(p, p.item()) for p in ready])
    await sends.release(ctx.pool, campaign.id, ctx.worker_id, [_held(p.row) for p in granted.short])
    # Rows for a provider every IP rests from (engine.sending.backoff) wait for the hold to end, no attempt
    # counted, so the rows of other providers behind them keep flowing.
    await sends.release(ctx.pool, campaign.id, ctx.worker_id, [_held(p.row) for p in granted.held],
                        retry_at=granted.held_until)
    wait = 0.0
    if granted.short:
        wait = granted.wait if math.isfinite(granted.wait) else ctx.tuning.max_wait
    return Staged(batch=batch, picked=granted.picked, wait=wait)


def _prepare(ctx: Context, campaign: Campaign, book: TemplateBook, row: sends.Claimed,
             seq: sequences.Sequence | None = None, plan: steps.RowPlan | None = None) -> Prepared | sends.Outcome:
    """The row's template and unsubscribe token; the render itself waits for the chunk (see _build_chunk)."""
    if seq is not None and plan is not None:
        template = steps.choose(book, campaign, seq, plan, row.language, row.category or campaign.category)
    else:
        template = book.choose(row.language, row.category or campaign.category, campaign.templates)
        if template is not None:   # spintax: the same reading as step 1 of a sequence would give
            template = steps.spun(template, f"{campaign.id}:1:{row.contact_id}")
    if template is None:
        return sends.Outcome(id=row.id, gen=row.claim_gen, status=SendStatus.SKIPPED, attempted=0,
                             detail=f"no template for language {row.language!r} and category {row.category!r}")
    token = unsubscribe.make_token(ctx.secret_key, tenant_id=campaign.tenant_id, email=row.email,
                                   contact_id=row.contact_id, campaign_id=campaign.id, language=template.language)
    return Prepared(row=row, template=template, compiled=book.compiled(template), token=token,
                    provider=provider_for_mx(row.mx_host), plan=plan,
                    sender=book.sender)


def _render(ctx: Context, p: Prepared, seq: sequences.Sequence | None = None,
            book: TemplateBook | None = None) -> RenderedEmail:
    row = p.row
    contact = {"email": row.email, "first_name": row.first_name, "last_name": row.last_name,
               "company": row.company, "website": row.website, "country": row.country,
               "language": row.language, "category": row.category}
    context = render_context(contact, row.custom, unsubscribe.unsubscribe_url(ctx.public_url, p.token),
                             p.sender)
    rendered = render_email(p.compiled, context)
    if seq is None or p.plan is None:
        return rendered
    subject = steps.variant_subject(seq, p.plan, context) or rendered.subject
    if steps.threaded(seq, p.plan) and book is not None:
        # A follow-up in the thread keeps the opening message's subject, as a reply would.
        first_template, first = steps.opening(book, seq, p.plan, row.contact_id)
        opening = steps.variant_subject(seq, first, context)
        if opening is None and first_template is not None:
            opening = render_email(book.compiled(first_template), context).subject
        subject = steps.thread_subject(opening or subject, row.language)
    return msgspec.structs.replace(rendered, subject=subject)


class Chunk(msgspec.Struct, kw_only=True):
    """Messages built for one chunk, ready for the transport."""

    picked: list[tuple[Prepared, int]]    # (row, ip_id) of each message, in order
    outgoing: list[OutgoingMessage]
    in_flight: list[sends.InFlight]
    refused: list[sends.Outcome]      # rows whose message could not be built: failed, never sent


class Results(msgspec.Struct, kw_only=True):
    """A chunk's answers sorted by what the engine does next."""

    outcomes: list[sends.Outcome]
    untouched: list[tuple[Prepared, int]]   # never reached the server: given back, retried without an attempt
    hard_bounced: list[str]
    sender_fault: str | None
    in_doubt: int = 0       # written to the server, answer never read: it may have accepted them
    # (ip_id, results, hard bounces) of final answers, for the automatic pauses (engine.health)
    final: list[tuple[int, int, int]] = msgspec.field(default_factory=list)
    # (ip_id, provider, reply) of refusals, for the provider-aware backoff (engine.sending.backoff)
    refusals: list[tuple[int, str, str]] = msgspec.field(default_factory=list)


async def _inject(ctx: Context, batch: Batch, picked: list[tuple[Prepared, int, str]]) -> tuple[float, bool]:
    """Hand the picked rows to the transport one chunk at a time, as a pipeline; return how long to wait and
    whether the campaign must stop sending for now (paused, or PowerMTA unreachable).

    While a chunk is on the wire, the next one is built and one statement records the results of the chunk
    before and marks the next as sending: the database works while PowerMTA does. A crash therefore leaves at
    most two chunks ambiguous ('sending'), and recovery counts them. Only rows the mark still found held are
    sent.
    """
    campaign = batch.campaign
    step = ctx.tuning.chunk
    pieces = [picked[start:start + step] for start in range(0, len(picked), step)]
    if not pieces:
        return 0.0, False
    pending: list[sends.Outcome] = []
    figures: list[tuple[int, int, int, int, int]] = []   # results not yet added to the health figures
    chunk = _build_chunk(ctx, campaign, pieces[0], batch)
    _keep_marked(chunk, await sends.advance(ctx.pool, campaign.id, ctx.worker_id, chunk.refused, chunk.in_flight))
    wait = 0.0
    for i in range(len(pieces)):
        sending = asyncio.ensure_future(ctx.transport.send_many(chunk.outgoing))
        upcoming = marking = None
        to_record, pending = pending, []
        if i + 1 < len(pieces):
            await asyncio.sleep(0)  # the chunk reaches the connections first
            upcoming = _build_chunk(ctx, campaign, pieces[i + 1], batch)
            marking = asyncio.ensure_future(sends.advance(
                ctx.pool, campaign.id, ctx.worker_id, [*to_record, *upcoming.refused], upcoming.in_flight))
            to_record = []
        try:
            answers = await sending
        finally:
            marked = await marking if marking is not None else None
        if upcoming is not None and marked is not None:
            _keep_marked(upcoming, marked)
        results = _sort_results(ctx, chunk, answers)
        pending = [*to_record, *results.outcomes]
        # The campaign's, its IPs' and its domain's figures: past a limit they pause. Only a bad result (a hard
        # bounce) can make a rate pass its limit (engine.health.record), so clean chunks' results are added
        # with the first bad one, or once at the end of the batch: one statement per batch instead of per chunk.
        figures.extend((campaign.id, ip_id, n, hard, 0) for ip_id, n, hard in results.final)
        paused = []
        if any(hard for _, _, hard in results.final):
            paused = await _add_figures(ctx, campaign, figures)
        await backoff.observe(ctx.pool, campaign.tenant_id, results.refusals)
        if results.in_doubt:
            # retried like any soft failure; counted, since the server may have taken them before the cut
            await ctx.pool.execute(q("count-in-doubt"), campaign.id, results.in_doubt)
        if results.hard_bounced:
            # The mailbox does not exist: never mail it again, from any campaign of the tenant.
            async with ctx.pool.acquire() as db, db.transaction():
                await suppression.add_suppressions(db, campaign.tenant_id, results.hard_bounced,
                                                   reason="hard_bounce", source="smtp")
        stop = None
        if results.sender_fault is not None:
            stop = f"paused: {results.sender_fault}"
            await health.pause_campaign(ctx.pool, campaign.tenant_id, campaign.id, results.sender_fault)
            log.error("campaign %s paused: %s", campaign.id, results.sender_fault)
        elif any(p.scope is health.Scope.CAMPAIGN and p.scope_id == campaign.id for p in paused):
            stop = "paused: its figures passed the tenant's limits"
        elif results.untouched and len(results.untouched) == len(chunk.outgoing):
            stop = "the transport is unreachable"
            wait = ctx.tuning.unreachable_retry
        await _give_back(ctx, batch, results.untouched)
        if stop is not None:
            # Every later message would meet the same end: their tokens go back, their rows wait untouched.
            rest = [(p, ip_id) for piece in pieces[i + 1:] for p, ip_id, _ in piece]
            await _add_figures(ctx, campaign, figures)
            await sends.record(ctx.pool, campaign.id, ctx.worker_id, pending)
            await _give_back(ctx, batch, rest, retry=False)
            log.warning("campaign %s: %s; %d rows of the batch released", campaign.id, stop, len(rest))
            return wait, True
        if upcoming is not None:
            chunk = upcoming
    await _add_figures(ctx, campaign, figures)
    await sends.record(ctx.pool, campaign.id, ctx.worker_id, pending)
    return wait, False


async def _add_figures(ctx: Context, campaign: Campaign, figures: list[tuple[int, int, int, int, int]]
                       ) -> list[health.Paused]:
    """Add the results gathered so far to the automatic pauses' figures (and empty the list)."""
    found, figures[:] = health.tallies(figures), []
    return await health.record(ctx.pool, campaign.tenant_id, found)


def _keep_marked(chunk: Chunk, marked: set[int]) -> None:
    """Drop the messages of rows the mark no longer found ours: another worker holds them now."""
    if len(marked) == len(chunk.in_flight):
        return
    keep = [i for i, row in enumerate(chunk.in_flight) if row.id in marked]
    chunk.picked = [chunk.picked[i] for i in keep]
    chunk.outgoing = [chunk.outgoing[i] for i in keep]
    chunk.in_flight = [chunk.in_flight[i] for i in keep]


async def _give_back(ctx: Context, batch: Batch, rows: list[tuple[Prepared, int]], *, retry: bool = True) -> None:
    if not rows:
        return
    retry_at = ctx.clock() + dt.timedelta(seconds=ctx.tuning.unreachable_retry) if retry else None
    await grants.give_back(ctx.pool, ctx.redis, ctx.rotator, ctx.namespace, ctx.worker_id,
                           tenant_id=batch.campaign.tenant_id, campaign_id=batch.campaign.id,
                           capped=batch.campaign.daily_cap is not None, day=batch.day,
                           items=[(p.item(), ip_id) for p, ip_id in rows], retry_at=retry_at)


def _build_chunk(ctx: Context, campaign: Campaign, piece: list[tuple[Prepared, int, str]],
                 batch: Batch | None = None) -> Chunk:
    seq, book = (batch.sequence, batch.book) if batch is not None else (None, None)
    reply_address = batch.reply_address if batch is not None else None
    chunk = Chunk(picked=[], outgoing=[], in_flight=[], refused=[])
    for p, ip_id, vmta in piece:
        envelope = str(p.row.id)
        headers = unsubscribe.list_unsubscribe_headers(ctx.public_url, p.token)
        headers["Feedback-ID"] = f"{campaign.id}:{campaign.tenant_id}:email-engine"
        if seq is not None and p.plan is not None and steps.threaded(seq, p.plan):
            headers.update(steps.thread_headers(p.plan))
        # Rendered here rather than when the batch is checked: this runs while the chunk before is on the
        # wire. A row that fails here keeps its quota token counted (never lost, never given twice).
        try:
            rendered = _render(ctx, p, seq, book)
        except (MissingVariable, TemplateRejected) as exc:
            chunk.refused.append(sends.Outcome(id=p.row.id, gen=p.row.claim_gen, status=SendStatus.FAILED,
                                               attempted=0, detail=f"render: {exc.message}"))
            continue
        try:
            data, mid = messages.build_message(
                from_name=campaign.from_name, from_email=campaign.from_email, to_email=p.row.email,
                subject=rendered.subject, html=rendered.html, text=rendered.text, envelope_id=envelope,
                campaign_id=campaign.id, headers=headers,
                reply_to=replies.reply_to(reply_address, ctx.secret_key, p.row.id) if reply_address
                else campaign.reply_to)
        except Invalid as exc:  # a header the checks refuse (a line break): never sent
            chunk.refused.append(sends.Outcome(id=p.row.id, gen=p.row.claim_gen, status=SendStatus.FAILED,
                                               attempted=0, detail=f"message: {exc.message}"))
            continue
        chunk.picked.append((p, ip_id))
        chunk.outgoing.append(OutgoingMessage(envelope_id=envelope, rcpt_to=p.row.email, data=data, vmta=vmta,
                                              mail_from=messages.bounce_address(envelope, campaign.from_email)))
        chunk.in_flight.append(sends.InFlight(id=p.row.id, gen=p.row.claim_gen, template_id=p.template.id,
                                              template_version=p.template.version, message_id=mid,
                                              language=p.template.language))
    return chunk


def _sort_results(ctx: Context, chunk: Chunk, results: list[SendResult]) -> Results:
    out = Results(outcomes=[], untouched=[], hard_bounced=[], sender_fault=None)
    for (p, ip_id), result in zip(chunk.picked, results, strict=True):
        row = p.row
        if not result.transmitted:
            out.untouched.append((p, ip_id))
            continue
        common = {"id": row.id, "gen": row.claim_gen, "code": result.code or None,
                  "enhanced": result.enhanced or None, "detail": result.text[:500] or None}
        if result.outcome is Outcome.SENT:
            out.outcomes.append(sends.Outcome(status=SendStatus.INJECTED, **common))
            out.final.append((ip_id, 1, 0))
            continue
        if not result.code:
            out.in_doubt += 1
        else:
            out.refusals.append((ip_id, p.provider, f"{result.code} {result.enhanced} {result.text}"))
        found = policy.classify(result.code, result.enhanced, result.text)
        if result.outcome is Outcome.HARD:
            out.outcomes.append(sends.Outcome(status=SendStatus.FAILED, category=found.category, **common))
            out.final.append((ip_id, 1, int(found.bounce_class is BounceClass.HARD)))
            if found.bounce_class is BounceClass.HARD and row.email:
                out.hard_bounced.append(row.email)
            elif found.bounce_class is BounceClass.SENDER and out.sender_fault is None:
                out.sender_fault = (f"the server refused the sender: {result.code} {result.enhanced} "
                                    f"{result.text}".replace("  ", " ").strip())
            continue
        delay = ctx.retry_delay(row.attempts + 1)
        if delay is None:
            out.outcomes.append(sends.Outcome(status=SendStatus.FAILED, category=found.category,
                                              **{**common, "detail": f"retries exhausted: {result.text}"[:500]}))
            out.final.append((ip_id, 1, 0))
            continue
        out.outcomes.append(sends.Outcome(status=SendStatus.DEFERRED, category=found.category,
                                          next_attempt_at=ctx.clock() + dt.timedelta(seconds=delay), **common))
    return out
