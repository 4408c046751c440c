"""The send log: claiming rows, stamping their quota grant, marking them in flight, recording outcomes.

Every write after the claim is fenced: it names the row with the generation it was claimed in and the
worker that claimed it, and PostgreSQL applies it only while both still hold. A worker whose rows were taken
back (it stalled past the dead-worker timeout, it was thought dead) writes nothing over another worker's work;
what it tried to write is counted on the campaign (`stale_results`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from engine.db import json_rows
from sql import q

Db = asyncpg.Connection | asyncpg.Pool


class Claimed(msgspec.Struct, kw_only=True):
    """A claimed send row with its contact's fields."""

    id: int
    claim_gen: int
    contact_id: int
    attempts: int
    waiting_since: dt.datetime | None
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    website: str | None
    country: str | None
    language: str | None
    category: str | None
    custom: dict[str, Any] | None
    mx_host: str | None
    contact_status: str


class Held(msgspec.Struct, frozen=True):
    """A row as the fence knows it: its id and the generation this worker claimed it in."""

    id: int
    gen: int


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """What record-and-mark writes for one row about to be handed to SMTP."""

    id: int
    gen: int
    template_id: int | None
    template_version: int | None
    message_id: str | None
    language: str | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What record-and-mark writes for one row whose attempt is over (or that waits)."""

    id: int
    gen: int
    status: str
    attempted: int = 1
    code: int | None = None
    enhanced: str | None = None
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None
    category: str | None = None
    waiting: bool = False         # held for its contact's validation: starts the wait clock


class Stamp(msgspec.Struct, frozen=True):
    """The quota grant of one row: the IP whose token it took."""

    id: int
    gen: int
    ip_id: int
    vmta: str


async def claim(db: Db, campaign_id: int, worker_id: str, n: int, *, now: dt.datetime | None = None) -> list[Claimed]:
    """Up to `n` rows that are due at `now` (default: the database's clock)."""
    return [Claimed(**r) for r in await db.fetch(q("claim-sends"), campaign_id, worker_id, n, now)]


async def stamp(db: asyncpg.Connection, stamps: Sequence[Stamp], worker_id: str) -> set[int]:
    """Write each row's quota grant (inside the grant transaction); return the rows still held and stamped."""
    if not stamps:
        return set()
    rows = await db.fetch(q("stamp-sends"), json_rows(stamps), worker_id)
    return {r["id"] for r in rows}


async def advance(db: Db, campaign_id: int, worker_id: str, outcomes: Sequence[Outcome],
                  sending: Sequence[InFlight] = ()) -> set[int]:
    """Record `outcomes` and mark `sending` as handed to SMTP, in one fenced statement.

    Returns the ids marked: only those may be sent. Outcomes that could not be written are counted.
    """
    if not outcomes and not sending:
        return set()
    row = await db.fetchrow(q("record-and-mark"), json_rows(outcomes), json_rows(sending), worker_id)
    stale = len(outcomes) - row["recorded"]
    if stale:
        await count_stale(db, campaign_id, stale)
    return set(row["marked"])


async def record(db: Db, campaign_id: int, worker_id: str, outcomes: Sequence[Outcome]) -> None:
    """Final (or deferred) states of rows no longer in flight."""
    await advance(db, campaign_id, worker_id, outcomes)


async def release(db: Db, campaign_id: int, worker_id: str, rows: Sequence[Held], *,
                  retry_at: dt.datetime | None = None, unstamp: bool = False) -> set[int]:
    """Give rows back untouched: queued again, or deferred to `retry_at` with no attempt counted."""
    if not rows:
        return set()
    released = {r["id"] for r in await db.fetch(q("release-sends"), [r.id for r in rows], [r.gen for r in rows],
                                                  retry_at, unstamp, worker_id)}
    if len(released) < len(rows):
        await count_stale(db, campaign_id, len(rows) - len(released))
    return released


async def count_stale(db: Db, campaign_id: int, n: int) -> None:
    await db.execute(q("count-stale-results"), campaign_id, n)


async def recover_orphans(db: Db, campaign_id: int, live_workers: list[str]) -> tuple[int, int]:
    """Requeue rows held by dead workers; return (rows requeued, of which were in flight)."""
    row = await db.fetchrow(q("recover-orphans"), campaign_id, live_workers)
    return row["total"], row["in_flight"]


async def progress(db: Db, campaign_id: int) -> asyncpg.Record:
    return await db.fetchrow(q("campaign-progress"), campaign_id)


async def heartbeat(db: Db, worker_id: str) -> None:
    await db.execute(q("worker-heartbeat"), worker_id)


async def live_workers(db: Db, within: float) -> list[str]:
    """Workers heard from within the last `within` seconds."""
    return [r["id"] for r in await db.fetch(q("live-workers"), float(within))]


async def worker_gone(db: Db, worker_id: str) -> None:
    await db.execute(q("worker-gone"), worker_id)
