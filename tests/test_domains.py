"""Sending domains: DKIM key pairs (private half encrypted, never returned), their IPs, isolation."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from engine import domains, secrets
from tests.conftest import SECRET_KEY, tenant_key

NEW = {"tenant_id": 1, "name": "News.SOS-Expat-Mail.example", "ip_ids": [1, 2]}


def public_key_of(txt: str):
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    return serialization.load_der_public_key(base64.b64decode(txt.split("p=", 1)[1]))


async def test_create_generates_a_key_pair_and_keeps_the_private_half(client, admin, seeded, db) -> None:
    r = await client.post("/api/v2/domains", json=NEW, headers=admin)
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["name"] == "news.sos-expat-mail.example" and d["ip_ids"] == [1, 2]
    assert d["dkim_selector"] == "ee1" and d["dkim_record"] == "ee1._domainkey.news.sos-expat-mail.example"
    assert d["spf_status"] == d["dkim_status"] == d["dmarc_status"] == d["ptr_status"] == "unchecked"
    assert "PRIVATE" not in r.text and not any("private" in k for k in d)
    public = public_key_of(d["dkim_public_key"])
    assert public.key_size == 2048
    # the stored private key is encrypted, and is the pair of the published public key
    stored = await db.fetchval("SELECT dkim_private_key_enc FROM domains WHERE id = $1", d["id"])
    assert b"PRIVATE KEY" not in bytes(stored)
    selector, pem = await domains.dkim_private_key(db, SECRET_KEY, 1, d["id"])
    assert selector == "ee1" and pem == secrets.decrypt(SECRET_KEY, stored)
    private = serialization.load_pem_private_key(pem.encode(), None)
    signature = private.sign(b"message", padding.PKCS1v15(), hashes.SHA256())
    public.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())
    for path in ("/api/v2/domains/1", f"/api/v2/domains/1/{d['id']}"):
        assert "PRIVATE" not in (await client.get(path, headers=admin)).text


async def test_seeded_domains_have_no_key_until_rotated(client, admin, seeded) -> None:
    listing = (await client.get("/api/v2/domains/1", headers=admin)).json()
    assert len(listing) == 50 and all(d["dkim_public_key"] is None for d in listing)
    first = listing[0]
    assert len(first["ip_ids"]) == 50
    r = await client.get(f"/api/v2/domains/1/{first['id']}", headers=admin)
    assert r.json()["dkim_public_key"] is None  # GET never generates
    r = await client.post(f"/api/v2/domains/1/{first['id']}/dkim/rotate", headers=admin)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["dkim_selector"] == "ee1" and public_key_of(rotated["dkim_public_key"]).key_size == 2048
    r = await client.post(f"/api/v2/domains/1/{first['id']}/dkim/rotate", headers=admin)
    again = r.json()
    assert again["dkim_selector"] == "ee2" and again["dkim_public_key"] != rotated["dkim_public_key"]
    r = await client.post(f"/api/v2/domains/1/{first['id']}/dkim/rotate", json={"dkim_selector": "jan2025"},
                          headers=admin)
    assert r.json()["dkim_selector"] == "jan2025" and r.json()["dkim_record"].startswith("jan2025._domainkey.")
    r = await client.post(f"/api/v2/domains/1/{first['id']}/dkim/rotate", json={"dkim_selector": "Bad_Sel"},
                          headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "dkim_selector"


async def test_bad_input_is_named_and_nothing_is_written(client, admin, seeded, db) -> None:
    cases = [({"name": "nodots"}, 400, "name"), ({"name": "bad..example"}, 400, "name"),
             ({"dkim_selector": "x y"}, 400, "dkim_selector"), ({"ip_ids": [0]}, 400, None),
             ({"name": "sos-expat-mail-01.example"}, 409, "name"),
             ({"ip_ids": [1, 51]}, 404, "ip_ids")]  # 51 is tenant 2's first IP
    for change, status, field in cases:
        r = await client.post("/api/v2/domains", json={**NEW, **change}, headers=admin)
        assert r.status_code == status, (change, r.text)
        if field:
            assert r.json()["field"] == field, (change, r.json())
    assert await db.fetchval("SELECT count(*) FROM domains") == 100


async def test_update_replaces_the_ips_and_delete_removes(client, admin, seeded, db) -> None:
    d = (await client.post("/api/v2/domains", json=NEW, headers=admin)).json()
    r = await client.patch(f"/api/v2/domains/1/{d['id']}", json={"ip_ids": [2, 3, 3]}, headers=admin)
    assert r.status_code == 200 and r.json()["ip_ids"] == [2, 3], r.text
    r = await client.patch(f"/api/v2/domains/1/{d['id']}", json={"ip_ids": [60]}, headers=admin)
    assert r.status_code == 404 and r.json()["field"] == "ip_ids"
    assert (await client.get(f"/api/v2/domains/1/{d['id']}", headers=admin)).json()["ip_ids"] == [2, 3]
    assert (await client.delete(f"/api/v2/domains/1/{d['id']}", headers=admin)).status_code == 204
    assert (await client.get(f"/api/v2/domains/1/{d['id']}", headers=admin)).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM ips") == 100


async def test_check_results_are_recorded(db, seeded) -> None:
    d = await domains.record_checks(db, 1, 1, spf="ok", ptr="wrong")
    assert (d.spf_status, d.dkim_status, d.ptr_status) == ("ok", "unchecked", "wrong") and d.checked_at


async def test_tenant_isolation(client, admin, seeded, db) -> None:
    key1 = await tenant_key(client, admin, 1)
    other = await db.fetchval("SELECT min(id) FROM domains WHERE tenant_id = 2")
    assert (await client.get("/api/v2/domains/2", headers=key1)).status_code == 404
    assert (await client.get(f"/api/v2/domains/1/{other}", headers=key1)).status_code == 404
    assert (await client.post(f"/api/v2/domains/1/{other}/dkim/rotate", headers=key1)).status_code == 404
    assert (await client.patch(f"/api/v2/domains/1/{other}", json={"ip_ids": []}, headers=key1)).status_code == 404
    assert (await client.delete(f"/api/v2/domains/2/{other}", headers=key1)).status_code == 404
    r = await client.post("/api/v2/domains", json={**NEW, "tenant_id": 2}, headers=key1)
    assert r.status_code == 404
    assert await db.fetchval("SELECT count(*) FROM domains") == 100
    assert await db.fetchval("SELECT count(*) FROM domains WHERE dkim_public_key IS NOT NULL") == 0
    r = await client.post("/api/v2/domains", json=NEW, headers=key1)
    assert r.status_code == 201 and r.json()["tenant_id"] == 1
