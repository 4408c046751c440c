"""/metrics after a real campaign: the series say what the send log, the quota ledger and the plans say."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import io
import json
import logging
import re
import secrets
import socket
from collections import defaultdict
from pathlib import Path

import asyncpg
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import ips, logs
from engine.fleet_metrics import FleetMetrics
from engine.settings import load_settings
from tests.campaign_helpers import (
    add_contacts,
    create_and_start,
    mark_valid,
    running_worker,
    use_ips,
    wait_for_status,
)
from tests.conftest import tenant_key
from tests.smtpserver import SmtpTestServer
from tests.test_campaign_send import FAST

GMAIL_MX = "alt1.aspmx.l.google.com"
# The bounce table's classes of the categories this test's accounting file uses (engine/sending/bounces.toml).
CLASS_OF = {"bad-mailbox": "hard", "spam-related": "policy", "quota-issues": "soft"}


def scrape(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {labels (sorted items): value}; parsing the whole exposition proves it well-formed."""
    found: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def metrics_now(client, admin):
    """GET /metrics with a fresh reading of the stores (as once the two-second cache has expired)."""
    client.app.state.fleet_metrics = None
    return await client.get("/metrics", headers=admin)


def readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """The README's table of metrics: name -> (type, label names)."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| `(email_engine_[a-z_]+)` \| (\w+) \| ([a-z, ]*?) ?\|", text, re.MULTILINE)
    return {name: (kind, {x.strip() for x in labels.split(",") if x.strip()}) for name, kind, labels in rows}


def check_readme(text: str) -> None:
    """Every metric the engine declares is in the README with its type and labels, and nothing else is."""
    listed = readme_metrics()
    declared = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("email_engine_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for sample in family.samples for k in sample.labels if k not in ("le", "quantile")}
        declared[name] = family.type
        assert name in listed, f"{name} is not in the README"
        if family.samples:
            assert listed[name] == (family.type, labels), name
    assert set(listed) == set(declared), set(listed) ^ set(declared)


def keyed(rows, *names: str) -> dict[tuple, float]:
    """SQL rows -> the same shape as scrape(): {labels: value}, zero counts left out."""
    return {tuple(sorted((n, str(r[n])) for n in names)): float(r["n"]) for r in rows if r["n"]}


def only(series: dict[tuple, float], **match: str) -> dict[tuple, float]:
    return {k: v for k, v in series.items() if all(dict(k).get(n) == v2 for n, v2 in match.items()) and v}


async def send_log(db: asyncpg.Connection, campaign_id: int, where: str, *, by_class: bool = False):
    """The send log counted independently of engine.fleet_metrics, with the provider spelt out for this data."""
    klass = (", CASE s.bounce_category " + " ".join(f"WHEN '{c}' THEN '{k}'" for c, k in CLASS_OF.items())
             + " END AS class") if by_class else ""
    return await db.fetch(
        f"SELECT s.tenant_id AS tenant, s.campaign_id AS campaign, coalesce(s.vmta, '') AS vmta, "
        f"CASE WHEN c.mx_host = '{GMAIL_MX}' THEN 'gmail' ELSE 'other' END AS provider{klass}, count(*) AS n "
        f"FROM sends s JOIN contacts c ON c.id = s.contact_id WHERE s.campaign_id = $1 AND {where} "
        f"GROUP BY 1, 2, 3, 4{', 5' if by_class else ''}", campaign_id)


async def test_metrics_after_a_campaign_equal_the_send_log(client, admin, seeded, db: asyncpg.Connection,
                                                            settings, json_lines) -> None:
    emails = await add_contacts(client, admin, 60)
    await mark_valid(db)
    # a third of the audience has Google's MX: their provider label is gmail, the rest "other"
    await db.execute("UPDATE contacts SET mx_host = $1 WHERE tenant_id = 1 AND id % 3 = 0", GMAIL_MX)
    vmtas = await use_ips(db, 1, [5, 5])
    r = await client.post("/api/v2/suppressions", headers=admin,
                          json={"tenant_id": 1, "emails": emails[57:], "reason": "manual"})
    assert r.status_code in (200, 201), r.text
    greylisted, unknown = emails[:10], emails[10:15]
    before = scrape((await metrics_now(client, admin)).text)
    replies = {addr: ["451 4.7.1 Greylisted, try again later"] for addr in greylisted}
    async with SmtpTestServer(rcpt_replies=replies, hard_bounce=set(unknown)) as server:
        tuned = msgspec.structs.replace(settings, pmta_host=server.host, pmta_port=server.port, pmta_pool_size=4)
        async with running_worker(tuned, dispatch_tuning=FAST, retry_delay=lambda attempt: 0.2 if attempt < 4 else None):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "completed")

    # PowerMTA's accounting brings back deliveries, bounces of two classes and complaints
    sent = await db.fetch("SELECT s.id, c.email FROM sends s JOIN contacts c ON c.id = s.contact_id "
                          "WHERE s.campaign_id = $1 AND s.status = 'injected' ORDER BY s.id", campaign_id)
    assert len(sent) == 52
    lines = ["type,timeLogged,rcpt,dsnStatus,dsnDiag,bounceCat,envId,orig,feedbackType"]
    when = "2026-11-24 10:00:00+0000"
    for row in sent[:30]:
        lines.append(f"d,{when},{row['email']},2.0.0,smtp;250 ok,,{row['id']},,")
    for row in sent[30:36]:
        lines.append(f"b,{when},{row['email']},5.1.1,smtp;550 5.1.1 unknown user,bad-mailbox,{row['id']},,")
    for row in sent[36:40]:
        lines.append(f"b,{when},{row['email']},5.7.1,smtp;554 5.7.1 spam,spam-related,{row['id']},,")
    for row in sent[:3]:
        lines.append(f"f,{when},,,,,,bounce-{row['id']}@sos-expat-mail-01.example,abuse")
    r = await client.post("/api/v2/feedback/pmta-accounting", content="\r\n".join(lines).encode() + b"\r\n",
                          headers={**admin, "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert (r.json()["feedback"]["delivered"], r.json()["feedback"]["bounced"],
            r.json()["feedback"]["complaints"]) == (30, 10, 3), r.text

    response = await metrics_now(client, admin)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = scrape(response.text)
    mine = {"campaign": str(campaign_id)}

    expected = {
        "email_engine_messages_injected_total": await send_log(db, campaign_id, "s.injected_at IS NOT NULL"),
        "email_engine_messages_delivered_total": await send_log(db, campaign_id, "s.status = 'delivered'"),
        "email_engine_messages_complained_total": await send_log(db, campaign_id, "s.complained_at IS NOT NULL"),
        "email_engine_messages_skipped_total": await send_log(db, campaign_id, "s.status = 'skipped'"),
    }
    for name, rows in expected.items():
        assert only(got[name], **mine) == keyed(rows, "tenant", "campaign", "vmta", "provider"), name
    bounced = await send_log(db, campaign_id, "s.status = 'bounced'", by_class=True)
    failed = await send_log(db, campaign_id, "s.status = 'failed'", by_class=True)
    labels = ("tenant", "campaign", "vmta", "provider", "class")
    assert only(got["email_engine_messages_bounced_total"], **mine) == keyed(bounced, *labels)
    assert only(got["email_engine_messages_failed_total"], **mine) == keyed(failed, *labels)
    # the figures themselves, so the comparison above cannot pass on two empty sides
    total = {name: sum(only(got[name], **mine).values()) for name in (
        "email_engine_messages_injected_total", "email_engine_messages_delivered_total",
        "email_engine_messages_bounced_total", "email_engine_messages_complained_total",
        "email_engine_messages_failed_total", "email_engine_messages_skipped_total")}
    assert list(total.values()) == [52, 30, 10, 3, 5, 3], total
    assert {dict(k)["class"] for k in only(got["email_engine_messages_bounced_total"], **mine)} == {"hard", "policy"}
    assert {dict(k)["provider"] for k in only(got["email_engine_messages_injected_total"], **mine)} == {"gmail", "other"}
    assert {dict(k)["vmta"] for k in only(got["email_engine_messages_injected_total"], **mine)} == set(vmtas)
    progress = {dict(k)["status"]: v for k, v in only(got["email_engine_campaign_messages"], **mine).items()}
    assert progress == {"delivered": 30, "bounced": 10, "injected": 12, "failed": 5, "skipped": 3}

    # quotas: each attempt that reached PowerMTA took a token (a greylisted row took two, maybe from two IPs):
    # the series is the quota ledger per IP, and its sum the attempts of the rows stamped today
    today = dt.datetime.now(dt.UTC).date()  # the seeded tenants are on UTC
    ledger = {r["vmta_name"]: r["granted"] for r in await db.fetch(
        "SELECT i.vmta_name, g.granted FROM quota_grants g JOIN ips i ON i.id = g.scope_id "
        "WHERE g.scope = 'ip' AND g.day = $1", today)}
    attempts = await db.fetchval("SELECT sum(attempts) FROM sends WHERE ip_id IS NOT NULL "
                                 "AND ip_assigned_at >= $1::date", today)
    used = {dict(k)["vmta"]: v for k, v in got["email_engine_ip_quota_used"].items() if dict(k)["tenant"] == "1"}
    assert {v: n for v, n in used.items() if n} == ledger and set(ledger) == set(vmtas)
    assert sum(used.values()) == attempts == 67
    candidates = {c.vmta_name: c.daily_quota for c in await ips.sending_candidates(db, 1, today)}
    quota = {dict(k)["vmta"]: v for k, v in got["email_engine_ip_quota"].items() if dict(k)["tenant"] == "1"}
    assert {v: quota[v] for v in candidates} == candidates and candidates[vmtas[0]] == 1_000_000
    warming = await db.fetch("SELECT i.vmta_name, w.current_day FROM ips i JOIN warmup_plans w ON w.ip_id = i.id "
                             "WHERE i.tenant_id = 2")
    day = {dict(k)["vmta"]: v for k, v in got["email_engine_ip_warmup_day"].items() if dict(k)["tenant"] == "2"}
    assert warming and day == {r["vmta_name"]: r["current_day"] for r in warming}
    status = {dict(k)["vmta"]: dict(k)["status"] for k in got["email_engine_ip_status"] if dict(k)["tenant"] == "1"}
    assert status[vmtas[0]] == "active" and list(status.values()).count("active") == 2

    # what only the process knows: every message handed to the SMTP pool is in the latency histogram
    def handed(scraped, outcome):
        return scraped["email_engine_injection_seconds_count"].get((("outcome", outcome),), 0)

    assert {o: handed(got, o) - handed(before, o) for o in ("sent", "soft", "hard")} == \
        {"sent": 52, "soft": 10, "hard": 5}
    ingested = got["email_engine_contacts_ingested_total"]
    assert ingested[(("outcome", "created"), ("source", "1"), ("tenant", "1"))] >= 60
    assert got["email_engine_store_up"] == {(("store", "postgresql"),): 1.0, (("store", "redis"),): 1.0}
    assert got["email_engine_tenant_info"][(("name", "SOS-Expat"), ("tenant", "1"))] == 1
    check_readme(response.text)
    # the campaign's sending loop logged with its campaign id
    assert any(line.get("campaign_id") == campaign_id and line["logger"] == "workers.campaigns"
               for line in json_lines())


async def test_metrics_need_the_admin_key(client, admin, seeded) -> None:
    assert (await client.get("/metrics")).status_code == 401
    tenant = await tenant_key(client, admin, 1)
    r = await client.get("/metrics", headers=tenant)
    assert r.status_code == 403 and r.json()["detail"] == "this operation needs the admin key"


async def test_labels_carry_no_address(client, admin, seeded, db: asyncpg.Connection) -> None:
    await add_contacts(client, admin, 20, prefix="private-person")
    text = (await metrics_now(client, admin)).text
    assert "private-person" not in text and "@" not in text.replace("# ", "")


async def test_a_store_that_does_not_answer_is_reported_not_raised(database_url, redis_url, namespace) -> None:
    from redis.asyncio import Redis

    from engine import db as dbm

    pool = await dbm.create_pool(database_url, min_size=0)
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        fleet = FleetMetrics(pool, dead, queue_name=f"{namespace}:queue", worker_timeout=10)
        got = scrape((await fleet.exposition()).decode())
    finally:
        await dead.aclose()
        await pool.close()
    assert got["email_engine_store_up"] == {(("store", "postgresql"),): 1.0, (("store", "redis"),): 0.0}
    assert "email_engine_queue_jobs" not in got and "email_engine_workers_alive" in got


async def test_the_queue_depth_is_the_arq_queue(client, admin, seeded, settings, redis) -> None:
    from arq.connections import ArqRedis

    arq = ArqRedis(connection_pool=redis.connection_pool)
    # arq's job keys are not under the queue's name: ids of this run's own, or a job left by an earlier run on
    # the same Redis would make enqueue_job a no-op
    run = secrets.token_hex(6)
    for i in range(3):
        assert await arq.enqueue_job("ping", _queue_name=settings.queue_name, _job_id=f"metrics-test-{run}-{i}")
    got = scrape((await metrics_now(client, admin)).text)
    assert got["email_engine_queue_jobs"] == {(): 3.0}
    assert got["email_engine_queue_oldest_due_seconds"][()] >= 0


@pytest.fixture
def json_lines():
    """What the root logger writes in JSON during one test, as parsed lines; the logger is restored after."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_log_lines_carry_the_context_ids(json_lines) -> None:
    def in_a_job() -> None:
        logs.request_id.set("req-1")
        logs.tenant_id.set(2)
        logs.campaign_id.set(7)
        logs.job_id.set("job-9")
        logging.getLogger("engine.test").info("sent %d", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("engine.test").exception("failed")

    contextvars.copy_context().run(in_a_job)
    logging.getLogger("engine.test").warning("outside")
    first, second, outside = [x for x in json_lines() if x["logger"] == "engine.test"]
    assert {k: first[k] for k in ("level", "logger", "message", "request_id", "tenant_id", "campaign_id",
                                  "job_id")} == {"level": "INFO", "logger": "engine.test", "message": "sent 3",
                                                 "request_id": "req-1", "tenant_id": 2, "campaign_id": 7,
                                                 "job_id": "job-9"}
    assert second["message"] == "failed" and "ValueError: boom" in second["error"]
    assert dt.datetime.fromisoformat(first["time"]).tzinfo is not None
    assert set(outside) == {"time", "level", "logger", "message"}


def test_the_json_format_is_what_configure_installs() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("WARNING", "json")
        assert [type(h.formatter) for h in root.handlers] == [logs.JsonFormatter]
        logs.configure("INFO", "text")
        assert root.handlers[0].formatter._fmt == logs.TEXT_FORMAT and root.level == logging.INFO
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_a_request_id_is_kept_or_made_and_echoed(client, admin) -> None:
    r = await client.get("/health", headers={"X-Request-ID": "proxy-123"})
    assert r.headers["x-request-id"] == "proxy-123"
    forged = await client.get("/health", headers={"X-Request-ID": "a b\tc"})
    assert forged.headers["x-request-id"] != "a b\tc" and len(forged.headers["x-request-id"]) == 32


def test_the_log_format_setting() -> None:
    assert load_settings({"EMAIL_ENGINE_LOG_FORMAT": "JSON"}).log_format == "json"
    assert load_settings({}).log_format == "text"
    try:
        load_settings({"EMAIL_ENGINE_LOG_FORMAT": "xml"})
    except Exception as exc:
        assert str(exc) == "EMAIL_ENGINE_LOG_FORMAT: expected text or json, got 'xml'"
    else:
        raise AssertionError("a bad log format was accepted")


async def test_jobs_are_counted_by_name_and_outcome(settings, redis) -> None:
    from arq.connections import ArqRedis
    from prometheus_client import REGISTRY

    from tests.conftest import SECRET_KEY
    from workers.main import create_worker

    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("email_engine_jobs_total", {"job": "ping", "outcome": outcome}) or 0.0

    ok, failed = count("ok"), count("failed")
    arq = ArqRedis(connection_pool=redis.connection_pool)
    await arq.enqueue_job("ping", _queue_name=settings.queue_name)
    await arq.enqueue_job("ping", "an argument ping does not take", _queue_name=settings.queue_name)
    worker = create_worker(settings, secret_key=SECRET_KEY, burst=True, handle_signals=False, max_tries=1,
                           cron_jobs=None)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    assert (count("ok") - ok, count("failed") - failed) == (1, 1)
    assert REGISTRY.get_sample_value("email_engine_job_seconds_count", {"job": "ping"}) >= 2


def test_up_gives_each_worker_its_own_metrics_port(settings, monkeypatch) -> None:
    from api.cli import _children

    monkeypatch.delenv("EMAIL_ENGINE_WORKER_METRICS_PORT", raising=False)
    specs, _ = _children(msgspec.structs.replace(settings, worker_metrics_port=9500), workers=2, standin=False)
    assert [s.env["EMAIL_ENGINE_WORKER_METRICS_PORT"] for s in specs] == ["9500", "9501"]
    specs, _ = _children(settings, workers=1, standin=False)
    assert "EMAIL_ENGINE_WORKER_METRICS_PORT" not in specs[0].env


async def test_one_reading_serves_the_scrapes_within_its_time(database_url, seeded, db, redis, namespace) -> None:
    from engine import db as dbm

    pool = await dbm.create_pool(database_url, min_size=0)
    try:
        cached = FleetMetrics(pool, redis, queue_name=f"{namespace}:queue", worker_timeout=10, ttl=3600)
        fresh = FleetMetrics(pool, redis, queue_name=f"{namespace}:queue", worker_timeout=10, ttl=0,
                             cost_factor=0)
        first, _ = await cached.exposition(), await fresh.exposition()
        await db.execute("INSERT INTO alert_events (tenant_id, kind, subject) VALUES (2, 'ip_paused', 'x')")
        assert await cached.exposition() == first
        after = scrape((await fresh.exposition()).decode())
    finally:
        await pool.close()
    assert after["email_engine_alert_events_total"][(("kind", "ip_paused"), ("tenant", "2"))] == 1
    assert scrape(first.decode())["email_engine_alert_events_total"][(("kind", "ip_paused"), ("tenant", "2"))] == 0


async def test_a_request_logs_one_json_line_with_its_request_and_tenant(client, admin, seeded,
                                                                        json_lines) -> None:
    tenant = await tenant_key(client, admin, 2)
    r = await client.get("/api/v2/tenants/2", headers={**tenant, "X-Request-ID": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    [line] = [x for x in json_lines() if x["logger"] == "api.requests" and x.get("request_id") == "trace-42"]
    assert (line["request_id"], line["tenant_id"], line["level"]) == ("trace-42", 2, "INFO")
    assert line["message"].startswith("GET ") and " 200 " in line["message"] and "/" not in line["message"]


async def test_a_listener_that_refuses_connections_is_counted_and_its_messages_timed() -> None:
    from prometheus_client import REGISTRY

    from engine.sending.transport import OutgoingMessage
    from pmta.inject import Injector

    def value(name: str, labels: dict) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = value("email_engine_smtp_connection_errors_total", {"kind": "connect"})
    soft = value("email_engine_injection_seconds_count", {"outcome": "soft"})
    msg = OutgoingMessage(envelope_id="1", mail_from="bounce@sender.example", rcpt_to="someone@inbox.example",
                          data=b"Subject: x\r\n\r\nbody\r\n")
    async with Injector("127.0.0.1", port, pool_size=1, timeout=5) as injector:
        result = await injector.send(msg)
    assert result.outcome == "soft" and not result.transmitted
    assert value("email_engine_smtp_connection_errors_total", {"kind": "connect"}) - errors == 1
    assert value("email_engine_injection_seconds_count", {"outcome": "soft"}) - soft == 1


async def test_rows_without_a_quota_token_are_counted_as_token_waits(client, admin, seeded, db, settings) -> None:
    from prometheus_client import REGISTRY

    await add_contacts(client, admin, 12)
    await mark_valid(db)
    await use_ips(db, 1, [1], daily_cap=5)
    waits = REGISTRY.get_sample_value("email_engine_token_waits_total", {"tenant": "1"}) or 0.0
    async with SmtpTestServer() as server:
        tuned = msgspec.structs.replace(settings, pmta_host=server.host, pmta_port=server.port, pmta_pool_size=2)
        async with running_worker(tuned, dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)

            async def five_sent_and_waiting():
                sent = await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND status = 'injected'",
                                         campaign_id)
                now = REGISTRY.get_sample_value("email_engine_token_waits_total", {"tenant": "1"}) or 0.0
                return sent == 5 and now - waits >= 7

            deadline = asyncio.get_running_loop().time() + 60
            while not await five_sent_and_waiting():
                assert asyncio.get_running_loop().time() < deadline, "no token waits counted"
                await asyncio.sleep(0.1)
