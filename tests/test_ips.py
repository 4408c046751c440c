"""Sending IPs: CRUD, pause/resume/retire, validation and isolation, and what the dispatcher reads."""

from __future__ import annotations

import datetime as dt

import asyncpg

from engine import ips
from engine.ips import IpStatus
from tests.conftest import tenant_key

NEW = {"tenant_id": 1, "address": "192.0.2.200", "hostname": "mta99.sos-expat-mail.example",
       "vmta_name": "sos-expat-vmta99", "weight": 20, "daily_cap": 1000}


async def test_ip_status_enum_matches_python(db: asyncpg.Connection) -> None:
    labels = await db.fetchval("SELECT enum_range(NULL::ip_status)::text[]")
    assert labels == [s.value for s in IpStatus]


async def test_create_ip_makes_a_warming_plan_on_the_default_curve(client, admin, seeded) -> None:
    r = await client.post("/api/v2/ips", json=NEW, headers=admin)
    assert r.status_code == 201, r.text
    ip = r.json()
    assert ip["status"] == "warming" and ip["address"] == "192.0.2.200" and ip["weight"] == 20
    assert ip["pool"] == "default"
    r = await client.get(f"/api/v2/warmup/1/{ip['id']}", headers=admin)
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert plan["curve"] == [50, 100, 200, 400, 800, 1000] and plan["quota"] == 50 and plan["current_day"] == 0
    assert plan["target"] == 1000 and plan["phase"] == "warming" and r.json()["history"] == []
    r = await client.get(f"/api/v2/ips/1/{ip['id']}", headers=admin)
    assert r.json() == ip
    r = await client.get("/api/v2/ips/1", headers=admin)
    assert len(r.json()) == 51 and r.json()[-1]["id"] == ip["id"]


async def test_tenant_custom_curve_is_used_for_new_ips(client, admin, seeded) -> None:
    r = await client.put("/api/v2/warmup/1/curve", json={"curve": [20, 40, 80, 500]}, headers=admin)
    assert r.status_code == 200, r.text
    r = await client.post("/api/v2/ips", json=NEW, headers=admin)
    plan = (await client.get(f"/api/v2/warmup/1/{r.json()['id']}", headers=admin)).json()["plan"]
    assert plan["curve"] == [20, 40, 80, 500] and plan["quota"] == 20 and plan["target"] == 500
    for bad in ([100, 50], [0, 10], []):
        r = await client.put("/api/v2/warmup/1/curve", json={"curve": bad}, headers=admin)
        assert r.status_code == 400 and r.json()["field"] == "curve", r.text


