"""PowerMTA accounting files: the parser on the guide's samples, the feedback applied to the send log and the
suppression list, idempotence, resuming by offset, the upload endpoint and the directory cron."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from engine import db as dbm
from engine import feedback
from engine.settings import load_settings
from pmta import accounting
from pmta.accounting import ParseStats, parse
from tests.conftest import SECRET_KEY, tenant_key
from workers.feedback import cron_jobs, ingest_accounting

# The guide's default column order and sample lines, verbatim (powermta.md §9.2, §9.4) - the only place in
# the suite where the guide's own hosts and addresses appear.
GUIDE_HEADER = ("type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,srcType,"
                "srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool")
SAMPLE_D = ('d,2019-02-08 21:54:05+0000,2019-02-08 21:54:05+0000,AA-D=1181.com@bounce.bar.com,D@1181.com,,relayed,'
            '2.0.0 (success),smtp;250 DATA ok,foo.int.port25.com (10.1.2.3),,api,foo.int.port25.com (127.0.0.1),'
            'smtp,10.1.2.3,10.1.2.3,"ENHANCEDSTATUSCODES,8BITMIME,SMTPUTF8",41159,vmta48,JoBID29546016861868,,'
            '1181.com/vmta48')
SAMPLE_B = ('b,2019-02-08 21:53:41+0000,2019-02-08 21:53:41+0000,CB-A=yahoo.com@bounce.bar.com,A@yahoo.com,,failed,'
            '5.7.1 (delivery not authorized),smtp;554 5.7.1 Denied - Spam Suspected - '
            'http://www.w357sfhsjhf873.net/services/spamwatch/blocked.php,foo.int.bar.com (10.1.2.3),spam-related,api,'
            'foo.int.bar.com (127.0.0.1),smtp,10.1.2.3,10.1.2.3,"ENHANCEDSTATUSCODES,8BITMIME,SMTPUTF8",,vmta18,,,'
            'yahoo.rollup/vmta18')
SAMPLE_T = ('t,2019-02-08 21:53:54+0000,2019-02-08 21:53:54+0000,DB.AD.G.AA.AB-DA=yahoo.fr@bounce.bar.com,DA@yahoo.fr,,'
            'delayed,4.7.0 (other or undefined security status),smtp;421 4.7.0 mx002.roc2.bluetie.com Error: too many '
            'errors,foo.int.bar.com (10.1.2.165),policy-related,api,foo.int.bar.com (127.0.0.1),smtp,10.59.14.69,'
            '10.1.2.165,"ENHANCEDSTATUSCODES,8BITMIME,SMTPUTF8",,vmta21,,,yahoo.rollup/vmta21,')
SAMPLE_TQ = ('tq,2019-02-08 21:53:39+0000,4.4.1 (no answer from host),,mx.xn--bcher-kva.de (87.98.150.101),smtp,'
             '0.0.0.0,87.98.150.101,vmta29,bücher.de/vmta29')
SAMPLE_R = ('r,2010-04-17 16:19:57-0400,test@port25.com,test@port25.com,,smtp,tesFeeder (192.168.25.56),192.168.25.56,'
            '192.168.25.11,vmta1,job2,envid1234')
SAMPLE_RB = ('rb,2010-12-01 14:24:44-0500,bounce@bounce.com,lksjflkj@somedomain.com,,5.1.1 (bad destination mailbox '
             'address),"smtp;550 5.1.1 no such local recipient: <lksjflkj@somedomain.com> in ""RCPT '
             'TO:<lksjflkj@somedomain.com>""",mail.remotedomain.com (169.3.169.30),my.local.server.com,bad-mailbox,'
             'smtp,my.local.server.com (192.168.0.150),')
SAMPLE_F = 'f,2010-04-12 11:40:37-0400,arf,AOL SComp,,,,mail1.domain.com,169.63.151.30'
# The guide prints the other types without their header; these follow §9.3's field lists in the samples' order.
HEADER_TQ = "type,timeLogged,dsnStatus,dsnDiag,dsnMta,dlvType,dlvSourceIp,dlvDestinationIp,vmta,queue"
HEADER_R = "type,timeLogged,orig,rcpt,orcpt,srcType,srcMta,rcvSourceIp,rcvDestinationIp,vmta,jobId,envId"
HEADER_RB = "type,timeLogged,orig,rcpt,orcpt,dsnStatus,dsnDiag,dsnMta,dsnReportingMta,bounceCat,srcType,srcMta,envId"
HEADER_F = "type,timeLogged,format,userAgent,envid,orig,rcpt,reportingMTA,repSourceIp"

