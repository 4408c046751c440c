"""Contact jobs: validate a batch, run a CSV import."""

from __future__ import annotations

import logging

from engine import contact_validation, imports
from engine.validation import make_resolver

log = logging.getLogger(__name__)

VALIDATE_JOB = "validate_contacts"
IMPORT_JOB = "import_contacts"


async def on_startup(ctx: dict) -> None:
    # One resolver per worker: its per-domain cache then serves every batch, not just one.
    ctx["mx_resolver"] = make_resolver(ctx["settings"].dns_servers)


async def on_shutdown(ctx: dict) -> None:
    resolver = ctx.pop("mx_resolver", None)
    if resolver is not None:
        await resolver.close()


async def validate_contacts(ctx: dict, tenant_id: int, contact_ids: list[int]) -> dict:
    """Validate one ingested batch; contacts DNS could not judge come back later in a deferred job."""
    async with ctx["pool"].acquire() as db, db.transaction():
        run = await contact_validation.validate_contacts(db, tenant_id, contact_ids, resolver=ctx["mx_resolver"],
                                                         secret_key=ctx["secret_key"])
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

    await imports.run_import(ctx["pool"], import_id, on_batch=validate)


FUNCTIONS = [validate_contacts, import_contacts]
