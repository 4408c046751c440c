"""Sequences: follow-ups on business days in each recipient's window, threaded, exactly once, across a SIGKILL.

The acceptance run drives a real worker process (tests.clock_worker) on a clock the test moves: after every
move the test waits until nothing due is left, stamps the messages that arrived meanwhile with the clock's
time, and jumps to the next row due. Real PostgreSQL, Redis and SMTP sockets throughout.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import signal
import subprocess
import sys
import time
from email.header import decode_header, make_header
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from engine import sequences
from engine.sequences import Delay, RecipientWindow
from tests.campaign_helpers import mark_valid, use_ips, wait_for_status
from tests.clock_worker import FileClock
from tests.sending_rig import worker_env
from tests.smtpserver import SmtpTestServer

ROOT = Path(__file__).resolve().parent.parent
WEEKDAYS = RecipientWindow()
START = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)       # a Friday: Tokyo 15:00, Sydney 17:00, Paris 07:00
HOLIDAY = dt.date(2026, 12, 8)                              # a Tuesday
# (zone, country, custom): two contacts name their zone, two get it from their country
ZONES = [("America/New_York", None, {"timezone": "America/New_York"}), ("Europe/Paris", "FR", None),
         ("Asia/Tokyo", "JP", None), ("Australia/Sydney", "GB", {"timezone": "Australia/Sydney"})]
PER_ZONE = 3
MIN_GAP, MAX_GAP = 120.0, 600.0


# --- the recipient's calendar ------------------------------------------------------------------------------

def test_business_days_skip_weekends_and_holidays() -> None:
    paris = ZoneInfo("Europe/Paris")
    friday = dt.datetime(2026, 12, 4, 15, 0, tzinfo=paris)
    assert sequences.add_business_days(friday, 2, WEEKDAYS.days, frozenset()).date() == dt.date(2026, 12, 8)
    assert sequences.add_business_days(friday, 2, WEEKDAYS.days, frozenset({HOLIDAY})).date() == dt.date(2026, 12, 9)
    due = sequences.next_step_due(friday.astimezone(dt.UTC), paris, Delay(business_days=3, hours=2), WEEKDAYS,
                                  frozenset())
    assert due.astimezone(paris) == dt.datetime(2026, 12, 9, 17, 0, tzinfo=paris)


def test_window_opening_in_the_recipients_zone() -> None:
    tokyo, sydney = ZoneInfo("Asia/Tokyo"), ZoneInfo("Australia/Sydney")
    assert sequences.window_opening(START, tokyo, WEEKDAYS, frozenset()) is None          # Friday 15:00 there
    opening = sequences.window_opening(START, sydney, WEEKDAYS, frozenset())              # Friday 17:00 there
    assert opening.astimezone(sydney) == dt.datetime(2026, 12, 7, 9, 0, tzinfo=sydney)    # Monday 09:00
    early = sequences.window_opening(START, ZoneInfo("Europe/Paris"), WEEKDAYS, frozenset())
    assert early == dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)                        # 09:00 Paris, same day
    monday = dt.datetime(2026, 12, 7, 23, 0, tzinfo=dt.UTC)                              # Tuesday 08:00 Tokyo
    assert sequences.window_opening(monday, tokyo, WEEKDAYS, frozenset({HOLIDAY})).astimezone(tokyo) == \
        dt.datetime(2026, 12, 9, 9, 0, tzinfo=tokyo)


def test_recipient_zone_field_then_country_then_tenant() -> None:
    assert str(sequences.recipient_zone({"timezone": "Asia/Tokyo"}, "FR", "UTC")) == "Asia/Tokyo"
    assert str(sequences.recipient_zone({"timezone": "Mars/Olympus"}, "FR", "UTC")) == "Europe/Paris"
    assert str(sequences.recipient_zone(None, "us", "UTC")) == "America/New_York"
    assert str(sequences.recipient_zone(None, "BR", "UTC")) == "America/Sao_Paulo"
    assert str(sequences.recipient_zone(None, "XX", "Europe/Berlin")) == "Europe/Berlin"
    assert str(sequences.recipient_zone(None, None, "Europe/Berlin")) == "Europe/Berlin"


# --- the 3-step acceptance run -----------------------------------------------------------------------------

async def _template(client, admin, name: str, subject: str, body: str) -> int:
    r = await client.post("/api/v2/templates", json={"tenant_id": 1, "name": name, "language": "en",
                                                      "subject": subject, "body_html": body}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _quiet(db: asyncpg.Connection, campaign_id: int, now: dt.datetime, *, within: float = 60) -> None:
    """Wait until no row is moving, none is due at `now`, and every sent row has its follow-up written."""
    deadline = time.monotonic() + within
    while True:
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'claimed', 'sending')) AS moving, "
            "count(*) FILTER (WHERE status = 'deferred' AND next_attempt_at <= $2) AS due, "
            "count(*) FILTER (WHERE status IN ('injected', 'delivered') AND NOT next_written) AS unwritten "
            "FROM sends WHERE campaign_id = $1", campaign_id, now)
        ready = await db.fetchval("SELECT audience_ready FROM campaigns WHERE id = $1", campaign_id)
        if ready and not (row["moving"] or row["due"] or row["unwritten"]):
            return
        assert time.monotonic() < deadline, f"never quiet at {now}: {dict(row)}"
        await asyncio.sleep(0.05)


def _start_worker(env: dict[str, str], clock: FileClock, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.clock_worker", str(clock.path)], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def _decoded(value: str | None) -> str:
    return str(make_header(decode_header(value or "")))


def _business_days_between(a: dt.date, b: dt.date) -> int:
    """Working days after `a` up to and including `b` (Monday to Friday, less the holiday)."""
    n, day = 0, a
    while day < b:
        day += dt.timedelta(days=1)
        n += day.weekday() < 5 and day != HOLIDAY
    return n


async def test_three_steps_in_four_zones_on_business_days_threaded_across_a_sigkill(
        client, admin, seeded, db: asyncpg.Connection, settings, tmp_path: Path) -> None:
    batch, zone_of = [], {}
    for z, (zone, country, custom) in enumerate(ZONES):
        for i in range(PER_ZONE):
            email = f"p{i}@firm-{z}-{i}.example"
            zone_of[email] = ZoneInfo(zone)
            batch.append({"tenant_id": 1, "data_source_id": 1, "email": email, "first_name": f"Ana{z}{i}",
                          "company": f"Firm {z}-{i}", "language": "en", "country": country, "custom": custom,
                          "tags": ["sequence-test"]})
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": batch}, headers=admin)
    assert r.status_code in (200, 201), r.text
    await mark_valid(db)
    await use_ips(db, 1, [1])
    first = await _template(client, admin, "Seq 1", "{Quick question|A question|One question} for {company}",
                            "<p>{Hello|Hi} {firstName},</p><p>May I show you something?</p>")
    second = await _template(client, admin, "Seq 2", "Following up", "<p>Just following up, {firstName}.</p>")
    third = await _template(client, admin, "Seq 3", "Last note", "<p>Last note, {firstName}.</p>")
    r = await client.post("/api/v2/campaigns", json={
        "tenant_id": 1, "name": "Sequence", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
        "templates": {"en": first}, "audience": {"tags": ["sequence-test"]}}, headers=admin)
    assert r.status_code == 201, r.text
    campaign_id = r.json()["id"]
    r = await client.put(f"/api/v2/campaigns/1/{campaign_id}/sequence", headers=admin, json={
        "steps": [{},
                  {"delay": {"business_days": 2}, "templates": {"en": second}, "thread": True},
                  {"delay": {"business_days": 3}, "templates": {"en": third}, "thread": True}],
        "recipient_window": {"start": "09:00", "end": "17:00", "min_gap": MIN_GAP, "max_gap": MAX_GAP}})
    assert r.status_code == 200, r.text
    r = await client.put("/api/v2/sequences/1/holidays", headers=admin,
                         json={"holidays": [{"day": HOLIDAY.isoformat(), "name": "a tenant holiday"}]})
    assert r.status_code == 200, r.text

    clock = FileClock(tmp_path / "clock")
    clock.set(START)
    sent_at: list[dt.datetime] = []
    async with SmtpTestServer() as server:
        env = worker_env(settings, pmta_port=server.port, home=tmp_path, worker_timeout=2)
        workers = [_start_worker(env, clock, tmp_path / "worker.log")]
        try:
            r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=admin)
            assert r.status_code == 200, r.text
            now, jumps, killed_at = START, 0, None
            while True:
                await _quiet(db, campaign_id, now)
                sent_at += [now] * (len(server.messages) - len(sent_at))
                nxt = await db.fetchval("SELECT min(next_attempt_at) FROM sends WHERE campaign_id = $1 "
                                        "AND status = 'deferred'", campaign_id)
                if nxt is None:
                    break
                assert nxt > now
                now, jumps = nxt, jumps + 1
                clock.set(now)
                if killed_at is None and len(sent_at) >= 2 * PER_ZONE * len(ZONES) // 3:
                    # Mid-sequence, as the worker takes up the rows just due: SIGKILL, then a new worker.
                    workers[0].send_signal(signal.SIGKILL)
                    await asyncio.to_thread(workers[0].wait)
                    killed_at = len(sent_at)
                    workers.append(_start_worker(env, clock, tmp_path / "worker.log"))
            await wait_for_status(db, campaign_id, "completed", within=30)
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.terminate()
            for proc in workers:
                await asyncio.to_thread(proc.wait, 20)
        messages = list(server.messages)

    assert killed_at is not None, "the run never reached the kill"
    rows = {r["id"]: r for r in await db.fetch(
        "SELECT s.id, s.step, s.message_id, c.email FROM sends s JOIN contacts c ON c.id = s.contact_id "
        "WHERE s.campaign_id = $1", campaign_id)}
    by_contact: dict[str, dict[int, list[tuple[dt.datetime, object]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for when, message in zip(sent_at, messages, strict=True):
        row = rows[int(message.headers["x-envid"])]
        assert message.rcpt_tos == [row["email"]]
        local = when.astimezone(zone_of[row["email"]])
        # Inside the recipient's window, on a business day of the recipient's calendar
        assert local.weekday() < 5 and local.date() != HOLIDAY, (row["email"], row["step"], local)
        assert dt.time(9) <= local.time() < dt.time(17), (row["email"], row["step"], local)
        by_contact[row["email"]][row["step"]].append((when, message))

    in_flight = await db.fetchval("SELECT recovered_in_flight FROM campaigns WHERE id = $1", campaign_id)
    duplicates = sum(len(got) - 1 for steps in by_contact.values() for got in steps.values())
    assert duplicates <= in_flight, (duplicates, in_flight)
    assert set(by_contact) == set(zone_of), "every contact got the sequence"
    for email, steps in by_contact.items():
        assert sorted(steps) == [1, 2, 3], (email, sorted(steps))
        (t1, m1), (t2, m2), (t3, m3) = (steps[n][-1] for n in (1, 2, 3))
        zone = zone_of[email]
        # +2 then +3 business days in the recipient's calendar (the holiday does not count)
        assert _business_days_between(t1.astimezone(zone).date(), t2.astimezone(zone).date()) >= 2, email
        assert _business_days_between(t2.astimezone(zone).date(), t3.astimezone(zone).date()) >= 3, email
        assert t2 - t1 >= dt.timedelta(days=2) and t3 - t2 >= dt.timedelta(days=3)
        # Threaded: each follow-up answers the message before it and keeps the opening subject
        assert "In-Reply-To" not in m1.headers
        assert m2.headers["In-Reply-To"] == m1.headers["Message-ID"]
        assert m2.headers["References"] == m1.headers["Message-ID"]
        assert m3.headers["In-Reply-To"] == m2.headers["Message-ID"]
        assert m3.headers["References"] == f"{m1.headers['Message-ID']} {m2.headers['Message-ID']}"
        opening = _decoded(m1.headers["Subject"])
        assert opening.split(" for ")[0] in ("Quick question", "A question", "One question"), opening
        assert _decoded(m2.headers["Subject"]) == _decoded(m3.headers["Subject"]) == f"Re: {opening}"
    # The window's opening is spread: rows that waited for it leave one random gap apart, not in a burst
    sydney = sorted(t for email, steps in by_contact.items() if str(zone_of[email]) == "Australia/Sydney"
                    for t, _ in steps[1])
    assert len(set(sydney)) == PER_ZONE
    assert all(MIN_GAP <= (b - a).total_seconds() <= MAX_GAP for a, b in zip(sydney, sydney[1:], strict=False))
    stats = (await client.get(f"/api/v2/campaigns/1/{campaign_id}/stats", headers=admin)).json()
    assert stats["by_status"]["injected"] == 3 * len(zone_of)
    page = (await client.get(f"/api/v2/campaigns/1/{campaign_id}/sends?limit=1000", headers=admin)).json()
    assert collections.Counter(r["step"] for r in page["items"]) == {1: len(zone_of), 2: len(zone_of),
                                                                      3: len(zone_of)}


# --- spintax, variants, validation -------------------------------------------------------------------------

def test_spintax_is_deterministic_per_contact_and_step() -> None:
    from engine import spintax

    text = "{Hello|Hi|Good morning} {firstName}, {{ company|upper }} {a|{b|c}} p { color: red }"
    seen = {spintax.spin(text, f"7:1:{contact}") for contact in range(200)}
    assert all(spintax.spin(text, f"7:1:{c}") == spintax.spin(text, f"7:1:{c}") for c in range(50))
    assert len(seen) == 9                      # 3 greetings x 3 endings, every one reached
    for out in seen:
        assert "{firstName}" in out and "{{ company|upper }}" in out and "p { color: red }" in out
    assert spintax.variants("{Hello|Hi} {a|{b|c}}") == (
        ["Hello a", "Hello b", "Hello c", "Hi a", "Hi b", "Hi c"], 6)


def test_variants_split_evenly_over_ten_thousand_contacts() -> None:
    for n in (2, 3, 4):
        counts = collections.Counter(sequences.assign_variant(42, 1, c, n, None) for c in range(1, 10_001))
        assert set(counts) == set(range(n))
        assert all(abs(k / 10_000 - 1 / n) <= 0.02 for k in counts.values()), counts
    # the same contact always lands in the same variant; a winner takes every contact from then on
    assert sequences.assign_variant(42, 1, 7, 2, None) == sequences.assign_variant(42, 1, 7, 2, None)
    assert {sequences.assign_variant(42, 1, c, 2, 1) for c in range(100)} == {1}


def test_the_winner_is_the_best_reply_rate_once_every_variant_has_its_sends() -> None:
    def row(variant: int, sent: int, replied: int) -> sequences.VariantReport:
        return sequences.VariantReport(step=1, variant=variant, name=str(variant), sent=sent, delivered=sent,
                                       bounced=0, replied=replied, unsubscribed=0, reply_rate=replied / sent,
                                       winner=False)

    assert sequences.pick_winner([row(0, 200, 4), row(1, 150, 9)], 1, 2, 200) is None   # B has too few sends
    assert sequences.pick_winner([row(0, 200, 4), row(1, 200, 9)], 1, 2, 200) == 1
    assert sequences.pick_winner([row(0, 200, 4)], 1, 2, 200) is None                  # B never sent


async def test_template_save_refuses_unbalanced_spintax_naming_the_position(client, admin, seeded, db) -> None:
    body = {"tenant_id": 1, "name": "Spin", "language": "en", "subject": "{Hello|Hi there", "body_html": "<p>x</p>"}
    before = await db.fetchval("SELECT count(*) FROM email_templates")
    r = await client.post("/api/v2/templates", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "subject" and "position 0" in r.json()["detail"]
    r = await client.post("/api/v2/templates", json={**body, "subject": "Hi", "body_html": "<p>{a|b}} x</p>"},
                          headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "body_html" and "position 8" in r.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM email_templates") == before
    r = await client.post("/api/v2/spintax/preview", json={"text": "{Hello|Hi} {firstName}"}, headers=admin)
    assert r.status_code == 200 and r.json() == {"variants": ["Hello {firstName}", "Hi {firstName}"], "total": 2}
    r = await client.post("/api/v2/spintax/preview", json={"text": "{Hello"}, headers=admin)
    assert r.status_code == 422 and "position 0" in r.json()["detail"]


async def test_sequence_input_is_checked_and_scoped(client, admin, seeded, db) -> None:
    r = await client.post("/api/v2/campaigns", json={
        "tenant_id": 1, "name": "Seq", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example"},
        headers=admin)
    campaign_id = r.json()["id"]
    url = f"/api/v2/campaigns/1/{campaign_id}/sequence"
    cases = [({"steps": [{"delay": {"business_days": 1}}]}, "steps[0].delay"),
             ({"steps": [{}, {"templates": {"xx": 1}}]}, "steps[1].templates"),
             ({"steps": [{}, {"templates": {"en": 999999}}]}, "steps[1].templates.en"),
             ({"steps": [{"variants": [{"name": "A"}]}]}, "steps[0].variants"),
             ({"steps": [{"variants": [{"name": "A"}, {"name": "B", "subject": "{Hi"}]}]},
              "steps[0].variants[1].subject"),
             ({"steps": [{}], "recipient_window": {"start": "17:00", "end": "09:00"}}, "recipient_window.end"),
             ({"steps": [{}], "recipient_window": {"days": ["sun", "funday"]}}, None),
             ({"steps": []}, None)]
    for body, field in cases:
        r = await client.put(url, json=body, headers=admin)
        assert r.status_code in (400, 422), (body, r.text)
        if field is not None:
            assert r.json()["field"] == field, (body, r.json())
    assert await db.fetchval("SELECT count(*) FROM campaign_sequences") == 0
    assert (await client.get(url, headers=admin)).status_code == 404
    r = await client.put(url, json={"steps": [{}, {"delay": {"business_days": 2}}]}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["steps"][1]["delay"] == {"business_days": 2, "hours": 0}
    assert (await client.put(f"/api/v2/campaigns/2/{campaign_id}/sequence", json={"steps": [{}]},
                             headers=admin)).status_code == 404
    assert (await client.get(f"/api/v2/campaigns/2/{campaign_id}/sequence", headers=admin)).status_code == 404
    await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign_id)
    r = await client.put(url, json={"steps": [{}]}, headers=admin)
    assert r.status_code == 409 and r.json()["field"] == "status"


def test_stop_rules() -> None:
    from engine.sending.steps import Stops, stop_reason

    seq = sequences.Sequence(campaign_id=1, steps=[sequences.Step()], stop_on=sequences.StopRules(),
                             recipient_window=None, winner_after=None, winners={})
    today = dt.date(2026, 12, 9)
    none = Stops(replied=False, colleague_replied=False, auto_replied=False, return_date=None, bounced=False)
    assert stop_reason(seq, none, "acme.example", today) is None
    assert stop_reason(seq, msgspec_replace(none, replied=True), None, today).endswith("the contact replied")
    assert stop_reason(seq, msgspec_replace(none, bounced=True), None, today).startswith("sequence stopped")
    # a colleague's reply stops only with the company rule, and never groups a free-mail domain
    colleague = msgspec_replace(none, colleague_replied=True)
    assert stop_reason(seq, colleague, "acme.example", today) is None
    company = msgspec_replace(seq, stop_on=sequences.StopRules(company=True))
    assert stop_reason(company, colleague, "acme.example", today) == "sequence stopped: someone at acme.example replied"
    from engine.sending.steps import company_domain
    assert company_domain("x@gmail.com") is None and company_domain("x@Acme.example") == "acme.example"
    # an auto-reply: ignored, a stop, or a wait until its return date
    ooo = msgspec_replace(none, auto_replied=True, return_date=dt.date(2026, 12, 15))
    assert stop_reason(seq, ooo, None, today) is None
    assert stop_reason(msgspec_replace(seq, stop_on=sequences.StopRules(auto_reply=True)), ooo, None, today) == \
        "sequence stopped: an auto-reply"
    resume = msgspec_replace(seq, stop_on=sequences.StopRules(resume_after_return=True))
    assert stop_reason(resume, ooo, None, today) == dt.date(2026, 12, 15)
    assert stop_reason(resume, ooo, None, dt.date(2026, 12, 16)) is None


def msgspec_replace(struct, **changes):
    import msgspec

    return msgspec.structs.replace(struct, **changes)


async def test_ab_variants_are_sent_counted_and_a_winner_takes_the_new_contacts(
        client, admin, seeded, db: asyncpg.Connection, settings) -> None:
    import msgspec

    from engine import replies
    from tests.campaign_helpers import running_worker
    from tests.clock_worker import FAST
    from tests.test_replies import Clock, _mail

    contacts = [{"tenant_id": 1, "data_source_id": 1, "email": f"ab{i}@firm{i}.example", "first_name": f"N{i}",
                 "company": f"Firm {i}", "language": "en", "tags": ["ab-test"]} for i in range(20)]
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": contacts}, headers=admin)
    assert r.status_code in (200, 201), r.text
    await mark_valid(db)
    await use_ips(db, 1, [1])
    template = await _template(client, admin, "AB", "Default subject", "<p>Hi {firstName}</p>")
    r = await client.post("/api/v2/campaigns", headers=admin, json={
        "tenant_id": 1, "name": "AB", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
        "templates": {"en": template}, "audience": {"tags": ["ab-test"]}, "daily_cap": 10})
    campaign_id = r.json()["id"]
    r = await client.put(f"/api/v2/campaigns/1/{campaign_id}/sequence", headers=admin, json={
        "steps": [{"variants": [{"name": "A", "subject": "Plain for {company}"},
                                {"name": "B", "subject": "{Quick|Short} idea for {company}"}]}],
        "winner_after": 3})
    assert r.status_code == 200, r.text
    clock = Clock(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC))
    async with SmtpTestServer() as smtp:
        worker_settings = msgspec.structs.replace(settings, pmta_host=smtp.host, pmta_port=smtp.port)
        async with running_worker(worker_settings, clock=clock, dispatch_tuning=FAST):
            r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=admin)
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 60
            while len(smtp.messages) < 10 or await db.fetchval(
                    "SELECT count(*) FROM sends WHERE campaign_id = $1 AND status IN ('claimed', 'sending')",
                    campaign_id):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            day_one = {m.rcpt_tos[0]: m for m in smtp.messages}
            assert len(day_one) == 10          # the daily cap
            variant_of = {r["email"]: r["variant"] for r in await db.fetch(
                "SELECT c.email, s.variant FROM sends s JOIN contacts c ON c.id = s.contact_id "
                "WHERE s.campaign_id = $1 AND s.status = 'injected'", campaign_id)}
            for email, message in day_one.items():
                subject = message.headers["Subject"]
                assert subject.startswith("Plain for Firm") if variant_of[email] == 0 else \
                    subject.split(" idea for ")[0] in ("Quick", "Short"), (variant_of[email], subject)
            counts = collections.Counter(variant_of.values())
            # the split is a hash of (campaign, step, contact): the same ten contacts split the same way every run
            assert min(counts[0], counts[1]) >= 3, counts
            # Two contacts of B answer: B's reply rate wins once both variants have three sends
            for email in [e for e, v in variant_of.items() if v == 1][:2]:
                parsed = replies.parse(_mail(From=email, To="team@sos-expat-mail-01.example", Subject="Re",
                                             Message_ID=f"<r-{email}>",
                                             In_Reply_To=day_one[email].headers["Message-ID"]).as_bytes(),
                                       now=dt.datetime.now(dt.UTC))
                assert await replies.record(db, 1, None, parsed) == "human"
            deadline = time.monotonic() + 30
            while not (await db.fetchval("SELECT winner FROM campaign_sequences WHERE campaign_id = $1",
                                         campaign_id)).get("steps"):
                assert time.monotonic() < deadline, "no winner decided"
                await asyncio.sleep(0.05)
            clock.now += dt.timedelta(days=1)         # the next day: the cap opens again
            deadline = time.monotonic() + 60
            while await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND status = 'injected'",
                                    campaign_id) < 20:
                assert time.monotonic() < deadline, "the second day never went out"
                await asyncio.sleep(0.05)
    later = await db.fetch("SELECT c.email, s.variant FROM sends s JOIN contacts c ON c.id = s.contact_id "
                           "WHERE s.campaign_id = $1 AND NOT (c.email = ANY($2::text[]))", campaign_id,
                           list(day_one))
    assert len(later) == 10 and {r["variant"] for r in later} == {1}
    r = await client.get(f"/api/v2/campaigns/1/{campaign_id}/variants", headers=admin)
    assert r.status_code == 200, r.text
    report = {v["name"]: v for v in r.json()}
    assert report["B"]["winner"] and not report["A"]["winner"]
    assert report["A"]["sent"] + report["B"]["sent"] == 20 and report["B"]["replied"] == 2
    assert report["B"]["sent"] == counts[1] + 10


async def test_a_campaign_without_a_sequence_spins_its_template_too(client, admin, seeded, db, settings) -> None:
    import msgspec

    from engine import spintax
    from tests.campaign_helpers import running_worker
    from tests.clock_worker import FAST

    contacts = [{"tenant_id": 1, "data_source_id": 1, "email": f"sp{i}@spin{i}.example", "first_name": f"S{i}",
                 "company": f"Spin {i}", "language": "en", "tags": ["spin-test"]} for i in range(12)]
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": contacts}, headers=admin)
    assert r.status_code in (200, 201), r.text
    await mark_valid(db)
    await use_ips(db, 1, [1])
    source = "{Alpha|Beta|Gamma} news for {company}"
    template = await _template(client, admin, "Spin", source, "<p>{Hello|Hi} {firstName}</p>")
    r = await client.post("/api/v2/campaigns", headers=admin, json={
        "tenant_id": 1, "name": "Spin", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
        "templates": {"en": template}, "audience": {"tags": ["spin-test"]}})
    campaign_id = r.json()["id"]
    async with SmtpTestServer() as smtp:
        worker_settings = msgspec.structs.replace(settings, pmta_host=smtp.host, pmta_port=smtp.port)
        async with running_worker(worker_settings, dispatch_tuning=FAST):
            assert (await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=admin)).status_code == 200
            await wait_for_status(db, campaign_id, "completed", within=60)
        messages = list(smtp.messages)
    ids = {r["email"]: (r["contact_id"], r["company"]) for r in await db.fetch(
        "SELECT c.email, s.contact_id, c.company FROM sends s JOIN contacts c ON c.id = s.contact_id "
        "WHERE s.campaign_id = $1", campaign_id)}
    assert len(messages) == 12
    subjects = set()
    for m in messages:
        contact_id, company = ids[m.rcpt_tos[0]]
        expected = spintax.spin(source, f"{campaign_id}:1:{contact_id}").replace("{company}", company)
        assert m.headers["Subject"] == expected
        subjects.add(m.headers["Subject"].split()[0])
    assert subjects <= {"Alpha", "Beta", "Gamma"} and len(subjects) > 1


def test_thread_subjects_follow_each_languages_convention() -> None:
    from engine.sending.steps import thread_subject

    assert thread_subject("Une question", "fr") == "Re: Une question"
    assert thread_subject("Eine Frage", "de-DE") == "AW: Eine Frage"
    assert thread_subject("Uma pergunta", "pt") == "RES: Uma pergunta"
    assert thread_subject("一个问题", "zh") == "回复：一个问题"
    assert thread_subject("سؤال", "ar") == "رد: سؤال"
    assert thread_subject("Re: already", "en") == "Re: already"       # never "Re: Re: "
