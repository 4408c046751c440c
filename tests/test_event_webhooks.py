"""Event webhooks for integrators: events written with their facts, signed deliveries a receiver verifies, a
receiver down for ten minutes that gets everything afterwards in order, backoff, disabling after a day, the
delivery log, tenant isolation and bad input. The clock is the tests' (no sleeping through backoffs)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from engine import campaigns, events, feedback
from engine import db as dbm
from engine.events import Retry
from pmta.accounting import ParseStats, parse
from tests.conftest import SECRET_KEY, tenant_key
from tests.http_receivers import SignedReceiver
from tests.test_accounting import HEADER, crlf, make_campaign, rec
from tests.test_unsubscribe import token_for

EVERYTHING = list(events.EVENT_TYPES)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await dbm.create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[SignedReceiver]:
    r = SignedReceiver()
    await r.server.start()
    yield r
    await r.server.shutdown()


@pytest.fixture
def T0() -> dt.datetime:  # noqa: N802 (the tests' time zero)
    """Endpoints are due from their creation (the database's now()): the tests' clock starts just after it."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    return await tenant_key(client, admin, seeded[0])


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def advance(self, seconds: float) -> dt.datetime:
        self.at += dt.timedelta(seconds=seconds)
        return self.at


async def register(db, receiver: SignedReceiver, types=EVERYTHING, tenant_id: int = 1) -> int:
    created = await events.create_endpoint(db, SECRET_KEY, tenant_id, url=receiver.server.url + "/hook",
                                           event_types=types)
    receiver.secret = created.secret
    return created.endpoint.id


async def apply(pool, *lines: str) -> feedback.FeedbackReport:
    records = list(parse(crlf(HEADER, *lines), ParseStats()))
    async with pool.acquire() as db, db.transaction():
        return await feedback.apply_records(db, records)


def delivered(sent, who):
    return rec("d", sent[who], who, action="relayed", status="2.0.0 (success)", diag="smtp;250 2.0.0 ok")


def bounced(sent, who):
    return rec("b", sent[who], who, action="failed", status="5.1.1 (bad destination mailbox address)",
               diag="smtp;550 5.1.1 user unknown", cat="bad-mailbox")


def deferred(sent, who, n=0):
    return rec("t", sent[who], who, action="delayed", status="4.7.0 (other)", diag=f"smtp;421 4.7.0 later {n}")


def complaint(sent, who):
    return rec("f", "", "", orig=f"bounce-{sent[who]}@mail.example", fbtype="abuse")


async def test_accounting_results_become_signed_events_with_their_details(db, seeded, pool, http, receiver,
                                                                          T0) -> None:
    await register(db, receiver)
    sent = await make_campaign(db, ("ann", "bob", "cat", "dan"))
    await apply(pool, delivered(sent, "ann"), bounced(sent, "bob"), deferred(sent, "cat"), delivered(sent, "dan"),
                complaint(sent, "dan"))
    receiver.clock = lambda: T0.timestamp()
    report = await events.deliver_due(pool, http, SECRET_KEY, now=T0)
    assert (report.requests, report.delivered, report.failed) == (1, 5, 0)
    assert receiver.bad_signatures == 0
    got = {(e["type"], e["data"]["email"]): e for e in receiver.events}
    assert sorted(got) == [("bounced", "bob@inbox.example"), ("complained", "dan@inbox.example"),
                           ("deferred", "cat@inbox.example"), ("delivered", "ann@inbox.example"),
                           ("delivered", "dan@inbox.example")]
    bounce = got["bounced", "bob@inbox.example"]
    assert (bounce["data"]["bounce_class"], bounce["data"]["category"], bounce["data"]["smtp_code"],
            bounce["data"]["smtp_status"]) == ("hard", "bad-mailbox", 550, "5.1.1")
    assert bounce["data"]["send_id"] == sent["bob"] and bounce["data"]["campaign_id"] == sent.campaign
    assert bounce["contact_id"] == await db.fetchval("SELECT contact_id FROM sends WHERE id = $1", sent["bob"])
    assert bounce["tenant_id"] == 1
    assert got["complained", "dan@inbox.example"]["data"]["feedback_type"] == "abuse"
    assert got["deferred", "cat@inbox.example"]["data"]["smtp_code"] == 421
    # The same records again change nothing, so nothing new is sent.
    await apply(pool, delivered(sent, "ann"), bounced(sent, "bob"), complaint(sent, "dan"))
    assert (await events.deliver_due(pool, http, SECRET_KEY, now=T0)).requests == 0


async def test_an_endpoint_gets_only_its_types_and_its_tenants_events(db, seeded, pool, http, receiver) -> None:
    other = SignedReceiver()
    await other.server.start()
    try:
        await register(db, receiver, ["bounced"])
        await register(db, other, EVERYTHING, tenant_id=2)
        sent = await make_campaign(db, ("ann", "bob"))
        await apply(pool, delivered(sent, "ann"), bounced(sent, "bob"))
        await events.deliver_due(pool, http, SECRET_KEY, now=dt.datetime.now(dt.UTC))
        assert [(e["type"], e["data"]["email"]) for e in receiver.events] == [("bounced", "bob@inbox.example")]
        assert other.bodies == []
    finally:
        await other.server.shutdown()


async def test_without_an_endpoint_nothing_is_stored(db, seeded, pool) -> None:
    sent = await make_campaign(db, ("ann",))
    await apply(pool, delivered(sent, "ann"))
    assert await db.fetchval("SELECT count(*) FROM event_outbox") == 0


async def test_a_receiver_down_for_ten_minutes_gets_every_event_afterwards_in_order(db, seeded, pool, http,
                                                                                     receiver, T0) -> None:
    endpoint = await register(db, receiver)
    people = ("ann", "bob", "cat", "dan", "eve", "fay")
    sent = await make_campaign(db, people)
    clock = Clock(T0)
    receiver.clock = lambda: clock.at.timestamp()
    await receiver.server.stop()
    attempts = 0
    # Ten minutes of traffic while the receiver is down: a batch of results every minute, a pause and a resume,
    # and the engine trying (on its backoff) every 15 s of the clock.
    script = {0: [deferred(sent, p, 0) for p in people],
              1: [deferred(sent, p, 1) for p in people[:3]],
              3: [delivered(sent, "ann"), bounced(sent, "bob"), delivered(sent, "cat")],
              5: [deferred(sent, p, 2) for p in people[3:]],
              7: [delivered(sent, "dan"), complaint(sent, "ann"), bounced(sent, "eve")],
              9: [delivered(sent, "fay"), complaint(sent, "cat")]}
    for step in range(40):                       # 40 x 15 s = 10 minutes
        if step % 4 == 0 and step // 4 in script:
            await apply(pool, *script[step // 4])
        if step == 16:
            async with pool.acquire() as conn, conn.transaction():
                await campaigns.transition(conn, 1, sent.campaign, "pause")
        if step == 20:
            async with pool.acquire() as conn, conn.transaction():
                await campaigns.transition(conn, 1, sent.campaign, "resume")
        report = await events.deliver_due(pool, http, SECRET_KEY, now=clock.at)
        attempts += report.requests
        assert report.delivered == 0
        clock.advance(15)
    assert clock.at - T0 == dt.timedelta(minutes=10)
    # Backed off, not hammering: 10 s doubling means a handful of tries in ten minutes.
    assert 4 <= attempts <= 8
    state = await events.get_endpoint(db, 1, endpoint)
    assert state.failing_since == T0 and state.active and state.last_status is None
    await receiver.server.start()
    requests = 0
    while await db.fetchval("SELECT count(*) FROM event_deliveries WHERE status = 'pending'"):
        requests += (await events.deliver_due(pool, http, SECRET_KEY, now=clock.at)).requests
        clock.advance(15)
        assert clock.at - T0 < dt.timedelta(hours=1), "the backlog should go out within the backoff's cap"
    stored = await db.fetch("SELECT id, type, contact_id FROM event_outbox ORDER BY id")
    assert len(stored) == 6 + 3 + 3 + 3 + 3 + 2 + 2      # 20 results (deferrals with a new reason) + 2 states
    assert receiver.bad_signatures == 0
    got = receiver.events
    assert [e["id"] for e in got] == [r["id"] for r in stored]        # every event, once, in order
    for who in people:
        contact = await db.fetchval("SELECT contact_id FROM sends WHERE id = $1", sent[who])
        assert [e["id"] for e in got if e["contact_id"] == contact] == \
            [r["id"] for r in stored if r["contact_id"] == contact]
    assert [e["data"]["status"] for e in got if e["type"] == "campaign.state"] == ["paused", "sending"]
    assert requests == 1                                           # the backlog went as one batch
    state = await events.get_endpoint(db, 1, endpoint)
    assert (state.failing_since, state.attempts, state.last_status) == (None, 0, 200)
    log = await events.list_deliveries(db, 1, endpoint, before=None, limit=100)
    first = next(d for d in log if d.event_id == stored[0]["id"])
    assert first.status == "delivered" and first.attempts == attempts + 1 and first.last_status == 200


async def test_an_endpoint_failing_for_a_day_is_turned_off_with_an_alert(db, seeded, pool, http, receiver,
                                                                         client, sos, T0) -> None:
    endpoint = await register(db, receiver, ["delivered"])
    receiver.status = 500
    sent = await make_campaign(db, ("ann", "bob"))
    await apply(pool, delivered(sent, "ann"))
    clock = Clock(T0)
    receiver.clock = lambda: clock.at.timestamp()
    retry = Retry(first=60, cap=4 * 3600, give_up=86400)
    tries = []
    while True:
        report = await events.deliver_due(pool, http, SECRET_KEY, now=clock.at, retry=retry)
        tries.append(clock.at - T0)
        state = await events.get_endpoint(db, 1, endpoint)
        if not state.active:
            break
        clock.at = state.next_attempt_at
    assert report.disabled == 1 and tries[-1] >= dt.timedelta(days=1) and tries[-2] < dt.timedelta(days=1)
    assert tries[:4] == [dt.timedelta(0), dt.timedelta(minutes=1), dt.timedelta(minutes=3), dt.timedelta(minutes=7)]
    assert f"failing since {T0.isoformat()}" in state.disabled_reason
    alert = await db.fetchrow("SELECT tenant_id, kind, subject, detail FROM alert_events")
    assert (alert["tenant_id"], alert["kind"], alert["subject"]) == (1, "event_endpoint_disabled",
                                                                     f"event-endpoint:{endpoint}")
    # Turned off, it is sent nothing and queues nothing new; turned back on, what it had not received goes out.
    await apply(pool, delivered(sent, "bob"))
    assert (await events.deliver_due(pool, http, SECRET_KEY, now=clock.advance(60))).requests == 0
    receiver.status = 200
    r = await client.patch(f"/api/v2/event-endpoints/1/{endpoint}", headers=sos, json={"active": True})
    assert r.status_code == 200 and r.json()["disabled_reason"] is None, r.text
    receiver.clock = lambda: dt.datetime.now(dt.UTC).timestamp()
    report = await events.deliver_due(pool, http, SECRET_KEY, now=dt.datetime.now(dt.UTC))
    assert report.delivered == 1
    assert [e["data"]["email"] for e in receiver.events] == ["ann@inbox.example"]


async def test_unsubscribes_and_campaign_transitions_are_events(client, sos, db, seeded, pool, http,
                                                                receiver) -> None:
    await register(db, receiver, ["unsubscribed", "campaign.state"])
    token = token_for("reader@inbox.example", contact_id=0, campaign_id=0)
    for _ in range(2):                               # the second unsubscribe changes nothing: no event
        r = await client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200
    draft = await db.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email) "
                              "VALUES (1, 'x', 'S', 's@mail.example') RETURNING id")
    assert (await client.post(f"/api/v2/campaigns/1/{draft}/cancel", headers=sos)).status_code == 200
    sent = await make_campaign(db, ("ann",))
    await db.execute("UPDATE campaigns SET audience_ready = true WHERE id = $1", sent.campaign)
    await db.execute("UPDATE sends SET status = 'delivered' WHERE campaign_id = $1", sent.campaign)
    assert await campaigns.complete_if_done(pool, sent.campaign)
    await events.deliver_due(pool, http, SECRET_KEY, now=dt.datetime.now(dt.UTC))
    got = [(e["type"], e["data"]) for e in receiver.events]
    assert got[0] == ("unsubscribed", {"email": "reader@inbox.example", "campaign_id": None,
                                       "source": "one-click"})
    assert [(t, d["campaign_id"], d["previous"], d["status"], d["by"]) for t, d in got[1:]] == [
        ("campaign.state", draft, "draft", "cancelled", "operator"),
        ("campaign.state", sent.campaign, "sending", "completed", "engine")]
    alert = await db.fetchrow("SELECT kind, subject, detail FROM alert_events")
    assert (alert["kind"], alert["subject"], alert["detail"]["delivered"]) == (
        "campaign_completed", f"campaign:{sent.campaign}", 1)


async def test_a_campaign_where_nothing_was_accepted_raises_campaign_failed(db, seeded, pool) -> None:
    sent = await make_campaign(db, ("ann", "bob"))
    await db.execute("UPDATE campaigns SET audience_ready = true WHERE id = $1", sent.campaign)
    await db.execute("UPDATE sends SET status = 'failed' WHERE campaign_id = $1", sent.campaign)
    assert await campaigns.complete_if_done(pool, sent.campaign)
    alert = await db.fetchrow("SELECT kind, detail FROM alert_events")
    assert alert["kind"] == "campaign_failed" and alert["detail"]["failed"] == 2


async def test_the_api_shows_the_secret_once_and_keeps_tenants_apart(client, sos, admin, db, seeded) -> None:
    r = await client.post("/api/v2/event-endpoints/1", headers=sos,
                          json={"url": "https://crm.example/hooks", "event_types": ["bounced", "delivered"]})
    assert r.status_code == 201, r.text
    mine = r.json()["endpoint"]["id"]
    assert len(r.json()["secret"]) == 64 and r.json()["endpoint"]["event_types"] == ["delivered", "bounced"]
    assert r.json()["secret"].encode() not in bytes(await db.fetchval("SELECT secret_enc FROM event_endpoints"))
    listed = await client.get("/api/v2/event-endpoints/1", headers=sos)
    assert listed.status_code == 200 and "secret" not in listed.text and len(listed.json()) == 1
    r = await client.post("/api/v2/event-endpoints/2", headers=admin,
                          json={"url": "https://other.example/hooks", "event_types": ["delivered"]})
    theirs = r.json()["endpoint"]["id"]
    for method, path in (("get", f"/api/v2/event-endpoints/2/{theirs}"), ("get", "/api/v2/event-endpoints/2"),
                         ("get", f"/api/v2/event-endpoints/1/{theirs}"),
                         ("patch", f"/api/v2/event-endpoints/1/{theirs}"),
                         ("delete", f"/api/v2/event-endpoints/1/{theirs}"),
                         ("get", f"/api/v2/event-endpoints/1/{theirs}/deliveries"),
                         ("post", "/api/v2/event-endpoints/2")):
        body = {"json": {"active": False}} if method == "patch" else (
            {"json": {"url": "https://x.example", "event_types": ["delivered"]}} if method == "post" else {})
        r = await getattr(client, method)(path, headers=sos, **body)
        assert r.status_code == 404, (method, path, r.text)
    assert (await client.get(f"/api/v2/event-endpoints/1/{mine}/deliveries", headers=sos)).json() == []
    assert (await client.delete(f"/api/v2/event-endpoints/1/{mine}", headers=sos)).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM event_endpoints") == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "https://crm.example/h", "event_types": []}, "event_types"),
    ({"url": "https://crm.example/h", "event_types": ["opened"]}, "event_types"),
    ({"url": "http://crm.example/h", "event_types": ["delivered"]}, "url"),
    ({"url": "javascript:alert(1)", "event_types": ["delivered"]}, "url"),
    ({"url": "https://crm.example/h"}, "event_types"),
    ({"url": "https://crm.example/h", "event_types": ["delivered"], "secret": "mine"}, "secret"),
])
async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(client, sos, db, body, field) -> None:
    r = await client.post("/api/v2/event-endpoints/1", headers=sos, json=body)
    assert r.status_code == 400, r.text
    assert field in (r.json().get("field") or "") + r.json()["detail"], r.json()
    assert await db.fetchval("SELECT count(*) FROM event_endpoints") == 0
