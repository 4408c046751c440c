"""The send log: claiming rows, marking them in flight, recording outcomes, recovering orphans."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
    """What record-and-mark writes for one row about to be handed to SMTP."""

    id: int
    ip_id: int | None
    vmta: str | None
    template_id: int | None
    template_version: int | None
    message_id: str | None
    language: str | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What record-and-mark writes for one row whose attempt is over."""

    id: int
    status: str
    attempted: int = 1
    code: int | None = None
    enhanced: str | None = None
    detail: str | None = None
    next_attempt_at: dt.datetime | None = None


async def claim(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, worker_id: str, n: int) -> list[Claimed]:
    return [Claimed(**r) for r in await db.fetch(q("claim-sends"), campaign_id, worker_id, n)]


async def advance(db: asyncpg.Connection | asyncpg.Pool, outcomes: Sequence[Outcome], worker_id: str = "",
                  sending: Sequence[InFlight] = ()) -> None:
    """Record `outcomes` and mark `sending` as handed to SMTP, in one statement (see record-and-mark)."""
    if not outcomes and not sending:
        return
    await db.execute(q("record-and-mark"), [o.id for o in outcomes], [o.status for o in outcomes],
                     [o.attempted for o in outcomes], [o.code for o in outcomes], [o.enhanced for o in outcomes],
                     [o.detail for o in outcomes], [o.next_attempt_at for o in outcomes],
                     [r.id for r in sending], [r.ip_id for r in sending], [r.vmta for r in sending],
                     [r.template_id for r in sending], [r.template_version for r in sending],
                     [r.message_id for r in sending], [r.language for r in sending], worker_id)


async def record(db: asyncpg.Connection | asyncpg.Pool, outcomes: list[Outcome]) -> None:
    """Final (or deferred) states of rows no longer in flight."""
    await advance(db, outcomes)


async def release(db: asyncpg.Connection | asyncpg.Pool, ids: list[int]) -> None:
    if ids:
        await db.execute(q("release-claims"), ids)


async def recover_orphans(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int, live_workers: list[str]) -> tuple[int, int]:
    """Requeue rows held by dead workers; return (rows requeued, of which were in flight)."""
    row = await db.fetchrow(q("recover-orphans"), campaign_id, live_workers)
    return row["total"], row["in_flight"]


async def progress(db: asyncpg.Connection | asyncpg.Pool, campaign_id: int) -> asyncpg.Record:
    return await db.fetchrow(q("campaign-progress"), campaign_id)
