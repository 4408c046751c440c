"""MailWizz transport: the install API, the outbox push, and `mailwizz` campaigns against the local MailWizz."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from arq import Retry
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from engine import db as dbm
from engine import secrets, suppression
from engine.mailwizz import campaigns as mailwizz_campaigns
from engine.mailwizz import sync as mailwizz_sync
from engine.mailwizz.client import MailWizzClient, SubscriberIn
from tests.conftest import SECRET_KEY, tenant_key
from tests.fake_mailwizz import FakeMailWizz, FakeSubscriber
from workers import mailwizz as jobs
from workers.main import create_worker

PUBLIC_KEY = "pub-key-0123456789"


@pytest.fixture
async def fake():
    async with FakeMailWizz(api_key=PUBLIC_KEY) as server:
        yield server


@pytest.fixture
async def pool(database_url: str):
    pool = await dbm.create_pool(database_url, min_size=1, max_size=6)
    yield pool
    await pool.close()


@pytest.fixture
async def list_uid(fake: FakeMailWizz, db: asyncpg.Connection, seeded) -> str:
    """Tenant 1 sends through the local MailWizz: key stored encrypted, a list to push to."""
    async with MailWizzClient(fake.base_url, PUBLIC_KEY) as mw:
        uid = await mw.create_list("sos-expat", from_name="SOS", from_email="news@sos.example",
                                   reply_to="reply@sos.example")
    await db.execute("UPDATE tenants SET transport = 'mailwizz' WHERE id = 1")
    await db.execute("UPDATE mailwizz_instances SET base_url = $2, public_key_enc = $3, list_uid = $4 "
                     "WHERE tenant_id = $1", 1, fake.base_url, secrets.encrypt(SECRET_KEY, PUBLIC_KEY), uid)
    return uid


@pytest.fixture
def ctx(pool) -> dict:
    return {"pool": pool, "secret_key": SECRET_KEY, "job_try": 1}


async def add_contacts(db: asyncpg.Connection, emails: list[str], *, languages: list[str | None],
                       status: str = "valid", tenant_id: int = 1, outbox: bool = False) -> list[int]:
    ids = [r["id"] for r in await db.fetch(
        """INSERT INTO contacts (tenant_id, email, email_hash, first_name, company, language, category, status)
           SELECT $1, e, sha256(convert_to(e, 'UTF8')), 'Name ' || n, 'Company ' || n, l, 'avocat', $4::contact_status
           FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(e, l, n)
           RETURNING id""",
        tenant_id, emails, [languages[i % len(languages)] for i in range(len(emails))], status)]
    if outbox:
        await db.execute("INSERT INTO mailwizz_outbox (contact_id, tenant_id) SELECT unnest($1::bigint[]), $2",
                         ids, tenant_id)
    return ids


async def uids(db: asyncpg.Connection) -> dict[str, str | None]:
    return dict(await db.fetch("SELECT email, mailwizz_subscriber_uid FROM contacts WHERE tenant_id = 1"))


# --- the install API --------------------------------------------------------------------------------------

async def test_config_api_never_returns_keys_and_encrypts_them(client, admin, seeded, db, fake) -> None:
    sos = await tenant_key(client, admin, 1)
    body = {"base_url": fake.base_url + "/", "public_key": PUBLIC_KEY, "list_uid": "ab12cd34ef567"}
    r = await client.put("/api/v2/mailwizz/1", json=body, headers=sos)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["has_public_key"] is True and answer["has_private_key"] is False
    assert answer["base_url"] == fake.base_url and answer["list_uid"] == "ab12cd34ef567"
    r = await client.get("/api/v2/mailwizz/1", headers=sos)
    assert r.status_code == 200 and r.json() == answer
    assert PUBLIC_KEY not in r.text and "key_enc" not in r.text
    stored = await db.fetchrow("SELECT public_key_enc, private_key_enc FROM mailwizz_instances WHERE tenant_id = 1")
    assert PUBLIC_KEY.encode() not in stored["public_key_enc"]
    assert secrets.decrypt(SECRET_KEY, stored["public_key_enc"]) == PUBLIC_KEY
    # a working client comes back out of the stored row
    async with MailWizzClient(fake.base_url, PUBLIC_KEY) as mw:
        real = await mw.create_list("l", from_name="S", from_email="s@s.example", reply_to="r@s.example")
    await db.execute("UPDATE mailwizz_instances SET list_uid = $1 WHERE tenant_id = 1", real)
    mw = await mailwizz_sync.client_for(db, 1, SECRET_KEY)
    assert mw is not None
    async with mw:
        assert (await mw.get_list(real)).name == "l"

    # 1.x: the private key is required once, then kept when omitted
    r = await client.put("/api/v2/mailwizz/1", json={**body, "api_version": 1}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "private_key", r.text
    r = await client.put("/api/v2/mailwizz/1", json={**body, "api_version": 1, "private_key": "priv-key-secret"},
                         headers=sos)
    assert r.status_code == 200 and r.json()["has_private_key"] is True and "priv-key-secret" not in r.text
    r = await client.put("/api/v2/mailwizz/1", json={**body, "api_version": 1, "public_key": "pub-key-rotated"},
                         headers=sos)
    assert r.status_code == 200 and r.json()["has_private_key"] is True
    stored = await db.fetchrow("SELECT public_key_enc, private_key_enc FROM mailwizz_instances WHERE tenant_id = 1")
    assert secrets.decrypt(SECRET_KEY, stored["private_key_enc"]) == "priv-key-secret"
    assert secrets.decrypt(SECRET_KEY, stored["public_key_enc"]) == "pub-key-rotated"
    assert await db.fetchval("SELECT count(*) FROM mailwizz_instances WHERE tenant_id = 1") == 1


@pytest.mark.parametrize(("patch", "field"), [
    ({"base_url": "ftp://mailwizz.example/api"}, "base_url"),
    ({"base_url": "not a url"}, "base_url"),
    ({"api_version": 3}, "api_version"),
    ({"public_key": "short"}, "public_key"),
    ({"list_uid": "Bad Uid!"}, "list_uid"),
    ({"colour": "blue"}, "colour"),
])
async def test_config_api_bad_input_names_the_field(client, admin, seeded, patch, field) -> None:
    body = {"base_url": "https://mailwizz.sos.example/api", "public_key": PUBLIC_KEY, **patch}
    r = await client.put("/api/v2/mailwizz/1", json=body, headers=admin)
    assert r.status_code == 400 and field in r.text, r.text


async def test_config_api_tenant_isolation(client, admin, seeded, db) -> None:
    ulixai = await tenant_key(client, admin, 2)
    before = await db.fetchrow("SELECT * FROM mailwizz_instances WHERE tenant_id = 1")
    body = {"base_url": "https://evil.example/api", "public_key": PUBLIC_KEY}
    assert (await client.get("/api/v2/mailwizz/1", headers=ulixai)).status_code == 404
    assert (await client.put("/api/v2/mailwizz/1", json=body, headers=ulixai)).status_code == 404
    assert await db.fetchrow("SELECT * FROM mailwizz_instances WHERE tenant_id = 1") == before
    assert (await client.get("/api/v2/mailwizz/2", headers=ulixai)).status_code == 200
    # a tenant without any install: 404 until one is PUT
    r = await client.post("/api/v2/tenants", json={"slug": "third", "name": "Third"}, headers=admin)
    third = r.json()["id"]
    assert (await client.get(f"/api/v2/mailwizz/{third}", headers=admin)).status_code == 404
    r = await client.put(f"/api/v2/mailwizz/{third}", json=body, headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "MailWizz"
    assert (await client.put("/api/v2/mailwizz/999", json=body, headers=admin)).status_code == 404


# --- the outbox push --------------------------------------------------------------------------------------

async def test_outbox_push_in_bulk_with_fields_and_uids(db, fake, list_uid, settings) -> None:
    emails = [f"p{i}@inbox{i % 7}.example" for i in range(500)]
    ids = await add_contacts(db, emails, languages=["fr", "en", "ar", "fr-FR", None], outbox=True)
    await add_contacts(db, ["gone@inbox1.example"], languages=["fr"], status="invalid", outbox=True)
    tag = await db.fetchval("SELECT id FROM tags WHERE tenant_id = 1 AND slug = 'avocat'")
    other = await db.fetchval("SELECT id FROM tags WHERE tenant_id = 1 AND slug = 'client'")
    await db.execute("INSERT INTO contact_tags VALUES ($1, $2), ($1, $3)", ids[0], tag, other)
    await suppression.add_suppressions(db, 1, ["p1@inbox1.example", "p2@inbox2.example"], reason="unsubscribe")
    await suppression.add_suppressions(db, 1, ["inbox6.example"], reason="manual")   # a whole domain
    blocked = {e for e in emails if e.endswith("@inbox6.example")} | {"p1@inbox1.example", "p2@inbox2.example"}

    arq = ArqRedis(ConnectionPool.from_url(settings.redis_url))
    await arq.enqueue_job("push_contacts_to_mailwizz", 1, _queue_name=settings.queue_name)
    await arq.aclose()
    worker = create_worker(settings, secret_key=SECRET_KEY, burst=True, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)

    subs = fake.state.lists[list_uid]
    assert {s.email for s in subs.subscribers.values()} == set(emails) - blocked
    assert {"LANGUAGE", "CATEGORY", "TAGS", "COMPANY"} <= set(subs.fields)
    first = subs.by_email("p0@inbox0.example")
    assert first.status == "confirmed"
    assert first.fields == {"FNAME": "Name 1", "LANGUAGE": "fr", "CATEGORY": "avocat", "TAGS": "avocat,client",
                            "COMPANY": "Company 1"}
    assert subs.by_email("p3@inbox3.example").fields["LANGUAGE"] == "fr"   # fr-FR
    assert subs.by_email("p4@inbox4.example").fields["LANGUAGE"] == "en"   # no language: English
    stored = await uids(db)
    assert all(stored[s.email] == s.uid for s in subs.subscribers.values())
    assert all(stored[e] is None for e in blocked) and stored["gone@inbox1.example"] is None
    assert await db.fetchval("SELECT count(*) FROM mailwizz_outbox") == 0
    bulk = [p for m, p in fake.state.requests if p.endswith("/subscribers/bulk")]
    assert len(bulk) == 5   # 500 taken, 458 pushed: 100 per request


async def test_outbox_push_503_keeps_rows_and_retries(db, fake, list_uid, ctx) -> None:
    emails = [f"r{i}@retry.example" for i in range(20)]
    await add_contacts(db, emails, languages=["de"], outbox=True)
    fake.fail_next(1, 503, retry_after="600")   # longer than the client waits: handed to arq
    with pytest.raises(Retry) as info:
        await jobs.push_contacts_to_mailwizz(ctx, 1)
    assert info.value.defer_score == 600_000
    assert await db.fetchval("SELECT count(*) FROM mailwizz_outbox") == 20
    assert not fake.state.lists[list_uid].subscribers

    # the minute flush honours the same Retry-After: it does not call MailWizz again before then
    fake.fail_next(1, 503, retry_after="600")
    assert (await jobs.flush_mailwizz_outbox(ctx))[1] == {"retry_in": 600.0}
    calls = len(fake.state.requests)
    assert await jobs.flush_mailwizz_outbox(ctx) == {} and len(fake.state.requests) == calls

    fake.fail_next(2, 503, retry_after="0")     # short: the client retries within the call
    report = await jobs.push_contacts_to_mailwizz(ctx, 1)
    assert report["pushed"] == 20 and report["taken"] == 20
    assert await db.fetchval("SELECT count(*) FROM mailwizz_outbox") == 0
    assert all(await uids(db))


async def test_unsubscribes_in_mailwizz_are_pulled_back(db, fake, list_uid, ctx) -> None:
    # 120 subscribers over three pages of 50: every 10th (12) left the list in MailWizz, 5, 55 and 105 were
    # blacklisted there; two of the leavers are also engine contacts
    statuses = {i: "unsubscribed" if i % 10 == 0 else "blacklisted" if i % 25 == 5 else "confirmed"
                for i in range(120)}
    fake.state.lists[list_uid].subscribers = {
        f"s{i}": FakeSubscriber(uid=f"s{i}", email=f"Sub{i}@List.example", status=status, fields={})
        for i, status in statuses.items()}
    await add_contacts(db, ["sub0@list.example", "sub10@list.example", "sub1@list.example"], languages=["fr"])
    fake.fail_next(1, 503, retry_after="600")     # MailWizz down: nothing written, the next hour tries again
    assert str((await jobs.pull_mailwizz_unsubscribes(ctx))[1]).startswith("error")
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0

    assert await jobs.pull_mailwizz_unsubscribes(ctx) == {1: 12 + 3}
    rows = {r["value"]: (r["reason"], r["source"]) for r in await db.fetch(
        "SELECT value, reason::text, source FROM suppressions WHERE tenant_id = 1")}
    assert rows == {f"sub{i}@list.example": ("unsubscribe" if s == "unsubscribed" else "manual", "mailwizz")
                    for i, s in statuses.items() if s != "confirmed"}
    contacts = dict(await db.fetch("SELECT email, status::text FROM contacts WHERE tenant_id = 1"))
    assert contacts == {"sub0@list.example": "unsubscribed", "sub10@list.example": "unsubscribed",
                        "sub1@list.example": "valid"}
    assert sum(1 for _, path in fake.state.requests if path == f"lists/{list_uid}/subscribers") == 1 + 3
    assert await jobs.pull_mailwizz_unsubscribes(ctx) == {1: 0}     # a second walk changes nothing
    assert [c.coroutine for c in jobs.cron_jobs(None)] == [jobs.pull_mailwizz_unsubscribes]   # hourly


# --- MailWizz campaigns -----------------------------------------------------------------------------------

async def start_campaign(client, headers, **extra) -> int:
    body = {"tenant_id": 1, "name": "Avocats", "from_name": "SOS-Expat", "from_email": "hello@sos.example",
            "transport": "mailwizz", **extra}
    r = await client.post("/api/v2/campaigns", json=body, headers=headers)
    assert r.status_code == 201, r.text
    campaign_id = r.json()["id"]
    r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "sending", r.text
    return campaign_id


async def three_languages(db, fake: FakeMailWizz, list_uid: str) -> dict[str, list[str]]:
    langs = {lang: [f"{lang}{i}@{lang}{'-blocked' if i > 3 else ''}.example" for i in range(6)]
             for lang in ("fr", "en", "ar")}
    for lang, emails in langs.items():
        await add_contacts(db, emails, languages=[lang])
    # already a subscriber, then suppressed: the sweep unsubscribes it before any campaign exists
    async with MailWizzClient(fake.base_url, PUBLIC_KEY) as mw:
        push = await mw.create_subscriber(list_uid, SubscriberIn(email="fr5@fr-blocked.example", fields={"LANGUAGE": "fr"}))
    await db.execute("UPDATE contacts SET mailwizz_subscriber_uid = $1 WHERE email = 'fr5@fr-blocked.example'", push.uid)
    await suppression.add_suppressions(db, 1, ["fr4@fr-blocked.example", "fr5@fr-blocked.example"],
                                       reason="unsubscribe")
    # suppressed while their contacts still read valid (a suppression racing the audience): skipped at send time
    await db.execute("INSERT INTO suppressions (tenant_id, value, reason) VALUES (1, 'ar-blocked.example', 'manual')")
    return langs


async def remote_by_language(db, fake: FakeMailWizz, campaign_id: int) -> dict[str, list]:
    """The stand-in's campaigns of one of our campaigns, by language, in wave order."""
    out: dict[str, list] = {}
    for r in await db.fetch("SELECT language, campaign_uid FROM mailwizz_campaigns WHERE campaign_id = $1 "
                            "AND campaign_uid IS NOT NULL ORDER BY language, wave", campaign_id):
        out.setdefault(r["language"], []).append(fake.state.campaigns[r["campaign_uid"]])
    return out


