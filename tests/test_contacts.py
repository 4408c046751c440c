"""Contacts: ingest (dedup, merge, tenant isolation, tags, languages), listing with filters, PATCH, erasure."""

from __future__ import annotations

import asyncpg
import pytest

from engine.contacts import ContactStatus
from tests.conftest import tenant_key

SEED_PAYLOAD = {"contacts": [{"tenant_id": 1, "data_source_id": 1, "email": "avocat@example.fr", "first_name": "Pierre",
                              "language": "fr", "category": "avocat", "tags": ["prestataire", "avocat", "lang-fr"]}]}


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    """Headers of a key of tenant 1 (SOS-Expat)."""
    return await tenant_key(client, admin, seeded[0])


async def ingest(client, headers, contacts: list[dict]) -> dict:
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": contacts}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def person(email: str, **fields) -> dict:
    return {"tenant_id": 1, "data_source_id": 1, "email": email, **fields}


async def test_contact_status_enum_matches_postgres(db: asyncpg.Connection) -> None:
    labels = await db.fetchval("SELECT enum_range(NULL::contact_status)::text[]")
    assert labels == [s.value for s in ContactStatus]


async def test_seed_payload_as_written(client, sos, db) -> None:
    r = await client.post("/api/v2/contacts/ingest", json=SEED_PAYLOAD, headers=sos)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == 1 and body["results"][0]["outcome"] == "created"
    contact_id = body["results"][0]["id"]
    got = (await client.get(f"/api/v2/contacts/1/{contact_id}", headers=sos)).json()
    assert got["email"] == "avocat@example.fr" and got["first_name"] == "Pierre" and got["language"] == "fr"
    assert got["tags"] == ["avocat", "lang-fr", "prestataire"] and got["status"] == "pending"
    events = (await client.get(f"/api/v2/contacts/1/{contact_id}/events", headers=sos)).json()
    assert [e["kind"] for e in events] == ["created"]


async def test_resend_creates_nothing_and_duplicates_in_a_batch_merge(client, sos, db) -> None:
    first = await ingest(client, sos, [person("a@example.fr"), person("b@example.fr")])
    assert first["created"] == 2
    again = await ingest(client, sos, [person("a@example.fr"), person("b@example.fr")])
    assert again["created"] == 0 and again["unchanged"] == 2
    body = await ingest(client, sos, [person("Dup@Example.FR", first_name="Ann", tags=["x"]),
                                      person(" dup@example.fr ", last_name="Lee", tags=["y"])])
    assert body["created"] == 1 and body["unchanged"] == 1 and body["results"][0]["id"] == body["results"][1]["id"]
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE email = 'dup@example.fr'") == 1
    row = await db.fetchrow("SELECT first_name, last_name FROM contacts WHERE email = 'dup@example.fr'")
    assert (row["first_name"], row["last_name"]) == ("Ann", "Lee")
    merged = await ingest(client, sos, [person("a@example.fr", company="Cabinet A", tags=["new-tag"])])
    assert merged["updated"] == 1
    got = (await client.get(f"/api/v2/contacts/1/{merged['results'][0]['id']}", headers=sos)).json()
    assert got["company"] == "Cabinet A" and got["tags"] == ["new-tag"]
    tag_only = await ingest(client, sos, [person("b@example.fr", tags=["another"])])
    assert tag_only["updated"] == 1


async def test_other_tenant_and_foreign_source_rejected_and_not_written(client, sos, db) -> None:
    body = await ingest(client, sos, [
        {"tenant_id": 2, "data_source_id": 5, "email": "x@example.fr"},
        person("y@example.fr", data_source_id=5),
        person("ok@example.fr"),
        person("not-an-address"),
        person("z@example.fr", tags=["???"]),
    ])
    outcomes = [(r["outcome"], r.get("reason", "").split(":")[0]) for r in body["results"]]
    assert outcomes == [("rejected", "tenant_id"), ("rejected", "data_source_id"), ("created", ""),
                        ("rejected", "email"), ("rejected", "tags[0]")]
    assert await db.fetchval("SELECT array_agg(email) FROM contacts") == ["ok@example.fr"]


async def test_admin_may_ingest_for_any_existing_tenant(client, admin, seeded, db) -> None:
    body = await ingest(client, admin, [{"tenant_id": 2, "data_source_id": 5, "email": "u@example.fr"},
                                        {"tenant_id": 99, "email": "v@example.fr"}])
    assert [r["outcome"] for r in body["results"]] == ["created", "rejected"]
    assert await db.fetchval("SELECT tenant_id FROM contacts WHERE email = 'u@example.fr'") == 2


