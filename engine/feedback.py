"""Feedback from the MTA: delivery, bounce and complaint records applied to the send log and suppression list."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

import asyncpg
import msgspec

from engine import arf, complaints, events, health, suppression
from engine.providers import provider_for_mx
from engine.sending import backoff, policy
from engine.sending.policy import BounceClass
from engine.validation import normalise_email
from sql import q

# What a bounce means for the contact is the send policy's bounce table (engine/sending/bounces.toml), the
# same one dispatch reads at injection: hard suppresses at once; soft counts toward SOFT_BOUNCE_LIMIT bounces
# in a row (a delivery in between starts the count again); sender and policy are the sender's or the
# reputation's problem, not the contact's: the send is bounced (the warmup counts it per IP), the address
# stays mailable.
# pmtabounce disables an address after 5 soft bounces (powermta.md §10.1).
SOFT_BOUNCE_LIMIT = 5
SOFT_CATEGORIES = policy.categories_of(BounceClass.SOFT)
# ARF Feedback-Types that are not a recipient's complaint (engine.arf); everything else is, including an
# empty type (JMRP and AOL's SComp reports often carry none).
NOT_COMPLAINTS = arf.NOT_COMPLAINTS

# Which send statuses each record may move a row from. A delivery never overwrites a bounce; a bounce may
# follow a delivery (remote bounces, `rb`, arrive after the receiving MTA accepted the message). 'sending'
# is included: after a worker crash the row is ambiguous, and the MTA's record settles it.
DELIVERABLE = ("sending", "injected", "deferred")
BOUNCEABLE = ("sending", "injected", "deferred", "delivered")
# Rows that really went out: only their bounces and complaints may suppress an address.
SENT = complaints.SENT

DETAIL_MAX = 1000
_BOUNCE_ADDRESS = re.compile(r"^bounce-(\d{1,18})@", re.IGNORECASE)
_SMTP_CODE = re.compile(r"(?:^|;)\s*([2-5]\d\d)\b")
SOURCE = "pmta-accounting"


class Record(Protocol):
    """The fields of an accounting record this module reads (pmta.accounting.AccountingRecord has them)."""

    type: str
    time_logged: dt.datetime | None
    orig: str
    rcpt: str
    dsn_action: str
    dsn_status: str
    dsn_diag: str
    bounce_cat: str
    job_id: str
    envid: str
    feedback_type: str
    extra: Mapping[str, str]


class FeedbackReport(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of one application; re-applying the same records changes nothing and counts them `unchanged`."""

    records: int = 0
    delivered: int = 0          # rows that became delivered
    bounced: int = 0            # rows that became bounced
    complaints: int = 0         # rows that got complained_at
    transient: int = 0          # injected rows whose last deferral reason was recorded
    suppressed: int = 0         # suppression entries added or upgraded (hard bounces, soft limit, complaints)
    unchanged: int = 0          # matched a send row but changed nothing (seen before, or the row is final)
    unmatched: int = 0          # no send id in the record, or no such send row
    mismatched: int = 0         # the send row's recipient or campaign differs from the record's: not ours
    ignored: int = 0            # record types with no consequence (tq, r, delayed rs, not-spam reports)

    def plus(self, other: FeedbackReport) -> FeedbackReport:
        return FeedbackReport(**{f: getattr(self, f) + getattr(other, f) for f in self.__struct_fields__})


