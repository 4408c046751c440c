"""A lost Redis day counter is rebuilt from the quota ledger: the quota holds across a Redis loss."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from engine import db as dbm
from engine import ips
from engine.sending import quotas
from engine.sending.rotation import Rotator

DAY = "2024-06-01"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await dbm.create_pool(database_url, min_size=1, max_size=8)
    yield p
    await p.close()


async def log_grants(db: asyncpg.Connection, ip_id: int, n: int, day: str) -> None:
    """n tokens of the IP recorded in the ledger, as a grant transaction writes them."""
    await db.execute("INSERT INTO quota_grants (scope, scope_id, day, granted) VALUES ('ip', $1, $2::text::date, $3) "
                     "ON CONFLICT (scope, scope_id, day) DO UPDATE SET granted = quota_grants.granted + $3",
                     ip_id, day, n)


async def test_rebuild_counts_the_ledger(db, seeded, redis, namespace, pool) -> None:
    [candidate] = [c for c in await ips.sending_candidates(db, 1, dt.date(2024, 6, 1)) if c.ip_id == 1]
    assert candidate.daily_quota == 50
    await log_grants(db, 1, 30, DAY)
    await log_grants(db, 1, 40, "2024-05-31")  # yesterday: not counted
    used = ips.used_today_callback(pool)
    assert await quotas.used(redis, namespace, 1, DAY) is None  # Redis knows nothing of the day
    grant = await quotas.take(redis, namespace, 1, DAY, 100, daily_quota=50, used_today=used)
    assert grant.granted == 20 and grant.reason == "daily" and grant.remaining == 0
    assert await quotas.used(redis, namespace, 1, DAY) == 50
    # the day's 20 grants are recorded; then Redis loses the day (a restart, a FLUSHALL): still nothing more
    await log_grants(db, 1, 20, DAY)
    await redis.delete(quotas.day_key(namespace, 1, DAY))
    again = await quotas.take(redis, namespace, 1, DAY, 5, daily_quota=50, used_today=used)
    assert again.granted == 0 and again.reason == "daily"
    assert await quotas.used(redis, namespace, 1, DAY) == 50


async def test_rotation_over_the_tenant_skips_an_ip_whose_day_is_spent(db, seeded, redis, namespace, pool) -> None:
    await log_grants(db, 1, 50, DAY)  # IP 1 has spent its 50 before Redis learnt of it
    await log_grants(db, 2, 45, DAY)
    candidates = await ips.sending_candidates(db, 1, dt.date(2024, 6, 1))
    rotator = Rotator(namespace, ips.used_today_callback(pool))
    picks = await rotator.pick(redis, 1, candidates, 500, day=DAY)
    assert isinstance(picks, list)
    per_ip = Counter(p.ip_id for p in picks)
    assert 1 not in per_ip and per_ip[2] <= 5
    assert all(n <= 50 for n in per_ip.values()) and len(picks) == 500
    assert {p.ip_id for p in picks} <= {c.ip_id for c in candidates}
    await rotator.close(redis)
