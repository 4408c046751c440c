"""Campaign drafts, controls, audience counts and isolation through the HTTP API."""

from __future__ import annotations

import asyncpg

from tests.conftest import tenant_key

DRAFT = {"tenant_id": 1, "name": "Avocats FR", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
         "category": "avocat", "audience": {"tags": ["avocat"], "languages": ["fr-FR"], "statuses": ["valid", "pending"]}}


async def _contacts(client, headers, n: int, **extra) -> None:
    body = {"contacts": [{"tenant_id": 1, "data_source_id": 1, "email": f"c{i}@firm{i % 7}.example",
                          "first_name": f"C{i}", "language": "fr", "category": "avocat",
                          "tags": ["avocat"] if i % 2 == 0 else ["notaire"], **extra} for i in range(n)]}
    r = await client.post("/api/v2/contacts/ingest", json=body, headers=headers)
    assert r.status_code in (200, 201), r.text


async def test_draft_lifecycle_and_controls(client, admin, seeded, db: asyncpg.Connection) -> None:
    await _contacts(client, admin, 20)
    r = await client.post("/api/v2/campaigns", json=DRAFT, headers=admin)
    assert r.status_code == 201, r.text
    campaign = r.json()
    assert campaign["status"] == "draft" and campaign["audience"]["languages"] == ["fr"]
    base = f"/api/v2/campaigns/1/{campaign['id']}"
    count = (await client.get(f"{base}/audience", headers=admin)).json()["count"]
    assert count == 10  # half the contacts carry the tag "avocat"
    r = await client.post("/api/v2/campaigns/audience-preview", headers=admin,
                          json={"tenant_id": 1, "audience": {"tags": ["avocat", "notaire"], "tags_mode": "all",
                                                             "statuses": ["pending", "valid"]}})
    assert r.json()["count"] == 0
    r = await client.put(base, json={**DRAFT, "name": "Renamed"}, headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    assert (await client.post(f"{base}/resume", headers=admin)).status_code == 409
    r = await client.post(f"{base}/start", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "sending"
    assert (await client.put(base, json=DRAFT, headers=admin)).status_code == 409
    assert (await client.post(f"{base}/start", headers=admin)).status_code == 409
    assert (await client.post(f"{base}/pause", headers=admin)).json()["status"] == "paused"
    assert (await client.post(f"{base}/resume", headers=admin)).json()["status"] == "sending"
    assert (await client.delete(base, headers=admin)).status_code == 409
    assert (await client.post(f"{base}/cancel", headers=admin)).json()["status"] == "cancelled"
    stats = (await client.get(f"{base}/stats", headers=admin)).json()
    assert set(stats["by_status"]) >= {"queued", "injected", "deferred", "failed", "skipped", "bounced", "delivered"}
    assert (await client.delete(base, headers=admin)).status_code == 204


async def test_scheduled_start_waits_for_send_at(client, admin, seeded) -> None:
    r = await client.post("/api/v2/campaigns", json={**DRAFT, "send_at": "2999-01-01T09:00:00+01:00"}, headers=admin)
    base = f"/api/v2/campaigns/1/{r.json()['id']}"
    assert (await client.post(f"{base}/start", headers=admin)).json()["status"] == "scheduled"


async def test_bad_drafts_name_the_field(client, admin, seeded) -> None:
    cases = [
        ({**DRAFT, "from_email": "nope"}, "from_email"),
        ({**DRAFT, "from_name": "Evil\r\nBcc: x@y.example"}, "from_name"),
        ({**DRAFT, "transport": "smoke-signals"}, "transport"),
        ({**DRAFT, "templates": {"xx": 1}}, "templates"),
        ({**DRAFT, "templates": {"fr": 999999}}, "templates.fr"),
        ({**DRAFT, "audience": {"statuses": ["happy"]}}, "audience.statuses"),
        ({**DRAFT, "window": {"start": "25:00", "end": "18:00"}}, "window"),
        ({**DRAFT, "window": {"start": "09:00", "end": "18:00", "timezone": "Nowhere/Land"}}, "window.timezone"),
        ({**DRAFT, "send_at": "2030-01-01T09:00:00"}, "send_at"),
        ({**DRAFT, "daily_cap": 0}, "daily_cap"),
        ({**DRAFT, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        r = await client.post("/api/v2/campaigns", json=body, headers=admin)
        assert r.status_code == 400, (field, r.status_code, r.text)
        assert field in r.text, (field, r.text)
    r = await client.get("/api/v2/campaigns/1?status=bogus", headers=admin)
    assert r.status_code == 400 and "status" in r.text
    r = await client.get("/api/v2/campaigns/1/1/sends?status=bogus", headers=admin)
    assert r.status_code in (400, 404)


async def test_a_deleted_template_cannot_be_named(client, admin, seeded, db: asyncpg.Connection) -> None:
    template_id = await db.fetchval("SELECT min(id) FROM email_templates WHERE tenant_id = 1")
    r = await client.post("/api/v2/campaigns", json={**DRAFT, "templates": {"fr": template_id}}, headers=admin)
    assert r.status_code == 201, r.text
    assert (await client.delete(f"/api/v2/templates/1/{template_id}", headers=admin)).status_code == 204
    r = await client.post("/api/v2/campaigns", json={**DRAFT, "templates": {"fr": template_id}}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "templates.fr", r.text


async def test_tenant_isolation(client, admin, seeded) -> None:
    sos = await tenant_key(client, admin, 1)
    ulixai = await tenant_key(client, admin, 2)
    campaign = (await client.post("/api/v2/campaigns", json=DRAFT, headers=sos)).json()
    base = f"/api/v2/campaigns/1/{campaign['id']}"
    for method, path in [("get", base), ("get", f"{base}/stats"), ("get", f"{base}/sends"), ("post", f"{base}/start"),
                         ("delete", base), ("get", "/api/v2/campaigns/1")]:
        r = await getattr(client, method)(path, headers=ulixai)
        assert r.status_code == 404, (method, path, r.status_code)
    r = await client.post("/api/v2/campaigns", json=DRAFT, headers=ulixai)
    assert r.status_code == 404
    r = await client.put(f"/api/v2/campaigns/2/{campaign['id']}", json={**DRAFT, "tenant_id": 2}, headers=ulixai)
    assert r.status_code == 404
    assert (await client.get(base, headers=sos)).status_code == 200