def targeted(fake: FakeMailWizz, campaigns: list | None = None) -> set[str]:
    """Whom the stand-in's campaigns would deliver to: the confirmed subscribers each one's list targets."""
    return {s.email for c in (campaigns if campaigns is not None else fake.state.campaigns.values())
            for s in fake.audience(c)}


async def test_campaign_one_mailwizz_campaign_per_language_exactly_once(client, admin, db, fake, list_uid,
                                                                        ctx) -> None:
    langs = await three_languages(db, fake, list_uid)
    campaign_id = await start_campaign(client, admin)
    assert await jobs.run_mailwizz_campaigns(ctx) == {campaign_id: "sending"}
    remote = fake.state.campaigns
    assert len(remote) == 3 and len(fake.state.templates) == 3
    await jobs.run_mailwizz_campaigns(ctx)   # runs again: nothing created twice
    assert len(remote) == 3 and len(fake.state.templates) == 3 and len(fake.state.lists) == 1 + 3

    by_lang = {lang: waves[0] for lang, waves in (await remote_by_language(db, fake, campaign_id)).items()}
    assert set(by_lang) == {"fr", "en", "ar"}
    # each MailWizz campaign targets a list of its own, never the tenant's list, and no segment
    assert len({c.form["list_uid"] for c in remote.values()} | {list_uid}) == 4
    assert not any(c.form.get("segment_uid") for c in remote.values())
    for lang in ("fr", "ar"):
        assert {s.email for s in fake.audience(by_lang[lang])} == set(langs[lang][:4])
    assert {s.email for s in fake.audience(by_lang["en"])} == set(langs["en"])
    assert 'dir="rtl"' in by_lang["ar"].html
    fr = by_lang["fr"]
    assert "[FNAME]" in fr.form["subject"] and "[COMPANY]" in fr.form["subject"]
    assert "[FNAME]" in fr.html and "[UNSUBSCRIBE_URL]" in fr.html and 'dir="rtl"' not in fr.html
    assert fr.form["from_email"] == "hello@sos.example" and fr.form["reply_to"] == "hello@sos.example"
    wave_list = fake.state.lists[fr.form["list_uid"]]
    assert {"FNAME", "COMPANY", "LANGUAGE"} <= set(wave_list.fields)
    assert wave_list.by_email("fr0@fr.example").fields["COMPANY"] == "Company 1"
    # suppressed: in no list a campaign mails (the one already in the tenant's list is left there: no
    # campaign of ours targets that list any more)
    blocked = {*langs["fr"][4:], *langs["ar"][4:]}
    assert not blocked & targeted(fake)
    assert not any(fl.by_email(e) for e in blocked for fl in fake.state.lists.values() if fl.uid != list_uid)
    assert fake.state.lists[list_uid].by_email("fr4@fr-blocked.example") is None

    rows = dict(await db.fetch("SELECT c.email, s.status::text || ':' || coalesce(s.vmta, s.detail) FROM sends s "
                               "JOIN contacts c ON c.id = s.contact_id WHERE s.campaign_id = $1", campaign_id))
    for email in [*langs["fr"][:4], *langs["en"], *langs["ar"][:4]]:
        assert rows[email] == "injected:mailwizz"
    for email in langs["ar"][4:]:
        assert rows[email] == "skipped:suppressed"
    assert not set(langs["fr"][4:]) & set(rows)   # marked unsubscribed: not in the audience at all
    groups = await db.fetch("SELECT language, status, campaign_uid FROM mailwizz_campaigns WHERE campaign_id = $1 "
                            "ORDER BY language", campaign_id)
    assert [g["language"] for g in groups] == ["ar", "en", "fr"]
    assert {g["campaign_uid"] for g in groups} == set(remote)

    # polled until MailWizz says sent, then the campaign completes
    for _ in range(5):
        if (await jobs.run_mailwizz_campaigns(ctx)).get(campaign_id) == "completed":
            break
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id) == "completed"
    stats = await db.fetch("SELECT language, status, stats FROM mailwizz_campaigns WHERE campaign_id = $1", campaign_id)
    assert {r["status"] for r in stats} == {"sent"}
    assert {r["language"]: r["stats"]["delivery_success_count"] for r in stats} == {"fr": 4, "en": 6, "ar": 4}
    assert await jobs.run_mailwizz_campaigns(ctx) == {}   # nothing left to visit
    assert len(fake.state.campaigns) == 3


