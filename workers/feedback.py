"""Feedback jobs: PowerMTA's accounting files, read every minute from the directory it writes them to."""

from __future__ import annotations

import logging
from typing import Any

from arq import cron

from pmta import accounting

log = logging.getLogger(__name__)


async def ingest_accounting(ctx: dict) -> dict[str, Any]:
    """Apply what is new in every accounting file of `settings.pmta_accounting_dir`; totals of this run."""
    directory = ctx["settings"].pmta_accounting_dir
    if directory is None:
        return {"files": 0}
    if not directory.is_dir():
        log.warning("PowerMTA accounting directory %s does not exist", directory)
        return {"files": 0}
    reports = await accounting.ingest_directory(ctx["pool"], directory)
    totals: dict[str, Any] = {"files": len(reports), "malformed": sum(len(r.malformed) for r in reports)}
    for report in reports:
        for field in report.feedback.__struct_fields__:
            totals[field] = totals.get(field, 0) + getattr(report.feedback, field)
        for line in report.malformed[:20]:
            log.warning("accounting file %s line %s: %s", report.name, line.line, line.reason)
    if reports:
        log.info("accounting: %s", totals)
    return totals


def cron_jobs(settings: Any) -> list:
    # Every minute (arq's default second=0): PowerMTA rotates files every `move-interval` (5 min in the
    # reference's example), so new records wait a minute at most. unique: one run at a time across workers.
    if settings.pmta_accounting_dir is None:
        return []
    return [cron(ingest_accounting, unique=True, run_at_startup=True)]


FUNCTIONS = [ingest_accounting]
