"""Feedback pushed over HTTP: PowerMTA accounting files (the cron reads the same files from a directory) and
complaint reports (ARF, JMRP; the cron also reads them from the FBL mailbox's directory)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.openapi.spec import Example
from litestar.params import QueryParameter

from api.deps import Caller, Config, Db
from engine import complaints, feedback
from engine.complaints import ComplaintReport, Outcome
from engine.errors import Invalid
from engine.feedback import AccountingFile
from pmta import accounting
from pmta.accounting import IngestReport

# PowerMTA's own `max-size` default for an accounting file is 250M (powermta.md §9.6); leave room above it.
MAX_UPLOAD = 1024**3


def _uploads(home: Path) -> Path:
    path = home / "accounting"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@post("/feedback/pmta-accounting", operation_id="ingestPmtaAccounting", status_code=200,
      summary="Apply a PowerMTA accounting file", tags=["feedback"], request_max_body_size=MAX_UPLOAD,
      description="Admin only. The body is the raw CSV file (`text/csv`) as PowerMTA writes it, header line first "
                  "(columns are found by name). `d` records mark sends delivered; `b`/`rb` mark them bounced "
                  "(bad-mailbox, bad-domain and inactive-mailbox suppress the address at once, soft categories "
                  "after 5 bounces); `f` (feedback loop) sets complained_at and suppresses the address; `t` keeps "
                  "the last deferral reason. Records are matched by ENVID (the send id), else by the "
                  "`bounce-<send id>@` envelope sender. With `name` (PowerMTA's file name), the file is tracked "
                  "like the ones the cron reads: sending it again applies only what was not applied yet. "
                  "Applying the same records twice changes nothing.")
async def ingest_pmta_accounting(
    request: Request, state: State, caller: Caller, settings: Config,
    name: Annotated[str | None, QueryParameter(
        min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$", examples=[Example(value="acct-2024-05-01-0000.csv")],
        description="PowerMTA's name of the file: tracked, so sending it again applies only what is new")] = None,
) -> IngestReport:
    caller.require_admin()
    path = _uploads(settings.home) / f"{secrets.token_hex(12)}.csv"
    size = 0
    try:
        with path.open("wb") as sink:
            async for chunk in request.stream():
                await asyncio.to_thread(sink.write, chunk)
                size += len(chunk)
        if size == 0:
            raise Invalid("body: the accounting file is empty", field="body")
        return await accounting.ingest_file(state.pool, path, name=name, complete=True)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


@get("/feedback/pmta-accounting/files", operation_id="listPmtaAccountingFiles",
     summary="Accounting files applied so far", tags=["feedback"],
     description="Admin only. Each tracked file with how far it has been applied, most recent first.")
async def list_pmta_accounting_files(db: Db, caller: Caller,
                                     limit: Annotated[int, QueryParameter(ge=1, le=1000,
                                                                          examples=[Example(value=100)])] = 100) -> list[AccountingFile]:
    caller.require_admin()
    return await feedback.list_accounting_files(db, limit)


REPORT_TYPES = ("message/rfc822", "multipart/report")


@post("/feedback/arf", operation_id="ingestComplaintReport", status_code=200,
      summary="Apply a complaint report (ARF or JMRP)", tags=["feedback"], request_max_body_size=complaints.REPORT_MAX,
      description="The body is one report: the whole report message as `message/rfc822` (an ARF "
                  "`multipart/report; report-type=feedback-report` message, RFC 5965, or a Microsoft JMRP message "
                  "with the original attached), or the multipart body itself as `multipart/report` with its "
                  "boundary in Content-Type. The report is matched to its send row by the original message's "
                  "X-Envelope-Id (or Original-Envelope-Id), else its Message-ID, else its X-Job or Feedback-ID "
                  "with the recipient; a complaint then suppresses the address (reason `complaint`) and counts on "
                  "the campaign, the IP and the sending domain. Unmatched reports are kept (list them with GET). "
                  "A tenant key matches only its own tenant's messages. Sending the same report twice counts it "
                  "once. A report that cannot be read is a 400 naming what is wrong, and nothing is written. "
                  "An example ARF report: `multipart/report; report-type=feedback-report` with a text/plain part, a "
                  "`message/feedback-report` part (`Feedback-Type: abuse`, `User-Agent: SomeGenerator/1.0`, "
                  "`Version: 1`, `Original-Rcpt-To: <someone@example.com>`) and the original message as "
                  "`message/rfc822`.")
async def ingest_complaint_report(request: Request, db: Db, caller: Caller) -> Outcome:
    kind = request.headers.get("content-type", "")
    if kind.split(";", 1)[0].strip().lower() not in REPORT_TYPES:
        raise Invalid(f"Content-Type: expected message/rfc822 or multipart/report, got {kind or 'none'!r}",
                      field="Content-Type")
    data = await request.body()
    return await complaints.ingest_report(db, data, content_type=kind if kind.lower().startswith("multipart/") else None,
                                          tenant_id=None if caller.admin else caller.tenant_id, source="api")


@get("/feedback/arf", operation_id="listComplaintReports", summary="Complaint reports received", tags=["feedback"],
     description="Newest first; pass the last id seen as `before` for the next page. A tenant key sees its "
                 "tenant's reports (matched, and unmatched ones it posted); the admin sees every report, or one "
                 "tenant's with `tenant_id`. `matched=false` lists the reports no send row was found for.")
async def list_complaint_reports(
    db: Db, caller: Caller,
    tenant_id: Annotated[int | None, QueryParameter(gt=0, le=2**62)] = None,
    matched: Annotated[bool | None, QueryParameter()] = None,
    before: Annotated[int | None, QueryParameter(gt=0, le=2**62)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[ComplaintReport]:
    scope = caller.scope(tenant_id) if tenant_id is not None else (None if caller.admin else caller.tenant_id)
    return await complaints.list_reports(db, scope, matched=matched, before=before, limit=limit)


ROUTES = [ingest_pmta_accounting, list_pmta_accounting_files, ingest_complaint_report, list_complaint_reports]
