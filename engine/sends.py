"""The send log: claiming rows, marking them in flight, recording outcomes, recovering orphans."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec

from sql import q


class Claimed(msgspec.Struct, kw_only=True):
    """A claimed send row with its contact's fields."""

    id: int
    contact_id: int
    attempts: int
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


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """What mark-sending writes for one row about to be handed to SMTP."""

    id: int
    ip_id: int | None
    vmta: str | None
    template_id: int | None
    template_version: int | None
    message_id: str | None
    language: str | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What record-outcomes writes for one row."""

    id: int
    status: str
    attempted: int = 1
    code: int | None = None
    enhanced: str | None = None
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None


async def claim(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, worker_id: str, n: int) -> list[Claimed]:
    return [Claimed(**r) for r in await db.fetch(q("claim-sends"), campaign_id, worker_id, n)]


async def mark_sending(db: asyncpg.Connection | asyncpg.Pool, worker_id: str, rows: list[InFlight]) -> None:
    await db.execute(q("mark-sending"), [r.id for r in rows], [r.ip_id for r in rows], [r.vmta for r in rows],
                     [r.template_id for r in rows], [r.template_version for r in rows],
                     [r.message_id for r in rows], [r.language for r in rows], worker_id)


async def record(db: asyncpg.Connection | asyncpg.Pool, outcomes: list[Outcome]) -> None:
    if not outcomes:
        return
    await db.execute(q("record-outcomes"), [o.id for o in outcomes], [o.status for o in outcomes],
                     [o.attempted for o in outcomes], [o.code for o in outcomes], [o.enhanced for o in outcomes],
                     [o.detail for o in outcomes], [o.next_attempt_at for o in outcomes])


async def release(db: asyncpg.Connection | asyncpg.Pool, ids: list[int]) -> None:
    if ids:
        await db.execute(q("release-claims"), ids)


async def recover_orphans(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, live_workers: list[str]) -> tuple[int, int]:
    """Requeue rows held by dead workers; return (rows requeued, of which were in flight)."""
    row = await db.fetchrow(q("recover-orphans"), campaign_id, live_workers)
    return row["total"], row["in_flight"]


async def progress(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int) -> asyncpg.Record:
    return await db.fetchrow(q("campaign-progress"), campaign_id)