class Died(BaseException):
    """The worker process dying mid-call (nothing below catches a BaseException)."""


async def test_crash_while_creating_is_never_repeated(client, admin, db, fake, list_uid, ctx, monkeypatch) -> None:
    await add_contacts(db, [f"c{i}@crash.example" for i in range(4)], languages=["fr", "en"])
    campaign_id = await start_campaign(client, admin)
    real_create = MailWizzClient.create_campaign

    async def die_on_fr(self, spec):   # the pass dies after committing 'creating' for fr, mid-POST
        if "[fr]" in spec.name:
            raise Died
        return await real_create(self, spec)

    monkeypatch.setattr(MailWizzClient, "create_campaign", die_on_fr)
    with pytest.raises(Died):
        await jobs.run_mailwizz_campaigns(ctx)
    monkeypatch.setattr(MailWizzClient, "create_campaign", real_create)
    assert await db.fetchval("SELECT status FROM mailwizz_campaigns WHERE campaign_id = $1 AND language = 'fr'",
                             campaign_id) == "creating"
    await jobs.run_mailwizz_campaigns(ctx)
    assert len(fake.state.campaigns) == 1   # en only: MailWizz may have fr's, so it is not created again
    fr = await db.fetch("SELECT status, error FROM mailwizz_campaigns WHERE campaign_id = $1 AND language = 'fr'",
                        campaign_id)
    assert len(fr) == 1 and fr[0]["status"] == "in_doubt" and "not repeated" in fr[0]["error"]
    statuses = [r["status"] for r in await db.fetch(
        "SELECT status::text FROM sends WHERE campaign_id = $1 AND language = 'fr'", campaign_id)]
    assert statuses == ["failed", "failed"]


