"""The audit log: every mutating operation of the OpenAPI document leaves exactly one row, without secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from urllib.parse import unquote

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from engine import audit
from engine.unsubscribe import make_token
from tests.conftest import ADMIN_KEY, SECRET_KEY, tenant_key
from tests.dnsserver import DnsServer
from tests.test_feedback_loop import arf

DRAFT = {"tenant_id": 1, "name": "Avocats FR", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
         "category": "avocat", "audience": {"tags": ["avocat"]}}
TEMPLATE = {"tenant_id": 1, "name": "Cold - Avocat FR", "language": "fr", "category": "avocat",
            "subject": "Développez votre cabinet", "body_html": "<p>Bonjour {firstName},</p>",
            "variables": ["firstName"]}
ACCOUNTING_HEADER = "type,envId,timeLogged,rcpt,orig,dsnAction,dsnStatus,dsnDiag,bounceCat,jobId,vmta,feedbackType\r\n"
MAILWIZZ_PUBLIC = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"
MAILWIZZ_PRIVATE = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3"


def _mutating(doc: dict) -> dict[str, tuple[str, re.Pattern]]:
    """operation id -> (method, the path as a pattern) for every POST, PUT, PATCH and DELETE of the document."""
    found = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in {"post", "put", "patch", "delete"}:
                found[op["operationId"]] = (method.upper(), re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", path) + "$"))
    return found


class Walk:
    """Calls one operation at a time and checks that it left exactly one audit row, which it returns."""

    def __init__(self, client: AsyncTestClient, db: asyncpg.Connection, ops: dict) -> None:
        self.client, self.db, self.ops, self.rows = client, db, ops, {}

    async def __call__(self, method: str, url: str, **kw) -> dict:
        last = await self.db.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")
        r = await self.client.request(method, url, **kw)
        assert r.status_code < 300, (method, url, r.status_code, r.text)
        rows = await self.db.fetch("SELECT * FROM audit_log WHERE id > $1", last)
        assert len(rows) == 1, (method, url, [dict(x) for x in rows])
        row = dict(rows[0])
        want_method, pattern = self.ops[row["action"]]
        path = unquote(url.split("?")[0])
        assert row["method"] == method == want_method and pattern.match(row["path"]), row
        assert row["path"] == path or row["action"] == "unsubscribe", row
        assert row["request_id"] == r.headers["x-request-id"]
        self.rows.setdefault(row["action"], row)
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else {}


@pytest.fixture
async def walk_client(settings, seeded):
    async with DnsServer({}) as dns:
        app = create_app(msgspec.structs.replace(settings, dns_servers=(dns.address,)), admin_key=ADMIN_KEY,
                         secret_key=SECRET_KEY)
        async with AsyncTestClient(app=app) as c:
            yield c


async def test_every_mutating_operation_leaves_exactly_one_audit_row(walk_client, admin, db) -> None:
    client = walk_client
    doc = (await client.get("/schema/openapi.json")).json()
    ops = _mutating(doc)
    call = Walk(client, db, ops)
    sos = await tenant_key(client, admin, 1)
    sos_key_id = (await db.fetchval("SELECT max(id) FROM api_keys WHERE tenant_id = 1"))

    await call("POST", "/api/v2/tenants", json={"slug": "audit-co", "name": "Audit Co"}, headers=admin)
    created_key = await call("POST", "/api/v2/tenants/1/api-keys", json={"name": "audit"}, headers=admin)
    await call("DELETE", f"/api/v2/tenants/1/api-keys/{created_key['id']}", headers=admin)
    await call("PATCH", "/api/v2/tenants/1/sending-policy", json={"mail_risky": False}, headers=admin)
    people = [{"tenant_id": 1, "data_source_id": 1, "email": f"p{i}@firm.example", "first_name": f"P{i}",
               "language": "fr", "category": "avocat", "tags": ["avocat"]} for i in range(5)]
    await call("POST", "/api/v2/contacts/ingest", json={"contacts": people}, headers=sos)
    first, second = await db.fetch("SELECT id FROM contacts WHERE tenant_id = 1 ORDER BY id LIMIT 2")
    await call("PATCH", f"/api/v2/contacts/1/{first['id']}", json={"status": "valid", "reason": "by hand"}, headers=sos)
    await call("DELETE", f"/api/v2/contacts/1/{second['id']}", headers=sos)

    source = await call("POST", "/api/v2/data-sources/1", headers=sos,
                        json={"kind": "scraper_pro", "name": "EU scraper", "field_mapping": {"email": "mail"}})
    sid = source["source"]["id"]
    rotated = await call("POST", f"/api/v2/data-sources/1/{sid}/rotate-secret", headers=sos)
    await call("PUT", f"/api/v2/data-sources/1/{sid}/mapping", headers=sos,
               json={"field_mapping": {"email": "mail", "first_name": "name"}})
    body = b'{"mail": "hooked@example.de", "name": "Jonas"}'
    ts = str(int(time.time()))
    sig = hmac.new(rotated["secret"].encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    await call("POST", f"/api/v2/webhooks/{sid}", content=body,
               headers={"X-Timestamp": ts, "X-Signature": f"sha256={sig}", "Content-Type": "application/json"})
    await call("POST", "/api/v2/contacts/import?tenant_id=1&tags=salon", content=b"email\nana@example.pt\n",
               headers={**admin, "Content-Type": "text/csv"})

    campaign = await call("POST", "/api/v2/campaigns", json=DRAFT, headers=sos)
    cid = campaign["id"]
    await call("PUT", f"/api/v2/campaigns/1/{cid}", json={**DRAFT, "name": "Avocats FR v2"}, headers=sos)
    await call("PUT", f"/api/v2/campaigns/1/{cid}/sequence", json={"steps": [{}]}, headers=sos)
    await call("PUT", f"/api/v2/campaigns/1/{cid}/sender", json={"sender_name": "Léa Moreau"}, headers=sos)
    await call("PUT", "/api/v2/tenants/1/sender", headers=sos, json={
        "sender_name": "Léa Moreau", "sender_company": "SOS-Expat SAS",
        "sender_address": "3 place de l'Exemple, 33000 Bordeaux, France", "sender_website": "https://sos-expat.example"})
    await call("PUT", "/api/v2/sequences/1/holidays", json={"holidays": [{"day": "2026-12-25", "name": "Noël"}]},
               headers=sos)
    await call("POST", "/api/v2/spintax/preview", json={"text": "{Bonjour|Salut}"}, headers=sos)
    box = await call("POST", "/api/v2/replies/1/mailboxes", headers=sos, json={
        "host": "127.0.0.1", "port": 1, "tls": False, "username": "replies", "password": "imap-secret"})
    await call("POST", f"/api/v2/replies/1/mailboxes/{box['id']}/read", headers=sos)
    await call("DELETE", f"/api/v2/replies/1/mailboxes/{box['id']}", headers=sos)
    for action in ("start", "pause", "resume", "cancel"):
        await call("POST", f"/api/v2/campaigns/1/{cid}/{action}", headers=sos)
    await call("DELETE", f"/api/v2/campaigns/1/{cid}", headers=sos)
    await call("POST", "/api/v2/campaigns/audience-preview", json={"tenant_id": 1}, headers=sos)

    await call("POST", "/api/v2/suppressions", json={"tenant_id": 1, "emails": ["gone@firm.example"], "reason": "manual"}, headers=sos)
    await call("DELETE", "/api/v2/suppressions/1/gone%40firm.example", headers=sos)

    template = await call("POST", "/api/v2/templates", json=TEMPLATE, headers=sos)
    await call("PUT", f"/api/v2/templates/1/{template['id']}", json={"subject": "Bonjour"}, headers=sos)
    await call("POST", "/api/v2/templates/select", json={"tenant_id": 1, "language": "fr", "category": "avocat"},
               headers=sos)
    await call("POST", "/api/v2/templates/render", headers=sos,
               json={"tenant_id": 1, "template_id": template["id"], "variables": {"firstName": "Zoé"}})
    await call("POST", f"/api/v2/templates/1/{template['id']}/check", headers=sos)
    await call("DELETE", f"/api/v2/templates/1/{template['id']}", headers=sos)

    ip = await call("POST", "/api/v2/ips", headers=sos, json={"tenant_id": 1, "address": "192.0.2.200",
                                                              "hostname": "mta.example", "vmta_name": "audit-vmta"})
    await call("PATCH", f"/api/v2/ips/1/{ip['id']}", json={"weight": 5}, headers=sos)
    await call("POST", f"/api/v2/ips/1/{ip['id']}/pause", json={"reason": "looking"}, headers=sos)
    await call("POST", f"/api/v2/ips/1/{ip['id']}/resume", headers=sos)
    await call("POST", f"/api/v2/ips/1/{ip['id']}/retire", headers=sos)
    await call("PUT", "/api/v2/warmup/1/curve", json={"curve": [20, 40, 80, 500]}, headers=sos)

    domain = await call("POST", "/api/v2/domains", headers=sos,
                        json={"tenant_id": 1, "name": "news.sos-expat-mail.example", "ip_ids": [1, 2]})
    did = domain["id"]
    await call("PATCH", f"/api/v2/domains/1/{did}", json={"ip_ids": [2]}, headers=sos)
    await call("POST", f"/api/v2/domains/1/{did}/dkim/rotate", headers=sos)
    await call("PUT", f"/api/v2/domains/1/{did}/return-path", json={"return_path": "bounces.news.sos-expat-mail.example"},
               headers=sos)
    await call("POST", f"/api/v2/domains/1/{did}/dns/check", headers=sos)
    await call("POST", f"/api/v2/domains/1/{did}/release", headers=admin)
    await call("POST", f"/api/v2/domains/1/{did}/resume", headers=sos)
    await call("DELETE", f"/api/v2/domains/1/{did}", headers=sos)
    await call("PUT", "/api/v2/dns/policy/1", json={"dmarc_policy": "quarantine"}, headers=sos)
    await call("PUT", "/api/v2/mailwizz/1", headers=sos, json={
        "base_url": "http://127.0.0.1:9/api", "api_version": 1, "public_key": MAILWIZZ_PUBLIC,
        "private_key": MAILWIZZ_PRIVATE, "list_uid": "ab12cd34ef567"})
    await call("POST", "/api/v2/feedback/pmta-accounting", content=ACCOUNTING_HEADER.encode(),
               headers={**admin, "Content-Type": "text/csv"})
    original = b"From: news@sos-expat-mail.example\r\nTo: p4@firm.example\r\nMessage-ID: <nobody@example>\r\n\r\nHi\r\n"
    await call("POST", "/api/v2/feedback/arf", content=arf(original, rcpt="p4@firm.example"),
               headers={**sos, "Content-Type": "message/rfc822"})
    channel = await call("POST", "/api/v2/alert-channels/1", headers=sos,
                         json={"kind": "webhook", "name": "hook", "url": "http://127.0.0.1:9/alerts"})
    await call("POST", f"/api/v2/alert-channels/1/{channel['channel']['id']}/test", headers=sos)
    await call("DELETE", f"/api/v2/alert-channels/1/{channel['channel']['id']}", headers=sos)
    channel = await call("POST", "/api/v2/engine/alert-channels", headers=admin,
                         json={"kind": "webhook", "name": "admin", "url": "http://127.0.0.1:9/alerts"})
    await call("POST", f"/api/v2/engine/alert-channels/{channel['channel']['id']}/test", headers=admin)
    await call("DELETE", f"/api/v2/engine/alert-channels/{channel['channel']['id']}", headers=admin)
    endpoint = await call("POST", "/api/v2/event-endpoints/1", headers=sos,
                          json={"url": "https://crm.example/hooks", "event_types": ["bounced"]})
    await call("PATCH", f"/api/v2/event-endpoints/1/{endpoint['endpoint']['id']}", json={"active": False},
               headers=sos)
    await call("DELETE", f"/api/v2/event-endpoints/1/{endpoint['endpoint']['id']}", headers=sos)
    token = make_token(SECRET_KEY, tenant_id=1, email="p3@firm.example")
    await call("POST", f"/u/{token}", content=b"List-Unsubscribe=One-Click",
               headers={"Content-Type": "application/x-www-form-urlencoded"})

    # the walk reached every operation of the document: an operation added to the API needs its call above
    # (its audit row needs no code of its own; this walk proves it is there)
    assert sorted(set(ops) - set(call.rows)) == []

    rows = call.rows
    assert rows["patchContact"]["actor"] == "key" and rows["patchContact"]["key_id"] == sos_key_id
    assert rows["createApiKey"]["tenant_id"] == 1 and rows["createApiKey"]["target"] == {"tenant_id": 1}
    assert rows["createApiKey"]["actor"] == "admin" and rows["createApiKey"]["key_id"] is None
    assert rows["createTenant"]["actor"] == "admin" and rows["createTenant"]["tenant_id"] is None
    assert rows["createTenant"]["summary"] == {"slug": "audit-co", "name": "Audit Co"}
    assert rows["pauseCampaign"]["target"] == {"tenant_id": 1, "campaign_id": cid}
    assert rows["receiveWebhook"]["actor"] == "data_source" and rows["receiveWebhook"]["tenant_id"] == 1
    assert rows["unsubscribe"]["actor"] == "recipient" and rows["unsubscribe"]["tenant_id"] == 1
    assert rows["unsubscribe"]["target"] == {"token": audit.REDACTED}
    assert rows["unsubscribe"]["path"] == f"/u/{audit.REDACTED}"
    assert rows["importContacts"]["summary"]["query"] == {"tenant_id": "1", "tags": "salon"}
    assert rows["ingestContacts"]["summary"]["contacts"]["count"] == 5
    assert rows["putMailWizzConfig"]["summary"]["public_key"] == audit.REDACTED
    assert rows["putMailWizzConfig"]["summary"]["private_key"] == audit.REDACTED
    # no secret, signature or key anywhere in the log
    everything = json.dumps([{k: str(v) for k, v in r.items()} for r in
                             await db.fetch("SELECT * FROM audit_log")])
    for secret in (created_key["key"], sos["Authorization"].split()[1], ADMIN_KEY, rotated["secret"],
                   source["secret"], sig, token, MAILWIZZ_PUBLIC, MAILWIZZ_PRIVATE):
        assert secret not in everything


async def test_a_refused_change_leaves_no_row_and_a_row_rolls_back_with_its_change(client, admin, seeded, db) -> None:
    sos = await tenant_key(client, admin, 1)
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    # bad input, another tenant's id, a state conflict raised after the handler read the row
    assert (await client.post("/api/v2/campaigns", json={**DRAFT, "from_email": "nope"}, headers=sos)).status_code == 400
    assert (await client.post("/api/v2/campaigns/2/1/pause", headers=sos)).status_code == 404
    cid = (await client.post("/api/v2/campaigns", json=DRAFT, headers=sos)).json()["id"]
    assert (await client.post(f"/api/v2/campaigns/1/{cid}/resume", headers=sos)).status_code == 409
    taken = await db.fetchval("SELECT address::text FROM ips WHERE id = 1")
    assert (await client.post("/api/v2/ips", headers=sos, json={"tenant_id": 1, "address": taken.split("/")[0],
                                                               "hostname": "x.example", "vmta_name": "dup"})
            ).status_code == 409
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before + 1   # the one create
    # reads leave nothing
    await client.get("/api/v2/campaigns/1", headers=sos)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before + 1


async def test_listing_filters_pages_and_tenants(client, admin, seeded, db) -> None:
    sos, uli = await tenant_key(client, admin, 1), await tenant_key(client, admin, 2)
    for i in range(5):
        r = await client.post("/api/v2/campaigns", json={**DRAFT, "name": f"c{i}"}, headers=sos)
        assert r.status_code == 201
    r = await client.post("/api/v2/campaigns", json={**DRAFT, "tenant_id": 2}, headers=uli)
    assert r.status_code == 201
    r = await client.post("/api/v2/suppressions", json={"tenant_id": 1, "emails": ["x@y.example"], "reason": "manual"}, headers=sos,
                          params={}, )
    assert r.status_code == 200

    seen, before = [], None
    while True:
        params = {"action": "createCampaign", "limit": 2, **({"before": before} if before else {})}
        page = (await client.get("/api/v2/audit/1", params=params, headers=sos)).json()
        seen += page["items"]
        before = page["next_cursor"]
        if before is None:
            break
    assert [e["summary"]["name"] for e in seen] == ["c4", "c3", "c2", "c1", "c0"]
    assert all(e["tenant_id"] == 1 and e["action"] == "createCampaign" for e in seen)
    assert (await client.get("/api/v2/audit/2", headers=sos)).status_code == 404
    mine = (await client.get("/api/v2/audit", headers=uli)).json()["items"]
    assert {e["tenant_id"] for e in mine} == {2}
    # the admin sees both tenants (and the keys it created for them)
    every = (await client.get("/api/v2/audit", params={"limit": 500}, headers=admin)).json()["items"]
    assert {e["tenant_id"] for e in every} == {1, 2}
    assert {e["action"] for e in every} >= {"createApiKey", "createCampaign", "addSuppressions"}
    sos_key = await db.fetchval("SELECT max(id) FROM api_keys WHERE tenant_id = 1")
    by_key = (await client.get("/api/v2/audit", params={"key_id": sos_key}, headers=admin)).json()["items"]
    assert len(by_key) == 6 and {e["key_id"] for e in by_key} == {sos_key}
    assert (await client.get("/api/v2/audit/1", params={"until": "2000-01-01T00:00:00Z"}, headers=sos)
            ).json()["items"] == []
    assert len((await client.get("/api/v2/audit/1", params={"since": "2000-01-01T00:00:00Z", "actor": "key"},
                                 headers=sos)).json()["items"]) == 6
    r = await client.get("/api/v2/audit/1", params={"actor": "robot"}, headers=sos)
    assert r.status_code == 400 and r.json()["field"] == "actor"


def test_redaction_and_summaries() -> None:
    assert audit.redact({"api_key": "k", "Password": "p", "key_id": 3, "nested": {"dkim_private_key": "x", "ok": 1}}) == {
        "api_key": audit.REDACTED, "Password": audit.REDACTED, "key_id": 3,
        "nested": {"dkim_private_key": audit.REDACTED, "ok": 1}}
    big = msgspec.json.encode({"tenant_id": 1, "contacts": [{"email": f"a{i}@x.example", "secret": "s"}
                                                            for i in range(10_000)]})
    assert len(big) > audit.LARGE_BODY
    summary = audit.summarise_body(big)
    assert summary["tenant_id"] == 1 and summary["contacts"]["count"] == 10_000
    assert summary["contacts"]["first"][0] == {"email": "a0@x.example", "secret": audit.REDACTED}
    assert audit.summarise_body(b"not json") == {"body_bytes": 8}
