"""The daily warmup run on the real database: 30 days of the cron with figures from the send log, two runs
racing on one day, per-tenant thresholds and hours, and the seeded IPs' plans through the API."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from engine import db as dbm
from engine import ips, tenants, warmup_plans
from tests.conftest import SECRET_KEY
from tests.test_warmup import EXPECTED, FIGURES, SILENT_DAYS, START
from workers.warmup import advance_warmup, cron_jobs

TZ = "America/New_York"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await dbm.create_pool(database_url, min_size=2, max_size=10)
    yield p
    await p.close()


class SendLog:
    """Writes one IP's day into `sends` (and complaints into suppressions) the way sending would."""

    def __init__(self, db: asyncpg.Connection, tenant_id: int) -> None:
        self.db, self.tenant_id = db, tenant_id
        self.next_contact = 1
        self.campaign = 0

    async def start(self) -> None:
        self.campaign = await self.db.fetchval(
            "INSERT INTO campaigns (tenant_id, name, from_name, from_email) VALUES ($1, 'warm', 'n', "
            "'a@x.example') RETURNING id", self.tenant_id)

    async def day(self, ip_id: int, day: dt.date, *, sent: int, bounced: int, complained: int) -> None:
        zone = ZoneInfo(TZ)
        # the first and last minute of the local day: both inside it, both a day apart in UTC dates
        early = dt.datetime.combine(day, dt.time(0, 0, 30), tzinfo=zone)
        late = dt.datetime.combine(day, dt.time(23, 59, 30), tzinfo=zone)
        for n in range(complained):
            email = f"person{self.next_contact}@complainer.example"
            contact = await self.db.fetchval(
                "INSERT INTO contacts (tenant_id, email, email_hash) VALUES ($1, $2, $3) RETURNING id",
                self.tenant_id, email, hashlib.sha256(email.encode()).digest())
            await self.db.execute(
                "INSERT INTO sends (tenant_id, campaign_id, contact_id, ip_id, ip_assigned_at, status) "
                "VALUES ($1, $2, $3, $4, $5, 'delivered')", self.tenant_id, self.campaign, contact, ip_id, early)
            await self.db.execute(
                "INSERT INTO suppressions (tenant_id, value, reason, created_at) VALUES ($1, $2, 'complaint', $3)",
                self.tenant_id, email, early + dt.timedelta(hours=20 - n))
            self.next_contact += 1
        rest = sent - complained
        await self.db.execute(
            "INSERT INTO sends (tenant_id, campaign_id, contact_id, ip_id, ip_assigned_at, status) "
            "SELECT $1, $2, 1000000 + $3 + g, $4, CASE WHEN g % 2 = 0 THEN $5::timestamptz ELSE $6::timestamptz END, "
            "       (CASE WHEN g < $7 THEN 'bounced' ELSE 'delivered' END)::send_status "
            "FROM generate_series(0, $8 - 1) AS g",
            self.tenant_id, self.campaign, self.next_contact, ip_id, early, late, bounced, rest)
        self.next_contact += rest


def ctx_for(pool: asyncpg.Pool, settings) -> dict:
    return {"pool": pool, "settings": settings, "secret_key": SECRET_KEY}