# The engine's files in tests: a narrower layout in another order, as `record-fields` makes them.
HEADER = "type,envId,timeLogged,rcpt,orig,dsnAction,dsnStatus,dsnDiag,bounceCat,jobId,vmta,feedbackType,header_X-Envelope-Id"
WHEN = "2024-05-01 10:00:00+0000"


def crlf(*lines: str) -> list[str]:
    return [line + "\r\n" for line in lines]


def test_the_guides_sample_lines_parse_by_their_headers() -> None:
    stats = ParseStats()
    records = list(parse(crlf(GUIDE_HEADER, SAMPLE_D, SAMPLE_B, SAMPLE_T, HEADER_TQ, SAMPLE_TQ, HEADER_R, SAMPLE_R,
                              HEADER_RB, SAMPLE_RB, HEADER_F, SAMPLE_F), stats))
    assert [r.type for r in records] == ["d", "b", "t", "tq", "r", "rb", "f"]
    assert stats.malformed == [] and stats.skipped == {} and stats.records == 7
    d, b, t, tq, r, rb, f = records
    assert d.time_logged == dt.datetime(2019, 2, 8, 21, 54, 5, tzinfo=dt.UTC)
    assert (d.orig, d.rcpt, d.dsn_action, d.dsn_status, d.dsn_diag) == (
        "AA-D=1181.com@bounce.bar.com", "D@1181.com", "relayed", "2.0.0 (success)", "smtp;250 DATA ok")
    assert (d.vmta, d.job_id, d.envid, d.queue) == ("vmta48", "JoBID29546016861868", "", "1181.com/vmta48")
    assert d.extra["dlvEsmtpAvailable"] == "ENHANCEDSTATUSCODES,8BITMIME,SMTPUTF8"   # quoted commas stay one value
    assert d.extra["dlvSize"] == "41159"
    assert (b.bounce_cat, b.dsn_status, b.vmta) == ("spam-related", "5.7.1 (delivery not authorized)", "vmta18")
    assert b.dsn_diag.endswith("spamwatch/blocked.php")
    assert (t.dsn_action, t.bounce_cat, t.queue) == ("delayed", "policy-related", "yahoo.rollup/vmta21")
    assert (tq.queue, tq.dsn_mta) == ("bücher.de/vmta29", "mx.xn--bcher-kva.de (87.98.150.101)")
    assert (r.job_id, r.envid) == ("job2", "envid1234")
    assert r.time_logged == dt.datetime(2010, 4, 17, 20, 19, 57, tzinfo=dt.UTC)
    assert rb.dsn_diag == ('smtp;550 5.1.1 no such local recipient: <lksjflkj@somedomain.com> in '
                           '"RCPT TO:<lksjflkj@somedomain.com>"')
    assert (rb.bounce_cat, rb.extra["dsnReportingMta"]) == ("bad-mailbox", "my.local.server.com")
    assert (f.format, f.extra["userAgent"], f.extra["repSourceIp"]) == ("arf", "AOL SComp", "169.63.151.30")


def test_the_guides_union_example_and_all_three_time_forms() -> None:
    # §9.5: a file holding several types has the union of their fields, blank where one does not apply
    lines = crlf("type,timeLogged,orig,rcpt,dlvSourceIp,bounceCat",
                 "d,1178807903,orig@port25.com,user1@domain.com,10.0.0.1,",
                 "b,05/10/2007 14:38:35+0000,orig@port25.com,user3@domain.com,,policy-related",
                 "b,2007-05-10 10:38:35-0400,orig@port25.com,user4@domain.com,,policy-related")
    d, b1, b2 = parse(lines)
    assert d.time_logged == dt.datetime.fromtimestamp(1178807903, dt.UTC) and d.dlv_source_ip == "10.0.0.1"
    assert b1.time_logged == b2.time_logged == dt.datetime(2007, 5, 10, 14, 38, 35, tzinfo=dt.UTC)
    assert b1.bounce_cat == "policy-related"


