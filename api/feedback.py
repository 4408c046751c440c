"""PowerMTA accounting files pushed over HTTP (the cron reads the same files from a directory)."""

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
from engine import feedback
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


ROUTES = [ingest_pmta_accounting, list_pmta_accounting_files]
