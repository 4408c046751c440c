"""CSV imports: a stored upload read as a stream, ingested in batches, with each rejected line kept."""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec

from engine import contacts
from engine.contacts import ContactIn
from engine.errors import Invalid, NotFound
from sql import q

log = logging.getLogger(__name__)

# Rows per transaction: big enough that the set-based upsert dominates, small enough that progress moves
# every fraction of a second and a crash re-reads little.
BATCH = 2000
REJECTS_SHOWN = 1000
FIELDS = ("email", "first_name", "last_name", "company", "website", "country", "language", "category", "tags")
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


def check_mapping(mapping: dict[str, str]) -> None:
    """Keys are contact fields or `custom.<name>`, values CSV column headers."""
    for key, column in mapping.items():
        if not (key in FIELDS or (key.startswith("custom.") and len(key) > 7)):
            raise Invalid(f"mapping.{key}: expected one of {', '.join(FIELDS)} or custom.<name>", field=f"mapping.{key}")
        if not isinstance(column, str) or not column:
            raise Invalid(f"mapping.{key}: expected a column header", field=f"mapping.{key}")
    if mapping and "email" not in mapping:
        raise Invalid("mapping.email: the mapping must say which column holds the address", field="mapping.email")


async def create_import(db: asyncpg.Connection, tenant_id: int, path: Path, size: int, mapping: dict[str, str],
                        defaults: ImportDefaults) -> Import:
    if defaults.data_source_id is not None:
        owner = await db.fetchval("SELECT tenant_id FROM data_sources WHERE id = $1", defaults.data_source_id)
        if owner != tenant_id:
            raise Invalid("data_source_id: no such data source for this tenant", field="data_source_id")
    row = await db.fetchrow(q("create-import"), tenant_id, str(path), size, mapping, msgspec.to_builtins(defaults))
    return Import(**row)


async def get_import(db: asyncpg.Connection, import_id: int, tenant_id: int | None, *, after_line: int = 0,
                     limit: int = REJECTS_SHOWN) -> ImportView:
    row = await db.fetchrow(q("get-import"), import_id, tenant_id)
    if row is None:
        raise NotFound(f"import {import_id} not found")
    rejects = [ImportReject(**r) for r in await db.fetch(q("list-import-rejects"), import_id, after_line, limit)]
    next_line = rejects[-1].line if len(rejects) == limit else None
    return ImportView(progress=Import(**row), rejects=rejects, next_line=next_line)