def test_bad_lines_are_counted_with_their_numbers_and_never_raise() -> None:
    stats = ParseStats()
    lines = ["\ufeff" + HEADER + "\r\n", *crlf(
        f"d,1,{WHEN},a@x.example,,,,,,,,,",                 # 2: fine
        "zz,1,,,,,,,,,,,",                                    # 3: an unknown type: skipped and counted
        f"d,1,{WHEN},a@x.example,,,,,,,,,,,,,,extra",         # 4: more values than the header names
        'd,1,2024,"a"b,,,,,,,,,',                             # 5: broken quoting
        "d,1,yesterday,a@x.example,,,,,,,,,",                 # 6: not a timestamp
        "",                                                   # 7: blank lines are nothing
        ",1,,,,,,,,,,,",                                      # 8: no type
        'b,2,,"multi',                                        # 9-10: a quoted value across lines is one record
        'line",,,,,,,,,',
        "zz,2,,,,,,,,,,,",                                    # 11
        f"t,3,{WHEN},a@x.example,,,,,,,,,",                  # 12: fine
    )]
    records = list(parse(lines, stats))
    assert [(r.type, r.line) for r in records] == [("d", 2), ("b", 9), ("t", 12)]
    assert records[1].time_logged is None and records[1].envid == "2" and records[1].rcpt == "multi\r\nline"
    assert stats.skipped == {"zz": 2}
    assert [m.line for m in stats.malformed] == [4, 5, 6, 8] and stats.malformed_count == 4
    assert "header names 13" in stats.malformed[0].reason and "timeLogged" in stats.malformed[2].reason
    # no header at all: every record is malformed, by number
    stats = ParseStats()
    assert list(parse(crlf("d,1,x", "b,2,y"), stats)) == []
    assert [m.line for m in stats.malformed] == [1, 2]


# ---------------------------------------------------------------------------------------------------------
# On the database


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await dbm.create_pool(database_url, min_size=1, max_size=6)
    yield p
    await p.close()


class Sent:
    """One tenant-1 campaign whose rows PowerMTA accepted (status injected, IP and VMTA set)."""

    def __init__(self, campaign: int, ids: dict[str, int]) -> None:
        self.campaign, self.ids = campaign, ids

    def __getitem__(self, who: str) -> int:
        return self.ids[who]


PEOPLE = ("ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal")


async def make_campaign(db: asyncpg.Connection, people=PEOPLE, *, tenant_id: int = 1, status: str = "injected",
                        ip_id: int = 7) -> Sent:
    campaign = await db.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email, status) "
                                 "VALUES ($1, 'spring', 'Sender', 'news@mail.example', 'sending') RETURNING id",
                                 tenant_id)
    ids = {}
    for who in people:
        email = f"{who}@inbox.example"
        contact = await db.fetchval(
            "INSERT INTO contacts (tenant_id, email, email_hash, status) VALUES ($1, $2, $3, 'valid') "
            "ON CONFLICT (tenant_id, email_hash) DO UPDATE SET email = EXCLUDED.email RETURNING id",
            tenant_id, email, hashlib.sha256(email.encode()).digest())
        ids[who] = await db.fetchval(
            "INSERT INTO sends (tenant_id, campaign_id, contact_id, status, ip_id, vmta, ip_assigned_at, "
            "injected_at) VALUES ($1, $2, $3, $4, $5, 'vmta-7', now(), now()) RETURNING id",
            tenant_id, campaign, contact, status, ip_id)
    return Sent(campaign, ids)


def rec(kind: str, envid: int | str, who: str, *, orig: str = "", action: str = "", status: str = "", diag: str = "",
        cat: str = "", job: int | str = "", fbtype: str = "", header_envid: str = "", when: str = WHEN) -> str:
    rcpt = f"{who}@inbox.example" if who else ""
    return ",".join(str(v) for v in (kind, envid, when, rcpt, orig, action, status, diag, cat, job, "vmta-7", fbtype,
                                     header_envid))


