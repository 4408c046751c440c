"""A lost Redis day counter is rebuilt from the real send log: the quota holds across a Redis loss."""

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
NOON = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)  # inside 2024-06-01 in Europe/Paris (the seed's timezone)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await dbm.create_pool(database_url, min_size=1, max_size=8)
    yield p
    await p.close()


async def log_sends(db: asyncpg.Connection, ip_id: int, n: int, at: dt.datetime, first_contact: int = 0) -> None:
    """n send rows stamped with the IP, as the dispatcher writes them when it takes a token."""
    campaign = await db.fetchval("SELECT id FROM campaigns WHERE tenant_id = 1 ORDER BY id LIMIT 1") or \
        await db.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email) "
                          "VALUES (1, 'c', 'n', 'a@x.example') RETURNING id")
    await db.execute("INSERT INTO sends (tenant_id, campaign_id, contact_id, ip_id, ip_assigned_at, status) "
                     "SELECT 1, $1, $2 + g, $3, $4, 'injected' FROM generate_series(1, $5) AS g",
                     campaign, first_contact + ip_id * 100_000, ip_id, at, n)


async def test_rebuild_counts_the_send_log(db, seeded, redis, namespace, pool) -> None:
    [candidate] = [c for c in await ips.sending_candidates(db, 1, dt.date(2024, 6, 1)) if c.ip_id == 1]
    assert candidate.daily_quota == 50
    await log_sends(db, 1, 30, NOON)
    await log_sends(db, 1, 40, NOON - dt.timedelta(days=1), first_contact=1000)  # yesterday: not counted
    used = ips.used_today_callback(pool)
    assert await quotas.used(redis, namespace, 1, DAY) is None  # Redis knows nothing of the day
    grant = await quotas.take(redis, namespace, 1, DAY, 100, daily_quota=50, used_today=used)
    assert grant.granted == 20 and grant.reason == "daily" and grant.remaining == 0
    assert await quotas.used(redis, namespace, 1, DAY) == 50
    # the day's 20 sends are logged; then Redis loses the day (a restart, a FLUSHALL): still nothing more
    await log_sends(db, 1, 20, NOON + dt.timedelta(hours=1), first_contact=2000)
    await redis.delete(quotas.day_key(namespace, 1, DAY))
    again = await quotas.take(redis, namespace, 1, DAY, 5, daily_quota=50, used_today=used)
    assert again.granted == 0 and again.reason == "daily"
    assert await quotas.used(redis, namespace, 1, DAY) == 50


async def test_rotation_over_the_tenant_skips_an_ip_whose_day_is_spent(db, seeded, redis, namespace, pool) -> None:
    await log_sends(db, 1, 50, NOON)  # IP 1 has spent its 50 before Redis learnt of it
    await log_sends(db, 2, 45, NOON)
    candidates = await ips.sending_candidates(db, 1, dt.date(2024, 6, 1))
    rotator = Rotator(namespace, ips.used_today_callback(pool))
    picks = await rotator.pick(redis, 1, candidates, 500, day=DAY)
    assert isinstance(picks, list)
    per_ip = Counter(p.ip_id for p in picks)
    assert 1 not in per_ip and per_ip[2] <= 5
    assert all(n <= 50 for n in per_ip.values()) and len(picks) == 500
    assert {p.ip_id for p in picks} <= {c.ip_id for c in candidates}
    await rotator.close(redis)