async def test_campaign_create_503_is_retried_next_pass(client, admin, db, fake, list_uid, ctx) -> None:
    await add_contacts(db, [f"t{i}@temp.example" for i in range(3)], languages=["de"])
    campaign_id = await start_campaign(client, admin)
    real_dispatch = fake.dispatch

    def fail_campaign_post(method, path, *args):   # MailWizz answers 503 to the campaign POST only
        if method == "POST" and path == "campaigns":
            fake.fail_next(1, 503, retry_after="900")
        return real_dispatch(method, path, *args)

    fake.dispatch = fail_campaign_post
    out = await jobs.run_mailwizz_campaigns(ctx)
    assert out[campaign_id].startswith("error:") and not fake.state.campaigns
    assert await db.fetchval("SELECT status FROM mailwizz_campaigns WHERE campaign_id = $1", campaign_id) == "pending"
    fake.dispatch = real_dispatch
    await jobs.run_mailwizz_campaigns(ctx)
    assert len(fake.state.campaigns) == 1 and len(fake.state.templates) == 1   # template kept from the first pass
    assert await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND status = 'injected'",
                             campaign_id) == 3


async def test_pause_resume_cancel_reach_mailwizz(client, admin, db, fake, list_uid, ctx) -> None:
    await add_contacts(db, [f"z{i}@pause.example" for i in range(4)], languages=["fr", "es"])

    async def act(campaign_id: int, action: str) -> None:
        r = await client.post(f"/api/v2/campaigns/1/{campaign_id}/{action}", headers=admin)
        assert r.status_code == 200, r.text
        await jobs.run_mailwizz_campaigns(ctx)

    async def state(campaign_id: int) -> tuple[set[str], set[str]]:
        rows = await db.fetch("SELECT status, campaign_uid FROM mailwizz_campaigns WHERE campaign_id = $1", campaign_id)
        return {r["status"] for r in rows}, {fake.state.campaigns[r["campaign_uid"]].status for r in rows}

    for then in ("resume", "cancel"):
        campaign_id = await start_campaign(client, admin, name=f"then {then}")
        await jobs.run_mailwizz_campaigns(ctx)
        assert (await state(campaign_id))[1] == {"sending"}   # created, then polled once
        await act(campaign_id, "pause")
        assert await state(campaign_id) == ({"paused"}, {"paused"})
        assert campaign_id not in await jobs.run_mailwizz_campaigns(ctx)   # nothing more to tell MailWizz
        await act(campaign_id, then)
        ours, remote = await state(campaign_id)
        if then == "resume":
            assert "paused" not in remote and ours <= {"sending", "sent"}
        else:
            assert remote == {"paused"} and ours == {"cancelled"}
            assert campaign_id not in await jobs.run_mailwizz_campaigns(ctx)
    assert len(fake.state.campaigns) == 4


