"""The feedback loop end to end: automatic pauses on hard bounces, complaint reports (ARF, JMRP) from the API
and the watched directory, provider-aware backoff, against real PostgreSQL, Redis and SMTP sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time

import msgspec

from engine import db as dbm
from engine import health
from engine.sending import backoff
from engine.sending.dispatch import Tuning
from pmta.inject import Injector
from sql import q
from tests.campaign_helpers import (
    add_contacts,
    create_and_start,
    mark_valid,
    running_worker,
    use_ips,
    wait_for_status,
)
from tests.conftest import tenant_key
from tests.smtpserver import HARD_BOUNCE, SmtpTestServer
from workers.feedback import ingest_complaint_reports

FAST = Tuning(idle=0.05, max_wait=0.5, recover_every=1.0, validation_recheck=0.3, unreachable_retry=0.3)
GMAIL_DEFERRAL = ("421 4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail "
                  "originating from your IP address. To protect our users from spam, mail sent from your IP "
                  "address has been temporarily rate limited.")


def quick_retry(attempt: int) -> float | None:
    return 0.2 if attempt < 50 else None


def index(address: str) -> int:
    return int(re.match(r"[a-z]+(\d+)@", address).group(1))


def every_tenth_is_dead(address: str) -> str | None:
    """The sink: 550 5.1.1 for 10% of the recipients (c0, c10, c20...)."""
    return HARD_BOUNCE.format(address=address) if index(address) % 10 == 0 else None


async def counts(db, campaign_id: int) -> dict[str, int]:
    rows = await db.fetch("SELECT status::text, count(*) FROM sends WHERE campaign_id = $1 GROUP BY 1", campaign_id)
    return {r["status"]: r["count"] for r in rows}


async def until(condition, *, within: float) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def at(settings, server: SmtpTestServer):
    return msgspec.structs.replace(settings, pmta_host=server.host, pmta_port=server.port)


async def test_a_campaign_bouncing_at_ten_percent_pauses_itself_until_resumed(client, admin, seeded, db,
                                                                               settings) -> None:
    emails = await add_contacts(client, admin, 700)
    await mark_valid(db)
    [vmta] = await use_ips(db, 1, [1])
    # This test is about the campaign's limit: the IP's and the domain's are set out of reach.
    r = await client.patch("/api/v2/tenants/1/sending-policy", headers=admin, json={
        "auto_pause": {"ip": {"min_results": 1_000_000}, "domain": {"min_results": 1_000_000}}})
    assert r.status_code == 200, r.text
    policy = r.json()["auto_pause"]
    assert policy["campaign"] == {"hard_bounce_rate": 0.02, "complaint_rate": 0.001, "min_results": 200}
    assert policy["ip"]["min_results"] == 1_000_000 and policy["ip"]["hard_bounce_rate"] == 0.05
    for bad, field in (({"campaign": {"hard_bounce_rate": 2}}, "auto_pause.campaign.hard_bounce_rate"),
                       ({"ip": {"min_results": 0}}, "auto_pause.ip.min_results"),
                       ({"campaign": {"threshold": 1}}, "auto_pause.campaign")):
        r = await client.patch("/api/v2/tenants/1/sending-policy", headers=admin, json={"auto_pause": bad})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    dead = {e for e in emails if index(e) % 10 == 0}
    async with SmtpTestServer(rcpt_rule=every_tenth_is_dead) as server:
        transport = Injector(server.host, server.port, pool_size=2, timeout=5.0)
        async with running_worker(at(settings, server), transport=transport, retry_delay=quick_retry,
                                  dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "paused", within=60)
            first = await settled(db, campaign_id)
            results = first.get("injected", 0) + first.get("failed", 0)
            # Judged after every chunk (64): past 200 results at 10% it stops within one chunk.
            assert 200 <= results <= 200 + Tuning().chunk, first
            assert len(server.messages) == first["injected"]
            r = await client.get(f"/api/v2/campaigns/1/{campaign_id}", headers=admin)
            campaign = r.json()
            assert campaign["status"] == "paused"
            reason = campaign["pause_reason"]
            assert reason.startswith("auto-paused: hard bounces ") and f"of {results} results" in reason, reason
            assert "passed the limit of 2.00%" in reason
            # Paused means paused: nothing more goes out while the operator has not resumed it.
            await asyncio.sleep(1.0)
            assert await counts(db, campaign_id) == first and len(server.messages) == first["injected"]
            r = await client.get(f"/api/v2/campaigns/1/{campaign_id}/health", headers=admin)
            assert r.json()["results"] == results and r.json()["hard_bounces"] == first["failed"]
            alert = await db.fetchrow("SELECT kind, detail FROM alert_events WHERE subject = $1",
                                      f"campaign:{campaign_id}")
            assert alert["kind"] == "campaign_auto_paused" and alert["detail"]["results"] == results

            # Resuming re-arms the check: the same bad list pauses it again after another window.
            r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/resume", headers=admin)
            assert r.status_code == 200 and r.json()["pause_reason"] is None
            await until(lambda: _status_is(db, campaign_id, "paused"), within=60)
            second = await settled(db, campaign_id)
            again = second.get("injected", 0) + second.get("failed", 0) - results
            assert 200 <= again <= 200 + Tuning().chunk, second
            # The operator raises the limit and resumes: the rest is sent, once each.
            r = await client.patch("/api/v2/tenants/1/sending-policy", headers=admin,
                                   json={"auto_pause": {"campaign": {"hard_bounce_rate": 0.5}}})
            assert r.json()["auto_pause"]["campaign"]["min_results"] == 200
            r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/resume", headers=admin)
            assert r.status_code == 200
            await wait_for_status(db, campaign_id, "completed", within=60)
    accepted = [rcpt for m in server.messages for rcpt in m.rcpt_tos]
    assert sorted(accepted) == sorted(set(emails) - dead)
    assert await counts(db, campaign_id) == {"injected": 700 - len(dead), "failed": len(dead)}
    suppressed = {r["value"] for r in await db.fetch("SELECT value FROM suppressions WHERE reason = 'hard_bounce'")}
    assert suppressed == dead
    assert await db.fetchval("SELECT status::text FROM ips WHERE vmta_name = $1", vmta) == "active"


async def settled(db, campaign_id: int) -> dict[str, int]:
    """The send log once the worker that paused has recorded its chunk and released the rest of its batch."""
    async def released() -> bool:
        return not {"claimed", "sending"} & set(await counts(db, campaign_id))

    await until(released, within=30)
    return await counts(db, campaign_id)


async def _status_is(db, campaign_id: int, status: str) -> bool:
    return await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id) == status


# --- complaints -----------------------------------------------------------------------------------------------

BOUNDARY = "report-7c1f"


def arf(original: bytes, *, rcpt: str | None, feedback_type: str | None = "abuse", third: str = "message/rfc822",
        report_type: str = "feedback-report", body_only: bool = False) -> bytes:
    """An ARF report (RFC 5965 §2) about `original`, as a feedback-loop mailbox receives it."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in (
        ("Feedback-Type", feedback_type), ("User-Agent", "TestISP-FBL/1.0"), ("Version", "1"),
        ("Original-Rcpt-To", rcpt), ("Arrival-Date", "Tue, 1 Dec 2026 10:00:00 +0000"),
        ("Source-IP", "192.0.2.1")) if v is not None)
    parts = (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
             f"--{BOUNDARY}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n")
    body = parts.encode()
    if third:
        body += f"--{BOUNDARY}\r\nContent-Type: {third}\r\n\r\n".encode() + original + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    if body_only:
        return body
    head = (f"From: fbl@isp.example\r\nTo: fbl@sos-expat-mail-01.example\r\nSubject: abuse report\r\n"
            f'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type={report_type}; '
            f'boundary="{BOUNDARY}"\r\n\r\n')
    return head.encode() + body


