"""MailWizz jobs: push valid contacts as subscribers, run `mailwizz` campaigns through MailWizz, and pull back
who unsubscribed there (hourly cron).

The push and the campaigns also run on their own in every worker, from a poller started at startup (like the PowerMTA campaign
supervisor) rather than as arq crons: a 5-second cron would enqueue a job 17,000 times a day and show up in
every burst worker's job counts. Concurrent workers are safe: the outbox is taken with SKIP LOCKED and each
campaign pass holds a PostgreSQL advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from arq import Retry, cron

from engine.mailwizz import campaigns as mailwizz_campaigns
from engine.mailwizz import sync as mailwizz_sync
from engine.mailwizz.wire import MailWizzError, MailWizzUnavailable
from sql import q
from workers.campaigns import expediter

log = logging.getLogger(__name__)

CAMPAIGN_POLL_EVERY = 5.0   # seconds between campaign passes: MailWizz sends in its own cron, minutes apart
OUTBOX_FLUSH_EVERY = 60.0   # the validation job fills the outbox; a minute of delay is invisible to a tenant
# Without a Retry-After: 1, 2, 4 ... minutes, at most 30 (MailWizz publishes no rate-limit figures).
RETRY_FIRST, RETRY_MAX = 60, 1800


def retry_delay(exc: MailWizzUnavailable, job_try: int) -> float:
    """The server's Retry-After when it gave one, else exponential minutes."""
    if exc.retry_after is not None:
        return max(1.0, exc.retry_after)
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, job_try - 1)))


async def push_contacts_to_mailwizz(ctx: dict, tenant_id: int) -> dict:
    """Drain the tenant's MailWizz outbox; MailWizz down leaves the rows and retries after its Retry-After."""
    pool = ctx["pool"]
    install = await mailwizz_sync.get_install(pool, tenant_id)
    client = None if install is None or not install.list_uid else mailwizz_sync.make_client(
        install, ctx["secret_key"], ctx.get("mailwizz_http"))
    if install is None or client is None:
        log.warning("tenant %s: outbox kept, no usable MailWizz install (API key and list_uid)", tenant_id)
        return {"skipped": "no usable MailWizz install"}
    async with mailwizz_sync.try_lock(pool, f"mailwizz-push:{tenant_id}") as got:
        if not got:
            return {"skipped": "another worker is pushing this tenant"}
        try:
            async with client:
                report = await mailwizz_sync.push_outbox(pool, client, install)
        except MailWizzUnavailable as exc:
            raise Retry(defer=retry_delay(exc, ctx.get("job_try", 1))) from exc
    log.info("tenant %s: MailWizz push %s", tenant_id, report)
    return {"tenant_id": tenant_id, **{k: getattr(report, k) for k in report.__struct_fields__}}


async def flush_mailwizz_outbox(ctx: dict) -> dict:
    """Push every tenant's waiting contacts; a tenant whose MailWizz is down waits out its Retry-After."""
    not_before: dict[int, float] = ctx.setdefault("mailwizz_not_before", {})
    done: dict[int, Any] = {}
    for row in await ctx["pool"].fetch(q("mailwizz-outbox-tenants")):
        tenant_id = row["tenant_id"]
        if not_before.get(tenant_id, 0.0) > time.monotonic():
            continue
        try:
            done[tenant_id] = await push_contacts_to_mailwizz(ctx, tenant_id)
        except Retry as retry:
            cause = retry.__cause__
            delay = retry_delay(cause, 1) if isinstance(cause, MailWizzUnavailable) else RETRY_FIRST
            not_before[tenant_id] = time.monotonic() + delay
            log.warning("tenant %s: MailWizz unavailable, outbox kept; next try in %.0f s", tenant_id, delay)
            done[tenant_id] = {"retry_in": delay}
        except MailWizzError as exc:   # bad key, unknown list: the operator must fix the install
            log.error("tenant %s: MailWizz push failed: %s", tenant_id, exc)
            done[tenant_id] = {"error": str(exc)}
    return done


def _expedite(ctx: dict) -> mailwizz_campaigns.Expedite | None:
    """Contacts a campaign waits for are validated ahead of the queue, as on the PowerMTA path."""
    settings, redis = ctx.get("settings"), ctx.get("redis")
    if settings is None or redis is None:
        return None
    return expediter(redis, settings.queue_name)


async def run_mailwizz_campaigns(ctx: dict) -> dict:
    """One pass over every MailWizz campaign that is going, or whose pause/cancel MailWizz has not seen."""
    out: dict[int, str] = {}
    expedite = _expedite(ctx)
    for row in await ctx["pool"].fetch(q("mwc-active-campaigns")):
        try:
            out[row["id"]] = await mailwizz_campaigns.run_campaign(ctx["pool"], ctx["secret_key"], row["id"],
                                                                   http=ctx.get("mailwizz_http"),
                                                                   expedite=expedite)
        except MailWizzError as exc:   # the next pass retries; groups already created are not created again
            log.warning("campaign %s: MailWizz: %s", row["id"], exc)
            out[row["id"]] = f"error: {exc}"
    return out


async def pull_mailwizz_unsubscribes(ctx: dict) -> dict:
    """Suppress, per tenant, whoever unsubscribed or was blacklisted in its MailWizz list since the last pull."""
    done: dict[int, Any] = {}
    for row in await ctx["pool"].fetch(q("mailwizz-list-tenants")):
        tenant_id = row["tenant_id"]
        install = await mailwizz_sync.get_install(ctx["pool"], tenant_id)
        client = None if install is None else mailwizz_sync.make_client(install, ctx["secret_key"],
                                                                         ctx.get("mailwizz_http"))
        if install is None or client is None:
            continue
        try:
            async with client:
                done[tenant_id] = await mailwizz_sync.pull_unsubscribes(ctx["pool"], client, install)
        except MailWizzError as exc:   # down, or a key or list to fix: the next hour tries again
            log.warning("tenant %s: MailWizz unsubscribe pull failed: %s", tenant_id, exc)
            done[tenant_id] = f"error: {exc}"
    if any(isinstance(n, int) and n for n in done.values()):
        log.info("MailWizz unsubscribes pulled: %s", done)
    return done


async def _every(seconds: float, job: Any, ctx: dict) -> None:
    while True:
        await asyncio.sleep(seconds)   # sleep first: a short-lived (burst) worker does not poll at all
        try:
            await job(ctx)
        except Exception:
            log.exception("%s failed; next run in %.0f s", job.__name__, seconds)


async def on_startup(ctx: dict) -> None:
    ctx["mailwizz_tasks"] = [
        asyncio.create_task(_every(CAMPAIGN_POLL_EVERY, run_mailwizz_campaigns, ctx), name="mailwizz-campaigns"),
        asyncio.create_task(_every(OUTBOX_FLUSH_EVERY, flush_mailwizz_outbox, ctx), name="mailwizz-outbox"),
    ]


async def on_shutdown(ctx: dict) -> None:
    for task in ctx.pop("mailwizz_tasks", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cron_jobs(settings: Any) -> list:
    # Hourly, off the hour: the pull walks whole lists, and an unsubscribe in MailWizz already stops MailWizz.
    return [cron(pull_mailwizz_unsubscribes, minute=23, unique=True, run_at_startup=False)]


FUNCTIONS = [push_contacts_to_mailwizz, flush_mailwizz_outbox, run_mailwizz_campaigns, pull_mailwizz_unsubscribes]