async def test_campaign_without_install_waits(client, admin, db, ctx, seeded) -> None:
    await db.execute("UPDATE tenants SET transport = 'mailwizz' WHERE id = 1")
    await add_contacts(db, ["w@wait.example"], languages=["fr"])
    campaign_id = await start_campaign(client, admin)
    assert await jobs.run_mailwizz_campaigns(ctx) == {campaign_id: "no mailwizz install"}
    assert await db.fetchval("SELECT status::text FROM sends WHERE campaign_id = $1", campaign_id) is None


def test_render_with_mailwizz_tags_and_empty_unknowns() -> None:
    from engine.templates import Template, TemplateBook

    t = Template(id=1, tenant_id=1, name="x", language="ar", category=None, subject="{firstName}, {custom_x}",
                 body_html="<p>{{ company }} {{ sender_name|default('Ali') }}</p>", body_text=None, variables=[], active=True,
                 version=1, created_at=None, updated_at=None)  # type: ignore[arg-type]
    out = mailwizz_campaigns.render_for_mailwizz(TemplateBook(1, [t]), t)
    assert out.subject == "[FNAME], " and "[COMPANY] Ali" in out.html and 'dir="rtl"' in out.html
    assert "[UNSUBSCRIBE_URL]" in out.html and "[UNSUBSCRIBE_URL]" in out.text