class AccountingFile(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int
    bytes_applied: int
    lines_applied: int
    header: str | None
    applied_at: dt.datetime | None


def send_id(record: Record) -> int | None:
    """The send row a record is about: ENVID (MAIL FROM, or x-envid, which PowerMTA removes), else the
    X-Envelope-Id header of messages sent before it moved to x-envid, else the VERP bounce address."""
    header = next((v for k, v in record.extra.items() if k.lower() == "header_x-envelope-id"), "")
    for candidate in (record.envid.strip(), header.strip()):
        if candidate.isdigit() and len(candidate) <= 18:
            return int(candidate)
    match = _BOUNCE_ADDRESS.match(record.orig.strip())
    return int(match.group(1)) if match else None


def classified(record: Record) -> policy.Classified:
    """The record's bounce class and category, by the send policy's table."""
    code, enhanced, _ = _outcome(record)
    found = policy.classify(code or 0, enhanced, record.dsn_diag, record.bounce_cat)
    return found if found.category else policy.Classified(bounce_class=found.bounce_class, category="other")


def _outcome(record: Record) -> tuple[int | None, str, str]:
    """(SMTP code, enhanced status, detail) as the send log stores them."""
    match = _SMTP_CODE.search(record.dsn_diag)
    return (int(match.group(1)) if match else None, record.dsn_status.split(" ", 1)[0] or "",
            record.dsn_diag[:DETAIL_MAX])


def _action(record: Record) -> str:
    """delivered | bounced | transient | complaint | ignored."""
    kind = record.type
    if kind == "d":
        return "delivered"
    if kind in ("b", "rb"):
        return "bounced"
    if kind == "rs":
        action = record.dsn_action.lower()
        return "delivered" if action in ("delivered", "relayed", "expanded") else (
            "bounced" if action == "failed" else "ignored")
    if kind == "t":
        return "transient"
    if kind == "f":
        return "ignored" if record.feedback_type.lower() in NOT_COMPLAINTS else "complaint"
    return "ignored"


def _ours(record: Record, row: asyncpg.Record) -> bool:
    """The record names the row's campaign and recipient, when it names them at all."""
    if record.job_id and record.job_id.strip() != str(row["campaign_id"]):
        return False
    if record.rcpt and row["email"] is not None:
        rcpt = normalise_email(record.rcpt) or record.rcpt.strip().lower()
        if rcpt != row["email"]:
            return False
    return True


async def apply_records(db: asyncpg.Connection, records: Sequence[Record]) -> FeedbackReport:
    """Apply one batch set-based: a read of the send rows, one UPDATE per outcome, one upsert per tenant."""
    if not records:
        return FeedbackReport()
    ids = [(r, send_id(r)) for r in records]
    rows = {row["id"]: row for row in await db.fetch(q("feedback-send-rows"), list({i for _, i in ids if i}))}
    # The last record of a kind per row wins (file order is time order).
    chosen: dict[str, dict[int, Record]] = defaultdict(dict)
    unmatched = mismatched = ignored = 0
    for record, sid in ids:
        action = _action(record)
        row = rows.get(sid) if sid is not None else None
        if action == "ignored":
            ignored += 1
        elif row is None:
            unmatched += 1
        elif not _ours(record, row):
            mismatched += 1
        else:
            chosen[action][sid] = record
    # Each bounce classified once: its category goes on the row, its class decides the suppression.
    bounces = {sid: classified(record) for sid, record in chosen["bounced"].items()}
    delivered = await _mark(db, "feedback-mark-delivered", chosen["delivered"])
    bounced_rows = await _mark(db, "feedback-mark-bounced", chosen["bounced"],
                               categories=[b.category for b in bounces.values()])
    transient = await _mark(db, "feedback-mark-transient", chosen["transient"])
    # A complaint is recorded by the one function every complaint path calls (engine.complaints), which also
    # writes its integrator event.
    recorded = await complaints.record_complaints(
        db, [_complained_row(rows[sid]) for sid in chosen["complaint"]],
        [r.time_logged for r in chosen["complaint"].values()], source=SOURCE,
        feedback_types=[r.feedback_type or None for r in chosen["complaint"].values()])
    complained = recorded.complained
    suppressed = await _suppress(db, rows, chosen, bounces) + recorded.suppressed
    await _count_hard(db, rows, {r["id"] for r in bounced_rows}, bounces, chosen["bounced"])
    await _observe_deferrals(db, rows, chosen["transient"])
    wanted = await events.wanted(db, [r["tenant_id"] for r in rows.values()])
    if wanted:
        await events.emit_many(db, _events(rows, chosen, bounces, wanted, delivered=delivered, bounced=bounced_rows,
                                           transient=transient))
    changed = len(delivered) + len(bounced_rows) + len(transient) + len(complained)
    matched_records = len(records) - unmatched - mismatched - ignored
    return FeedbackReport(records=len(records), delivered=len(delivered), bounced=len(bounced_rows),
                          complaints=len(complained), transient=len(transient), suppressed=suppressed,
                          unchanged=max(matched_records - changed, 0), unmatched=unmatched,
                          mismatched=mismatched, ignored=ignored)


def _events(rows: Mapping[int, asyncpg.Record], chosen: Mapping[str, dict[int, Record]],
            bounces: Mapping[int, policy.Classified], wanted: set[tuple[int, str]],
            **changed: list[asyncpg.Record]) -> list[events.Event]:
    """The integrator events (of the types endpoints want) of the rows this batch changed, per kind."""
    found = []
    for kind, event_type in (("delivered", "delivered"), ("bounced", "bounced"), ("transient", "deferred")):
        for sid in (r["id"] for r in changed[kind]):
            row = rows[sid]
            if (row["tenant_id"], event_type) not in wanted:
                continue
            record = chosen[kind][sid]
            code, enhanced, detail = _outcome(record)
            data = {"send_id": sid, "campaign_id": row["campaign_id"], "email": row["email"],
                    "at": record.time_logged, "smtp_code": code, "smtp_status": enhanced or None,
                    "detail": detail or None}
            if kind == "bounced":
                data.update(bounce_class=bounces[sid].bounce_class.value, category=bounces[sid].category)
            found.append(events.Event(tenant_id=row["tenant_id"], type=event_type, contact_id=row["contact_id"],
                                      data=data))
    return found


async def _mark(db: asyncpg.Connection, query: str, chosen: dict[int, Record], *,
                categories: list[str] | None = None) -> list[asyncpg.Record]:
    if not chosen:
        return []
    outcomes = [_outcome(r) for r in chosen.values()]
    args = [list(chosen), [r.time_logged for r in chosen.values()], [o[0] for o in outcomes],
            [o[1] for o in outcomes], [o[2] for o in outcomes]]
    if categories is not None:
        args.append(categories)
    return await db.fetch(q(query), *args)


def _complained_row(row: asyncpg.Record) -> complaints.ComplainedRow:
    return complaints.ComplainedRow(id=row["id"], tenant_id=row["tenant_id"], campaign_id=row["campaign_id"],
                                    contact_id=row["contact_id"], ip_id=row["ip_id"], status=row["status"], email=row["email"])


async def _count_hard(db: asyncpg.Connection, rows: Mapping[int, asyncpg.Record], bounced: set[int],
                      bounces: Mapping[int, policy.Classified], records: Mapping[int, Record]) -> None:
    """Hard bounces PowerMTA reports after accepting the message count on the campaign, IP and domain
    (their result was counted at injection); a sender-class bounce pauses its campaign at once."""
    by_tenant: dict[int, list[tuple[int, int | None, int, int, int]]] = defaultdict(list)
    sender: dict[int, tuple[int, str]] = {}
    for sid in sorted(bounced):
        row = rows[sid]
        if bounces[sid].bounce_class is BounceClass.HARD:
            by_tenant[row["tenant_id"]].append((row["campaign_id"], row["ip_id"], 0, 1, 0))
        elif bounces[sid].bounce_class is BounceClass.SENDER and row["campaign_id"] not in sender:
            record = records[sid]
            sender[row["campaign_id"]] = (row["tenant_id"], f"PowerMTA bounced a message for the sender's fault: "
                                                             f"{record.dsn_status} {record.dsn_diag}".strip())
    for tenant_id, entries in by_tenant.items():
        await health.record(db, tenant_id, health.tallies(entries))
    for campaign_id, (tenant_id, reason) in sender.items():
        await health.pause_campaign(db, tenant_id, campaign_id, reason)


async def _observe_deferrals(db: asyncpg.Connection, rows: Mapping[int, asyncpg.Record],
                             transient: Mapping[int, Record]) -> None:
    """PowerMTA's deferrals (`t` records) feed the provider-aware backoff like the replies at injection."""
    by_tenant: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for sid, record in transient.items():
        row = rows[sid]
        if row["ip_id"] is not None:
            by_tenant[row["tenant_id"]].append((row["ip_id"], provider_for_mx(row["mx_host"]), record.dsn_diag))
    for tenant_id, seen in by_tenant.items():
        await backoff.observe(db, tenant_id, seen)


async def _suppress(db: asyncpg.Connection, rows: Mapping[int, asyncpg.Record],
                    chosen: Mapping[str, dict[int, Record]], bounces: Mapping[int, policy.Classified]) -> int:
    """Hard bounces suppress the contact's stored address in the send row's tenant."""
    hard: dict[int, list[str]] = defaultdict(list)
    soft: dict[int, list[int]] = defaultdict(list)
    for sid, found in bounces.items():
        row = rows[sid]
        if row["status"] not in SENT or row["email"] is None:
            continue
        bounce_class = found.bounce_class
        if bounce_class is BounceClass.HARD:
            hard[row["tenant_id"]].append(row["email"])
        elif bounce_class is BounceClass.SOFT:
            soft[row["tenant_id"]].append(row["contact_id"])
    for tenant_id, contact_ids in soft.items():
        worn = await db.fetch(q("feedback-soft-bounced-contacts"), tenant_id, contact_ids, SOFT_CATEGORIES,
                              SOFT_BOUNCE_LIMIT)
        hard[tenant_id].extend(r["email"] for r in worn)
    total = 0
    for tenant_id, emails in hard.items():
        report = await suppression.add_suppressions(db, tenant_id, emails, reason="hard_bounce", source=SOURCE)
        total += report.added + report.upgraded
    return total


async def accounting_file(db: asyncpg.Connection, name: str) -> AccountingFile:
    """How far a file has been applied (nothing yet: offset 0)."""
    row = await db.fetchrow(q("feedback-get-accounting-file"), name)
    if row is None:
        return AccountingFile(name=name, size=0, bytes_applied=0, lines_applied=0, header=None, applied_at=None)
    return AccountingFile(**row)


async def save_accounting_file(db: asyncpg.Connection, name: str, *, size: int, bytes_applied: int,
                               lines_applied: int, header: str | None) -> None:
    await db.execute(q("feedback-save-accounting-file"), name, size, bytes_applied, lines_applied, header)


async def list_accounting_files(db: asyncpg.Connection, limit: int = 100) -> list[AccountingFile]:
    return [AccountingFile(**r) for r in await db.fetch(q("feedback-list-accounting-files"), limit)]