def feedback_file(sent: Sent) -> list[str]:
    """Every outcome once; line numbers in comments (the header is line 1)."""
    return crlf(
        HEADER,
        rec("d", sent["ann"], "ann", action="relayed", status="2.0.0 (success)", diag="smtp;250 2.0.0 ok",
            job=sent.campaign),                                                                          # 2
        rec("b", sent["bob"], "bob", action="failed", status="5.1.1 (bad destination mailbox address)",
            diag='"smtp;550 5.1.1 <bob@inbox.example>: user unknown, sorry"', cat="bad-mailbox"),          # 3
        rec("b", sent["cat"], "cat", action="failed", status="4.2.2 (mailbox full)",
            diag="smtp;452 4.2.2 over quota", cat="quota-issues"),                                         # 4
        rec("d", sent["dan"], "dan", action="relayed", status="2.0.0 (success)", diag="smtp;250 ok"),      # 5
        rec("f", "", "", orig=f"bounce-{sent['dan']}@mail.example", fbtype="abuse"),                       # 6
        rec("b", sent["eve"], "eve", action="failed", status="5.7.1 (delivery not authorized)",
            diag="smtp;554 5.7.1 blocked for spam", cat="spam-related"),                                  # 7
        rec("t", sent["fay"], "fay", action="delayed", status="4.7.0 (other)", diag="smtp;421 4.7.0 try later",
            cat="policy-related"),                                                                        # 8
        rec("b", "", "gus", orig=f"bounce-{sent['gus']}@mail.example", action="failed",
            status="5.1.2 (bad destination system address)", diag="smtp;550 5.1.2 no such domain"),       # 9
        rec("d", 987654321, "nobody"),                                                                    # 10
        rec("d", sent["hal"], "someone-else"),                                                            # 11
        "d,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",                                                       # 12
        rec("zz", sent["hal"], "hal"),                                                                    # 13
        rec("tq", "", ""),                                                                                # 14
    )


async def snapshot(db: asyncpg.Connection) -> list:
    return [
        [tuple(r) for r in await db.fetch("SELECT * FROM sends ORDER BY id")],
        [tuple(r) for r in await db.fetch("SELECT * FROM suppressions ORDER BY id")],
        [tuple(r) for r in await db.fetch("SELECT id, status, updated_at FROM contacts ORDER BY id")],
        [tuple(r) for r in await db.fetch("SELECT * FROM contact_events ORDER BY id")],
    ]


async def test_a_file_of_every_outcome_updates_sends_and_suppressions(db, seeded, pool, tmp_path) -> None:
    sent = await make_campaign(db)
    path = tmp_path / "acct-2024-05-01-0000.csv"
    path.write_text("".join(feedback_file(sent)), encoding="utf-8", newline="")
    report = await accounting.ingest_file(pool, path)

    status = {r["id"]: r for r in await db.fetch("SELECT * FROM sends")}
    assert status[sent["ann"]]["status"] == "delivered" and status[sent["ann"]]["smtp_code"] == 250
    assert status[sent["ann"]]["finished_at"] == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert (status[sent["bob"]]["status"], status[sent["bob"]]["smtp_code"], status[sent["bob"]]["smtp_status"],
            status[sent["bob"]]["bounce_category"]) == ("bounced", 550, "5.1.1", "bad-mailbox")
    assert status[sent["bob"]]["detail"] == "smtp;550 5.1.1 <bob@inbox.example>: user unknown, sorry"
    assert status[sent["cat"]]["status"] == "bounced" and status[sent["eve"]]["status"] == "bounced"
    assert status[sent["dan"]]["status"] == "delivered" and status[sent["dan"]]["complained_at"] is not None
    assert status[sent["fay"]]["status"] == "injected" and status[sent["fay"]]["detail"] == "smtp;421 4.7.0 try later"
    assert status[sent["gus"]]["status"] == "bounced" and status[sent["gus"]]["bounce_category"] == "bad-domain"
    assert status[sent["hal"]]["status"] == "injected"     # the record named another recipient
    # the dispatcher's IP stays: the warmup charges yesterday's bounces to it
    assert {(r["ip_id"], r["vmta"]) for r in status.values()} == {(7, "vmta-7")}

    listed = {r["value"]: r["reason"] for r in await db.fetch("SELECT value, reason::text FROM suppressions "
                                                              "WHERE tenant_id = 1")}
    assert listed == {"bob@inbox.example": "hard_bounce", "gus@inbox.example": "hard_bounce",
                      "dan@inbox.example": "complaint"}
    contacts = {r["email"]: r["status"] for r in await db.fetch("SELECT email, status::text FROM contacts")}
    assert (contacts["bob@inbox.example"], contacts["gus@inbox.example"], contacts["dan@inbox.example"],
            contacts["cat@inbox.example"], contacts["eve@inbox.example"]) == (
        "bounced", "bounced", "complained", "valid", "valid")

    f = report.feedback
    assert (f.records, f.delivered, f.bounced, f.complaints, f.transient, f.suppressed) == (11, 2, 4, 1, 1, 3)
    assert (f.unmatched, f.mismatched, f.ignored, f.unchanged) == (1, 1, 1, 0)
    assert report.skipped_types == {"zz": 1}
    assert [(m.line, m.reason) for m in report.malformed] == [(12, "17 fields but the header names 13")]
    assert (report.lines_applied, report.bytes_applied) == (14, path.stat().st_size)


