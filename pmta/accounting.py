"""PowerMTA accounting files: a streaming CSV parser, and reading rotated files into the feedback flow."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import asyncpg
import msgspec

from engine import feedback
from engine.feedback import FeedbackReport

log = logging.getLogger(__name__)

# Record types PowerMTA documents, by short and long name (powermta.md §9.1; `records` accepts both spellings).
RECORD_TYPES: dict[str, str] = {
    "d": "d", "delivery": "d", "b": "b", "bounce": "b", "t": "t", "transient": "t",
    "tq": "tq", "transient-queue": "tq", "r": "r", "receipt": "r", "f": "f", "feedback-loop": "f",
    "rb": "rb", "remote-bounce": "rb", "rs": "rs", "remote-status": "rs",
}

# Header name (lower-cased: the guide writes `envId` for d/b/t and `envid` for f) -> AccountingRecord field.
# Every other column lands in `extra` under its header name (header_*, arf_*, dlv*, ...), §9.2-§9.3.
COLUMNS: dict[str, str] = {
    "type": "type", "timelogged": "time_logged", "timequeued": "time_queued", "orig": "orig", "rcpt": "rcpt",
    "orcpt": "orcpt", "dsnaction": "dsn_action", "dsnstatus": "dsn_status", "dsndiag": "dsn_diag",
    "dsnmta": "dsn_mta", "bouncecat": "bounce_cat", "vmta": "vmta", "jobid": "job_id", "envid": "envid",
    "queue": "queue", "dlvsourceip": "dlv_source_ip", "feedbacktype": "feedback_type", "format": "format",
}
_TIMES = ("time_logged", "time_queued")
# `iso-times yes` (the default) and the encoding section's US form; `iso-times no` writes epoch seconds (§9.5).
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%z", "%m/%d/%Y %H:%M:%S%z")
# The applier works in batches of this many records, each batch in one transaction with the file's offset.
BATCH = 1000
# A garbage file must not grow the report without bound: the first thousand bad lines say enough.
MALFORMED_KEPT = 1000


class AccountingRecord(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    line: int                           # physical line the record starts on (the header is line 1)
    time_logged: dt.datetime | None = None
    time_queued: dt.datetime | None = None
    orig: str = ""
    rcpt: str = ""
    orcpt: str = ""
    dsn_action: str = ""
    dsn_status: str = ""
    dsn_diag: str = ""
    dsn_mta: str = ""
    bounce_cat: str = ""
    vmta: str = ""
    job_id: str = ""
    envid: str = ""
    queue: str = ""
    dlv_source_ip: str = ""
    feedback_type: str = ""
    format: str = ""
    extra: dict[str, str] = msgspec.field(default_factory=dict)


class Malformed(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    reason: str


class ParseStats(msgspec.Struct, kw_only=True):
    """What the parser met besides records: filled in as it goes, so it can be read mid-stream."""

    records: int = 0
    skipped: dict[str, int] = msgspec.field(default_factory=dict)   # unknown record type -> count
    malformed: list[Malformed] = msgspec.field(default_factory=list)   # the first MALFORMED_KEPT
    malformed_count: int = 0
    header: list[str] = msgspec.field(default_factory=list)

    def bad(self, line: int, reason: str) -> None:
        self.malformed_count += 1
        if len(self.malformed) < MALFORMED_KEPT:
            self.malformed.append(Malformed(line=line, reason=reason))


def parse_time(value: str) -> dt.datetime | None:
    """Any of the three timestamp forms PowerMTA writes; None for an empty value; ValueError otherwise."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return dt.datetime.fromtimestamp(int(value), dt.UTC)
    for form in TIME_FORMATS:
        try:
            return dt.datetime.strptime(value, form)
        except ValueError:
            continue
    raise ValueError(value)


def parse(lines: Iterable[str], stats: ParseStats | None = None, *, header: list[str] | None = None,
          first_line: int = 1) -> Iterator[AccountingRecord]:
    """Records in file order; unknown types and malformed lines are counted in `stats`, never raised.

    `header` and `first_line` resume mid-file: the column names read earlier and the number of the first line
    given. A line whose first field is `type` is a header and replaces the column map from there on.
    """
    stats = stats if stats is not None else ParseStats()
    counter = _LineCounter(lines, first_line)
    reader = csv.reader(counter, strict=True)
    columns: list[str] | None = [h.strip() for h in header] if header else None
    if columns:
        stats.header = columns
    while True:
        start = counter.number + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            stats.bad(start, f"bad CSV: {exc}")
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if start == first_line and row[0].startswith("\ufeff"):
            row[0] = row[0][1:]
        kind = row[0].strip().lower()
        if kind == "type":
            columns = [h.strip() for h in row]
            stats.header = columns
            continue
        if columns is None:
            stats.bad(start, "no header line before the first record")
            continue
        if kind not in RECORD_TYPES:
            if not kind:
                stats.bad(start, "empty record type")
            else:
                stats.skipped[kind] = stats.skipped.get(kind, 0) + 1
            continue
        record, problem = _record(RECORD_TYPES[kind], row, columns, start)
        if record is None:
            stats.bad(start, problem)
            continue
        stats.records += 1
        yield record