# --- the campaign's audience, and the one send policy -----------------------------------------------------

async def tag(db, tag_slug: str, contact_ids: list[int]) -> None:
    await db.execute("INSERT INTO contact_tags (contact_id, tag_id) SELECT unnest($1::bigint[]), id FROM tags "
                     "WHERE tenant_id = 1 AND slug = $2", contact_ids, tag_slug)


async def send_rows(db, campaign_id: int) -> dict[str, str]:
    """email -> status:detail of each row of the campaign."""
    return dict(await db.fetch("SELECT c.email, s.status::text || ':' || coalesce(s.detail, '') FROM sends s "
                               "JOIN contacts c ON c.id = s.contact_id WHERE s.campaign_id = $1", campaign_id))


async def test_campaign_mails_its_audience_not_the_whole_list(client, admin, db, fake, list_uid, ctx) -> None:
    # The tenant's MailWizz list holds 100 French subscribers; the campaign's audience is the 10 tagged 'avocat'.
    emails = [f"all{i}@list.example" for i in range(100)]
    ids = await add_contacts(db, emails, languages=["fr"], outbox=True)
    assert (await jobs.push_contacts_to_mailwizz(ctx, 1))["pushed"] == 100
    tenant_list = fake.state.lists[list_uid]
    assert sum(1 for s in tenant_list.subscribers.values() if s.fields.get("LANGUAGE") == "fr") == 100
    await tag(db, "avocat", ids[:10])
    await tag(db, "client", ids[50:55])
    avocats = await start_campaign(client, admin, audience={"tags": ["avocat"]})
    clients = await start_campaign(client, admin, name="Clients", audience={"tags": ["client"]})

    await jobs.run_mailwizz_campaigns(ctx)
    ours = await remote_by_language(db, fake, avocats)
    theirs = await remote_by_language(db, fake, clients)
    assert targeted(fake, ours["fr"]) == set(emails[:10])        # exactly the audience, not the 100
    assert targeted(fake, theirs["fr"]) == set(emails[50:55])    # and nothing of the other campaign's
    assert targeted(fake) == set(emails[:10]) | set(emails[50:55])
    assert len(tenant_list.subscribers) == 100                   # the tenant's list is not what is mailed
    for _ in range(4):
        await jobs.run_mailwizz_campaigns(ctx)
    stats = await db.fetchval("SELECT stats FROM mailwizz_campaigns WHERE campaign_id = $1", avocats)
    assert stats["subscribers_count"] == 10 and stats["delivery_success_count"] == 10
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", avocats) == "completed"


