"""Outbound notifications: alert messages to Telegram and webhook channels, integrators' event webhooks, and
the PowerMTA watch that raises `pmta_unreachable`.

Both run every few seconds and are cheap when there is nothing to do (one indexed query each). A failed
message or request is retried by the next runs after its backoff; a job that dies is re-run by arq.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import httpx
import msgspec
from arq import cron

from engine import alerts, events
from pmta import watch

log = logging.getLogger(__name__)

EVERY = set(range(0, 60, 5))  # seconds past each minute


async def on_startup(ctx: dict) -> None:
    # One client per worker: connections to the Bot API and to busy endpoints are kept alive between runs.
    ctx["http"] = httpx.AsyncClient(timeout=events.REQUEST_TIMEOUT, follow_redirects=False)


async def on_shutdown(ctx: dict) -> None:
    if "http" in ctx:
        await ctx["http"].aclose()


async def deliver_alerts(ctx: dict) -> dict[str, Any]:
    """Route new alert events to their channels, then send what is due."""
    now = dt.datetime.now(dt.UTC)
    async with ctx["pool"].acquire() as db, db.transaction():
        routed = await alerts.route(db, now)
    sent = await alerts.send_due(ctx["pool"], ctx["http"], ctx["secret_key"], ctx["settings"].telegram_api_url,
                                 now=now)
    if sent.failed:
        log.warning("alerts: %d message(s) given up after every retry", sent.failed)
    return {**msgspec.to_builtins(routed), **msgspec.to_builtins(sent)}


async def deliver_events(ctx: dict) -> dict[str, Any]:
    """One request to each event endpoint that has something due."""
    report = await events.deliver_due(ctx["pool"], ctx["http"], ctx["secret_key"], now=dt.datetime.now(dt.UTC))
    if report.disabled:
        log.warning("event webhooks: %d endpoint(s) turned off after failing for a day", report.disabled)
    return msgspec.to_builtins(report)


async def watch_pmta(ctx: dict) -> str:
    """Probe PowerMTA's injection listener; unreachable for EMAIL_ENGINE_PMTA_UNREACHABLE_MINUTES alerts."""
    settings = ctx["settings"]
    return await watch.watch(ctx["pool"], ctx["redis_client"], settings.redis_namespace,
                             settings.pmta_host or "127.0.0.1", settings.pmta_port,
                             minutes=settings.pmta_unreachable_minutes, now=time.time())


def cron_jobs(settings: Any) -> list:
    # unique: one run of each at a time; several workers still share the rows through SKIP LOCKED.
    jobs = [cron(deliver_alerts, second=EVERY, unique=True, run_at_startup=True, timeout=300),
            cron(deliver_events, second=EVERY, unique=True, run_at_startup=True, timeout=300)]
    if settings.pmta_host is not None:   # without it `up` runs the stand-in, whose outages are its own
        jobs.append(cron(watch_pmta, second=30, unique=True, timeout=60))
    return jobs


FUNCTIONS = [deliver_alerts, deliver_events, watch_pmta]
