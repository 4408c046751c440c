"""Contact jobs: validate a batch, run a CSV import, and sweep up pending contacts that no job will see."""

from __future__ import annotations

import asyncio
import logging

from arq import Retry, cron

from engine import contact_validation, imports
from engine.faults import STORE_FAULTS
from engine.validation import make_resolver

log = logging.getLogger(__name__)

VALIDATE_JOB = "validate_contacts"
IMPORT_JOB = "import_contacts"
SWEEP_BATCH = 1000
# Validation batches one worker process writes at once. Each is one set-based transaction that keeps a
# database core busy; an import of a million rows queues two hundred of them, and running sixteen side by
# side (arq's job slots) only made them fight over two cores and hold sixteen batches in memory.
VALIDATIONS_AT_ONCE = 2


def store_fault_retry(ctx: dict, exc: BaseException) -> Retry:
    """A store restarting: the job runs again, which is safe (an import resumes after the rows it committed,
    validation takes only the contacts still pending). After 5 s, doubling per try up to 5 minutes; arq gives
    up after the worker's max_tries."""
    delay = min(300, 5 * 2 ** max(0, ctx.get("job_try", 1) - 1))
    log.warning("store unavailable (%s); job retried in %s s", exc.__class__.__name__, delay)
    return Retry(defer=delay)


async def on_startup(ctx: dict) -> None:
    # One resolver per worker: its per-domain cache then serves every batch, not just one.
    ctx["mx_resolver"] = make_resolver(ctx["settings"].dns_servers)
    ctx["validation_slots"] = asyncio.Semaphore(VALIDATIONS_AT_ONCE)


async def on_shutdown(ctx: dict) -> None:
    resolver = ctx.pop("mx_resolver", None)
    if resolver is not None:
        await resolver.close()


async def validate_contacts(ctx: dict, tenant_id: int, contact_ids: list[int]) -> dict:
    """Validate one ingested batch; contacts DNS could not judge come back later in a deferred job."""
    try:
        async with ctx["validation_slots"], ctx["pool"].acquire() as db, db.transaction():
            run = await contact_validation.validate_contacts(db, tenant_id, contact_ids,
                                                             resolver=ctx["mx_resolver"], secret_key=ctx["secret_key"])
    except STORE_FAULTS as exc:
        raise store_fault_retry(ctx, exc) from exc
    if run.retry_ids:
        await ctx["redis"].enqueue_job(VALIDATE_JOB, tenant_id, run.retry_ids, _defer_by=run.retry_in,
                                       _queue_name=ctx["settings"].queue_name)
    if run.mailwizz and run.valid:
        log.info("tenant %s: %d contacts queued in mailwizz_outbox for %s", tenant_id, len(run.valid),
                 contact_validation.MAILWIZZ_PUSH_JOB)
    return {"valid": len(run.valid), "risky": len(run.risky), "invalid": len(run.invalid),
            "retry": len(run.retry_ids), "retry_in": run.retry_in}


async def import_contacts(ctx: dict, import_id: int) -> None:
    """Ingest a stored CSV upload, enqueueing one validation job per batch."""

    async def validate(tenant_id: int, ids: list[int]) -> None:
        await ctx["redis"].enqueue_job(VALIDATE_JOB, tenant_id, ids, _queue_name=ctx["settings"].queue_name)

    try:
        await imports.run_import(ctx["pool"], import_id, on_batch=validate)
    except STORE_FAULTS as exc:
        raise store_fault_retry(ctx, exc) from exc


async def sweep_pending_contacts(ctx: dict) -> dict:
    """Enqueue validation again for pending contacts whose job was lost or whose DNS retries ran out.

    Job ids name the batch, so a batch still queued from the last sweep is not queued twice; a contact in
    two jobs is validated once, since the job only takes contacts still pending.
    """
    async with ctx["pool"].acquire() as db:
        stale = await contact_validation.stale_pending(db)
    queue = ctx["settings"].queue_name
    contacts = jobs = 0
    for tenant_id, ids in stale.items():
        for start in range(0, len(ids), SWEEP_BATCH):
            batch = ids[start:start + SWEEP_BATCH]
            # arq's job keys are global: the queue's name keeps two engines sharing a Redis apart
            job_id = f"{queue}:revalidate:{tenant_id}:{batch[0]}:{batch[-1]}"
            job = await ctx["redis"].enqueue_job(VALIDATE_JOB, tenant_id, batch, _queue_name=queue, _job_id=job_id)
            contacts += len(batch)
            jobs += job is not None
    if contacts:
        log.info("validation sweep: %d pending contacts found without a job, %d jobs enqueued", contacts, jobs)
    return {"contacts": contacts, "jobs": jobs}


def cron_jobs(settings: object) -> list:
    # Every ten minutes; unique: one sweep at a time across workers.
    return [cron(sweep_pending_contacts, minute=set(range(0, 60, 10)), unique=True, run_at_startup=False)]


FUNCTIONS = [validate_contacts, import_contacts, sweep_pending_contacts]
