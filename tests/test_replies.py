"""Reply detection against a real Dovecot: a reply stops its contact before the next step, an out-of-office
with a return date resumes after it, a colleague's reply stops the company, a DSN goes the bounce path."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import email.policy
import time
from pathlib import Path

import asyncpg
import msgspec

from engine import replies
from engine.replies import ReplyKind
from engine.sending.dispatch import Tuning
from tests.campaign_helpers import mark_valid, running_worker, use_ips, wait_for_status
from tests.imapserver import dovecot
from tests.smtpserver import SmtpTestServer

FAST = Tuning(idle=0.05, max_wait=0.3, recover_every=0.5, validation_recheck=0.3, unreachable_retry=0.3)
TODAY = dt.date(2026, 12, 1)
MAILBOX = ("replies@sos-expat-mail-01.example", "a-static-test-password")


def _mail(**headers: str) -> email.message.EmailMessage:
    body = headers.pop("body", "Thanks.")
    msg = email.message.EmailMessage(policy=email.policy.default)
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


# --- classification ----------------------------------------------------------------------------------------

def test_rfc3834_headers_make_an_auto_reply() -> None:
    for name, value in (("Auto_Submitted", "auto-replied"), ("X_Autoreply", "yes"), ("X_Autorespond", "1"),
                        ("Precedence", "auto_reply")):
        found = replies.classify(_mail(Subject="Re: hello", **{name: value}), today=TODAY)
        assert found.kind is ReplyKind.AUTO_REPLY, name
    assert replies.classify(_mail(Subject="Re: hello", Auto_Submitted="no"), today=TODAY).kind is ReplyKind.HUMAN
    assert replies.classify(_mail(Subject="Re: hello", Precedence="bulk"), today=TODAY).kind is ReplyKind.HUMAN


def test_out_of_office_subjects_in_the_nine_languages() -> None:
    subjects = {"en": "Out of Office: Re: hello", "fr": "Réponse automatique : hello",
                "es": "Respuesta automática: hello", "de": "Abwesenheitsnotiz: hello",
                "pt": "Resposta automática: hello", "ru": "Автоматический ответ: hello", "zh": "自动回复: hello",
                "hi": "स्वचालित उत्तर: hello", "ar": "رد تلقائي: hello"}
    assert set(subjects) == set(replies.OUT_OF_OFFICE)
    for lang, subject in subjects.items():
        assert replies.classify(_mail(Subject=subject), today=TODAY).kind is ReplyKind.AUTO_REPLY, lang


def test_return_dates() -> None:
    assert replies.return_date("I will be back on 2026-12-15.", today=TODAY) == dt.date(2026, 12, 15)
    assert replies.return_date("Je serai de retour le 15/12/2026.", today=TODAY) == dt.date(2026, 12, 15)
    assert replies.return_date("Ich bin ab 15.12.2026 zurück, bis 14.12.2026 abwesend", today=TODAY) == \
        dt.date(2026, 12, 14)
    assert replies.return_date("Back on 12/15/2026", today=TODAY) == dt.date(2026, 12, 15)
    assert replies.return_date("back on 2020-01-01", today=TODAY) is None        # in the past
    assert replies.return_date("no date here", today=TODAY) is None


def test_a_delivery_status_notification_is_a_bounce() -> None:
    raw = (b"From: MAILER-DAEMON@mx.example\r\nTo: replies@sos.example\r\nSubject: Undelivered\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; gone@firm.example\r\nAction: failed\r\n"
           b"Status: 5.1.1\r\n--b--\r\n")
    parsed = replies.parse(raw, now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    assert parsed is not None and parsed.classified.kind is ReplyKind.BOUNCE
    assert parsed.classified.bounced_rcpt == "gone@firm.example"


def test_unreadable_messages_are_skipped_not_raised() -> None:
    assert replies.parse(b"\x00\xff garbage without headers", now=dt.datetime.now(dt.UTC)) is None
    assert replies.parse(b"", now=dt.datetime.now(dt.UTC)) is None


def test_reply_tokens_name_their_row_and_cannot_be_forged() -> None:
    token = replies.make_token("k" * 32, 42)
    assert replies.read_token("k" * 32, token) == 42
    assert replies.read_token("k" * 32, token.replace("42-", "43-")) is None
    assert replies.read_token("other" * 8, token) is None
    assert replies.reply_token([f"replies+{token}@sos.example"]) == token


# --- against Dovecot ---------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def _until(condition, *, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.1)


async def test_replies_in_the_mailbox_stop_pause_and_stop_the_company(
        client, admin, seeded, db: asyncpg.Connection, settings, tmp_path: Path) -> None:
    people = {"alice": "alice@acme.example", "bob": "bob@beta.example", "carol": "carol@corp.example",
              "dave": "dave@corp.example", "erin": "erin@delta.example", "gone": "gone@echo.example",
              "grace": "grace@foxtrot.example", "henry": "henry@golf.example"}
    r = await client.post("/api/v2/contacts/ingest", headers=admin, json={"contacts": [
        {"tenant_id": 1, "data_source_id": 1, "email": e, "first_name": n.title(), "company": n, "language": "en",
         "tags": ["reply-test"]} for n, e in people.items()]})
    assert r.status_code in (200, 201), r.text
    await mark_valid(db)
    await use_ips(db, 1, [1])
    templates = []
    for n in (1, 2):
        r = await client.post("/api/v2/templates", headers=admin, json={
            "tenant_id": 1, "name": f"Reply test {n}", "language": "en", "subject": f"Step {n} for {{company}}",
            "body_html": f"<p>Step {n}, {{firstName}}.</p>"})
        assert r.status_code == 201, r.text
        templates.append(r.json()["id"])
    r = await client.post("/api/v2/campaigns", headers=admin, json={
        "tenant_id": 1, "name": "Replies", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
        "reply_to": MAILBOX[0], "templates": {"en": templates[0]}, "audience": {"tags": ["reply-test"]}})
    campaign_id = r.json()["id"]
    r = await client.put(f"/api/v2/campaigns/1/{campaign_id}/sequence", headers=admin, json={
        "steps": [{}, {"delay": {"business_days": 2}, "templates": {"en": templates[1]}}],
        "stop_on": {"resume_after_return": True, "company": True}})
    assert r.status_code == 200, r.text

    clock = Clock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC))      # a Monday
    with dovecot({MAILBOX[0]: MAILBOX[1]}) as imap:
        r = await client.post("/api/v2/replies/1/mailboxes", headers=admin, json={
            "host": imap.host, "port": imap.port, "tls": False, "username": MAILBOX[0], "password": MAILBOX[1],
            "address": MAILBOX[0], "plus_addressing": True})
        assert r.status_code == 201, r.text
        assert "password" not in r.json() and "password_enc" not in r.json()
        stored = await db.fetchval("SELECT password_enc FROM reply_mailboxes")
        assert MAILBOX[1].encode() not in bytes(stored)

        async with SmtpTestServer() as smtp:
            worker_settings = msgspec.structs.replace(settings, pmta_host=smtp.host, pmta_port=smtp.port)
            # Polled every 600 s: only IMAP IDLE can bring the replies in within the test's minute.
            async with running_worker(worker_settings, clock=clock, dispatch_tuning=FAST, reply_poll_every=600,
                                      reply_refresh_every=0.5):
                r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=admin)
                assert r.status_code == 200, r.text

                async def step_one_sent() -> bool:
                    return await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND step = 1 "
                                             "AND status = 'injected' AND next_written", campaign_id) == len(people)
                await _until(step_one_sent)
                first = {m.rcpt_tos[0]: m.headers for m in smtp.messages}
                assert set(first) == set(people.values())

                # Alice answers; Bob's auto-reply names a return date; a colleague of Carol's answers her
                # message; Erin writes a new message (no thread headers); a DSN comes back for "gone".
                imap.deliver(MAILBOX[0], _mail(From=people["alice"], To=MAILBOX[0], Subject="Re: Step 1",
                                               Message_ID="<a1@acme.example>",
                                               In_Reply_To=first[people["alice"]]["Message-ID"]).as_bytes())
                imap.deliver(MAILBOX[0], _mail(From=people["bob"], To=MAILBOX[0], Subject="Out of office",
                                               Auto_Submitted="auto-replied", Message_ID="<b1@beta.example>",
                                               References=first[people["bob"]]["Message-ID"],
                                               body="I am away. I will be back on 2026-12-15.").as_bytes())
                imap.deliver(MAILBOX[0], _mail(From="frank@corp.example", To=MAILBOX[0], Subject="Re: Step 1",
                                               Message_ID="<f1@corp.example>",
                                               In_Reply_To=first[people["carol"]]["Message-ID"]).as_bytes())
                imap.deliver(MAILBOX[0], _mail(From=people["erin"], To=MAILBOX[0], Subject="Question",
                                               Message_ID="<e1@delta.example>").as_bytes())
                dsn = (b"From: MAILER-DAEMON@mx.echo.example\r\nTo: " + MAILBOX[0].encode() + b"\r\n"
                       b"Subject: Undelivered Mail\r\nMessage-ID: <d1@mx.echo.example>\r\nMIME-Version: 1.0\r\n"
                       b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
                       b"Content-Type: text/plain\r\n\r\nNo such user.\r\n--b\r\n"
                       b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.echo.example\r\n\r\n"
                       b"Final-Recipient: rfc822; gone@echo.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n")
                imap.deliver(MAILBOX[0], dsn)
                # Henry answers from another address, to the plus-addressed Reply-To his message carried
                henry_reply_to = first[people["henry"]]["Reply-To"]
                assert henry_reply_to.startswith("replies+") and henry_reply_to.endswith("@sos-expat-mail-01.example")
                imap.deliver(MAILBOX[0], _mail(From="h.private@elsewhere.example", To=henry_reply_to,
                                               Subject="Interested", Message_ID="<h1@elsewhere.example>").as_bytes())

                async def all_read() -> bool:
                    return await db.fetchval("SELECT last_uid FROM reply_mailboxes") == 6
                await _until(all_read)
                # Past +2 business days: only the contacts nothing stopped get step 2
                clock.now = dt.datetime(2026, 12, 9, 11, 0, tzinfo=dt.UTC)

                async def step_two_settled() -> bool:
                    return await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND step = 2 AND "
                                             "status IN ('queued', 'claimed', 'sending') OR (campaign_id = $1 AND "
                                             "step = 2 AND status = 'deferred' AND next_attempt_at <= $2)",
                                             campaign_id, clock.now) == 0 and \
                        await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND step = 2",
                                          campaign_id) == len(people)
                await _until(step_two_settled)
                second = [m.rcpt_tos[0] for m in smtp.messages[len(people):]]
                assert second == [people["grace"]], second
                steps = {r["email"]: (r["status"], r["detail"], r["next_attempt_at"]) for r in await db.fetch(
                    "SELECT c.email, s.status::text AS status, s.detail, s.next_attempt_at FROM sends s "
                    "JOIN contacts c ON c.id = s.contact_id WHERE s.campaign_id = $1 AND s.step = 2", campaign_id)}
                assert steps[people["alice"]][:2] == ("skipped", "sequence stopped: the contact replied")
                assert steps[people["carol"]][:2] == ("skipped", "sequence stopped: the contact replied")
                assert steps[people["dave"]][:2] == ("skipped", "sequence stopped: someone at corp.example replied")
                assert steps[people["erin"]][:2] == ("skipped", "sequence stopped: the contact replied")
                assert steps[people["henry"]][:2] == ("skipped", "sequence stopped: the contact replied")
                status, detail, resume_at = steps[people["bob"]]
                assert (status, detail) == ("deferred", "waits for the contact's return date")
                assert resume_at.date() >= dt.date(2026, 12, 15)
                assert steps[people["gone"]][:2] == (
                    "skipped", "sequence stopped: an earlier step bounced or drew a complaint")
                # After the return date, Bob's step 2 leaves
                clock.now = resume_at + dt.timedelta(minutes=1)
                await wait_for_status(db, campaign_id, "completed", within=60)
                second = [m.rcpt_tos[0] for m in smtp.messages[len(people):]]
                assert second == [people["grace"], people["bob"]], second

    gone = await db.fetchrow("SELECT s.status::text AS status FROM sends s JOIN contacts c ON c.id = s.contact_id "
                             "WHERE c.email = $1 AND s.step = 1", people["gone"])
    assert gone["status"] == "bounced"
    r = await client.get(f"/api/v2/suppressions/1/check?email={people['gone']}", headers=admin)
    assert r.json()["suppressed"] is True, r.text
    r = await client.get(f"/api/v2/campaigns/1/{campaign_id}/replies", headers=admin)
    assert r.status_code == 200, r.text
    listed = {(x["from_email"], x["kind"], x["matched_by"], x["step"]) for x in r.json()["items"]}
    assert listed == {(people["alice"], "human", "in-reply-to", 1), (people["bob"], "auto_reply", "references", 1),
                      ("frank@corp.example", "human", "in-reply-to", 1), (people["erin"], "human", "sender", 1),
                      ("h.private@elsewhere.example", "human", "token", 1)}
    alice = await db.fetchval("SELECT id FROM contacts WHERE email = $1", people["alice"])
    r = await client.get(f"/api/v2/contacts/1/{alice}/events", headers=admin)
    assert r.status_code == 200, r.text
    replied = [e for e in r.json() if e["kind"] == "replied"]
    assert replied and replied[0]["detail"] == {"campaign_id": campaign_id, "reply": "human"}, r.text
    r = await client.get(f"/api/v2/campaigns/1/{campaign_id}/replies", headers=admin)
    bob = next(x for x in r.json()["items"] if x["from_email"] == people["bob"])
    assert bob["return_date"] == "2026-12-15"
    r = await client.get(f"/api/v2/campaigns/2/{campaign_id}/replies", headers=admin)
    assert r.status_code == 404
    r = await client.get("/api/v2/replies/1/mailboxes", headers=admin)
    assert r.status_code == 200 and r.json()[0]["last_uid"] == 6 and "password" not in r.json()[0]


async def test_a_mailbox_that_fails_is_a_result_never_an_exception(client, admin, seeded, db, settings) -> None:
    from engine import db as dbm
    from engine import mailboxes
    from tests.sending_rig import NOT_SMTP, Front

    pool = await dbm.create_pool(settings.database_url, min_size=1, max_size=2)
    async with Front(1, not_smtp=10, greeting=NOT_SMTP) as liar:   # answers like an HTTP server, not IMAP
        for port in (liar.port, 1):                                 # and a port where nothing listens
            r = await client.post("/api/v2/replies/1/mailboxes", headers=admin, json={
                "host": "127.0.0.1", "port": port, "tls": False, "username": f"u{port}", "password": "p"})
            assert r.status_code == 201, r.text
            box_id = r.json()["id"]
            box = next(b for b in await mailboxes.stored_mailboxes(db) if b.id == box_id)
            result = await mailboxes.read_once(pool, box, settings.secret_key, deadline=2)
            assert result.error and result.read == 0, result
            if port == 1:   # refused at once (the liar is only given up on at the deadline)
                r = await client.post(f"/api/v2/replies/1/mailboxes/{box_id}/read", headers=admin)
                assert r.status_code == 200 and r.json()["error"], r.text
            listed = {b["id"]: b for b in (await client.get("/api/v2/replies/1/mailboxes", headers=admin)).json()}
            assert listed[box_id]["last_error"] == result.error or port == 1
    await pool.close()
    r = await client.post("/api/v2/replies/1/mailboxes", headers=admin, json={
        "host": "imap.example", "username": "x", "password": "p\r\nA1 LOGOUT"})
    assert r.status_code == 400 and r.json()["field"] == "password", r.text
    r = await client.get("/api/v2/replies/2/mailboxes", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
