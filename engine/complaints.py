"""Complaints: a recipient marked a message as spam. One function records one against its send row, whatever
brought it (an ARF or JMRP report posted or dropped in the watched directory, a PowerMTA accounting `f`
record): `record_complaints` sets the row's complained_at, suppresses the address (reason `complaint`) and
counts the complaint on the campaign, the IP and the sending domain, whose automatic pauses judge it.

Reports are kept whether matched or not (`complaint_reports`), so an operator can see the unmatched ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import asyncpg
import msgspec

from engine import arf, events, health, suppression
from engine.contacts import email_hash
from engine.errors import Invalid
from engine.validation import normalise_email
from sql import q

log = logging.getLogger(__name__)

# Rows that really went out: only a complaint about one of them suppresses its address.
SENT = ("sending", "injected", "deferred", "delivered", "bounced")
REPORT_MAX = 10 * 1024 * 1024     # a report carries at most the original message; providers cut them far shorter


class ComplainedRow(msgspec.Struct, frozen=True, kw_only=True):
    """A send row a complaint is about, with the contact's stored address."""

    id: int
    tenant_id: int
    campaign_id: int
    contact_id: int
    ip_id: int | None
    status: str
    email: str | None


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    complained: list[int]     # rows that got their first complaint now
    suppressed: int           # suppression entries added or upgraded
    paused: list[health.Paused]


async def record_complaints(db: asyncpg.Connection, rows: Sequence[ComplainedRow],
                            at: Sequence[dt.datetime | None], *, source: str,
                            feedback_types: Sequence[str | None] | None = None) -> Recorded:
    """Record complaints about these send rows (`at`: when each was reported, None: now; `feedback_types`:
    what each report called it, e.g. abuse), in the caller's transaction. A row complained about before is not counted again; its address is suppressed either way."""
    if not rows:
        return Recorded(complained=[], suppressed=0, paused=[])
    first = {r["id"] for r in await db.fetch(q("feedback-mark-complained"), [r.id for r in rows], list(at))}
    by_tenant: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row.status in SENT and row.email is not None:
            by_tenant[row.tenant_id].append(row.email)
    suppressed = 0
    for tenant_id, emails in by_tenant.items():
        report = await suppression.add_suppressions(db, tenant_id, emails, reason="complaint", source=source)
        suppressed += report.added + report.upgraded
    counted: dict[int, list[tuple[int, int | None, int, int, int]]] = defaultdict(list)
    for row in {r.id: r for r in rows if r.id in first}.values():
        counted[row.tenant_id].append((row.campaign_id, row.ip_id, 0, 0, 1))
    paused: list[health.Paused] = []
    for tenant_id, entries in counted.items():
        paused += await health.record(db, tenant_id, health.tallies(entries))
    kinds = feedback_types or [None] * len(rows)
    await _emit(db, [(r, when, kind) for r, when, kind in zip(rows, at, kinds, strict=True) if r.id in first],
                source)
    return Recorded(complained=sorted(first), suppressed=suppressed, paused=paused)


async def _emit(db: asyncpg.Connection, firsts: list[tuple[ComplainedRow, dt.datetime | None, str | None]],
                source: str) -> None:
    """The integrator's `complained` event of each first complaint, in the same transaction."""
    wanted = await events.wanted(db, [r.tenant_id for r, _, _ in firsts])
    await events.emit_many(db, [
        events.Event(tenant_id=r.tenant_id, type=events.EventType.COMPLAINED, contact_id=r.contact_id,
                     data={"send_id": r.id, "campaign_id": r.campaign_id, "email": r.email, "at": when,
                           "feedback_type": kind, "source": source})
        for r, when, kind in firsts if (r.tenant_id, events.EventType.COMPLAINED) in wanted])


# --- reports ------------------------------------------------------------------------------------------------