def jmrp(original: bytes) -> bytes:
    """A Microsoft JMRP report: the original message attached, no feedback part."""
    return (b"From: staff@hotmail.com\r\nTo: fbl@sos-expat-mail-01.example\r\nSubject: complaint about message\r\n"
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="jmrp"\r\n\r\n'
            b"--jmrp\r\nContent-Type: text/plain\r\n\r\nThis is a complaint.\r\n"
            b"--jmrp\r\nContent-Type: message/rfc822\r\n\r\n" + original + b"\r\n--jmrp--\r\n")


def headers_only(original: bytes, keep: tuple[str, ...]) -> bytes:
    head = original.split(b"\r\n\r\n", 1)[0].decode()
    lines = [line for line in re.split(r"\r\n(?![ \t])", head) if line.split(":", 1)[0].lower() in keep]
    return ("\r\n".join(lines) + "\r\n").encode()


async def post_report(client, headers, data: bytes, content_type: str = "message/rfc822"):
    return await client.post("/api/v2/feedback/arf", content=data, headers={**headers, "Content-Type": content_type})


async def test_a_complaint_about_a_finished_campaign(client, admin, seeded, db, settings, tmp_path) -> None:
    emails = await add_contacts(client, admin, 30)
    await mark_valid(db)
    [vmta] = await use_ips(db, 1, [1])
    async with SmtpTestServer() as server:
        async with running_worker(at(settings, server), transport=Injector(server.host, server.port, pool_size=2),
                                  dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                           "statuses": ["valid", "complained"]})
            await wait_for_status(db, campaign_id, "completed", within=60)
            by_rcpt = {m.rcpt_tos[0]: m.data for m in server.messages}
            ip_id = await db.fetchval("SELECT id FROM ips WHERE vmta_name = $1", vmta)
            domain_id = await db.fetchval("SELECT id FROM domains WHERE name = 'sos-expat-mail-01.example'")

            # Malformed reports: a 400 naming what is wrong, and nothing written.
            original = by_rcpt[emails[0]]
            for data, kind, field in (
                    (b"", "message/rfc822", "body"),
                    (arf(original, rcpt=emails[0]), "text/plain", "Content-Type"),
                    (arf(original, rcpt=emails[0], report_type="delivery-status"), "message/rfc822", "report-type"),
                    (arf(original, rcpt=emails[0], feedback_type=None), "message/rfc822", "Feedback-Type"),
                    (arf(original, rcpt=emails[0], third=""), "message/rfc822", "original-message"),
                    (b"From: a@b.example\r\nSubject: hello\r\n\r\nplain text\r\n", "message/rfc822", "body"),
                    (arf(original, rcpt=emails[0], body_only=True), "multipart/report; report-type=feedback-report",
                     "feedback-report")):   # a multipart body whose boundary the Content-Type does not give
                r = await post_report(client, admin, data, kind)
                assert r.status_code == 400, (field, r.text)
                assert r.json()["field"] == field, r.json()
            assert await db.fetchval("SELECT count(*) FROM complaint_reports") == 0
            assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
            assert await db.fetchval("SELECT count(*) FROM sends WHERE complained_at IS NOT NULL") == 0

            # Another tenant's key cannot reach tenant 1's message: its report stays unmatched and harmless.
            other = await tenant_key(client, admin, 2)
            r = await post_report(client, other, arf(original, rcpt=emails[0]))
            assert r.status_code == 200 and r.json()["matched"] is False, r.text
            assert await db.fetchval("SELECT count(*) FROM suppressions") == 0

            # An ARF report through the tenant's own key: matched by the envelope id the engine put on it.
            own = await tenant_key(client, admin, 1)
            r = await post_report(client, own, arf(original, rcpt=emails[0]))
            assert r.status_code == 200, r.text
            outcome = r.json()
            assert outcome["matched"] and outcome["matched_by"] == "envelope-id" and outcome["suppressed"] == 1
            assert outcome["campaign_id"] == campaign_id and not outcome["duplicate"]
            again = await post_report(client, own, arf(original, rcpt=emails[0]))
            assert again.json()["duplicate"] and again.json()["report_id"] == outcome["report_id"]

            # Only the Message-ID left (text/rfc822-headers), as a multipart body with its boundary given.
            second = headers_only(by_rcpt[emails[1]], ("message-id", "to", "subject"))
            r = await post_report(client, admin, arf(second, rcpt=None, third="text/rfc822-headers", body_only=True),
                                  f'multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"')
            assert r.json()["matched_by"] == "message-id", r.text
            # JMRP: the original attached; matched the same way.
            r = await post_report(client, admin, jmrp(by_rcpt[emails[2]]))
            assert r.json()["matched"] and r.json()["feedback_type"] == "abuse", r.text
            # A report about a message that is not ours is kept, and listed as unmatched.
            stranger = b"Message-ID: <nobody@elsewhere.example>\r\nTo: x@elsewhere.example\r\n\r\nhi\r\n"
            r = await post_report(client, admin, arf(stranger, rcpt="x@elsewhere.example"))
            assert r.json()["matched"] is False
            r = await client.get("/api/v2/feedback/arf?matched=false", headers=admin)
            assert {x["message_id"] for x in r.json()} >= {"<nobody@elsewhere.example>"}
            r = await client.get("/api/v2/feedback/arf", headers=other)
            assert [x["tenant_id"] for x in r.json()] == [2]          # tenant 2 sees only its own unmatched one

            # The watched directory: a maildir's new/ and loose .eml files; processed ones are moved away.
            drop = tmp_path / "fbl"
            (drop / "new").mkdir(parents=True)
            (drop / "new" / "1733050000.M1.fbl").write_bytes(arf(by_rcpt[emails[3]], rcpt=emails[3]))
            (drop / "broken.eml").write_bytes(b"Subject: not a report\r\n\r\nnothing here\r\n")
            ctx = {"settings": msgspec.structs.replace(settings, arf_dir=drop),
                   "pool": await dbm.create_pool(settings.database_url, min_size=1, max_size=2)}
            try:
                assert await ingest_complaint_reports(ctx) == {"read": 2, "matched": 1, "unmatched": 0,
                                                               "duplicates": 0, "rejected": 1}
                assert (await ingest_complaint_reports(ctx))["read"] == 0       # nothing is read twice
            finally:
                await ctx["pool"].close()
            assert sorted(p.name for p in (drop / "processed").iterdir()) == ["1733050000.M1.fbl"]
            assert sorted(p.name for p in (drop / "rejected").iterdir()) == ["broken.eml"]

            complained = set(emails[:4])
            rows = await db.fetch("SELECT value, reason::text FROM suppressions")
            assert {r["value"] for r in rows} == complained and {r["reason"] for r in rows} == {"complaint"}
            # Counted on the campaign, the IP and the domain (once each, whatever was posted twice).
            for path in (f"/api/v2/campaigns/1/{campaign_id}/health", f"/api/v2/ips/1/{ip_id}/health"):
                figures = (await client.get(path, headers=admin)).json()
                assert figures["complaints"] == 4 and figures["complaints_total"] == 4, (path, figures)
            figures = (await client.get(f"/api/v2/domains/1/{domain_id}/health", headers=admin)).json()
            assert figures["health"]["complaints"] == 4 and figures["health"]["complaints_total"] == 4

            # The next campaign reaches everyone but the four who complained.
            server.messages.clear()
            next_id = await create_and_start(client, admin, audience={"tags": ["campaign-test"],
                                                                       "statuses": ["valid", "complained"]})
            await wait_for_status(db, next_id, "completed", within=60)
    reached = {r for m in server.messages for r in m.rcpt_tos}
    assert reached == set(emails) - complained
    skipped = await db.fetch("SELECT detail FROM sends WHERE campaign_id = $1 AND status = 'skipped'", next_id)
    assert len(skipped) == 4 and all(r["detail"] in ("suppressed", "contact is complained") for r in skipped)


