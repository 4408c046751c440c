"""Alert channels: Telegram through a local Bot API, signed webhooks, one message per kind and target per
window then a digest, retries, the test endpoint, tenant isolation and bad input. The clock is the tests'."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from engine import alert_events, alerts
from engine import db as dbm
from tests.conftest import ADMIN_KEY, SECRET_KEY, tenant_key
from tests.http_receivers import BotApi, SignedReceiver
from workers import notify
from workers.notify import deliver_alerts

TOKEN = "123456789:AAE-test-token-0123456789abcdef"
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
async def bot() -> AsyncIterator[BotApi]:
    api = BotApi(TOKEN)
    await api.server.start()
    yield api
    await api.server.shutdown()


@pytest.fixture
async def api(settings, bot) -> AsyncIterator[AsyncTestClient]:
    from api.app import create_app

    app = create_app(msgspec.structs.replace(settings, telegram_api_url=bot.server.url), admin_key=ADMIN_KEY,
                     secret_key=SECRET_KEY)
    async with AsyncTestClient(app=app) as c:
        yield c


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
async def sos(api, seeded) -> dict[str, str]:
    return await tenant_key(api, {"Authorization": f"Bearer {ADMIN_KEY}"}, seeded[0])


async def telegram_channel(api, headers, tenant_id: int = 1, **extra) -> dict:
    r = await api.post(f"/api/v2/alert-channels/{tenant_id}", headers=headers,
                       json={"kind": "telegram", "name": "ops", "chat_id": "-1001234567890", "bot_token": TOKEN,
                             **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def run(pool, http, bot: BotApi, now: dt.datetime, **kw) -> alerts.SendReport:
    """What the worker's alert job does, at the tests' time."""
    async with pool.acquire() as db, db.transaction():
        await alerts.route(db, now)
    return await alerts.send_due(pool, http, SECRET_KEY, bot.server.url, now=now, **kw)


async def test_the_bot_token_is_stored_encrypted_and_never_returned(api, sos, db) -> None:
    created = await telegram_channel(api, sos)
    assert created["secret"] is None and TOKEN not in str(created)
    listed = await api.get("/api/v2/alert-channels/1", headers=sos)
    assert listed.status_code == 200 and TOKEN not in listed.text
    assert listed.json()[0]["target"] == "-1001234567890"
    stored = await db.fetchval("SELECT secret_enc FROM alert_channels")
    assert TOKEN.encode() not in bytes(stored)
    from engine import secrets

    assert secrets.decrypt(SECRET_KEY, stored) == TOKEN


async def test_one_message_per_kind_and_target_per_window_then_a_digest(api, sos, db, pool, http, bot) -> None:
    await telegram_channel(api, sos, window_seconds=3600)
    for _ in range(5):
        await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:3", {"quota": 500, "bounce_rate": "6.1%"})
    await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:4", {"quota": 200})
    await alert_events.raise_alert(db, 1, "dns_check_bad", "domain:7", {"record": "dkim"})
    assert (await run(pool, http, bot, T0)).sent == 3
    assert [m["text"].splitlines()[0] for m in bot.messages] == [
        "ip stepped back: ip:3", "ip stepped back: ip:4", "dns check bad: domain:7"]
    assert bot.messages[0]["chat_id"] == "-1001234567890" and "bounce_rate: 6.1%" in bot.messages[0]["text"]
    # Still inside the window: two more for ip:3 are folded, nothing is sent.
    await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:3", {"quota": 250})
    await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:3", {"quota": 125})
    assert (await run(pool, http, bot, T0 + dt.timedelta(minutes=59))).sent == 0
    assert len(bot.messages) == 3
    # The window closes: one digest of the six held back, which opens the next window.
    assert (await run(pool, http, bot, T0 + dt.timedelta(minutes=61))).sent == 1
    assert bot.messages[-1]["text"] == "ip stepped back: ip:3\n6 more in the last 1 h (one message per 1 h)"
    await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:3", {"quota": 60})
    assert (await run(pool, http, bot, T0 + dt.timedelta(minutes=62))).sent == 0
    # A window that held nothing back sends no digest; the next event opens a fresh window and is sent.
    await run(pool, http, bot, T0 + dt.timedelta(minutes=122))
    assert bot.messages[-1]["text"].startswith("ip stepped back: ip:3\n1 more")
    await alert_events.raise_alert(db, 1, "dns_check_bad", "domain:7", {"record": "spf"})
    assert (await run(pool, http, bot, T0 + dt.timedelta(minutes=130))).sent == 1
    assert bot.messages[-1]["text"] == "dns check bad: domain:7\nrecord: spf"
    statuses = dict(await db.fetch("SELECT status, count(*) FROM alert_deliveries GROUP BY status"))
    assert statuses == {"sent": 6, "folded": 7}
    assert await db.fetchval("SELECT count(*) FROM alert_events WHERE delivered_at IS NULL") == 0


async def test_events_reach_their_tenants_channels_and_engine_wide_ones_the_admins(api, sos, db, pool, http,
                                                                                   bot) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    await telegram_channel(api, sos, chat_id="111")
    await telegram_channel(api, admin, tenant_id=2, chat_id="222")
    r = await api.post("/api/v2/engine/alert-channels", headers=admin,
                       json={"kind": "telegram", "name": "admin", "chat_id": "333", "bot_token": TOKEN})
    assert r.status_code == 201, r.text
    await telegram_channel(api, sos, chat_id="444", kinds=["campaign_completed"])
    await alert_events.raise_alert(db, 1, "ip_paused", "ip:1")
    await alert_events.raise_alert(db, 2, "ip_paused", "ip:60")
    await alert_events.raise_alert(db, None, "pmta_unreachable", "pmta:127.0.0.1:25", {"minutes": 6})
    await alert_events.raise_alert(db, 1, "campaign_completed", "campaign:9")
    await run(pool, http, bot, T0)
    got = sorted((m["chat_id"], m["text"].splitlines()[0]) for m in bot.messages)
    assert got == [("111", "campaign completed: campaign:9"), ("111", "ip paused: ip:1"), ("222", "ip paused: ip:60"),
                   ("333", "pmta unreachable: pmta:127.0.0.1:25"), ("444", "campaign completed: campaign:9")]
    # A tenant's key does not reach the admin's channels.
    assert (await api.get("/api/v2/engine/alert-channels", headers=sos)).status_code == 403


async def test_a_failed_message_is_retried_after_its_backoff_and_given_up_at_the_end(api, sos, db, pool, http,
                                                                                     bot) -> None:
    await telegram_channel(api, sos)
    await alert_events.raise_alert(db, 1, "ip_paused", "ip:1", {"reason": "listed"})
    await bot.server.stop()
    report = await run(pool, http, bot, T0, retry_delays=(10.0, 60.0))
    assert (report.sent, report.retrying) == (0, 1)
    row = await db.fetchrow("SELECT status, attempts, next_attempt_at, last_response FROM alert_deliveries")
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["next_attempt_at"] == T0 + dt.timedelta(seconds=10) and "ConnectError" in row["last_response"]
    assert TOKEN not in row["last_response"]
    # Not due yet: nothing is tried.
    assert msgspec.to_builtins(await run(pool, http, bot, T0 + dt.timedelta(seconds=9), retry_delays=(10.0, 60.0))) \
        == {"sent": 0, "retrying": 0, "failed": 0}
    await bot.server.start()
    assert (await run(pool, http, bot, T0 + dt.timedelta(seconds=10), retry_delays=(10.0, 60.0))).sent == 1
    assert len(bot.messages) == 1
    # A channel that stays down: after the last retry the message is given up (status failed).
    await alert_events.raise_alert(db, 1, "ip_paused", "ip:2")
    await bot.server.stop()
    at = T0 + dt.timedelta(minutes=5)
    reports = []
    for wait in (0, 10, 60):
        at += dt.timedelta(seconds=wait)
        reports.append(await run(pool, http, bot, at, retry_delays=(10.0, 60.0)))
    assert [(r.retrying, r.failed) for r in reports] == [(1, 0), (1, 0), (0, 1)]


async def test_the_bot_token_stays_out_of_the_logs(db, pool, http, bot, seeded, caplog) -> None:
    await alerts.create_channel(db, SECRET_KEY, 1, kind="telegram", name="x", chat_id="5", bot_token=TOKEN)
    await alert_events.raise_alert(db, 1, "ip_paused", "ip:1")
    with caplog.at_level(logging.DEBUG):
        assert (await run(pool, http, bot, T0)).sent == 1
    assert "sendMessage" in caplog.text and TOKEN not in caplog.text


async def test_a_wrong_token_answer_is_a_failure_not_an_exception(db, pool, http, bot, seeded) -> None:
    await alerts.create_channel(db, SECRET_KEY, 1, kind="telegram", name="x", chat_id="5",
                                bot_token="987654321:AAE-wrong-token-0123456789abcdef")
    await alert_events.raise_alert(db, 1, "ip_paused", "ip:1")
    report = await run(pool, http, bot, T0)
    assert (report.sent, report.retrying) == (0, 1) and bot.messages == []
    last = await db.fetchval("SELECT last_response FROM alert_deliveries")
    assert '"error_code":401' in last and "wrong-token" not in last


async def test_a_webhook_channel_signs_every_alert(api, sos, db, pool, http, bot) -> None:
    receiver = SignedReceiver()
    await receiver.server.start()
    try:
        r = await api.post("/api/v2/alert-channels/1", headers=sos,
                           json={"kind": "webhook", "name": "hook", "url": receiver.server.url + "/alerts"})
        assert r.status_code == 201, r.text
        receiver.secret = r.json()["secret"]
        assert len(receiver.secret) == 64
        assert "secret" not in (await api.get("/api/v2/alert-channels/1", headers=sos)).text
        receiver.clock = lambda: T0.timestamp()
        await alert_events.raise_alert(db, 1, "campaign_failed", "campaign:3", {"failed": 10})
        await alert_events.raise_alert(db, 1, "ip_stepped_back", "ip:2")
        assert (await run(pool, http, bot, T0)).sent == 2
        assert receiver.bad_signatures == 0
        assert [b["alert"]["kind"] for b in receiver.bodies] == ["campaign_failed", "ip_stepped_back"]
        assert receiver.bodies[0]["alert"]["subject"] == "campaign:3"
        # The receiver refuses a request signed with another secret: the check is real.
        receiver.secret = "another"
        r = await api.post(f"/api/v2/alert-channels/1/{r.json()['channel']['id']}/test", headers=sos)
        assert r.status_code == 200 and r.json()["ok"] is False and r.json()["status"] == 401, r.text
        assert receiver.bad_signatures == 1
    finally:
        await receiver.server.shutdown()


async def test_the_test_endpoint_sends_now_and_says_what_came_back(api, sos, db, bot) -> None:
    channel = (await telegram_channel(api, sos))["channel"]
    r = await api.post(f"/api/v2/alert-channels/1/{channel['id']}/test", headers=sos)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["status"] == 200
    assert bot.messages[0]["text"].startswith("test: ops")
    await bot.server.stop()
    r = await api.post(f"/api/v2/alert-channels/1/{channel['id']}/test", headers=sos)
    assert r.status_code == 200 and r.json()["ok"] is False and r.json()["status"] is None
    log = (await api.get(f"/api/v2/alert-channels/1/{channel['id']}/deliveries", headers=sos)).json()
    assert [(d["kind"], d["status"]) for d in log] == [("test", "failed"), ("test", "sent")]


async def test_another_tenants_channel_is_404(api, sos, db) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    theirs = (await telegram_channel(api, admin, tenant_id=2))["channel"]
    for method, path in (("post", f"/api/v2/alert-channels/2/{theirs['id']}/test"),
                         ("get", f"/api/v2/alert-channels/2/{theirs['id']}/deliveries"),
                         ("delete", f"/api/v2/alert-channels/2/{theirs['id']}"),
                         ("post", f"/api/v2/alert-channels/1/{theirs['id']}/test"),
                         ("delete", f"/api/v2/alert-channels/1/{theirs['id']}"),
                         ("get", "/api/v2/alert-channels/2")):
        r = await getattr(api, method)(path, headers=sos)
        assert r.status_code == 404, (method, path, r.text)
    assert await db.fetchval("SELECT count(*) FROM alert_channels") == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "telegram", "name": "x", "chat_id": "1"}, "bot_token"),
    ({"kind": "telegram", "name": "x", "bot_token": TOKEN}, "chat_id"),
    ({"kind": "telegram", "name": "x", "chat_id": "1", "bot_token": "not a token"}, "bot_token"),
    ({"kind": "telegram", "name": "x", "chat_id": "1; DROP", "bot_token": TOKEN}, "chat_id"),
    ({"kind": "webhook", "name": "x"}, "url"),
    ({"kind": "webhook", "name": "x", "url": "http://ops.example/alerts"}, "url"),
    ({"kind": "webhook", "name": "x", "url": "ftp://127.0.0.1/x"}, "url"),
    ({"kind": "webhook", "name": "x", "url": "https://ops.example", "bot_token": TOKEN}, "bot_token"),
    ({"kind": "telegram", "name": "x", "chat_id": "1", "bot_token": TOKEN, "kinds": ["nope"]}, "kinds"),
    ({"kind": "telegram", "name": "x", "chat_id": "1", "bot_token": TOKEN, "window_seconds": 0}, "window_seconds"),
    ({"kind": "sms", "name": "x"}, "kind"),
    ({"kind": "telegram", "name": "x", "chat_id": "1", "bot_token": TOKEN, "colour": "red"}, "colour"),
])
async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api, sos, db, body, field) -> None:
    r = await api.post("/api/v2/alert-channels/1", headers=sos, json=body)
    assert r.status_code == 400, r.text
    assert field in (r.json().get("field") or "") + r.json()["detail"], r.json()
    assert await db.fetchval("SELECT count(*) FROM alert_channels") == 0


async def test_the_workers_notifier_routes_and_sends(settings, db, pool, bot, seeded) -> None:
    await alerts.create_channel(db, SECRET_KEY, 1, kind="telegram", name="x", chat_id="5", bot_token=TOKEN)
    await alert_events.raise_alert(db, 1, "validation_provider_failing", "verifier:zerobounce", {"failures": 5})
    async with httpx.AsyncClient() as http:
        ctx = {"pool": pool, "http": http, "secret_key": SECRET_KEY,
               "settings": msgspec.structs.replace(settings, telegram_api_url=bot.server.url, pmta_host=None)}
        stop = asyncio.Event()
        task = asyncio.create_task(notify._loop(ctx, stop))
        try:
            deadline = time.monotonic() + 30
            while not bot.messages:
                assert time.monotonic() < deadline, "the notifier sent nothing"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        assert (await deliver_alerts(ctx))["events"] == 0          # the job, on demand: nothing left
    assert bot.messages[0]["text"] == "validation provider failing: verifier:zerobounce\nfailures: 5"