async def test_pending_contacts_wait_for_validation_then_go_in_a_later_wave(client, admin, db, fake, list_uid,
                                                                            pool) -> None:
    await db.execute("UPDATE tenants SET settings = settings || '{\"validation_wait_hours\": 2}' WHERE id = 1")
    valid = [f"v{i}@wait.example" for i in range(3)]
    pending = [f"p{i}@wait.example" for i in range(4)]
    await add_contacts(db, valid, languages=["fr"])
    pending_ids = await add_contacts(db, pending, languages=["fr"], status="pending")
    campaign_id = await start_campaign(client, admin, audience={"statuses": ["valid", "pending"]})
    expedited: list[tuple[int, list[int]]] = []

    async def expedite(tenant_id: int, contact_ids: list[int]) -> None:
        expedited.append((tenant_id, sorted(contact_ids)))

    async def one_pass() -> str:
        return await mailwizz_campaigns.run_campaign(pool, SECRET_KEY, campaign_id, expedite=expedite)

    assert await one_pass() == "sending"
    assert targeted(fake) == set(valid)                              # none of the pending handed over
    rows = await send_rows(db, campaign_id)
    assert {rows[e] for e in pending} == {"queued:waiting for the contact's validation"}
    assert expedited == [(1, sorted(pending_ids))]                   # their validation is moved up
    assert await db.fetchval("SELECT count(*) FROM sends WHERE campaign_id = $1 AND waiting_since IS NOT NULL",
                             campaign_id) == 4
    assert await one_pass() == "sending" and len(fake.state.campaigns) == 1   # still pending: still waiting

    # p0, p1 validated, p2 found invalid, p3 still pending past the tenant's two hours of validation wait
    await db.execute("UPDATE contacts SET status = 'valid' WHERE email IN ('p0@wait.example', 'p1@wait.example')")
    await db.execute("UPDATE contacts SET status = 'invalid' WHERE email = 'p2@wait.example'")
    await db.execute("UPDATE sends s SET waiting_since = now() - interval '3 hours', next_attempt_at = now() "
                     "FROM contacts c WHERE c.id = s.contact_id AND c.email = 'p3@wait.example'")   # recheck due
    await one_pass()
    assert targeted(fake) == set(valid) | {"p0@wait.example", "p1@wait.example"}
    waves = await remote_by_language(db, fake, campaign_id)
    assert [targeted(fake, [c]) for c in waves["fr"]] == [set(valid), {"p0@wait.example", "p1@wait.example"}]
    assert waves["fr"][0].form["list_uid"] != waves["fr"][1].form["list_uid"]   # a list of its own per wave
    rows = await send_rows(db, campaign_id)
    assert rows["p0@wait.example"].startswith("injected:") and rows["p1@wait.example"].startswith("injected:")
    assert rows["p2@wait.example"] == "skipped:contact is invalid"
    assert rows["p3@wait.example"] == "skipped:contact not validated within 2 h"


async def test_suppressed_and_risky_contacts_are_never_handed_over(client, admin, db, fake, list_uid, ctx) -> None:
    await db.execute("UPDATE tenants SET settings = settings || '{\"mail_risky\": false}' WHERE id = 1")
    await add_contacts(db, ["ok0@pol.example", "ok1@pol.example", "held@blocked.example"], languages=["de"])
    await add_contacts(db, ["r0@pol.example", "r1@pol.example"], languages=["de"], status="risky")
    # suppressed after the audience was chosen: the contact still reads valid, the suppression list says no
    await db.execute("INSERT INTO suppressions (tenant_id, value, reason) VALUES (1, 'blocked.example', 'manual')")
    campaign_id = await start_campaign(client, admin, audience={"statuses": ["valid", "risky"]})
    await jobs.run_mailwizz_campaigns(ctx)
    assert targeted(fake) == {"ok0@pol.example", "ok1@pol.example"}
    handed = {s.email for fl in fake.state.lists.values() if fl.uid != list_uid for s in fl.subscribers.values()}
    assert handed == {"ok0@pol.example", "ok1@pol.example"}
    rows = await send_rows(db, campaign_id)
    assert rows["held@blocked.example"] == "skipped:suppressed"
    assert rows["r0@pol.example"] == rows["r1@pol.example"] == (
        "skipped:contact is risky and the tenant mails only valid contacts")

    # a row that no longer passes between joining its wave and the campaign POST is taken out of the list
    await db.execute("UPDATE tenants SET settings = settings || '{\"mail_risky\": true}' WHERE id = 1")
    await add_contacts(db, ["late0@pol.example", "late1@pol.example"], languages=["de"])
    again = await start_campaign(client, admin, name="again")
    real_dispatch = fake.dispatch

    def refuse_campaign_post(method, path, *args):
        if method == "POST" and path == "campaigns":
            fake.fail_next(1, 503, retry_after="900")
        return real_dispatch(method, path, *args)

    fake.dispatch = refuse_campaign_post
    assert (await jobs.run_mailwizz_campaigns(ctx))[again].startswith("error:")
    fake.dispatch = real_dispatch
    await suppression.add_suppressions(db, 1, ["late1@pol.example"], reason="unsubscribe")
    await jobs.run_mailwizz_campaigns(ctx)
    ours = (await remote_by_language(db, fake, again))["de"]
    assert targeted(fake, ours) == {"ok0@pol.example", "ok1@pol.example", "late0@pol.example"}
    assert fake.state.lists[ours[0].form["list_uid"]].by_email("late1@pol.example") is None   # deleted
    assert (await send_rows(db, again))["late1@pol.example"] == "skipped:contact is unsubscribed"