# --- provider-aware backoff ---------------------------------------------------------------------------------

async def test_gmail_deferrals_hold_the_ip_for_gmail_only(client, admin, seeded, db, settings) -> None:
    batch = [{"tenant_id": 1, "data_source_id": 1, "email": f"g{i}@gmail.com" if i % 4 == 0 else f"o{i}@inbox.example",
              "first_name": f"Name{i}", "company": f"Company {i}", "language": "en", "tags": ["campaign-test"]}
             for i in range(240)]
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": batch}, headers=admin)
    assert r.status_code in (200, 201), r.text
    await mark_valid(db)
    await db.execute("UPDATE contacts SET mx_host = 'gmail-smtp-in.l.google.com' WHERE email LIKE '%@gmail.com'")
    [vmta] = await use_ips(db, 1, [1])
    ip_id = await db.fetchval("SELECT id FROM ips WHERE vmta_name = $1", vmta)
    gmail_tries: list[str] = []

    def gmail_defers(address: str) -> str | None:
        if address.endswith("@gmail.com"):
            gmail_tries.append(address)
            return GMAIL_DEFERRAL
        return None

    small = msgspec.structs.replace(FAST, batch=32, chunk=8)
    async with SmtpTestServer(rcpt_rule=gmail_defers) as server:
        async with running_worker(at(settings, server), transport=Injector(server.host, server.port, pool_size=2),
                                  retry_delay=quick_retry, dispatch_tuning=small):
            campaign_id = await create_and_start(client, admin)

            async def others_done() -> bool:
                return (await counts(db, campaign_id)).get("injected", 0) == 180

            await until(others_done, within=60)
            # Retries of the deferred Gmail rows meet the hold: they wait for it, no attempt made.
            await asyncio.sleep(1.0)
            state = await counts(db, campaign_id)
    assert state == {"injected": 180, "deferred": 60}, state
    assert all(not r.endswith("@gmail.com") for m in server.messages for r in m.rcpt_tos)
    # Three deferrals started the hold; the rows already granted in that batch (8 of 32 are Gmail) were the
    # last to try: the other 52 Gmail rows never reached the server.
    assert 3 <= len(gmail_tries) <= 8, gmail_tries
    r = await client.get("/api/v2/ips/1/provider-holds", headers=admin)
    [hold] = r.json()
    assert hold["ip_id"] == ip_id and hold["provider"] == "gmail" and hold["active"] is True
    assert hold["hold_seconds"] == 3600 and hold["holds"] == 1 and "4.7.28" in hold["last_reply"]
    waiting = await db.fetchval("SELECT min(next_attempt_at) FROM sends WHERE campaign_id = $1 AND status = 'deferred' "
                                "AND attempts = 0", campaign_id)
    assert waiting >= dt.datetime.fromisoformat(hold["held_until"]) - dt.timedelta(seconds=1)
    alert = await db.fetchrow("SELECT kind, detail FROM alert_events WHERE subject = $1", f"ip:{ip_id}/gmail")
    assert alert["kind"] == "provider_backoff" and alert["detail"]["hold_seconds"] == 3600
    assert await db.fetchval("SELECT status::text FROM ips WHERE id = $1", ip_id) == "active"
    # Held again soon after the hold ended: twice as long.
    await db.execute("UPDATE provider_holds SET held_until = now() - interval '1 minute'")
    started = await backoff.observe(db, 1, [(ip_id, "gmail", GMAIL_DEFERRAL)] * 3)
    assert [h.hold_seconds for h in started] == [7200]
    assert await backoff.observe(db, 1, [(ip_id, "other", GMAIL_DEFERRAL)] * 5) == []   # unknown provider: none