async def test_thirty_days_of_the_cron_follow_the_curve_hold_step_back_and_complete(pool, db, settings) -> None:
    tenant = await tenants.create_tenant(db, slug="warm", name="Warm", timezone=TZ)
    ip = await ips.create_ip(db, tenant.id, address="203.0.113.7", hostname="mta7.warm.example",
                             vmta_name="warm-vmta7")
    log = SendLog(db, tenant.id)
    await log.start()
    seen = []
    for run in range(1, 31):
        today = START + dt.timedelta(days=run)
        plan = (await warmup_plans.get_plan(db, tenant.id, ip.id)).plan
        if run not in SILENT_DAYS and plan.phase == "warming":
            bounced, complained = FIGURES.get(run, (plan.quota // 200, 0))
            await log.day(ip.id, today - dt.timedelta(days=1), sent=plan.quota, bounced=bounced,
                          complained=complained)
        first = await advance_warmup(ctx_for(pool, settings), today=today.isoformat())
        again = await advance_warmup(ctx_for(pool, settings), today=today)  # same day: changes nothing
        assert sum(again.values()) == 0, (run, again)
        detail = await warmup_plans.get_plan(db, tenant.id, ip.id)
        action = next(iter(first), "noop")
        seen.append((action, detail.plan.quota))
    assert seen == [(a.value, quota) for a, quota in EXPECTED]

    detail = await warmup_plans.get_plan(db, tenant.id, ip.id)
    assert detail.plan.phase == "active" and detail.plan.quota == detail.plan.target == 50_000
    assert len(detail.history) == 17 and len({e.on_day for e in detail.history}) == 17
    assert [e.action for e in detail.history if e.alert] == ["step_back", "step_back"]
    # each step back is an alert event for the channels (engine/alerts.py)
    alerts = await db.fetch("SELECT kind, subject, detail FROM alert_events WHERE tenant_id = $1 ORDER BY id",
                            tenant.id)
    assert [(a["kind"], a["subject"]) for a in alerts] == [("ip_stepped_back", f"ip:{ip.id}")] * 2
    assert (alerts[0]["detail"]["sent"], alerts[0]["detail"]["bounced"]) == (400, 24)
    # the figures the decisions were taken on came from the send log, in the tenant's local days
    step_back = detail.history[4]
    assert (step_back.sent, step_back.bounced, step_back.complained) == (400, 24, 0)
    assert "past the step-back bounce limit" in step_back.reason
    assert (detail.history[5].sent, detail.history[5].action) == (0, "hold")
    assert (detail.history[9].complained, detail.history[10].complained) == (2, 6)
    assert "past the step-back complaint limit" in detail.history[10].reason
    # completing the plan made the IP active: it now sends at its daily cap
    assert (await ips.get_ip(db, tenant.id, ip.id)).status == "active"
    [candidate] = await ips.sending_candidates(db, tenant.id, START + dt.timedelta(days=31))
    assert candidate.daily_quota == 50_000 and candidate.status == "active"


async def test_two_runs_at_once_advance_each_ip_once(pool, db, settings, seeded) -> None:
    today = dt.date(2024, 9, 10)
    yesterday_noon = dt.datetime(2024, 9, 9, 12, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = await db.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email) "
                                 "VALUES (1, 'c', 'n', 'a@x.example') RETURNING id")
    # every seeded IP sent 50 clean messages yesterday
    await db.execute("INSERT INTO sends (tenant_id, campaign_id, contact_id, ip_id, ip_assigned_at, status) "
                     "SELECT i.tenant_id, $1, i.id * 1000 + g, i.id, $2, 'delivered' "
                     "FROM ips i, generate_series(1, 50) AS g", campaign, yesterday_noon)
    results = await asyncio.gather(*(advance_warmup(ctx_for(pool, settings), today=today) for _ in range(2)))
    assert sum(r.get("advance", 0) for r in results) == 100, results
    assert await db.fetchval("SELECT count(*) FROM warmup_events") == 100
    assert await db.fetchval("SELECT count(DISTINCT ip_id) FROM warmup_events WHERE on_day = $1", today) == 100
    rows = await db.fetch("SELECT current_day, last_advanced_on FROM warmup_plans")
    assert {(r["current_day"], r["last_advanced_on"]) for r in rows} == {(1, today)}
    assert await db.fetchval("SELECT sum(sent) FROM warmup_events") == 100 * 50


async def test_the_job_runs_in_a_burst_worker(settings, db, seeded, redis) -> None:
    from arq.connections import create_pool as arq_pool

    from workers.main import create_worker, functions
    from workers.redis import redis_settings

    assert advance_warmup in functions()
    assert [job.name for job in cron_jobs(settings)] == ["cron:advance_warmup"]
    arq = await arq_pool(redis_settings(settings.redis_url), default_queue_name=settings.queue_name)
    try:
        for _ in range(2):
            await arq.enqueue_job("advance_warmup", today="2024-09-10")
    finally:
        await arq.aclose()
    worker = create_worker(settings, secret_key=SECRET_KEY, burst=True, handle_signals=False, cron_jobs=None)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    # nothing was sent yesterday: every seeded IP holds, once, with the reason recorded
    rows = await db.fetch("SELECT action, reason FROM warmup_events")
    assert len(rows) == 100 and {r["action"] for r in rows} == {"hold"}
    assert all("nothing to judge" in r["reason"] for r in rows)
    assert await db.fetchval("SELECT count(*) FROM warmup_plans WHERE current_day = 0") == 100


async def test_tenant_thresholds_and_hour(pool, db, settings) -> None:
    tenant = await tenants.create_tenant(db, slug="strict", name="Strict", timezone=TZ)
    await db.execute("UPDATE tenants SET settings = $2 WHERE id = $1", tenant.id,
                     {"warmup_thresholds": {"hold_bounce": 0.001}})
    ip = await ips.create_ip(db, tenant.id, address="2001:db8::25", hostname="mta.strict.example",
                             vmta_name="strict-1")
    log = SendLog(db, tenant.id)
    await log.start()
    today = dt.date(2024, 9, 10)
    await log.day(ip.id, today - dt.timedelta(days=1), sent=50, bounced=1, complained=0)  # 2%: default would hold
    await log.day(ip.id, today - dt.timedelta(days=2), sent=50, bounced=0, complained=0)  # not yesterday
    assert await advance_warmup(ctx_for(pool, settings), today=today) == {"hold": 1}
    [event] = (await warmup_plans.get_plan(db, tenant.id, ip.id)).history
    assert "hold bounce limit 0.10%" in event.reason and event.sent == 50 and event.bounced == 1
    # a broken override falls back to the defaults instead of failing the run
    assert warmup_plans.thresholds_for({"warmup_thresholds": {"hold_bounce": "lots"}}).hold_bounce == 0.02
    # the hourly cron acts for a tenant once its local clock reaches the warmup hour
    assert warmup_plans.is_due(TZ, dt.datetime(2024, 9, 10, 10, 0, tzinfo=dt.UTC), 6)      # 06:00 EDT
    assert not warmup_plans.is_due(TZ, dt.datetime(2024, 9, 10, 9, 59, tzinfo=dt.UTC), 6)  # 05:59 EDT


async def test_paused_ips_keep_their_step(pool, db, settings, seeded) -> None:
    await ips.change_status(db, 1, 1, "pause", "investigating")
    await ips.change_status(db, 1, 2, "retire")
    await advance_warmup(ctx_for(pool, settings), today=dt.date(2024, 9, 10))
    events = {r["ip_id"] for r in await db.fetch("SELECT ip_id FROM warmup_events")}
    assert len(events) == 98 and not {1, 2} & events


async def test_seeded_ips_show_their_warmup_state(client, admin, seeded) -> None:
    for tenant_id in (1, 2):
        r = await client.get(f"/api/v2/warmup/{tenant_id}", headers=admin)
        assert r.status_code == 200, r.text
        plans = r.json()
        assert len(plans) == 50
        assert {(p["quota"], p["current_day"], p["phase"], p["ip_status"], p["target"]) for p in plans} == \
            {(50, 0, "warming", "warming", 50_000)}
        assert all(p["tenant_id"] == tenant_id and p["curve"][:3] == [50, 100, 200] for p in plans)
        assert plans[0]["vmta_name"].endswith("vmta01") and plans[0]["last_advanced_on"] is None
    r = await client.get(f"/api/v2/warmup/1/{plans[0]['ip_id']}", headers=admin)
    assert r.status_code == 404  # tenant 2's IP under tenant 1
