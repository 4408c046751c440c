"""CSV imports: a stored upload read as a stream, ingested in batches, with each rejected line kept."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import contacts, csv_files, metrics
from engine.contacts import ContactIn, PreparedBatch
from engine.csv_files import FIELDS, CsvFormat, check_mapping
from engine.errors import Invalid, NotFound
from sql import q

__all__ = ["FIELDS", "check_mapping", "create_import", "get_import", "run_import", "imports_dir"]

log = logging.getLogger(__name__)

# Rows per transaction: the set-based upsert costs the same per row from a few thousand rows on (measured:
# 2,000 and 10,000 both ~60 us a row), while a batch is the unit a crash re-reads and progress moves by.
# Three batches are in memory at once (and a validation job per batch): 2,500 rows kept the worker's peak RSS
# at 86 MB in bench/ingest.py where 5,000 took it to 101-105 MB, at the same rows/s.
BATCH = 2500
REJECTS_SHOWN = 1000
RAW_MAX = 2000  # characters of a rejected line kept for the report


class ImportStatus(StrEnum):
    """The import_status enum."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ImportDefaults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Values every imported row gets unless its own column says otherwise (tags add up)."""

    data_source_id: Annotated[int, msgspec.Meta(gt=0)] | None = None
    language: Annotated[str, msgspec.Meta(max_length=35)] | None = None
    category: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    tags: list[Annotated[str, msgspec.Meta(max_length=64)]] = msgspec.field(default_factory=list)