async def test_daily_cap_hands_over_at_most_n_a_day(client, admin, db, fake, list_uid, ctx) -> None:
    emails = [f"d{i}@cap.example" for i in range(10)]
    await add_contacts(db, emails, languages=["fr", "en"])
    campaign_id = await start_campaign(client, admin, daily_cap=4)
    await jobs.run_mailwizz_campaigns(ctx)
    assert len(targeted(fake)) == 4 and len(fake.state.campaigns) == 2     # fr and en share the day's 4
    for _ in range(3):   # the same day: nothing more
        await jobs.run_mailwizz_campaigns(ctx)
    assert len(targeted(fake)) == 4
    counts = dict(await db.fetch("SELECT status::text, count(*) FROM sends WHERE campaign_id = $1 GROUP BY 1",
                                 campaign_id))
    assert counts == {"injected": 4, "queued": 6}
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id) == "sending"

    for day in (1, 2):   # the next day (the cap's days moved back): the next 4, in new waves and lists
        await db.execute("UPDATE mailwizz_wave_sends SET day = day - 1 WHERE campaign_id = $1", campaign_id)
        await jobs.run_mailwizz_campaigns(ctx)
        assert len(targeted(fake)) == min(10, 4 * (day + 1))
    per_day = [r["n"] for r in await db.fetch("SELECT day, count(*) AS n FROM mailwizz_wave_sends "
                                              "WHERE campaign_id = $1 GROUP BY day ORDER BY day", campaign_id)]
    assert per_day == [4, 4, 2] and targeted(fake) == set(emails)
    for _ in range(4):
        await jobs.run_mailwizz_campaigns(ctx)
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign_id) == "completed"


def window_around(now: dt.datetime, *, inside: bool) -> dict[str, str]:
    start = now + (dt.timedelta(hours=-1) if inside else dt.timedelta(hours=2))
    return {"start": start.strftime("%H:%M"), "end": (start + dt.timedelta(hours=2)).strftime("%H:%M"),
            "timezone": "UTC"}


async def test_outside_the_window_nothing_is_created(client, admin, db, fake, list_uid, ctx) -> None:
    await add_contacts(db, [f"w{i}@window.example" for i in range(3)], languages=["it"])
    now = dt.datetime.now(dt.UTC)
    campaign_id = await start_campaign(client, admin, window=window_around(now, inside=False))
    for _ in range(2):
        assert await jobs.run_mailwizz_campaigns(ctx) == {campaign_id: "outside the sending window"}
    assert not fake.state.campaigns and list(fake.state.lists) == [list_uid]
    assert set((await send_rows(db, campaign_id)).values()) == {"queued:"}

    await db.execute("UPDATE campaigns SET send_window = $2 WHERE id = $1", campaign_id,
                     window_around(now, inside=True))
    assert await jobs.run_mailwizz_campaigns(ctx) == {campaign_id: "sending"}
    assert len(targeted(fake)) == 3
    (remote,) = fake.state.campaigns.values()
    assert remote.status == "sending"
    # the window closes while MailWizz is still sending: paused there until it opens again
    await db.execute("UPDATE campaigns SET send_window = $2 WHERE id = $1", campaign_id,
                     window_around(now, inside=False))
    await jobs.run_mailwizz_campaigns(ctx)
    assert remote.status == "paused"
    assert await db.fetchval("SELECT status FROM mailwizz_campaigns WHERE campaign_id = $1", campaign_id) == "paused"
    await jobs.run_mailwizz_campaigns(ctx)
    assert remote.status == "paused"
    await db.execute("UPDATE campaigns SET send_window = $2 WHERE id = $1", campaign_id,
                     window_around(now, inside=True))
    await jobs.run_mailwizz_campaigns(ctx)
    assert remote.status in ("sending", "sent")


async def test_unsubscribes_in_a_wave_list_reach_the_suppression_list(client, admin, db, fake, list_uid,
                                                                      ctx) -> None:
    await add_contacts(db, ["leaver@wave.example", "stayer@wave.example"], languages=["fr"])
    await add_contacts(db, ["leaver@wave.example"], languages=["fr"], tenant_id=2)
    campaign_id = await start_campaign(client, admin)
    await jobs.run_mailwizz_campaigns(ctx)
    (remote,) = fake.state.campaigns.values()
    wave_list = fake.state.lists[remote.form["list_uid"]]
    wave_list.by_email("leaver@wave.example").status = "unsubscribed"    # clicked [UNSUBSCRIBE_URL]
    assert await jobs.pull_mailwizz_unsubscribes(ctx) == {1: 1}
    assert await db.fetch("SELECT tenant_id, value, reason::text, source FROM suppressions") == [
        (1, "leaver@wave.example", "unsubscribe", "mailwizz")]     # tenant 2's contact of that address untouched
    assert await db.fetchval("SELECT status::text FROM contacts WHERE tenant_id = 2") == "valid"
    assert campaign_id