class ComplaintReport(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int | None
    send_id: int | None
    campaign_id: int | None
    ip_id: int | None
    matched_by: str | None
    source: Annotated[str, msgspec.Meta(examples=["api"])]
    format: Annotated[str, msgspec.Meta(examples=["arf"])]
    feedback_type: Annotated[str, msgspec.Meta(examples=["abuse"])]
    user_agent: str | None
    arrival_date: str | None
    source_ip: str | None
    original_rcpt: str | None
    message_id: str | None
    envelope_id: str | None
    x_job: str | None
    feedback_id: str | None
    created_at: dt.datetime


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one report did."""

    report_id: int
    matched: bool
    matched_by: str | None
    send_id: int | None
    campaign_id: int | None
    feedback_type: Annotated[str, msgspec.Meta(examples=["abuse"])]
    complaint: bool           # a complaint (not a not-spam or auth-failure report)
    duplicate: bool           # the same report was received before: nothing was counted again
    suppressed: int


def _campaign_named(report: arf.Report) -> int | None:
    """The campaign the original message names: X-Job, else the engine's Feedback-ID (campaign:tenant:email-engine)."""
    if report.x_job and report.x_job.isdigit() and len(report.x_job) <= 18:
        return int(report.x_job)
    parts = (report.feedback_id or "").split(":")
    if len(parts) == 3 and parts[0].isdigit() and len(parts[0]) <= 18 and parts[2] == "email-engine":
        return int(parts[0])
    return None


def _agrees(report: arf.Report, row: ComplainedRow) -> bool:
    """The row is the report's message: same campaign and recipient, where the report names them."""
    campaign = _campaign_named(report)
    if campaign is not None and campaign != row.campaign_id:
        return False
    rcpt = normalise_email(report.original_rcpt) if report.original_rcpt else None
    return not (rcpt and row.email and rcpt != row.email)


async def find_send(db: asyncpg.Connection, tenant_id: int | None,
                    report: arf.Report) -> tuple[ComplainedRow | None, str | None]:
    """The send row a report is about and what found it; only rows of `tenant_id` when one is given."""
    tries: list[tuple[str, str, tuple]] = []
    envelope = (report.envelope_id or "").strip()
    if envelope.isdigit() and len(envelope) <= 18:
        tries.append(("envelope-id", "complaints-send-by-id", (int(envelope), tenant_id)))
    if report.message_id:
        tries.append(("message-id", "complaints-send-by-message-id", (report.message_id.strip(), tenant_id)))
    rcpt = normalise_email(report.original_rcpt) if report.original_rcpt else None
    campaign = _campaign_named(report)
    if campaign is not None and rcpt:
        by = "x-job" if report.x_job and report.x_job.isdigit() else "feedback-id"
        tries.append((by, "complaints-send-by-campaign", (campaign, email_hash(rcpt), tenant_id)))
    for by, query, args in tries:
        found = await db.fetchrow(q(query), *args)
        if found is not None and _agrees(report, row := ComplainedRow(**found)):
            return row, by
    return None, None


async def ingest_report(db: asyncpg.Connection, data: bytes, *, content_type: str | None, tenant_id: int | None,
                        source: str) -> Outcome:
    """Parse, match, keep and apply one report in one transaction; Invalid (nothing written) when unreadable."""
    report = arf.parse(data, content_type)
    async with db.transaction():
        row, by = await find_send(db, tenant_id, report)
        owner = row.tenant_id if row is not None else tenant_id
        report_id = await db.fetchval(
            q("complaints-create-report"), owner, row.id if row else None, row.campaign_id if row else None,
            row.ip_id if row else None, by, source, report.format, report.feedback_type, report.user_agent,
            report.arrival_date, report.source_ip, report.original_rcpt, report.message_id, report.envelope_id,
            report.x_job, report.feedback_id, report.digest)
        if report_id is None:
            seen = await db.fetchrow(q("complaints-find-report"), owner, report.digest)
            return Outcome(report_id=seen["id"], matched=seen["send_id"] is not None, matched_by=seen["matched_by"],
                           send_id=seen["send_id"], campaign_id=seen["campaign_id"],
                           feedback_type=report.feedback_type, complaint=report.is_complaint, duplicate=True,
                           suppressed=0)
        suppressed = 0
        if row is not None and report.is_complaint:
            suppressed = (await record_complaints(db, [row], [None], source=f"arf-{source}",
                                                 feedback_types=[report.feedback_type])).suppressed
    return Outcome(report_id=report_id, matched=row is not None, matched_by=by, send_id=row.id if row else None,
                   campaign_id=row.campaign_id if row else None, feedback_type=report.feedback_type,
                   complaint=report.is_complaint, duplicate=False, suppressed=suppressed)


async def list_reports(db: asyncpg.Connection, tenant_id: int | None, *, matched: bool | None,
                       before: int | None, limit: int) -> list[ComplaintReport]:
    return [ComplaintReport(**r) for r in await db.fetch(q("complaints-list-reports"), tenant_id, matched, before,
                                                        limit)]


# --- the watched directory ------------------------------------------------------------------------------------

class DirectoryReport(msgspec.Struct, frozen=True, kw_only=True):
    read: int = 0
    matched: int = 0
    unmatched: int = 0
    duplicates: int = 0
    rejected: int = 0


def report_files(directory: Path) -> list[Path]:
    """The reports waiting: `*.eml` files in the directory, and a maildir's `new/` and `cur/` messages."""
    found = [p for p in directory.glob("*.eml") if p.is_file()]
    for sub in ("new", "cur"):
        if (directory / sub).is_dir():
            found += [p for p in (directory / sub).iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(found)


def _move(path: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target / path.name)


async def ingest_directory(pool: asyncpg.Pool, directory: Path) -> DirectoryReport:
    """Apply every report waiting in the FBL mailbox's directory, then move it to `processed/` (or to
    `rejected/` when it cannot be read): nothing is read twice, and a report applied but not yet moved when
    the worker stopped is recognised by its hash next time and not counted again."""
    counts = {"read": 0, "matched": 0, "unmatched": 0, "duplicates": 0, "rejected": 0}
    for path in report_files(directory):
        try:
            data = path.read_bytes()[:REPORT_MAX]
        except OSError as exc:
            log.warning("complaint report %s cannot be read: %s", path, exc)
            continue
        counts["read"] += 1
        try:
            async with pool.acquire() as db:
                outcome = await ingest_report(db, data, content_type=None, tenant_id=None, source="directory")
        except Invalid as exc:  # unreadable: set aside with the reason logged (a store outage stops the run)
            log.warning("complaint report %s rejected: %s", path, exc.message)
            counts["rejected"] += 1
            _move(path, directory / "rejected")
            continue
        counts["duplicates" if outcome.duplicate else "matched" if outcome.matched else "unmatched"] += 1
        _move(path, directory / "processed")
    return DirectoryReport(**counts)
