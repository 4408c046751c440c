"""The sending core under faults, end to end against real PostgreSQL, Redis and SMTP sockets.

A listener that is not SMTP, PowerMTA going away mid-campaign, Redis flushed while two worker processes
share a campaign, a worker frozen past its timeout, contacts still being validated, a sender-side refusal.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path

import asyncpg
import msgspec
from redis.asyncio import Redis

from engine import embedded
from engine.sending.dispatch import Tuning
from engine.sending.transport import OutgoingMessage, SendResult
from pmta.inject import Injector
from tests.campaign_helpers import (
    add_contacts,
    create_and_start,
    mark_valid,
    running_worker,
    use_ips,
    wait_for_status,
)
from tests.sending_rig import Front, worker_env, worker_processes
from tests.smtpserver import SmtpTestServer

FAST = Tuning(idle=0.05, max_wait=0.5, recover_every=1.0, validation_recheck=0.3, unreachable_retry=0.3)


def quick_retry(attempt: int) -> float | None:
    return 0.2 if attempt < 50 else None


class Timed:
    """The real injector, with every send_many call's duration kept beside the bound it promises."""

    def __init__(self, inner: Injector) -> None:
        self.inner = inner
        self.calls: list[tuple[float, float]] = []

    async def send(self, msg: OutgoingMessage) -> SendResult:
        return (await self.send_many([msg]))[0]

    async def send_many(self, msgs: list[OutgoingMessage]) -> list[SendResult]:
        start = time.monotonic()
        results = await self.inner.send_many(msgs)
        self.calls.append((time.monotonic() - start, self.inner.bound(len(msgs))))
        return results

    def bound(self, n: int) -> float:
        return self.inner.bound(n)

    async def close(self) -> None:
        await self.inner.close()


async def until(condition, *, within: float) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def at(settings, server: SmtpTestServer, **changes):
    """The test's settings pointed at this SMTP server."""
    return msgspec.structs.replace(settings, pmta_host=server.host, pmta_port=server.port, **changes)


def received(server: SmtpTestServer) -> collections.Counter[str]:
    return collections.Counter(r for m in server.messages for r in m.rcpt_tos)


async def send_counts(db: asyncpg.Connection, campaign_id: int) -> dict[str, int]:
    rows = await db.fetch("SELECT status::text, count(*) FROM sends WHERE campaign_id = $1 GROUP BY 1", campaign_id)
    return {r["status"]: r["count"] for r in rows}


async def test_a_listener_that_is_not_smtp_at_first(client, admin, seeded, db, settings) -> None:
    emails = await add_contacts(client, admin, 300)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1])
    async with SmtpTestServer() as server, Front(server.port, not_smtp=6) as front:
        transport = Timed(Injector("127.0.0.1", front.port, pool_size=4, timeout=2.0))
        async with running_worker(settings, transport=transport, retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "completed", within=60)
        got = received(server)
    assert set(got) == set(emails) and set(got.values()) == {1}
    assert front.connections > 6                      # the HTTP answers were met, then real SMTP
    assert transport.calls and all(elapsed < bound for elapsed, bound in transport.calls), transport.calls
    assert (await send_counts(db, campaign_id)) == {"injected": 300}


async def settled(server, quiet: float = 1.0) -> int:
    """The server's message count once it has not changed for `quiet` seconds."""
    count = -1
    while count != len(server.messages):
        count = len(server.messages)
        await asyncio.sleep(quiet)
    return count