async def test_applying_the_same_records_twice_changes_nothing(db, seeded, pool, tmp_path) -> None:
    sent = await make_campaign(db)
    records = list(parse(feedback_file(sent)))
    async with pool.acquire() as conn, conn.transaction():
        first = await feedback.apply_records(conn, records)
    before = await snapshot(db)
    async with pool.acquire() as conn, conn.transaction():
        second = await feedback.apply_records(conn, records)
    assert await snapshot(db) == before
    assert first.delivered == 2 and first.suppressed == 3
    assert (second.delivered, second.bounced, second.complaints, second.transient, second.suppressed) == (0, 0, 0, 0, 0)
    assert second.unchanged == first.records - first.unmatched - first.mismatched - first.ignored == 8
    # and as a named file: the second read finds nothing new
    path = tmp_path / "acct.csv"
    path.write_text("".join(feedback_file(sent)), encoding="utf-8", newline="")
    assert not (await accounting.ingest_file(pool, path)).already_applied
    assert await snapshot(db) == before
    assert (await accounting.ingest_file(pool, path)).already_applied


async def test_a_delivery_never_undoes_a_bounce_but_a_remote_bounce_follows_a_delivery(db, seeded, pool) -> None:
    sent = await make_campaign(db, ("ann", "bob"))
    records = list(parse(crlf(
        HEADER,
        rec("b", sent["ann"], "ann", cat="bad-mailbox"), rec("d", sent["ann"], "ann"),
        rec("d", sent["bob"], "bob"), rec("rb", sent["bob"], "bob", status="5.1.1 (bad mailbox)"))))
    async with pool.acquire() as conn, conn.transaction():
        await feedback.apply_records(conn, records[:2])
        await feedback.apply_records(conn, records[2:])
    rows = dict(await db.fetch("SELECT id, status::text FROM sends"))
    assert rows == {sent["ann"]: "bounced", sent["bob"]: "bounced"}
    # rb without bounceCat: the status code's category (5.1.1 -> bad-mailbox) suppresses
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE reason = 'hard_bounce'") == 2


async def test_soft_bounces_suppress_at_the_fifth(db, seeded, pool) -> None:
    for n in range(feedback.SOFT_BOUNCE_LIMIT):
        sent = await make_campaign(db, ("cat",))
        async with pool.acquire() as conn, conn.transaction():
            report = await feedback.apply_records(conn, list(parse(crlf(
                HEADER, rec("b", sent["cat"], "cat", cat="quota-issues")))))
        assert report.bounced == 1
        listed = await db.fetchval("SELECT reason::text FROM suppressions WHERE value = 'cat@inbox.example'")
        assert listed == (None if n < feedback.SOFT_BOUNCE_LIMIT - 1 else "hard_bounce")