def _record(kind: str, row: list[str], columns: list[str], line: int) -> tuple[AccountingRecord | None, str]:
    # Trailing empty columns are normal (the guide's `t` and `rb` samples end in a comma); values past the
    # header are not: the line belongs to some other layout.
    if len(row) > len(columns) and any(cell.strip() for cell in row[len(columns):]):
        return None, f"{len(row)} fields but the header names {len(columns)}"
    values: dict = {"type": kind, "line": line}
    extra: dict[str, str] = {}
    for name, cell in zip(columns[1:], row[1:], strict=False):
        field = COLUMNS.get(name.lower())
        if field is None:
            if cell:
                extra[name] = cell
        elif field in _TIMES:
            try:
                values[field] = parse_time(cell)
            except ValueError:
                return None, f"{name}: not a timestamp: {cell[:40]!r}"
        elif field != "type":
            values[field] = cell.strip()
    if extra:
        values["extra"] = extra
    return AccountingRecord(**values), ""


class _LineCounter:
    """Passes lines to the csv reader and counts them: a quoted value may hold line breaks."""

    def __init__(self, lines: Iterable[str], first_line: int) -> None:
        self.lines = iter(lines)
        self.number = first_line - 1

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.number += 1
        return line


class IngestReport(msgspec.Struct, kw_only=True):
    """One file (or upload) read: where it stands, what the parser met, what the feedback changed."""

    name: str | None
    bytes_applied: int
    lines_applied: int
    skipped_types: dict[str, int]
    malformed_count: int
    malformed: list[Malformed]          # the first MALFORMED_KEPT, with their line numbers
    feedback: FeedbackReport
    already_applied: bool = False       # nothing new since the last run
    busy: bool = False                  # another process is reading this file right now


class _Position:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def _complete_lines(file, position: _Position) -> Iterator[str]:
    """Decoded lines that end in a line break; a partial last line (PowerMTA mid-write) waits for next time."""
    for raw in file:
        if not raw.endswith(b"\n"):
            return
        position.offset += len(raw)
        yield raw.decode("utf-8", errors="replace")


def _all_lines(file, position: _Position) -> Iterator[str]:
    """Every line, the last one too: an upload is complete."""
    for raw in file:
        position.offset += len(raw)
        yield raw.decode("utf-8", errors="replace")


async def ingest_file(pool: asyncpg.Pool, path: Path, *, name: str | None = "", complete: bool = False) -> IngestReport:
    """Apply a file's records from where the last run stopped; batch by batch, each batch with the new offset.

    `name` is the file's key in accounting_files (default: its file name; None: an upload nobody named, not
    tracked). A crash between batches resumes at the last committed batch; a batch applied twice is harmless
    anyway (apply_records never downgrades a row, suppressions upsert). `complete` also reads a last line
    without a line break (an upload); a file PowerMTA may still be writing leaves it for the next run.
    """
    name = path.name if name == "" else name
    size = (await asyncio.to_thread(path.stat)).st_size
    async with pool.acquire() as lock:
        # One reader per file across processes: the API and several workers may meet on the same name.
        if name is not None and not await lock.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                                        f"accounting:{name}"):
            return IngestReport(name=name, bytes_applied=0, lines_applied=0, skipped_types={}, malformed_count=0,
                                malformed=[], feedback=FeedbackReport(), busy=True)
        try:
            return await _ingest(pool, path, name, size, complete)
        finally:
            if name is not None:
                await lock.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", f"accounting:{name}")


async def _ingest(pool: asyncpg.Pool, path: Path, name: str | None, size: int, complete: bool) -> IngestReport:
    offset, lines_done, header = 0, 0, None
    if name is not None:
        async with pool.acquire() as db:
            state = await feedback.accounting_file(db, name)
        offset, lines_done, header = state.bytes_applied, state.lines_applied, state.header
    if size < offset:   # a new file under an old name: read it again from the start (applying twice is safe)
        log.warning("accounting file %s shrank from %s to %s bytes; reading it again", name, offset, size)
        offset, lines_done, header = 0, 0, None
    stats = ParseStats()
    total = FeedbackReport()
    if size == offset and offset > 0:
        return IngestReport(name=name, bytes_applied=offset, lines_applied=lines_done, skipped_types={},
                            malformed_count=0, malformed=[], feedback=total, already_applied=True)
    position = _Position(offset)
    with path.open("rb") as file:
        file.seek(offset)
        lines = _Counted((_all_lines if complete else _complete_lines)(file, position))
        records = parse(lines, stats, header=header.split(",") if header else None, first_line=lines_done + 1)
        batch: list[AccountingRecord] = []
        done = False
        while not done:
            record = next(records, None)
            done = record is None
            if record is not None:
                batch.append(record)
                if len(batch) < BATCH:
                    continue
            # The position is read right after the reader produced the record: csv reads no line ahead.
            async with pool.acquire() as db, db.transaction():
                total = total.plus(await feedback.apply_records(db, batch))
                if name is not None:
                    await feedback.save_accounting_file(db, name, size=size, bytes_applied=position.offset,
                                                        lines_applied=lines_done + lines.count,
                                                        header=",".join(stats.header) or None)
            batch = []
    return IngestReport(name=name, bytes_applied=position.offset, lines_applied=lines_done + lines.count,
                        skipped_types=stats.skipped, malformed_count=stats.malformed_count,
                        malformed=stats.malformed, feedback=total)


class _Counted:
    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.count = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.count += 1
        return line


async def ingest_directory(pool: asyncpg.Pool, directory: Path) -> list[IngestReport]:
    """Every `*.csv` file of the directory in name order (PowerMTA's date-stamped names sort by time)."""
    reports = []
    paths = await asyncio.to_thread(lambda: sorted(p for p in directory.glob("*.csv") if p.is_file()))
    for path in paths:
        report = await ingest_file(pool, path)
        if not report.already_applied:
            reports.append(report)
    return reports
