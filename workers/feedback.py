"""Feedback jobs: PowerMTA's accounting files and the FBL mailbox's complaint reports, each read every minute
from the directory they are written to."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from arq import cron

from engine import complaints
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


async def ingest_complaint_reports(ctx: dict) -> dict[str, Any]:
    """Apply every complaint report waiting in `settings.arf_dir`, each moved to processed/ (or rejected/)."""
    directory = ctx["settings"].arf_dir
    if directory is None or not directory.is_dir():
        if directory is not None:
            log.warning("complaint report directory %s does not exist", directory)
        return {"read": 0}
    report = await complaints.ingest_directory(ctx["pool"], directory)
    if report.read:
        log.info("complaint reports: %s", report)
    return msgspec.structs.asdict(report)


def cron_jobs(settings: Any) -> list:
    # Every minute (arq's default second=0): PowerMTA rotates files every `move-interval` (5 min in the
    # reference's example), so new records wait a minute at most. unique: one run at a time across workers.
    jobs = []
    if settings.pmta_accounting_dir is not None:
        jobs.append(cron(ingest_accounting, unique=True, run_at_startup=True))
    if settings.arf_dir is not None:
        jobs.append(cron(ingest_complaint_reports, unique=True, run_at_startup=True))
    return jobs


FUNCTIONS = [ingest_accounting, ingest_complaint_reports]