async def test_a_delivery_between_soft_bounces_starts_the_count_again(db, seeded, pool) -> None:
    async def one_campaign(kind: str) -> None:
        sent = await make_campaign(db, ("cat",))
        cat = {"cat": "quota-issues"} if kind == "b" else {}
        async with pool.acquire() as conn, conn.transaction():
            await feedback.apply_records(conn, list(parse(crlf(HEADER, rec(kind, sent["cat"], "cat", **cat)))))

    async def listed() -> str | None:
        return await db.fetchval("SELECT reason::text FROM suppressions WHERE value = 'cat@inbox.example'")

    for kind in ["b"] * (feedback.SOFT_BOUNCE_LIMIT - 1) + ["d"] + ["b"] * (feedback.SOFT_BOUNCE_LIMIT - 1):
        await one_campaign(kind)
    assert await listed() is None   # eight soft bounces, never five in a row
    await one_campaign("b")
    assert await listed() == "hard_bounce"


async def test_records_only_reach_the_send_rows_tenant(db, seeded, pool) -> None:
    ours = await make_campaign(db, ("ann",), tenant_id=1)
    theirs = await make_campaign(db, ("ann",), tenant_id=2)
    async with pool.acquire() as conn, conn.transaction():
        await feedback.apply_records(conn, list(parse(crlf(HEADER, rec("b", theirs["ann"], "ann", cat="bad-domain")))))
    rows = await db.fetch("SELECT tenant_id, value FROM suppressions")
    assert [tuple(r) for r in rows] == [(2, "ann@inbox.example")]
    assert await db.fetchval("SELECT status::text FROM sends WHERE id = $1", ours["ann"]) == "injected"


