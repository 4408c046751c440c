"""The validation job: verdicts written back per batch, DNS from a loopback server, outages left pending."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from engine import db as dbm
from engine import secrets
from engine.validation import make_resolver
from tests.conftest import SECRET_KEY, tenant_key
from tests.dnsserver import DnsServer
from tests.test_verifiers import serve_vendor
from workers import contacts as contact_jobs
from workers.main import create_worker

ZONES = {
    "mx.example": {"MX": [(10, "mx1.mx.example")]},
    "nullmx.example": {"MX": [(0, ".")]},
    "aonly.example": {"A": ["192.0.2.25"]},
    "down.example": {"MX": [(10, "mx.down.example")]},
}


@pytest.fixture
async def dns():
    async with DnsServer(ZONES) as server:
        server.fail("down.example", "servfail")
        yield server


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    return await tenant_key(client, admin, seeded[0])


async def ingest(client, headers, emails: list[str]) -> dict[str, int]:
    r = await client.post("/api/v2/contacts/ingest", headers=headers,
                          json={"contacts": [{"tenant_id": 1, "email": e} for e in emails]})
    assert r.status_code == 200, r.text
    return {e: res["id"] for e, res in zip(emails, r.json()["results"], strict=True)}


async def run_worker(settings, dns) -> None:
    worker = create_worker(msgspec.structs.replace(settings, dns_servers=(dns.address,)), secret_key=SECRET_KEY,
                           burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()


async def statuses(db) -> dict[str, str]:
    return dict(await db.fetch("SELECT email, status::text FROM contacts"))


async def test_one_job_per_batch_sets_valid_risky_invalid(client, sos, settings, dns, db, redis) -> None:
    await ingest(client, sos, ["good@mx.example", "nobody@nullmx.example", "info@mx.example",
                               "someone@aonly.example", "x@missing.example"])
    assert await redis.zcard(settings.queue_name) == 1  # one job for the whole batch
    await run_worker(settings, dns)
    assert await statuses(db) == {"good@mx.example": "valid", "nobody@nullmx.example": "invalid",
                                  "info@mx.example": "risky", "someone@aonly.example": "valid",
                                  "x@missing.example": "invalid"}
    row = await db.fetchrow("SELECT score, reasons, mx_host, validated_at FROM contacts WHERE email = 'nobody@nullmx.example'")
    assert row["score"] == 0 and row["reasons"] == ["null_mx"] and row["validated_at"] is not None
    assert await db.fetchval("SELECT mx_host FROM contacts WHERE email = 'good@mx.example'") == "mx1.mx.example"
    kinds = await db.fetch("SELECT kind, detail FROM contact_events WHERE kind = 'validated'")
    assert len(kinds) == 5 and {k["detail"]["by"] for k in kinds} == {"engine"}
    assert await db.fetchval("SELECT count(*) FROM mailwizz_outbox") == 0


async def test_tenant_threshold_and_mailwizz_outbox(client, sos, settings, dns, db) -> None:
    await db.execute("UPDATE tenants SET transport = 'mailwizz', settings = '{\"validation_threshold\": 0.95}' WHERE id = 1")
    ids = await ingest(client, sos, ["good@mx.example", "someone@aonly.example"])
    await run_worker(settings, dns)
    assert await statuses(db) == {"good@mx.example": "valid", "someone@aonly.example": "risky"}
    outbox = [r["contact_id"] for r in await db.fetch("SELECT contact_id FROM mailwizz_outbox WHERE tenant_id = 1")]
    assert outbox == [ids["good@mx.example"]]


async def test_manual_status_set_meanwhile_is_kept(client, sos, settings, dns, db) -> None:
    ids = await ingest(client, sos, ["nobody@nullmx.example"])
    r = await client.patch(f"/api/v2/contacts/1/{ids['nobody@nullmx.example']}", headers=sos,
                           json={"status": "valid", "reason": "the owner confirmed it"})
    assert r.status_code == 200
    await run_worker(settings, dns)
    assert await statuses(db) == {"nobody@nullmx.example": "valid"}


async def test_dns_outage_stays_pending_and_is_retried_later(database_url, seeded, settings, dns, db, redis) -> None:
    rows = await db.fetch("INSERT INTO contacts (tenant_id, email, email_hash) VALUES "
                          "(1, 'a@down.example', '\\x01'), (1, 'b@mx.example', '\\x02') RETURNING id")
    ids = [r["id"] for r in rows]
    pool = await dbm.create_pool(database_url, min_size=1, max_size=2)
    arq = ArqRedis(ConnectionPool.from_url(settings.redis_url), default_queue_name=settings.queue_name)
    resolver = make_resolver([dns.address], timeout=0.2, tries=1)
    ctx = {"pool": pool, "redis": arq, "settings": settings, "secret_key": SECRET_KEY, "mx_resolver": resolver,
           "validation_slots": asyncio.Semaphore(contact_jobs.VALIDATIONS_AT_ONCE)}
    try:
        result = await contact_jobs.validate_contacts(ctx, 1, ids)
        assert result["retry"] == 1 and result["valid"] == 1 and result["retry_in"] == 60
        assert await statuses(db) == {"a@down.example": "pending", "b@mx.example": "valid"}
        queued = await redis.zrange(settings.queue_name, 0, -1, withscores=True)
        assert len(queued) == 1 and queued[0][1] / 1000 > time.time() + 30  # deferred, not immediate
        assert await db.fetchval("SELECT validation_tries FROM contacts WHERE id = $1", ids[0]) == 1
        # the outage goes on: the next try waits longer, and the address is still never invalid
        result = await contact_jobs.validate_contacts(ctx, 1, [ids[0]])
        assert result["retry_in"] == 300 and (await statuses(db))["a@down.example"] == "pending"
        dns.failures.clear()
        resolver2 = make_resolver([dns.address], timeout=0.2, tries=1)  # a fresh cache: the outage is over
        ctx["mx_resolver"] = resolver2
        result = await contact_jobs.validate_contacts(ctx, 1, [ids[0]])
        assert result["valid"] == 1 and (await statuses(db))["a@down.example"] == "valid"
        await resolver2.close()
    finally:
        await resolver.close()
        await arq.aclose()
        await pool.close()


async def test_a_contact_set_back_to_pending_is_validated_again(client, sos, settings, dns, db, redis) -> None:
    ids = await ingest(client, sos, ["good@mx.example"])
    await redis.delete(settings.queue_name)          # the ingest's job, not needed here
    contact = f"/api/v2/contacts/1/{ids['good@mx.example']}"
    r = await client.patch(contact, headers=sos, json={"status": "invalid", "reason": "bounced last year"})
    assert r.status_code == 200 and await redis.zcard(settings.queue_name) == 0
    await db.execute("UPDATE contacts SET validation_tries = 3")
    r = await client.patch(contact, headers=sos, json={"status": "pending", "reason": "check it again"})
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert await db.fetchval("SELECT validation_tries FROM contacts") == 0
    assert await redis.zcard(settings.queue_name) == 1
    await run_worker(settings, dns)
    assert await statuses(db) == {"good@mx.example": "valid"}


async def test_sweep_requeues_pending_contacts_no_job_will_see(database_url, seeded, settings, dns, db,
                                                               redis) -> None:
    # (tenant, email, status, validation_tries, minutes since the last change)
    cases = [(1, "lost@mx.example", "pending", 0, 60),            # its job vanished with Redis: swept
             (1, "fresh@mx.example", "pending", 0, 5),            # its job is surely still queued
             (1, "waiting@mx.example", "pending", 2, 20),         # a 5-minute DNS retry, within the grace
             (1, "late@mx.example", "pending", 2, 60),            # that retry never came: swept
             (1, "gaveup@mx.example", "pending", 6, 120),         # retries ran out today: left until tomorrow
             (1, "yesterday@mx.example", "pending", 6, 2 * 1440), # ran out two days ago: swept
             (1, "done@mx.example", "risky", 0, 2 * 1440),        # not pending
             (2, "other@mx.example", "pending", 0, 60)]           # another tenant: its own job
    for i, (tenant_id, email, status, tries, minutes) in enumerate(cases):
        await db.execute("INSERT INTO contacts (tenant_id, email, email_hash, status, validation_tries, updated_at) "
                         "VALUES ($1, $2, $3, $4::contact_status, $5, now() - make_interval(mins => $6))",
                         tenant_id, email, bytes([i + 1]), status, tries, minutes)
    pool = await dbm.create_pool(database_url, min_size=1, max_size=2)
    arq = ArqRedis(ConnectionPool.from_url(settings.redis_url), default_queue_name=settings.queue_name)
    ctx = {"pool": pool, "redis": arq, "settings": settings}
    try:
        assert await contact_jobs.sweep_pending_contacts(ctx) == {"contacts": 4, "jobs": 2}
        # the next sweep finds the same contacts, their jobs still queued: nothing is queued twice
        assert await contact_jobs.sweep_pending_contacts(ctx) == {"contacts": 4, "jobs": 0}
        assert await redis.zcard(settings.queue_name) == 2
    finally:
        await arq.aclose()
        await pool.close()
    await run_worker(settings, dns)
    assert await statuses(db) == {
        "lost@mx.example": "valid", "fresh@mx.example": "pending", "waiting@mx.example": "pending",
        "late@mx.example": "valid", "gaveup@mx.example": "pending", "yesterday@mx.example": "valid",
        "done@mx.example": "risky", "other@mx.example": "valid"}


@pytest.fixture
def vendor_url():
    with serve_vendor() as url:
        yield url


async def test_a_failing_verification_vendor_raises_an_alert(client, sos, settings, dns, db, vendor_url) -> None:
    wrong_key = secrets.encrypt(SECRET_KEY, "not-the-key").decode()
    await db.execute("UPDATE tenants SET settings = settings || $2 WHERE id = $1", 1,
                     {"verification": {"provider": "zerobounce", "api_key_enc": wrong_key, "base_url": vendor_url}})
    await ingest(client, sos, ["valid@mx.example", "good@mx.example", "someone@aonly.example"])
    await run_worker(settings, dns)
    assert set((await statuses(db)).values()) == {"valid"}      # no vendor verdict: the engine's stands
    alert = await db.fetchrow("SELECT tenant_id, kind, subject, detail FROM alert_events")
    assert (alert["tenant_id"], alert["kind"], alert["subject"]) == (1, "validation_provider_failing",
                                                                     "verifier:zerobounce")
    assert alert["detail"] == {"asked": 3, "failed": 3,
                               "last_error": "Invalid API Key or your account ran out of credits"}