# --- IP and domain limits -----------------------------------------------------------------------------------

async def test_an_ip_and_a_domain_past_their_limits_pause_and_resume(client, admin, seeded, db) -> None:
    [vmta] = await use_ips(db, 1, [1])
    ip_id = await db.fetchval("SELECT id FROM ips WHERE vmta_name = $1", vmta)
    await db.execute("UPDATE ips SET status = 'warming' WHERE id = $1", ip_id)
    domain_id = await db.fetchval("SELECT id FROM domains WHERE name = 'sos-expat-mail-01.example'")
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (tenant_id, name, from_name, from_email, status) VALUES (1, 'x', 'x', "
        "'hello@sos-expat-mail-01.example', 'completed') RETURNING id")
    # 499 results with 40 hard bounces: too few to judge yet (the IP's and the domain's limit: 500).
    assert await health.record(db, 1, [health.Tally(campaign_id=campaign_id, ip_id=ip_id, results=499, hard=40)]) == []
    paused = await health.record(db, 1, [health.Tally(campaign_id=campaign_id, ip_id=ip_id, results=1, hard=1)])
    assert {(p.scope, p.scope_id) for p in paused} == {(health.Scope.IP, ip_id), (health.Scope.DOMAIN, domain_id)}
    ip = (await client.get(f"/api/v2/ips/1/{ip_id}", headers=admin)).json()
    assert ip["status"] == "paused" and "hard bounces 41 of 500 results over 24 h (8.20%)" in ip["status_reason"]
    # Its warmup holds: the daily run does not look at it.
    due = await db.fetch(q("warmup-due-ips"), 1, dt.date.today() + dt.timedelta(days=1))
    assert ip_id not in {r["ip_id"] for r in due}
    from engine.sending import policy

    hold = await policy.sender_hold(db, 1, "hello@sos-expat-mail-01.example")
    assert hold is not None and hold.startswith("domain sos-expat-mail-01.example is paused: auto-paused: hard")
    alerts = {(r["kind"], r["subject"]) for r in await db.fetch("SELECT kind, subject FROM alert_events")}
    assert alerts == {("ip_paused", f"ip:{ip_id}"), ("domain_paused", "domain:sos-expat-mail-01.example")}
    # Another tenant's key sees none of it.
    other = await tenant_key(client, admin, 2)
    assert (await client.get(f"/api/v2/domains/2/{domain_id}/health", headers=other)).status_code == 404
    assert (await client.post(f"/api/v2/domains/1/{domain_id}/resume", headers=other)).status_code == 404
    # Resuming lifts the pause and re-arms the check.
    r = await client.post(f"/api/v2/domains/1/{domain_id}/resume", headers=admin)
    assert r.status_code == 200 and r.json()["paused_reason"] is None and r.json()["health"]["results"] == 0
    assert await policy.sender_hold(db, 1, "hello@sos-expat-mail-01.example") is None
    r = await client.post(f"/api/v2/ips/1/{ip_id}/resume", headers=admin)
    assert r.json()["status"] == "warming"
    assert (await client.get(f"/api/v2/ips/1/{ip_id}/health", headers=admin)).json()["results"] == 0