async def test_a_file_resumes_from_its_offset(db, seeded, pool, tmp_path, monkeypatch) -> None:
    sent = await make_campaign(db)
    lines = feedback_file(sent)
    path = tmp_path / "acct-2024-05-01-0001.csv"
    # PowerMTA mid-write: the last line has no line break yet and waits for the next run
    path.write_bytes("".join(lines[:4]).encode() + lines[4].rstrip().encode())
    first = await accounting.ingest_file(pool, path)
    assert (first.feedback.records, first.lines_applied) == (3, 4)
    assert first.bytes_applied == len("".join(lines[:4]).encode())
    with path.open("ab") as f:
        f.write(b"\r\n" + "".join(lines[5:8]).encode())
    second = await accounting.ingest_file(pool, path)
    assert (second.feedback.records, second.lines_applied, second.feedback.unchanged) == (4, 8, 0)
    assert second.feedback.complaints == 1

    # a crash after the first batch of the rest: the next run starts where the committed batch ended
    monkeypatch.setattr(accounting, "BATCH", 2)
    real = feedback.apply_records
    calls = 0

    async def crash_on_second_batch(conn, records):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("worker killed")
        return await real(conn, records)

    with path.open("ab") as f:
        f.write("".join(lines[8:]).encode())
    monkeypatch.setattr(feedback, "apply_records", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        await accounting.ingest_file(pool, path)
    state = await feedback.accounting_file(db, path.name)
    assert state.lines_applied == 10 and state.header == HEADER    # lines 9-10: the first batch (gus, nobody)
    monkeypatch.setattr(feedback, "apply_records", real)
    third = await accounting.ingest_file(pool, path)
    assert (third.feedback.records, third.feedback.mismatched, third.feedback.ignored) == (2, 1, 1)
    assert [m.line for m in third.malformed] == [12] and third.skipped_types == {"zz": 1}
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 3
    assert (await accounting.ingest_file(pool, path)).already_applied


# ---------------------------------------------------------------------------------------------------------
# The upload endpoint and the directory cron


async def test_upload_endpoint(client, admin, db, seeded) -> None:
    sent = await make_campaign(db)
    body = "".join(feedback_file(sent)).encode()
    url = "/api/v2/feedback/pmta-accounting"
    assert (await client.post(url, content=body, headers={"Content-Type": "text/csv"})).status_code == 401
    tenant = await tenant_key(client, admin, 1)
    r = await client.post(url, content=body, headers={**tenant, "Content-Type": "text/csv"})
    assert r.status_code == 403, r.text
    assert await db.fetchval("SELECT count(*) FROM sends WHERE status = 'delivered'") == 0

    r = await client.post(url, content=body, headers={**admin, "Content-Type": "text/csv"},
                          params={"name": "acct-2024-05-01-0002.csv"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["feedback"]["delivered"], got["feedback"]["bounced"], got["feedback"]["suppressed"]) == (2, 4, 3)
    assert got["malformed"] == [{"line": 12, "reason": "17 fields but the header names 13"}]
    assert got["skipped_types"] == {"zz": 1} and got["name"] == "acct-2024-05-01-0002.csv"
    again = (await client.post(url, content=body, headers={**admin, "Content-Type": "text/csv"},
                               params={"name": "acct-2024-05-01-0002.csv"})).json()
    assert again["already_applied"] and again["feedback"]["records"] == 0
    unnamed = (await client.post(url, content=body, headers={**admin, "Content-Type": "text/csv"})).json()
    assert unnamed["feedback"]["unchanged"] == 8 and unnamed["feedback"]["delivered"] == 0

    files = await client.get(f"{url}/files", headers=admin)
    assert files.status_code == 200 and [f["name"] for f in files.json()] == ["acct-2024-05-01-0002.csv"]
    assert (await client.get(f"{url}/files", headers=tenant)).status_code == 403
    r = await client.post(url, content=b"", headers={**admin, "Content-Type": "text/csv"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = await client.post(url, content=body, headers={**admin, "Content-Type": "text/csv"}, params={"name": "../x"})
    assert r.status_code == 400


async def test_the_cron_reads_new_files_from_the_directory(db, seeded, pool, settings, tmp_path) -> None:
    assert cron_jobs(settings) == []            # no directory configured: no cron
    directory = tmp_path / "pmta-acct"
    directory.mkdir()
    settings = msgspec.structs.replace(settings, pmta_accounting_dir=directory)
    assert [job.name for job in cron_jobs(settings)] == ["cron:ingest_accounting"]
    assert load_settings({"EMAIL_ENGINE_PMTA_ACCOUNTING_DIR": str(directory)}).pmta_accounting_dir == directory
    sent = await make_campaign(db)
    lines = feedback_file(sent)
    (directory / "acct-2024-05-01-0000.csv").write_text("".join(lines[:5]), encoding="utf-8", newline="")
    (directory / "acct-2024-05-01-0001.csv").write_text(lines[0] + "".join(lines[5:]), encoding="utf-8", newline="")
    (directory / "notes.txt").write_text("not an accounting file")
    ctx = {"pool": pool, "settings": settings, "secret_key": SECRET_KEY}
    totals = await ingest_accounting(ctx)
    assert (totals["files"], totals["delivered"], totals["bounced"], totals["suppressed"], totals["malformed"]) == (
        2, 2, 4, 3, 1)
    assert (await ingest_accounting(ctx))["files"] == 0     # nothing new a minute later
    names = {r["name"]: r["lines_applied"] for r in await db.fetch("SELECT name, lines_applied FROM accounting_files")}
    assert names == {"acct-2024-05-01-0000.csv": 5, "acct-2024-05-01-0001.csv": 10}


async def test_the_job_is_registered_and_runs_in_a_burst_worker(db, seeded, settings, tmp_path) -> None:
    from arq.connections import create_pool as arq_pool

    from workers.main import create_worker, functions
    from workers.redis import redis_settings

    assert ingest_accounting in functions()
    directory = tmp_path / "acct"
    directory.mkdir()
    sent = await make_campaign(db, ("ann",))
    (directory / "acct-1.csv").write_text("".join(crlf(HEADER, rec("d", sent["ann"], "ann"))), newline="")
    settings = msgspec.structs.replace(settings, pmta_accounting_dir=Path(directory))
    arq = await arq_pool(redis_settings(settings.redis_url), default_queue_name=settings.queue_name)
    try:
        await arq.enqueue_job("ingest_accounting")
    finally:
        await arq.aclose()
    worker = create_worker(settings, secret_key=SECRET_KEY, burst=True, handle_signals=False, cron_jobs=None)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    assert await db.fetchval("SELECT status::text FROM sends WHERE id = $1", sent["ann"]) == "delivered"
