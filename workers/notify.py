"""Outbound notifications: alert messages to Telegram and webhook channels, integrators' event webhooks, and
the PowerMTA watch that raises `pmta_unreachable`.

Each worker runs them in a background loop (like the campaign supervisor) rather than as crons: every few
seconds is what alerts and webhooks need, and a cron that often would fill Redis with job results. The loop
is cheap when there is nothing to do (one indexed query each); several workers share the rows through SKIP
LOCKED. A failed message or request is retried by later rounds after its backoff. The same steps are jobs too,
for a run on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

import httpx
import msgspec

from engine import alerts, events
from pmta import watch

log = logging.getLogger(__name__)

EVERY = 5.0             # seconds between delivery rounds
WATCH_EVERY = 60.0      # seconds between PowerMTA probes


async def on_startup(ctx: dict) -> None:
    # One client per worker: connections to the Bot API and to busy endpoints are kept alive between rounds.
    ctx["http"] = httpx.AsyncClient(timeout=events.REQUEST_TIMEOUT, follow_redirects=False)
    stop = asyncio.Event()
    ctx["notify"] = {"stop": stop, "task": asyncio.create_task(_loop(ctx, stop), name="notifier")}


async def on_shutdown(ctx: dict) -> None:
    state = ctx.get("notify")
    if state:
        state["stop"].set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(state["task"], 30)
    if "http" in ctx:
        await ctx["http"].aclose()


async def _loop(ctx: dict, stop: asyncio.Event) -> None:
    last_watch = -WATCH_EVERY
    while not stop.is_set():
        steps = [deliver_alerts, deliver_events]
        if ctx["settings"].pmta_host is not None and time.monotonic() - last_watch >= WATCH_EVERY:
            # Without EMAIL_ENGINE_PMTA_HOST, `up` runs the stand-in, whose outages are its own.
            last_watch = time.monotonic()
            steps.append(watch_pmta)
        for step in steps:
            try:
                await step(ctx)
            except Exception:   # a store down, a bug: the next round tries again
                log.exception("%s failed; trying again in %.0f s", step.__name__, EVERY)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY)


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


FUNCTIONS = [deliver_alerts, deliver_events, watch_pmta]