async def test_languages_normalised_and_tags_slugged(client, sos, db) -> None:
    await ingest(client, sos, [person("l1@example.fr", language="fr-FR"), person("l2@example.fr", language="PT_br"),
                               person("l3@example.fr", language="FR"), person("l4@example.fr", language="tlh"),
                               person("l5@example.fr", tags=["Lang FR", "Écoles"])])
    langs = dict(await db.fetch("SELECT email, language FROM contacts"))
    assert langs == {"l1@example.fr": "fr", "l2@example.fr": "pt", "l3@example.fr": "fr", "l4@example.fr": "tlh",
                     "l5@example.fr": None}
    assert {"lang-fr", "ecoles"} <= {r["slug"] for r in await db.fetch("SELECT slug FROM tags WHERE tenant_id = 1")}


async def test_bad_input_is_400_naming_the_field_and_413_over_the_limit(client, sos) -> None:
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": [{"tenant_id": "one", "email": "a@b.fr"}]},
                          headers=sos)
    assert r.status_code == 400 and "tenant_id" in r.text
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": "nope"}, headers=sos)
    assert r.status_code == 400 and "contacts" in r.text
    r = await client.post("/api/v2/contacts/ingest", content=b'{"contacts": [', headers={**sos, "content-type": "application/json"})
    assert r.status_code == 400
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": [{"tenant_id": 1, "email": "a@b.fr", "x": 1}]},
                          headers=sos)
    assert r.status_code == 400 and "x" in r.text
    many = [person(f"p{i}@example.fr") for i in range(10_001)]
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": many}, headers=sos)
    assert r.status_code == 413 and r.json()["field"] == "contacts"