class Import(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    status: str
    file_bytes: int
    mapping: dict[str, str]
    defaults: dict[str, Any]
    encoding: str | None  # a Python codec name; None until detected
    delimiter: str | None
    rows_read: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class ImportReject(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    reason: str
    raw: str | None


class ImportView(msgspec.Struct, frozen=True, kw_only=True):
    """An import's progress and (the first page of) its rejected lines."""

    progress: Import
    rejects: list[ImportReject]
    next_line: int | None


async def create_import(db: asyncpg.Connection, tenant_id: int, path: Path, size: int, mapping: dict[str, str],
                        defaults: ImportDefaults, fmt: CsvFormat) -> Import:
    if defaults.data_source_id is not None:
        owner = await db.fetchval("SELECT tenant_id FROM data_sources WHERE id = $1", defaults.data_source_id)
        if owner != tenant_id:
            raise Invalid("data_source_id: no such data source for this tenant", field="data_source_id")
    row = await db.fetchrow(q("create-import"), tenant_id, str(path), size, mapping, msgspec.to_builtins(defaults),
                            fmt.encoding, fmt.delimiter)
    return Import(**row)


async def get_import(db: asyncpg.Connection, import_id: int, tenant_id: int | None, *, after_line: int = 0,
                     limit: int = REJECTS_SHOWN) -> ImportView:
    row = await db.fetchrow(q("get-import"), import_id, tenant_id)
    if row is None:
        raise NotFound(f"import {import_id} not found")
    rejects = [ImportReject(**r) for r in await db.fetch(q("list-import-rejects"), import_id, after_line, limit)]
    next_line = rejects[-1].line if len(rejects) == limit else None
    return ImportView(progress=Import(**row), rejects=rejects, next_line=next_line)


@functools.lru_cache(maxsize=4096)
def _tags(cell: str) -> tuple[str, ...]:
    """A tags cell split on commas, semicolons or pipes (cached: a file repeats the same few cells)."""
    return tuple(t for t in (s.strip() for s in cell.replace(";", ",").replace("|", ",").split(",")) if t)


class _Columns:
    """Where each contact field sits in a record, sorted once per file so a row costs one pass over its cells."""

    def __init__(self, columns: dict[str, int], defaults: dict[str, Any]) -> None:
        self.email = columns.get("email")
        self.tags = columns.get("tags")
        self.language, self.category = columns.get("language"), columns.get("category")
        self.plain = [(f, i) for f, i in columns.items()
                      if not f.startswith("custom.") and f not in ("email", "tags", "language", "category")]
        self.custom = [(f[7:], i) for f, i in columns.items() if f.startswith("custom.")]
        self.default_tags = tuple(defaults.get("tags", ()))
        self.data_source_id = defaults.get("data_source_id")
        self.default_language, self.default_category = defaults.get("language"), defaults.get("category")

    def contact(self, tenant_id: int, fields: list[str]) -> ContactIn:
        values = {f: v for f, i in self.plain if (v := fields[i].strip())}
        custom = {name: v for name, i in self.custom if (v := fields[i].strip())}
        tags = self.default_tags if self.tags is None else (*self.default_tags, *_tags(fields[self.tags].strip()))
        return ContactIn(tenant_id=tenant_id, email="" if self.email is None else fields[self.email].strip(),
                         tags=list(tags), data_source_id=self.data_source_id,
                         language=_cell(fields, self.language) or self.default_language,
                         category=_cell(fields, self.category) or self.default_category,
                         custom=custom or None, **values)


def _cell(fields: list[str], index: int | None) -> str | None:
    return None if index is None else fields[index].strip() or None


async def run_import(pool: asyncpg.Pool, import_id: int, *,
                     on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    """Read the import's file and ingest it batch by batch; `on_batch` gets each batch's new contact ids."""
    async with pool.acquire() as db:
        claim = await db.fetchrow(q("start-import"), import_id)
    if claim is None:
        return  # finished already (a duplicate job), or removed
    path = Path(claim["file_path"])
    try:
        fmt = CsvFormat(encoding=claim["encoding"], delimiter=claim["delimiter"]) \
            if claim["encoding"] and claim["delimiter"] else csv_files.sniff(path)
        await _ingest_file(pool, import_id, claim["tenant_id"], path, fmt, claim["mapping"], claim["defaults"],
                           claim["rows_read"], on_batch)
    except Invalid as exc:
        async with pool.acquire() as db:
            await db.execute(q("finish-import"), import_id, "failed", exc.message)
    else:
        async with pool.acquire() as db:
            await db.execute(q("finish-import"), import_id, "done", None)
    _remove(path)


def _remove(path: Path) -> None:
    """The upload is not needed once its rows are in (or the import failed for good)."""
    path.unlink(missing_ok=True)


class _Batch(msgspec.Struct, kw_only=True):
    """The next records of the file, parsed and checked, waiting for their transaction."""

    tenant_id: int
    records: int                       # records read, what `rows_read` moves by
    rejects: list[tuple[int, str, str | None]]
    lines: list[int]                   # line of each contact handed to the upsert
    prepared: PreparedBatch


class _Reader:
    """Turns the record stream into prepared batches; runs in a thread while the database writes a batch."""

    def __init__(self, records: Iterator, tenant_id: int, columns: dict[str, int], width: int,
                 defaults: dict, delimiter: str) -> None:
        self.records, self.tenant_id, self.columns, self.width = records, tenant_id, _Columns(columns, defaults), width
        self.defaults, self.delimiter = defaults, delimiter
        source = defaults.get("data_source_id")
        # the import's data source was checked against its tenant when the import was created
        self.owners = {source: tenant_id} if source is not None else {}

    def skip(self, count: int) -> None:
        for _ in zip(range(count), self.records, strict=False):
            pass

    def next_batch(self) -> _Batch | None:
        rejects: list[tuple[int, str, str | None]] = []
        good: list[ContactIn] = []
        lines: list[int] = []
        raws: list[list[str]] = []
        records = 0
        for line, fields, error in self.records:
            records += 1
            if error is not None:
                rejects.append((line, error, None))
            elif len(fields) != self.width:
                rejects.append((line, f"expected {self.width} fields, found {len(fields)}",
                                _raw(fields, self.delimiter)))
            else:
                good.append(self.columns.contact(self.tenant_id, fields))
                lines.append(line)
                raws.append(fields)
            if records >= BATCH:
                break
        if not records:
            return None
        prepared = contacts.prepare_batch(good, known={self.tenant_id}, owners=self.owners)
        # a line the checks refused is reported with its text now, so the fields need not wait for the
        # database; the upsert itself refuses only erased addresses, which are reported without their text
        for index, reason in prepared.rejected.items():
            rejects.append((lines[index], reason, _raw(raws[index], self.delimiter)))
        return _Batch(tenant_id=self.tenant_id, records=records, rejects=rejects, lines=lines, prepared=prepared)


async def _ingest_file(pool: asyncpg.Pool, import_id: int, tenant_id: int, path: Path, fmt: CsvFormat,
                       mapping: dict, defaults: dict, skip: int,
                       on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    records = csv_files.read_records(path, fmt)
    try:
        header = next(records, None)
        if header is None or header[1] is None:
            raise Invalid("the file has no readable header line", field="file")
        columns = csv_files.columns(header[1], mapping)
        reader = _Reader(records, tenant_id, columns, len(header[1]), defaults, fmt.delimiter)
        reader.skip(skip)  # a resumed run: these records are in already
        await _pipeline(pool, import_id, reader, on_batch)
    finally:
        records.close()


async def _pipeline(pool: asyncpg.Pool, import_id: int, reader: _Reader,
                    on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    """Batches through the database two at a time, committed in file order.

    The next batch is parsed and checked in a thread while the database works, and batch k+1 starts its
    statements once batch k holds its row locks, so the server's two cores and the client's Python overlap
    instead of taking turns. Batch k+1 commits only after batch k did: `rows_read` always counts a prefix of
    the file, which is where a resumed run starts.
    """
    upcoming = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
    writing: list[tuple[asyncio.Task, asyncio.Future]] = []  # each batch's write and its locks-held signal
    try:
        while (batch := await upcoming) is not None:
            previous = writing[-1][0] if writing else None
            if previous is not None:
                await asyncio.wait([previous, writing[-1][1]], return_when=asyncio.FIRST_COMPLETED)
                if previous.done() and previous.exception() is not None:
                    break  # awaited below, where it raises
            locked = asyncio.Event()
            task = asyncio.create_task(_write(pool, import_id, batch, on_batch, locked, previous))
            writing.append((task, asyncio.ensure_future(locked.wait())))
            # at most three batches in memory: two in the database, one being read
            upcoming = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
            if len(writing) > 2:
                oldest, signal = writing.pop(0)
                signal.cancel()
                await oldest
        for task, _ in writing:
            await task
    finally:
        for task, signal in writing:
            signal.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if not upcoming.done():  # a thread cannot be cancelled: let it finish its batch, then drop it
            with contextlib.suppress(Exception):
                await asyncio.shield(upcoming)


async def _write(pool: asyncpg.Pool, import_id: int, batch: _Batch,
                 on_batch: Callable[[int, list[int]], Awaitable[None]], locked: asyncio.Event,
                 previous: asyncio.Task | None) -> None:
    """One batch in one transaction, its counters and rejected lines with it (a resumed run skips it whole)."""
    rejects = list(batch.rejects)
    try:
        async with pool.acquire() as db, db.transaction():
            report = await contacts.write_batch(db, batch.prepared, locked=locked.set)
            refused = batch.prepared.rejected
            for result in report.results:
                if result.outcome == "rejected" and result.index not in refused:
                    # an erased address's line is reported by number only: its text is what was erased
                    rejects.append((batch.lines[result.index], result.reason, None))
            if rejects:
                await db.execute(q("add-import-rejects"), import_id, *map(list, zip(*rejects, strict=True)))
            if previous is not None:
                await previous  # the batch before commits first; if it failed, this one rolls back too
            await db.execute(q("advance-import"), import_id, batch.records, report.created, report.updated,
                             report.unchanged, len(rejects))
    finally:
        locked.set()  # even on failure: nothing may wait for locks this batch will never take
    metrics.IMPORT_ROWS.labels(str(batch.tenant_id), "accepted").inc(batch.records - len(rejects))
    metrics.IMPORT_ROWS.labels(str(batch.tenant_id), "rejected").inc(len(rejects))
    # after the commit: a validation job must find its contacts
    for tenant, ids in report.to_validate.items():
        await on_batch(tenant, ids)


def _raw(fields: list[str] | None, delimiter: str) -> str | None:
    return None if fields is None else delimiter.join(fields)[:RAW_MAX]


def imports_dir(home: Path) -> Path:
    path = home / "imports"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