async def test_bad_fields_are_named(client, admin, seeded, db) -> None:
    cases = [({"weight": 0}, "weight"), ({"weight": 101}, "weight"), ({"address": "192.0.2.300"}, "address"),
             ({"address": "not-an-ip"}, "address"), ({"hostname": "no_dots"}, "hostname"),
             ({"vmta_name": "bad name!"}, "vmta_name"), ({"daily_cap": 0}, "daily_cap")]
    for change, field in cases:
        r = await client.post("/api/v2/ips", json={**NEW, **change}, headers=admin)
        assert r.status_code == 400, (change, r.text)
        assert r.json()["field"] == field, (change, r.json())
    r = await client.post("/api/v2/ips", json={**NEW, "colour": "red"}, headers=admin)
    assert r.status_code == 400
    r = await client.patch("/api/v2/ips/1/1", json={"weight": 500}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "weight"
    assert await db.fetchval("SELECT count(*) FROM ips") == 100


async def test_duplicates_are_409_naming_the_field(client, admin, seeded) -> None:
    # 198.51.100.11 is one of tenant 2's seeded IPs: unique across tenants
    r = await client.post("/api/v2/ips", json={**NEW, "address": "198.51.100.11"}, headers=admin)
    assert r.status_code == 409 and r.json()["field"] == "address", r.text
    r = await client.post("/api/v2/ips", json={**NEW, "address": "192.0.002.200"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "address"
    r = await client.post("/api/v2/ips", json={**NEW, "vmta_name": "ulixai-vmta01"}, headers=admin)
    assert r.status_code == 409 and r.json()["field"] == "vmta_name", r.text
    r = await client.patch("/api/v2/ips/1/1", json={"vmta_name": "sos-expat-vmta02"}, headers=admin)
    assert r.status_code == 409 and r.json()["field"] == "vmta_name", r.text


async def test_update_changes_only_given_fields(client, admin, seeded) -> None:
    before = (await client.get("/api/v2/ips/1/1", headers=admin)).json()
    r = await client.patch("/api/v2/ips/1/1", json={"weight": 55, "rate_per_minute": 120}, headers=admin)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["weight"] == 55 and after["rate_per_minute"] == 120
    assert {k: v for k, v in after.items() if k not in {"weight", "rate_per_minute", "updated_at"}} == \
        {k: v for k, v in before.items() if k not in {"weight", "rate_per_minute", "updated_at"}}


async def test_pause_resume_retire(client, admin, seeded) -> None:
    r = await client.post("/api/v2/ips/1/3/pause", json={"reason": "listed on a blocklist"}, headers=admin)
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["status"] == "paused" and paused["status_reason"] == "listed on a blocklist"
    r = await client.post("/api/v2/ips/1/3/pause", headers=admin)
    assert r.status_code == 409 and r.json()["field"] == "status"
    r = await client.post("/api/v2/ips/1/3/resume", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "warming", r.text
    assert r.json()["status_changed_at"] >= paused["status_changed_at"]
    r = await client.post("/api/v2/ips/1/3/retire", json={"reason": "returned to the provider"}, headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "retired"
    for action in ("resume", "pause", "retire"):
        r = await client.post(f"/api/v2/ips/1/3/{action}", headers=admin)
        assert r.status_code == 409, (action, r.text)
    r = await client.get("/api/v2/ips/1?status=retired", headers=admin)
    assert [ip["id"] for ip in r.json()] == [3]


async def test_resume_of_a_completed_plan_makes_the_ip_active(db, seeded) -> None:
    await db.execute("UPDATE warmup_plans SET phase = 'active' WHERE ip_id = 4")
    await ips.change_status(db, 1, 4, "pause", "maintenance")
    assert (await ips.change_status(db, 1, 4, "resume")).status == "active"


async def test_tenant_isolation(client, admin, seeded, db) -> None:
    key1 = await tenant_key(client, admin, 1)
    other_ip = await db.fetchval("SELECT min(id) FROM ips WHERE tenant_id = 2")
    assert (await client.get(f"/api/v2/ips/1/{other_ip}", headers=key1)).status_code == 404
    assert (await client.get(f"/api/v2/ips/2/{other_ip}", headers=key1)).status_code == 404
    assert (await client.get("/api/v2/ips/2", headers=key1)).status_code == 404
    assert (await client.patch(f"/api/v2/ips/2/{other_ip}", json={"weight": 1}, headers=key1)).status_code == 404
    assert (await client.post(f"/api/v2/ips/1/{other_ip}/pause", headers=key1)).status_code == 404
    assert (await client.post(f"/api/v2/ips/2/{other_ip}/retire", headers=key1)).status_code == 404
    r = await client.post("/api/v2/ips", json={**NEW, "tenant_id": 2}, headers=key1)
    assert r.status_code == 404
    assert await db.fetchval("SELECT count(*) FROM ips") == 100
    assert await db.fetchval("SELECT count(*) FROM ips WHERE status <> 'warming'") == 0
    assert {ip["tenant_id"] for ip in (await client.get("/api/v2/ips", headers=key1)).json()} == {1}
    assert len((await client.get("/api/v2/ips", headers=admin)).json()) == 100
    assert (await client.get("/api/v2/warmup/2", headers=key1)).status_code == 404
    assert (await client.get(f"/api/v2/warmup/1/{other_ip}", headers=key1)).status_code == 404


async def test_sending_candidates_are_the_tenants_eligible_ips_with_todays_quota(db, seeded) -> None:
    today = dt.date(2024, 6, 1)
    await db.execute("UPDATE warmup_plans SET current_day = 3 WHERE ip_id = 1")
    await db.execute("UPDATE ips SET status = 'active', daily_cap = 7000 WHERE id = 2")
    await ips.change_status(db, 1, 3, "pause")
    await ips.change_status(db, 1, 4, "retire")
    await ips.change_status(db, 1, 5, "blacklist")
    found = await ips.sending_candidates(db, 1, today)
    by_id = {c.ip_id: c for c in found}
    assert len(found) == 47 and not {3, 4, 5} & set(by_id)
    assert by_id[1].daily_quota == 400 and by_id[1].status == "warming"
    assert by_id[2].daily_quota == 7000 and by_id[2].status == "active"
    assert by_id[6].daily_quota == 50 and by_id[6].vmta_name == "sos-expat-vmta06" and by_id[6].weight == 10
    tenant2 = await db.fetchval("SELECT array_agg(id) FROM ips WHERE tenant_id = 2")
    assert not set(tenant2) & set(by_id)
    assert {c.ip_id for c in await ips.sending_candidates(db, 2, today)} == set(tenant2)


async def test_used_today_reads_the_quota_ledger_of_that_ip_and_day(db, seeded) -> None:
    await db.execute("INSERT INTO quota_grants (scope, scope_id, day, granted) VALUES "
                     "('ip', 1, '2024-06-01', 3), ('ip', 1, '2024-06-02', 1), ('ip', 2, '2024-06-01', 1), "
                     "('campaign', 1, '2024-06-01', 50)")
    count = ips.used_today_callback(db)
    assert await count(1, "2024-06-01") == 3 and await count(2, "2024-06-01") == 1
    assert await count(1, "2024-06-02") == 1 and await count(7, "2024-06-01") == 0