async def test_pmta_down_for_thirty_seconds_mid_campaign(client, admin, seeded, db, settings) -> None:
    emails = await add_contacts(client, admin, 1500)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1, 1])
    # 50 messages a second per IP: the campaign lasts long enough to lose PowerMTA in the middle of it
    await db.execute("UPDATE ips SET rate_per_minute = 3000 WHERE tenant_id = 1 AND status = 'active'")
    async with SmtpTestServer() as server, Front(server.port) as front:
        transport = Timed(Injector("127.0.0.1", front.port, pool_size=4, timeout=2.0))
        async with running_worker(settings, transport=transport, retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await until(lambda: len(server.messages) >= 300, within=60)
            await front.down()
            down_at = await settled(server)  # messages already through the front may still be landing
            await asyncio.sleep(30)
            assert len(server.messages) == down_at      # nothing got through while it was down
            waiting = await send_counts(db, campaign_id)
            assert waiting.get("failed", 0) == 0, waiting  # the rows wait; none gave up
            await front.up()
            await wait_for_status(db, campaign_id, "completed", within=120)
        got = received(server)
    in_doubt = await db.fetchval("SELECT recovered_in_flight FROM campaigns WHERE id = $1", campaign_id)
    assert set(got) == set(emails)                     # no contact missing
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= in_doubt <= 4 * 16, (duplicates, in_doubt)   # at most what was on the wire, counted
    assert (await send_counts(db, campaign_id)) == {"injected": 1500}
    assert all(elapsed < bound for elapsed, bound in transport.calls)


async def test_quotas_hold_while_redis_is_flushed_under_two_worker_processes(
        client, admin, seeded, db, settings, tmp_path: Path) -> None:
    redis_url, redis_proc = embedded.start_redis(tmp_path / "redis")   # a Redis of this test's own to flush
    await add_contacts(client, admin, 1000)
    await mark_valid(db)
    vmtas = await use_ips(db, 1, [1, 1, 1], daily_cap=100)
    # 10 messages a second per IP: the 300 allowed take ten seconds, long enough to flush Redis three times
    await db.execute("UPDATE ips SET rate_per_minute = 600 WHERE tenant_id = 1 AND status = 'active'")
    flusher = Redis.from_url(redis_url)
    try:
        async with SmtpTestServer() as server:
            env = worker_env(settings, pmta_port=server.port, home=tmp_path, redis_url=redis_url)
            async with worker_processes(2, env, tmp_path):
                campaign_id = await create_and_start(client, admin)
                flushes = 0
                while flushes < 3 and len(server.messages) < 300:
                    await asyncio.sleep(0.7)
                    if server.messages:
                        await flusher.flushall()
                        flushes += 1
                assert flushes == 3, "the day's quota was spent before Redis could be flushed three times"
                # the day's quota is spent: wait until nothing moves any more
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    counts = await send_counts(db, campaign_id)
                    if counts.get("injected", 0) >= 300 and not counts.get("claimed") and not counts.get("sending"):
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(3)                      # a worker that would overshoot has had its chance
                per_vmta = collections.Counter(m.headers["X-Virtual-MTA"] for m in server.messages)
                counts = await send_counts(db, campaign_id)
    finally:
        await flusher.aclose()
        redis_proc.terminate()
        redis_proc.wait(10)
    assert set(per_vmta) <= set(vmtas) and all(n <= 100 for n in per_vmta.values()), per_vmta
    assert sum(per_vmta.values()) == 300 and counts == {"injected": 300, "queued": 700}, (per_vmta, counts)
    ledger = await db.fetch("SELECT scope_id, granted FROM quota_grants WHERE scope = 'ip'")
    assert sorted(r["granted"] for r in ledger) == [100, 100, 100]


async def test_a_worker_frozen_past_its_timeout_writes_nothing_over_rows_taken_back(
        client, admin, seeded, db, settings, tmp_path: Path) -> None:
    emails = await add_contacts(client, admin, 1000)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1])
    await db.execute("UPDATE ips SET rate_per_minute = 6000 WHERE tenant_id = 1 AND status = 'active'")
    async with SmtpTestServer() as server:
        env = worker_env(settings, pmta_port=server.port, home=tmp_path, worker_timeout=2)
        async with worker_processes(2, env, tmp_path) as procs:
            by_pid = {p.pid: p for p in procs}
            campaign_id = await create_and_start(client, admin)
            frozen = None
            while frozen is None:
                holders = await db.fetch("SELECT claimed_by, count(*) FROM sends WHERE campaign_id = $1 "
                                         "AND status IN ('claimed', 'sending') GROUP BY 1", campaign_id)
                for holder in holders:
                    pid = int(holder["claimed_by"].split("-")[-2])
                    if holder["count"] >= 64 and pid in by_pid:
                        frozen = (holder["claimed_by"], by_pid[pid])
                        break
                await asyncio.sleep(0.01)
            worker_id, proc = frozen
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                # the other worker finds it silent, takes its rows back and sends them
                deadline = time.monotonic() + 60
                while await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND claimed_by = $2",
                                        campaign_id, worker_id):
                    assert time.monotonic() < deadline, "the frozen worker's rows were never taken back"
                    await asyncio.sleep(0.2)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            await wait_for_status(db, campaign_id, "completed", within=120)
            await asyncio.sleep(2)                           # the thawed worker writes what it had in hand
        got = received(server)
    stale, in_doubt = await db.fetchrow("SELECT stale_results, recovered_in_flight FROM campaigns WHERE id = $1",
                                        campaign_id)
    assert stale > 0                                         # the thawed worker's results were dropped
    assert (await send_counts(db, campaign_id)) == {"injected": 1000}
    assert set(got) == set(emails)
    assert sum(n - 1 for n in got.values()) <= in_doubt      # only its in-flight chunk, counted
    assert await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND claimed_by IS NOT NULL",
                             campaign_id) == 0