async def test_listing_filters_keyset_pages_and_totals(client, sos, db) -> None:
    await ingest(client, sos, [
        person("anna@alpha.example", company="Alpha Law", language="fr", category="avocat", tags=["a", "b"]),
        person("bob@beta.example", company="Beta", language="en", category="client", tags=["a"]),
        person("carl@gamma.example", language="fr", category="avocat", data_source_id=2),
        person("dina@delta.example", language="de", tags=["b"]),
    ])
    await db.execute("UPDATE contacts SET status = 'valid' WHERE email LIKE 'anna%' OR email LIKE 'dina%'")
    await db.execute("UPDATE contacts SET created_at = '2024-01-01' WHERE email LIKE 'bob%'")

    async def emails(**params) -> tuple[list[str], int]:
        r = await client.get("/api/v2/contacts/1", params=params, headers=sos)
        assert r.status_code == 200, r.text
        return [c["email"] for c in r.json()["items"]], r.json()["total"]

    assert (await emails())[1] == 4
    assert await emails(status="valid") == (["anna@alpha.example", "dina@delta.example"], 2)
    assert await emails(tag=["a", "b"]) == (["anna@alpha.example", "bob@beta.example", "dina@delta.example"], 3)
    assert await emails(tag=["a", "b"], tags_mode="all") == (["anna@alpha.example"], 1)
    assert await emails(language="FR") == (["anna@alpha.example", "carl@gamma.example"], 2)
    assert await emails(category="client") == (["bob@beta.example"], 1)
    assert await emails(data_source_id=2) == (["carl@gamma.example"], 1)
    assert await emails(created_to="2024-06-01T00:00:00Z") == (["bob@beta.example"], 1)
    assert (await emails(created_from="2024-06-01T00:00:00Z"))[1] == 3
    assert await emails(q="LAW") == (["anna@alpha.example"], 1)
    assert await emails(q="gamma") == (["carl@gamma.example"], 1)
    assert await emails(q="%") == ([], 0)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v2/contacts/1", params=params, headers=sos)).json()
        assert page["total"] == 4
        seen += [c["email"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4 and len(set(seen)) == 4
    r = await client.get("/api/v2/contacts/1", params={"cursor": "abc"}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "cursor"
    r = await client.get("/api/v2/contacts/1", params={"status": "bogus"}, headers=sos)
    assert r.status_code == 400 and "status" in r.text


async def test_patch_fields_tags_and_manual_status_with_reason(client, sos, db) -> None:
    cid = (await ingest(client, sos, [person("pat@example.fr", tags=["old"])]))["results"][0]["id"]
    url = f"/api/v2/contacts/1/{cid}"
    r = await client.patch(url, json={"company": "New Co", "language": "es-MX", "add_tags": ["vip"],
                                      "remove_tags": ["old"]}, headers=sos)
    assert r.status_code == 200, r.text
    assert r.json()["company"] == "New Co" and r.json()["language"] == "es" and r.json()["tags"] == ["vip"]
    r = await client.patch(url, json={"status": "invalid"}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "reason"
    r = await client.patch(url, json={"status": "valid", "reason": "confirmed by phone"}, headers=sos)
    assert r.status_code == 200 and r.json()["status"] == "valid"
    events = (await client.get(f"{url}/events", headers=sos)).json()
    change = [e for e in events if e["kind"] == "status_changed"]
    assert change and change[0]["detail"] == {"from": "pending", "to": "valid", "reason": "confirmed by phone",
                                              "by": "operator"}
    r = await client.patch(url, json={"email": "other@example.fr"}, headers=sos)
    assert r.status_code == 400
    r = await client.patch(url, json={"status": "erased", "reason": "x"}, headers=sos)
    assert r.status_code == 400


async def test_delete_erases_and_blocks_reimport(client, sos, db) -> None:
    cid = (await ingest(client, sos, [person("gone@example.fr", first_name="Gone", tags=["t"])]))["results"][0]["id"]
    assert (await client.delete(f"/api/v2/contacts/1/{cid}", headers=sos)).status_code == 204
    row = await db.fetchrow("SELECT * FROM contacts WHERE id = $1", cid)
    assert row["email"] is None and row["first_name"] is None and row["status"] == "erased"
    assert "gone" not in str(dict(row)).lower()
    assert await db.fetchval("SELECT count(*) FROM contact_tags WHERE contact_id = $1", cid) == 0
    again = await ingest(client, sos, [person("GONE@example.fr", first_name="Back")])
    assert again["results"][0]["outcome"] == "rejected" and again["results"][0]["reason"].startswith("erased")
    assert await db.fetchval("SELECT first_name FROM contacts WHERE id = $1", cid) is None
    assert (await client.get("/api/v2/contacts/1", headers=sos)).json()["total"] == 0
    assert (await client.patch(f"/api/v2/contacts/1/{cid}", json={"company": "x"}, headers=sos)).status_code == 409


async def test_tenant_isolation_is_404(client, admin, seeded, sos) -> None:
    ulixai = await tenant_key(client, admin, 2)
    cid = (await ingest(client, sos, [person("mine@example.fr")]))["results"][0]["id"]
    for method, url in [("get", "/api/v2/contacts/1"), ("get", f"/api/v2/contacts/1/{cid}"),
                        ("get", f"/api/v2/contacts/1/{cid}/events"), ("delete", f"/api/v2/contacts/1/{cid}")]:
        r = await client.request(method, url, headers=ulixai)
        assert r.status_code == 404, (method, url)
    assert (await client.get(f"/api/v2/contacts/2/{cid}", headers=ulixai)).status_code == 404
    r = await client.patch(f"/api/v2/contacts/1/{cid}", json={"company": "x"}, headers=ulixai)
    assert r.status_code == 404


async def test_text_travels_to_the_table_exactly(client, sos, db) -> None:
    """The upsert's rows travel as JSON: quotes, backslashes, unicode, the control characters text may hold and long fields
    come out of the table as they went in, custom fields included, on insert and on merge."""
    odd = ['He said "hi"', "back\\slash \\u0041 \\n", "naïve 東京 🙂 \u200b\u202e", "tab\tcr\rnl\n end",
           "'; DROP TABLE contacts; --", "{\"json\": [1, 2]}", "x" * 1000]
    contacts = [person(f"odd{i}@example.fr", first_name=v, company=v[::-1], custom={"note": v, "n": [v, None, 1.5]},
                       tags=[f"t{i}"])
                for i, v in enumerate(odd)]
    body = await ingest(client, sos, contacts)
    assert body["created"] == len(odd)
    for i, v in enumerate(odd):
        row = await db.fetchrow("SELECT first_name, company, custom FROM contacts WHERE email = $1", f"odd{i}@example.fr")
        assert (row["first_name"], row["company"]) == (v.strip(), v[::-1].strip())
        assert row["custom"] == {"note": v, "n": [v, None, 1.5]}
    merged = await ingest(client, sos, [person("odd0@example.fr", last_name=odd[2], custom={"more": odd[1]})])
    assert merged["updated"] == 1
    row = await db.fetchrow("SELECT last_name, custom FROM contacts WHERE email = 'odd0@example.fr'")
    assert row["last_name"] == odd[2] and row["custom"] == {"note": odd[0], "n": [odd[0], None, 1.5], "more": odd[1]}