async def test_accounting_records_take_the_same_paths(client, admin, seeded, db, settings) -> None:
    emails = await add_contacts(client, admin, 10)
    await mark_valid(db)
    [vmta] = await use_ips(db, 1, [1])
    ip_id = await db.fetchval("SELECT id FROM ips WHERE vmta_name = $1", vmta)
    async with SmtpTestServer() as server:
        async with running_worker(at(settings, server), transport=Injector(server.host, server.port, pool_size=2),
                                  dispatch_tuning=FAST):
            campaign_id = await create_and_start(client, admin)
            await wait_for_status(db, campaign_id, "completed", within=60)
    sid = {r["email"]: r["id"] for r in await db.fetch(
        "SELECT s.id, c.email FROM sends s JOIN contacts c ON c.id = s.contact_id WHERE s.campaign_id = $1",
        campaign_id)}
    await db.execute("UPDATE contacts SET mx_host = 'alt1.gmail-smtp-in.l.google.com' WHERE email = ANY($1::text[])",
                     emails[6:9])
    header = "type,envId,timeLogged,rcpt,orig,dsnAction,dsnStatus,dsnDiag,bounceCat,jobId,vmta,feedbackType"
    lines = [f"f,{sid[emails[4]]},2026-12-01 10:00:00+0000,{emails[4]},,,,,,{campaign_id},{vmta},abuse",
             f"b,{sid[emails[5]]},2026-12-01 10:00:01+0000,{emails[5]},,failed,5.1.1,smtp;550 5.1.1 unknown user,"
             f"bad-mailbox,{campaign_id},{vmta},"]
    lines += [f"t,{sid[e]},2026-12-01 10:00:02+0000,{e},,delayed,4.7.28,\"smtp;{GMAIL_DEFERRAL}\",,"
              f"{campaign_id},{vmta}," for e in emails[6:9]]
    # A sender-class bounce (the domain's authentication fails) pauses a campaign still sending at once.
    await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign_id)
    lines.append(f"b,{sid[emails[9]]},2026-12-01 10:00:03+0000,{emails[9]},,failed,5.7.26,\"smtp;550 5.7.26 "
                 f"This mail is unauthenticated\",,{campaign_id},{vmta},")
    r = await client.post("/api/v2/feedback/pmta-accounting", headers={**admin, "Content-Type": "text/csv"},
                          content="\n".join([header, *lines]) + "\n")
    assert r.status_code == 200, r.text
    rows = {r["value"]: r["reason"] for r in await db.fetch("SELECT value, reason::text AS reason FROM suppressions")}
    assert rows == {emails[4]: "complaint", emails[5]: "hard_bounce"}
    figures = (await client.get(f"/api/v2/campaigns/1/{campaign_id}/health", headers=admin)).json()
    assert (figures["results"], figures["hard_bounces"], figures["complaints"]) == (10, 1, 1), figures
    [hold] = (await client.get("/api/v2/ips/1/provider-holds", headers=admin)).json()
    assert (hold["ip_id"], hold["provider"], hold["active"]) == (ip_id, "gmail", True)
    campaign = (await client.get(f"/api/v2/campaigns/1/{campaign_id}", headers=admin)).json()
    assert campaign["status"] == "paused" and "5.7.26" in campaign["pause_reason"], campaign
    assert emails[9] not in rows        # the sender's fault: nobody is suppressed for it


async def test_damaged_reports_are_a_400_or_a_result_never_a_500(client, admin, seeded, db) -> None:
    import random

    original = (b"Message-ID: <a@b.example>\r\nX-Envelope-Id: 12\r\nTo: \xff\xfe x@y.example\r\nX-Job: 3\r\n"
                b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\x00\r\n")
    rnd = random.Random(14)
    bases = [arf(original, rcpt="x@y.example"), jmrp(original), arf(original, rcpt=None, third="text/rfc822-headers")]
    seen = set()
    for i in range(150):
        data = bytearray(bases[i % len(bases)])
        for _ in range(rnd.randint(1, 12)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            data = data[:rnd.randrange(len(data))]
        r = await post_report(client, admin, bytes(data))
        assert r.status_code in (200, 400), r.text
        seen.add(r.status_code)
        if r.status_code == 400:
            assert r.json()["field"] and r.json()["detail"]
    assert seen == {200, 400}