async def test_pending_contacts_wait_for_their_validation(client, admin, seeded, db, settings) -> None:
    valid = await add_contacts(client, admin, 20, prefix="ok")
    await mark_valid(db)
    pending = await add_contacts(client, admin, 10, prefix="new", domain="fresh{i}.example")
    await use_ips(db, 1, [1])
    async with SmtpTestServer() as server:
        # DNS nobody answers: their validation cannot finish, so they stay pending until an operator decides
        async with running_worker(at(settings, server, dns_servers=("127.0.0.1:9",)), retry_delay=quick_retry,
                                  dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                          "statuses": ["valid", "pending"]})
            await until(lambda: len(server.messages) >= 20, within=30)
            await asyncio.sleep(1.5)                        # several rechecks of the waiting rows
            assert set(received(server)) == set(valid)
            waiting = await db.fetch("SELECT s.detail, s.waiting_since FROM sends s JOIN contacts c ON "
                                     "c.id = s.contact_id WHERE s.campaign_id = $1 AND c.status = 'pending'",
                                     campaign_id)
            assert len(waiting) == 10
            assert {w["detail"] for w in waiting} == {"waiting for the contact's validation"}
            assert all(w["waiting_since"] is not None for w in waiting)
            await db.execute("UPDATE contacts SET status = 'valid' WHERE email = ANY($1::text[])", pending)
            await wait_for_status(db, campaign_id, "completed", within=30)
        got = received(server)
    assert set(got) == set(valid) | set(pending) and set(got.values()) == {1}


async def test_a_contact_that_never_validates_is_skipped_after_the_tenants_wait(client, admin, seeded, db,
                                                                                settings) -> None:
    await add_contacts(client, admin, 3, prefix="slow", domain="slow{i}.example")
    await db.execute("UPDATE tenants SET settings = settings || '{\"validation_wait_hours\": 0.0005}' WHERE id = 1")
    await use_ips(db, 1, [1])
    async with SmtpTestServer() as server:
        async with running_worker(at(settings, server, dns_servers=("127.0.0.1:9",)), retry_delay=quick_retry,
                                  dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                          "statuses": ["pending"]})
            await wait_for_status(db, campaign_id, "completed", within=30)
        assert not server.messages
    details = {r["detail"] for r in await db.fetch("SELECT detail FROM sends WHERE campaign_id = $1", campaign_id)}
    assert details == {"contact not validated within 0.0005 h"}


async def test_risky_contacts_are_mailed_unless_the_tenant_says_no(client, admin, seeded, db, settings) -> None:
    emails = await add_contacts(client, admin, 4, prefix="risky")
    await db.execute("UPDATE contacts SET status = 'risky' WHERE tenant_id = 1")
    await db.execute("UPDATE tenants SET settings = settings || '{\"mail_risky\": false}' WHERE id = 1")
    await use_ips(db, 1, [1])
    async with SmtpTestServer() as server:
        async with running_worker(at(settings, server), retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                          "statuses": ["risky"]})
            await wait_for_status(db, campaign_id, "completed", within=30)
            assert not server.messages
            await db.execute("UPDATE tenants SET settings = settings - 'mail_risky' WHERE id = 1")
            second = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                     "statuses": ["risky"]})
            await wait_for_status(db, second, "completed", within=30)
        assert set(received(server)) == set(emails)
    assert {r["detail"] for r in await db.fetch("SELECT detail FROM sends WHERE campaign_id = $1", campaign_id)} \
        == {"contact is risky and the tenant mails only valid contacts"}


async def test_a_sender_side_refusal_pauses_the_campaign_and_suppresses_nobody(client, admin, seeded, db,
                                                                               settings) -> None:
    await add_contacts(client, admin, 200)
    await mark_valid(db)
    await use_ips(db, 1, [1])
    refusal = "553 5.1.7 <bounce@sos-expat-mail-01.example>: Sender address rejected: malformed address"
    async with SmtpTestServer(mail_reply=refusal) as server:
        async with running_worker(at(settings, server), retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "paused", within=30)
            await asyncio.sleep(0.5)
        assert not server.messages
    reason = await db.fetchval("SELECT pause_reason FROM campaigns WHERE id = $1", campaign_id)
    assert "5.1.7" in reason and "Sender address rejected" in reason
    alert = await db.fetchrow("SELECT kind, detail FROM alert_events WHERE subject = $1", f"campaign:{campaign_id}")
    assert alert["kind"] == "campaign_auto_paused" and alert["detail"]["reason"] == reason
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = 1") == 0
    counts = await send_counts(db, campaign_id)
    # the chunk that met the refusal failed with it; every other row waits, untouched, for a resume
    assert counts["failed"] <= 64 and counts["queued"] == 200 - counts["failed"], counts
    failed = await db.fetch("SELECT smtp_status, bounce_category FROM sends WHERE status = 'failed'")
    assert {(r["smtp_status"], r["bounce_category"]) for r in failed} == {("5.1.7", "invalid-sender")}
    assert await db.fetchval("SELECT count(*) FROM quota_grants WHERE granted > 0") <= 1
    granted = await db.fetchval("SELECT coalesce(sum(granted), 0) FROM quota_grants WHERE scope = 'ip'")
    assert granted == counts["failed"]                       # the released rows gave their tokens back


