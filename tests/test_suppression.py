"""Suppression list: entries, bulk add with rejects, reason upgrades, domain matches, paging, isolation,
contact statuses, the dispatcher's batch filter, and MailWizz propagation."""

from __future__ import annotations

import asyncpg
import pytest

from engine import secrets, suppression
from engine.mailwizz.client import MailWizzClient, SubscriberIn
from engine.suppression import SuppressionReason
from tests.conftest import SECRET_KEY, tenant_key
from tests.fake_mailwizz import FakeMailWizz


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    """Headers of a key of tenant 1 (SOS-Expat)."""
    return await tenant_key(client, admin, seeded[0])


async def add(client, headers, emails: list[str], reason: str = "manual", tenant_id: int = 1, **extra) -> dict:
    r = await client.post("/api/v2/suppressions", json={"tenant_id": tenant_id, "emails": emails, "reason": reason,
                                                       **extra}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_reason_enum_matches_postgres(db: asyncpg.Connection) -> None:
    labels = await db.fetchval("SELECT enum_range(NULL::suppression_reason)::text[]")
    assert labels == [r.value for r in SuppressionReason]
    assert sorted(suppression.STRENGTH) == sorted(labels)


@pytest.mark.parametrize(("raw", "value", "problem"), [
    ("Jean.Dupont@Example.FR", "jean.dupont@example.fr", None),
    ("  someone@example.com ", "someone@example.com", None),
    ("example.com", "example.com", None),
    ("@Example.COM", "example.com", None),
    ("Bücher.example", "xn--bcher-kva.example", None),
    ("", None, "empty"),
    ("   ", None, "empty"),
    ("nodomain", None, "syntax"),
    ("a@b@example.com", None, "syntax"),
    ("a..b@example.com", None, "syntax"),
    ("@", None, "syntax"),
    ("x" * 65 + "@example.com", None, "too_long"),
    ('"quoted"@example.com', None, "quoted_local"),
])
def test_parse_entry(raw: str, value: str | None, problem: str | None) -> None:
    assert suppression.parse_entry(raw) == (value, problem)


async def test_bulk_add_reports_bad_entries_and_stores_good_ones(client, sos, db) -> None:
    body = await add(client, sos, ["A@Example.com", "not an address", "spam.example", "", "a@example.com",
                                   "@other.example"], source="crm")
    assert (body["added"], body["upgraded"], body["unchanged"]) == (3, 0, 1)
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [(1, "syntax"), (3, "empty")]
    rows = await db.fetch("SELECT value, is_domain, reason::text, source FROM suppressions WHERE tenant_id = 1 "
                          "ORDER BY id")
    assert [tuple(r) for r in rows] == [("a@example.com", False, "manual", "crm"),
                                        ("spam.example", True, "manual", "crm"),
                                        ("other.example", True, "manual", "crm")]
    again = await add(client, sos, ["a@example.com", "spam.example"])
    assert (again["added"], again["upgraded"], again["unchanged"]) == (0, 0, 2)


async def test_reason_upgrades_only_to_a_stronger_one(client, sos, db) -> None:
    await add(client, sos, ["a@example.com"], "manual")
    assert (await add(client, sos, ["a@example.com"], "complaint"))["upgraded"] == 1
    assert (await add(client, sos, ["a@example.com"], "unsubscribe"))["unchanged"] == 1
    assert await db.fetchval("SELECT reason::text FROM suppressions WHERE value = 'a@example.com'") == "complaint"


async def test_bad_requests_name_their_field(client, sos, admin, db) -> None:
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 1, "emails": ["a@example.com"],
                                                        "reason": "dislike"}, headers=sos)
    assert r.status_code == 400 and r.json().get("field") == "reason", r.text
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 1, "emails": ["a@example.com"] * 10_001,
                                                        "reason": "manual"}, headers=sos)
    assert r.status_code == 413 and r.json()["field"] == "emails"
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 1, "emails": ["a@example.com"],
                                                        "reason": "manual", "extra": 1}, headers=sos)
    assert r.status_code == 400
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 999, "emails": ["a@example.com"],
                                                        "reason": "manual"}, headers=admin)
    assert r.status_code == 404
    r = await client.get("/api/v2/suppressions/1/check", params={"email": "not an address"}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "email"
    r = await client.get("/api/v2/suppressions/1", params={"cursor": "abc"}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "cursor"
    r = await client.get("/api/v2/suppressions/1", params={"reason": "dislike"}, headers=sos)
    assert r.status_code == 400
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_domain_suppression_covers_every_address_at_it(client, sos) -> None:
    await add(client, sos, ["@blocked.example", "person@elsewhere.example"], "complaint")
    r = await client.get("/api/v2/suppressions/1/check", params={"email": "Anyone@BLOCKED.example"}, headers=sos)
    body = r.json()
    assert r.status_code == 200 and body["suppressed"] and body["email"] == "anyone@blocked.example"
    assert body["entry"]["value"] == "blocked.example" and body["entry"]["is_domain"]
    assert body["entry"]["reason"] == "complaint"
    # exact domain only: neither a subdomain nor the parent is covered
    for other in ("x@mail.blocked.example", "x@elsewhere.example"):
        r = await client.get("/api/v2/suppressions/1/check", params={"email": other}, headers=sos)
        assert r.json() == {"email": other, "suppressed": False, "entry": None}


async def test_check_prefers_the_address_entry(client, sos) -> None:
    await add(client, sos, ["example.net"], "manual")
    await add(client, sos, ["vip@example.net"], "unsubscribe")
    r = await client.get("/api/v2/suppressions/1/check", params={"email": "vip@example.net"}, headers=sos)
    assert r.json()["entry"]["value"] == "vip@example.net" and r.json()["entry"]["reason"] == "unsubscribe"


async def test_list_pages_and_filters(client, sos) -> None:
    await add(client, sos, [f"p{i}@example.com" for i in range(7)], "manual")
    await add(client, sos, ["b1@example.com", "b2@example.com"], "hard_bounce")
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v2/suppressions/1", params=params, headers=sos)).json()
        seen += [item["value"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}@example.com" for i in range(7)] + ["b1@example.com", "b2@example.com"]
    bounced = (await client.get("/api/v2/suppressions/1", params={"reason": "hard_bounce"}, headers=sos)).json()
    assert [i["value"] for i in bounced["items"]] == ["b1@example.com", "b2@example.com"]
    assert bounced["next_cursor"] is None


async def test_delete_url_encoded(client, sos, db) -> None:
    await add(client, sos, ["first+tag@example.com", "gone.example"])
    r = await client.delete("/api/v2/suppressions/1/first%2Btag%40example.com", headers=sos)
    assert r.status_code == 204, r.text
    r = await client.delete("/api/v2/suppressions/1/%40gone.example", headers=sos)
    assert r.status_code == 204, r.text
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    r = await client.delete("/api/v2/suppressions/1/first%2Btag%40example.com", headers=sos)
    assert r.status_code == 404


async def test_another_tenant_gets_404_and_nothing_is_written(client, sos, admin, db) -> None:
    await add(client, admin, ["theirs@example.com"], tenant_id=2)
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 2, "emails": ["x@example.com"],
                                                        "reason": "manual"}, headers=sos)
    assert r.status_code == 404
    for path in ("/api/v2/suppressions/2", "/api/v2/suppressions/2/check?email=theirs@example.com"):
        assert (await client.get(path, headers=sos)).status_code == 404
    assert (await client.delete("/api/v2/suppressions/2/theirs%40example.com", headers=sos)).status_code == 404
    assert [r["value"] for r in await db.fetch("SELECT value FROM suppressions")] == ["theirs@example.com"]
    # tenant 1 sees nothing of tenant 2's list
    page = (await client.get("/api/v2/suppressions/1", headers=sos)).json()
    assert page["items"] == []
    r = await client.get("/api/v2/suppressions/1/check", params={"email": "theirs@example.com"}, headers=sos)
    assert r.json()["suppressed"] is False


async def test_contacts_take_the_status_the_reason_implies(client, sos, db) -> None:
    emails = ["u@example.fr", "b@example.fr", "c@example.fr", "m@example.fr"]
    r = await client.post("/api/v2/contacts/ingest", headers=sos, json={"contacts": [
        {"tenant_id": 1, "data_source_id": 1, "email": e} for e in emails]})
    assert r.status_code == 200, r.text
    await add(client, sos, ["U@example.fr"], "unsubscribe")
    await add(client, sos, ["b@example.fr"], "hard_bounce")
    await add(client, sos, ["c@example.fr"], "complaint")
    await add(client, sos, ["m@example.fr"], "manual")
    # a weaker reason never downgrades a contact's status
    await add(client, sos, ["c@example.fr"], "unsubscribe")
    statuses = dict(await db.fetch("SELECT email, status::text FROM contacts WHERE tenant_id = 1"))
    assert statuses == {"u@example.fr": "unsubscribed", "b@example.fr": "bounced", "c@example.fr": "complained",
                        "m@example.fr": "pending"}
    contact_id = await db.fetchval("SELECT id FROM contacts WHERE email = 'c@example.fr'")
    events = (await client.get(f"/api/v2/contacts/1/{contact_id}/events", headers=sos)).json()
    changed = [e["detail"] for e in events if e["kind"] == "status_changed"]
    assert changed == [{"from": "pending", "to": "complained", "reason": "complaint", "by": "suppression",
                        "source": None}]


class CountingConnection:
    """Passes calls through to a connection, counting the statements sent."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn, self.statements = conn, 0

    async def fetch(self, *args, **kwargs):
        self.statements += 1
        return await self.conn.fetch(*args, **kwargs)


async def test_suppressed_among_ten_thousand_is_one_query(db, seeded) -> None:
    await suppression.add_suppressions(db, 1, ["blocked.example", *(f"s{i}@example.com" for i in range(0, 10_000, 7))],
                                       reason="hard_bounce")
    await suppression.add_suppressions(db, 2, ["t@example.com"], reason="manual")   # another tenant's
    emails = [f"s{i}@example.com" for i in range(9_990)] + [f"x{i}@blocked.example" for i in range(9)] + ["t@example.com"]
    counting = CountingConnection(db)
    found = await suppression.suppressed_among(counting, 1, emails)
    assert counting.statements == 1
    expected = {f"s{i}@example.com" for i in range(0, 9_990, 7)} | {f"x{i}@blocked.example" for i in range(9)}
    assert found == expected
    assert await suppression.suppressed_among(db, 1, []) == set()


async def test_mailwizz_tenant_propagates_to_mailwizz(client, admin, seeded, db, settings) -> None:
    from workers.main import create_worker

    async with FakeMailWizz(api_key="pub-key") as fake:
        async with MailWizzClient(fake.base_url, "pub-key") as mw:
            list_uid = await mw.create_list("t2", from_name="S", from_email="s@sender.example",
                                            reply_to="r@sender.example", subject="Hi")
            await mw.create_subscriber(list_uid, SubscriberIn(email="leave@example.com"))
            await mw.create_subscriber(list_uid, SubscriberIn(email="stay@example.com"))
        await db.execute("UPDATE tenants SET transport = 'mailwizz' WHERE id = 2")
        await db.execute("UPDATE mailwizz_instances SET base_url = $2, public_key_enc = $3 WHERE tenant_id = $1",
                         2, fake.base_url, secrets.encrypt(SECRET_KEY, "pub-key"))
        # a second install without a key is skipped with a log line, not an error
        await db.execute("INSERT INTO mailwizz_instances (tenant_id, name, base_url) VALUES (2, 'nokey', $1)",
                         fake.base_url)
        await add(client, admin, ["leave@example.com", "never-there@example.com", "whole.example"], "manual",
                  tenant_id=2)
        await add(client, admin, ["pmta-tenant@example.com"], "manual", tenant_id=1)   # pmta: no job
        worker = create_worker(settings, secret_key=SECRET_KEY, burst=True, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        subs = fake.state.lists[list_uid]
        assert subs.by_email("leave@example.com").status == "unsubscribed"
        assert subs.by_email("stay@example.com").status == "confirmed"
        calls = [path for method, path in fake.state.requests if method == "PUT"]
        assert len(calls) == 2   # the two addresses; the domain entry is not sent, the keyless install skipped
