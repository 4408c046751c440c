"""Data sources and signed webhooks: secrets shown once, HMAC over timestamp + body, replay window, mappings."""

from __future__ import annotations

import json
import time

import pytest

from engine.data_sources import sign
from tests.conftest import tenant_key


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    return await tenant_key(client, admin, seeded[0])


@pytest.fixture
async def backlink(client, sos) -> tuple[int, str]:
    """Backlink Engine (seed source 2) with a fresh secret and its seeded nested mapping."""
    r = await client.post("/api/v2/data-sources/1/2/rotate-secret", headers=sos)
    assert r.status_code == 200, r.text
    return 2, r.json()["secret"]


async def post_signed(client, source_id: int, secret: str, payload, *, at: float | None = None, signature=None):
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time() if at is None else at))
    headers = {"content-type": "application/json", "X-Timestamp": timestamp,
               "X-Signature": signature or sign(secret, timestamp, body)}
    return await client.post(f"/api/v2/webhooks/{source_id}", content=body, headers=headers)


BACKLINK_RECORD = {"contact": {"email": "webmaster@blog.example", "name": "Wendy"},
                   "site": {"name": "Blog", "url": "https://blog.example", "language": "pt-BR", "category": "blogueur"}}


async def test_good_signature_maps_the_native_payload(client, backlink, db) -> None:
    source_id, secret = backlink
    r = await post_signed(client, source_id, secret, BACKLINK_RECORD)
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 1
    row = await db.fetchrow("SELECT * FROM contacts")
    assert (row["email"], row["first_name"], row["company"], row["language"], row["category"], row["data_source_id"]) \
        == ("webmaster@blog.example", "Wendy", "Blog", "pt", "blogueur", 2)
    r = await post_signed(client, source_id, secret, [BACKLINK_RECORD, {"contact": {"name": "no email"}}])
    assert [x["outcome"] for x in r.json()["results"]] == ["unchanged", "rejected"]


async def test_bad_signature_stale_or_missing_headers_are_401_and_write_nothing(client, backlink, db) -> None:
    source_id, secret = backlink
    assert (await post_signed(client, source_id, "wrong-secret", BACKLINK_RECORD)).status_code == 401
    assert (await post_signed(client, source_id, secret, BACKLINK_RECORD, at=time.time() - 301)).status_code == 401
    assert (await post_signed(client, source_id, secret, BACKLINK_RECORD, at=time.time() + 400)).status_code == 401
    r = await client.post(f"/api/v2/webhooks/{source_id}", json=BACKLINK_RECORD)
    assert r.status_code == 401
    # a signature for one body does not cover another
    timestamp = str(int(time.time()))
    other = sign(secret, timestamp, b'{"contact": {"email": "a@b.example"}}')
    r = await client.post(f"/api/v2/webhooks/{source_id}", content=json.dumps(BACKLINK_RECORD).encode(),
                          headers={"X-Timestamp": timestamp, "X-Signature": other})
    assert r.status_code == 401
    # unknown source, and a source without a secret, look the same as a wrong secret
    assert (await post_signed(client, 999, secret, BACKLINK_RECORD)).status_code == 401
    assert (await post_signed(client, 1, secret, BACKLINK_RECORD)).status_code == 401
    assert await db.fetchval("SELECT count(*) FROM contacts") == 0


async def test_rotation_and_mapping_change_take_effect_without_code(client, sos, backlink, db) -> None:
    source_id, old = backlink
    r = await client.post(f"/api/v2/data-sources/1/{source_id}/rotate-secret", headers=sos)
    new = r.json()["secret"]
    assert (await post_signed(client, source_id, old, BACKLINK_RECORD)).status_code == 401
    r = await client.put(f"/api/v2/data-sources/1/{source_id}/mapping", headers=sos, json={"field_mapping": {
        "$items": "data.links", "email": "owner.mail", "company": "domain", "custom.da": "metrics.da",
        "tags": "labels"}})
    assert r.status_code == 200, r.text
    payload = {"data": {"links": [{"owner": {"mail": "m@site.example"}, "domain": "site.example",
                                   "metrics": {"da": 42}, "labels": "Partenaire, SEO"}]}}
    r = await post_signed(client, source_id, new, payload)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    row = await db.fetchrow("SELECT company, custom FROM contacts WHERE email = 'm@site.example'")
    assert row["company"] == "site.example" and row["custom"] == {"da": 42}
    r = await client.put(f"/api/v2/data-sources/1/{source_id}/mapping", headers=sos,
                         json={"field_mapping": {"mail": "x"}})
    assert r.status_code == 400 and "field_mapping.mail" in r.text


async def test_data_source_created_secret_shown_once_and_stored_encrypted(client, admin, sos, db) -> None:
    r = await client.post("/api/v2/data-sources/1", headers=sos, json={"kind": "scraper_pro", "name": "EU scraper",
                                                                      "field_mapping": {"email": "mail"}})
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    listed = (await client.get("/api/v2/data-sources/1", headers=sos)).json()
    assert secret not in json.dumps(listed) and any(s["name"] == "EU scraper" and s["has_secret"] for s in listed)
    stored = await db.fetchval("SELECT secret_enc FROM data_sources WHERE id = $1", created["source"]["id"])
    assert secret.encode() not in bytes(stored)
    r = await post_signed(client, created["source"]["id"], secret, {"mail": "s@scraped.example"})
    assert r.status_code == 200 and r.json()["created"] == 1
    r = await post_signed(client, created["source"]["id"], secret, {"mail": "s2@scraped.example"},
                          signature="sha256=" + "0" * 64)
    assert r.status_code == 401
    ulixai = await tenant_key(client, admin, 2)
    assert (await client.get("/api/v2/data-sources/1", headers=ulixai)).status_code == 404
    assert (await client.post("/api/v2/data-sources/1/2/rotate-secret", headers=ulixai)).status_code == 404
    r = await client.post("/api/v2/data-sources/2/2/rotate-secret", headers=ulixai)
    assert r.status_code == 404  # source 2 is tenant 1's
    r = await client.post("/api/v2/data-sources/1", headers=sos, json={"kind": "ftp", "name": "x"})
    assert r.status_code == 400 and "kind" in r.text


async def test_signed_but_not_json_is_400(client, backlink) -> None:
    source_id, secret = backlink
    timestamp = str(int(time.time()))
    body = b"{not json"
    r = await client.post(f"/api/v2/webhooks/{source_id}", content=body,
                          headers={"X-Timestamp": timestamp, "X-Signature": sign(secret, timestamp, body)})
    assert r.status_code == 400 and r.json()["field"] == "body"