def read_csv(path: Path) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line number, fields, error) per record, header included; memory stays flat whatever the size."""
    # utf-8-sig drops a BOM if there is one; undecodable bytes become U+FFFD so the line is reported, not fatal
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            head = f.readline()
            delimiter = ";" if head.count(";") > head.count(",") else ","
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield start, None, f"malformed CSV: {exc}"
                    continue
                if fields:  # blank lines carry nothing
                    yield start, fields, None
    except OSError as exc:  # the stored upload itself; a store's connection error is not this
        raise Invalid(f"upload unreadable: {exc.strerror or exc}", field="file") from exc


def _columns(header: list[str], mapping: dict[str, str]) -> dict[str, int]:
    """Field -> column index. Without a mapping, known headers map to their field, the rest to custom."""
    where = {h.strip(): i for i, h in enumerate(header)}
    if not mapping:
        lowered = {h.strip().lower(): i for i, h in enumerate(header)}
        found = {f: lowered[f] for f in FIELDS if f in lowered}
        if "email" not in found:
            raise Invalid("mapping: no `email` column in the header; pass a mapping", field="mapping")
        custom = {f"custom.{h.strip()}": i for i, h in enumerate(header)
                  if h.strip() and h.strip().lower() not in FIELDS}
        return {**found, **custom}
    missing = [c for c in mapping.values() if c not in where]
    if missing:
        raise Invalid(f"mapping: columns not in the header: {', '.join(missing)}", field="mapping")
    return {field: where[column] for field, column in mapping.items()}


def _contact(tenant_id: int, fields: list[str], columns: dict[str, int], defaults: dict[str, Any]) -> ContactIn:
    values: dict[str, Any] = {}
    custom: dict[str, str] = {}
    for field, i in columns.items():
        value = fields[i].strip()
        if not value:
            continue
        if field.startswith("custom."):
            custom[field[7:]] = value
        else:
            values[field] = value
    tags = [t for t in (s.strip() for s in values.pop("tags", "").replace(";", ",").replace("|", ",").split(","))
            if t]
    return ContactIn(tenant_id=tenant_id, email=values.pop("email", ""), tags=[*defaults.get("tags", ()), *tags],
                     data_source_id=defaults.get("data_source_id"),
                     language=values.pop("language", None) or defaults.get("language"),
                     category=values.pop("category", None) or defaults.get("category"),
                     custom=custom or None, **values)


async def run_import(pool: asyncpg.Pool, import_id: int, *,
                     on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    """Read the import's file and ingest it batch by batch; `on_batch` gets each batch's new contact ids."""
    async with pool.acquire() as db:
        claim = await db.fetchrow(q("start-import"), import_id)
    if claim is None:
        return  # finished already (a duplicate job), or removed
    tenant_id, path, mapping, defaults = claim["tenant_id"], Path(claim["file_path"]), claim["mapping"], claim["defaults"]
    skip = claim["rows_read"]
    try:
        await _ingest_file(pool, import_id, tenant_id, path, mapping, defaults, skip, on_batch)
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


async def _ingest_file(pool: asyncpg.Pool, import_id: int, tenant_id: int, path: Path, mapping: dict,
                       defaults: dict, skip: int, on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    rows = read_csv(path)
    header = next(rows, None)
    if header is None or header[1] is None:
        raise Invalid("the file has no readable header line", field="file")
    columns = _columns(header[1], mapping)
    width = len(header[1])
    batch: list[tuple[int, list[str] | None, str | None]] = []
    seen = 0
    for record in rows:
        seen += 1
        if seen <= skip:
            continue
        batch.append(record)
        if len(batch) >= BATCH:
            await _flush(pool, import_id, tenant_id, batch, columns, width, defaults, on_batch)
            batch = []
    if batch:
        await _flush(pool, import_id, tenant_id, batch, columns, width, defaults, on_batch)


async def _flush(pool: asyncpg.Pool, import_id: int, tenant_id: int, batch: list, columns: dict[str, int],
                 width: int, defaults: dict, on_batch: Callable[[int, list[int]], Awaitable[None]]) -> None:
    rejects: list[tuple[int, str, str | None]] = []
    good: list[ContactIn] = []
    lines: list[int] = []
    kept: list[list[str]] = []
    for line, fields, error in batch:
        if error is not None:
            rejects.append((line, error, None))
        elif len(fields) != width:
            rejects.append((line, f"expected {width} fields, found {len(fields)}", _raw(fields)))
        else:
            good.append(_contact(tenant_id, fields, columns, defaults))
            lines.append(line)
            kept.append(fields)
    async with pool.acquire() as db, db.transaction():
        report = await contacts.ingest(db, good, tenant_id=tenant_id)
        for result in report.results:
            if result.outcome == "rejected":
                # an erased address's line is reported by number only: its text is what was erased
                erased = (result.reason or "").startswith("erased")
                rejects.append((lines[result.index], result.reason, None if erased else _raw(kept[result.index])))
        if rejects:
            await db.execute(q("add-import-rejects"), import_id, *map(list, zip(*rejects, strict=True)))
        await db.execute(q("advance-import"), import_id, len(batch), report.created, report.updated,
                         report.unchanged, len(rejects))
    for tenant, ids in report.to_validate.items():
        await on_batch(tenant, ids)


def _raw(fields: list[str] | None) -> str | None:
    return None if fields is None else ",".join(fields)[:RAW_MAX]


def imports_dir(home: Path) -> Path:
    path = home / "imports"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
