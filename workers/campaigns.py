"""Campaign sending in the worker: a supervisor that runs every active campaign, and the SMTP injector.

Each worker process runs one sending loop per active campaign; loops on different workers share a campaign's
rows through `FOR UPDATE SKIP LOCKED`. A heartbeat row per worker in PostgreSQL (`workers`) tells the others
which claims belong to a dead worker, so its rows are requeued (and its in-flight chunk counted) without
waiting; PostgreSQL rather than Redis, so that a Redis restart makes nobody look dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from typing import Any

from engine import db as dbm
from engine import logs
from engine.sending import dispatch, sends
from engine.sending.rotation import Rotator
from sql import q
from workers.contacts import VALIDATE_JOB

log = logging.getLogger(__name__)

SUPERVISE_EVERY = 0.5
# A validation moved to the front of the queue sorts before every job of the last day; its key lives an hour.
EXPEDITE_AHEAD = dt.timedelta(days=1)
EXPEDITE_EXPIRES = dt.timedelta(hours=1)


def expediter(arq: Any, queue: str) -> dispatch.Expedite:
    """Validation of contacts a campaign waits for, enqueued ahead of the queue (arq runs jobs by score)."""

    async def expedite(tenant_id: int, contact_ids: list[int]) -> None:
        ids = sorted(set(contact_ids))
        # One job per batch of waiting contacts and minute: a batch looked at again is not queued twice.
        minute = int(dt.datetime.now(dt.UTC).timestamp() // 60)
        await arq.enqueue_job(VALIDATE_JOB, tenant_id, ids, _queue_name=queue,
                              _job_id=f"{queue}:expedite:{tenant_id}:{ids[0]}:{ids[-1]}:{minute}",
                              _defer_until=dt.datetime.now(dt.UTC) - EXPEDITE_AHEAD, _expires=EXPEDITE_EXPIRES)

    return expedite


def make_transport(settings: Any) -> Any:
    from pmta.inject import Injector

    return Injector(settings.pmta_host or "127.0.0.1", settings.pmta_port, pool_size=settings.pmta_pool_size,
                    helo=socket.getfqdn() or "localhost")


async def on_startup(ctx: dict) -> None:
    settings = ctx["settings"]
    ns = settings.redis_namespace
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    redis = ctx["redis_client"]
    # The sending loop's own pool: it holds no session state (its advisory locks are per transaction), so its
    # connections go back without a reset round trip; the shared pool keeps the reset for the jobs that hold
    # session locks (MailWizz sync, accounting).
    pool = await dbm.create_pool(settings.database_url, min_size=1, max_size=8, stateless=True)
    stop = asyncio.Event()
    transport = ctx.get("transport") or make_transport(settings)
    # A worker unheard for `worker_timeout` is dead: its claims are recovered. It beats five times as often.
    ttl = float(settings.worker_timeout)
    run = dispatch.Context(
        pool=pool, redis=redis, namespace=ns, worker_id=worker_id, transport=transport, rotator=Rotator(ns),
        secret_key=ctx["secret_key"], public_url=settings.public_url,
        live_workers=lambda: sends.live_workers(pool, ttl),
        expedite_validation=expediter(ctx["redis"], settings.queue_name),
        **({"tuning": ctx["dispatch_tuning"]} if "dispatch_tuning" in ctx else {}),
        **({"retry_delay": ctx["retry_delay"]} if "retry_delay" in ctx else {}),
        **({"clock": ctx["clock"]} if "clock" in ctx else {}),
    )
    await sends.heartbeat(pool, worker_id)
    loops: dict[int, asyncio.Task] = {}
    every = ttl / 5
    ctx["campaigns"] = {"stop": stop, "run": run, "loops": loops, "transport": transport, "pool": pool,
                        "tasks": [asyncio.create_task(_heartbeat(run, stop, every), name="heartbeat"),
                                  asyncio.create_task(_supervise(run, stop, loops), name="campaign-supervisor")]}
    log.info("campaign sender %s ready (PowerMTA %s:%s)", worker_id, settings.pmta_host, settings.pmta_port)


async def on_shutdown(ctx: dict) -> None:
    state = ctx.get("campaigns")
    if not state:
        return
    state["stop"].set()
    for task in state["tasks"]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 30)
    run: dispatch.Context = state["run"]
    with contextlib.suppress(Exception):
        await run.rotator.close(run.redis)
        await sends.worker_gone(run.pool, run.worker_id)
    await state["transport"].close()
    await state["pool"].close()


async def _heartbeat(run: dispatch.Context, stop: asyncio.Event, every: float) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):  # PostgreSQL restarting: keep trying, claims are fenced meanwhile
            await sends.heartbeat(run.pool, run.worker_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def _supervise(run: dispatch.Context, stop: asyncio.Event, loops: dict[int, asyncio.Task]) -> None:
    """Keep one sending loop per active PowerMTA campaign in this worker."""
    while not stop.is_set():
        try:
            active = [r["id"] for r in await run.pool.fetch(q("active-campaigns"))
                      if r["transport"] == "pmta"]
            for campaign_id in active:
                task = loops.get(campaign_id)
                if task is None or task.done():
                    loops[campaign_id] = asyncio.create_task(_run(run, campaign_id, stop), name=f"campaign-{campaign_id}")
        except Exception:
            log.exception("campaign supervisor: will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUPERVISE_EVERY)
    await asyncio.gather(*loops.values(), return_exceptions=True)


async def _run(run: dispatch.Context, campaign_id: int, stop: asyncio.Event) -> None:
    logs.campaign_id.set(campaign_id)  # this task's own context: every line the loop logs names its campaign
    try:
        reason = await dispatch.run_campaign(run, campaign_id, stop=stop)
        log.info("campaign %s: sending loop ended (%s)", campaign_id, reason)
    except Exception:
        log.exception("campaign %s: sending loop failed; the supervisor restarts it", campaign_id)
        await asyncio.sleep(1)


FUNCTIONS: list = []