async def test_the_sending_policy_api(client, admin, seeded) -> None:
    limits = {"campaign": {"hard_bounce_rate": 0.02, "complaint_rate": 0.001, "min_results": 200},
              "ip": {"hard_bounce_rate": 0.05, "complaint_rate": 0.003, "min_results": 500},
              "domain": {"hard_bounce_rate": 0.05, "complaint_rate": 0.003, "min_results": 500}}
    r = await client.get("/api/v2/tenants/1/sending-policy", headers=admin)
    assert r.status_code == 200
    assert r.json() == {"mail_risky": True, "validation_wait_hours": 24.0, "auto_pause": limits}
    r = await client.patch("/api/v2/tenants/1/sending-policy", json={"mail_risky": False}, headers=admin)
    assert r.status_code == 200
    assert r.json() == {"mail_risky": False, "validation_wait_hours": 24.0, "auto_pause": limits}
    r = await client.patch("/api/v2/tenants/1/sending-policy", json={"validation_wait_hours": 0}, headers=admin)
    assert r.status_code == 400 and "validation_wait_hours" in r.text
    r = await client.patch("/api/v2/tenants/1/sending-policy", json={"mail_risk": True}, headers=admin)
    assert r.status_code == 400 and "mail_risk" in r.text
    from tests.conftest import tenant_key
    other = await tenant_key(client, admin, 2)
    assert (await client.get("/api/v2/tenants/1/sending-policy", headers=other)).status_code == 404
    assert (await client.patch("/api/v2/tenants/1/sending-policy", json={"mail_risky": True},
                               headers=other)).status_code == 404
    r = await client.get("/api/v2/tenants/2/sending-policy", headers=other)
    assert r.status_code == 200 and r.json()["mail_risky"] is True


async def test_every_attempt_keeps_its_token_counted_for_its_day(client, admin, seeded, db, settings) -> None:
    emails = await add_contacts(client, admin, 40)
    await mark_valid(db)
    await use_ips(db, 1, [1, 1])
    greylisted = emails[:10]
    replies = {addr: ["451 4.7.1 Greylisted, try again later"] for addr in greylisted}
    async with SmtpTestServer(rcpt_replies=replies) as server:
        async with running_worker(at(settings, server), retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "completed", within=30)
    assert set(received(server)) == set(emails)
    # 40 first attempts and 10 retries: the retry's token does not replace the first one's
    assert await db.fetchval("SELECT sum(granted) FROM quota_grants WHERE scope = 'ip'") == 50
    stamps = await db.fetch("SELECT ip_id, ip_assigned_at FROM sends WHERE campaign_id = $1", campaign_id)
    assert all(s["ip_id"] is not None and s["ip_assigned_at"] is not None for s in stamps)


async def test_a_from_domain_with_a_wrong_dkim_record_holds_the_campaign(client, admin, seeded, db,
                                                                         settings) -> None:
    emails = await add_contacts(client, admin, 30)
    await mark_valid(db)
    await use_ips(db, 1, [1])
    await db.execute("UPDATE domains SET dkim_status = 'wrong', dns_report = $2 WHERE tenant_id = 1 AND name = $1",
                     "sos-expat-mail-01.example", {"dkim": {"detail": "the record holds another key"}})
    async with SmtpTestServer() as server:
        async with running_worker(at(settings, server), retry_delay=quick_retry, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            deadline = time.monotonic() + 20
            while not await db.fetchval("SELECT wait_reason FROM campaigns WHERE id = $1", campaign_id):
                assert time.monotonic() < deadline, "the campaign never said what it waits for"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert not server.messages
            reason = await db.fetchval("SELECT wait_reason FROM campaigns WHERE id = $1", campaign_id)
            assert reason == "DKIM of sos-expat-mail-01.example is wrong: the record holds another key"
            r = await client.get(f"/api/v2/campaigns/1/{campaign_id}", headers=admin)
            assert r.json()["wait_reason"] == reason and r.json()["status"] == "sending"
            await db.execute("UPDATE domains SET dkim_status = 'ok' WHERE tenant_id = 1")
            await wait_for_status(db, campaign_id, "completed", within=30)
    assert set(received(server)) == set(emails)
    assert await db.fetchval("SELECT wait_reason FROM campaigns WHERE id = $1", campaign_id) is None
