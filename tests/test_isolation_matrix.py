"""The tenant-isolation matrix, generated from the OpenAPI document: tenant B's key on tenant A's resources.

Every /api/v2 operation that names a tenant (a `tenant_id` in its path or body) or a tenant's resource (an
`<noun>_id` whose table carries `tenant_id`) is called with A's ids, first with B's key, then with A's own.
B must get 404 (never 403, never A's data) and A's rows must not change; A's own key must be let through
(its answer may refuse the generated input, or need the admin key, but never says "not found"). Ids are
found in the database by their name, so an operation added later is in the matrix without touching this
file. The routes outside the matrix, and why they need no tenant key, are listed in PUBLIC below; the
engine-wide operations under ENGINE_PREFIX take the admin key only.
"""

from __future__ import annotations

import asyncio
import re
import warnings

import asyncpg
import pytest
import schemathesis
from hypothesis.errors import NonInteractiveExampleWarning
from schemathesis.generation import GenerationMode

from tests.live_api import example_of, serve, tenant_key

A, B = 1, 2

# Routes without a tenant key, and why.
PUBLIC = {
    "/health": "liveness probe: says nothing but that the process answers",
    "/ready": "readiness probe: names which store is down, no tenant data",
    "/u/{token}": "unsubscribe page and RFC 8058 one-click POST: the HMAC-signed token is the credential",
    "/api/v2/webhooks/{source_id}": "integrators' webhook: each body is HMAC-signed with the source's secret",
}
# Engine-wide operations (the admin's own alert channels): the admin key only. A tenant key is refused the
# operation itself (403) whatever id it names, before any row is read, so no tenant's data is behind them.
ENGINE_PREFIX = "/api/v2/engine/"
ID = re.compile(r"^(?P<noun>\w+)_id$")


def table_for(noun: str, tables: set[str]) -> str | None:
    """The table a `<noun>_id` names: `contact` -> contacts, `source` -> data_sources, `key` -> api_keys."""
    for name in (f"{noun}s", f"{noun}es", f"{noun[:-1]}ies" if noun.endswith("y") else ""):
        if name in tables:
            return name
    return next((t for t in sorted(tables) if t.endswith((f"_{noun}s", f"_{noun}es"))), None)


async def ids_of(db: asyncpg.Connection, tenant_id: int) -> tuple[dict[str, int], dict[str, str]]:
    """One id of this tenant per `<noun>_id`, and one value per text column a path may name (an email)."""
    tables = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_id'")}
    ids: dict[str, int] = {"tenant": tenant_id}
    for table in tables:
        if await db.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
                             "AND table_name = $1 AND column_name = 'id'", table):
            found = await db.fetchval(f'SELECT min(id) FROM "{table}" WHERE tenant_id = $1', tenant_id)
            if found is not None:
                ids[table] = found
    texts = {"email": await db.fetchval("SELECT min(value) FROM suppressions WHERE tenant_id = $1", tenant_id)}
    return {**ids, "_tables": tables}, texts  # type: ignore[dict-item]


async def fingerprint(db: asyncpg.Connection, tables: set[str], tenant_id: int) -> dict[str, str]:
    """A digest of every row of this tenant, table by table."""
    out = {}
    for table in sorted(tables):
        out[table] = await db.fetchval(
            f'SELECT md5(coalesce(string_agg(t::text, \',\' ORDER BY t::text), \'\')) FROM "{table}" t '
            "WHERE tenant_id = $1", tenant_id)
    return out


def resolve(name: str, ids: dict, texts: dict[str, str]) -> object | None:
    """A's value for a parameter or body field named `name`, or None when it names nothing of a tenant."""
    if name in texts:
        return texts[name]
    match = ID.match(name)
    if not match:
        return None
    noun = match["noun"]
    if noun == "tenant":
        return ids["tenant"]
    table = table_for(noun, ids["_tables"])
    return ids.get(table) if table else None


def cases(base: str, ids: dict, texts: dict[str, str]) -> tuple[list, list[str]]:
    """One request per operation that names a tenant or a tenant's resource, with A's ids in it."""
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    found, unresolved = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/api/v2/") or operation.path in PUBLIC \
                or operation.path.startswith(ENGINE_PREFIX):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonInteractiveExampleWarning)
            case = operation.as_strategy(generation_mode=GenerationMode.POSITIVE).example()
        # Only the query parameters it needs, from their examples: a generated filter could refuse itself.
        case.query = {p["name"]: example_of(p.get("schema", {}), {}) for p in operation.definition.raw.get(
            "parameters", ()) if p["in"] == "query" and p.get("required")} or None
        body = operation.definition.raw.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            case.body = example_of(body["schema"], schema.raw_schema["components"]["schemas"])
            case.media_type = "application/json"
        scoped = False
        for name in list(case.path_parameters or {}):
            value = resolve(name, ids, texts)
            if value is None:
                unresolved.append(f"{operation.label}: {name}")
                continue
            case.path_parameters[name] = value
            scoped = True
        if isinstance(case.body, dict):
            for name in list(case.body):
                if (value := resolve(name, ids, texts)) is not None:
                    case.body[name] = value
                    scoped = scoped or name == "tenant_id"
        if scoped:
            found.append(case)
    return found, unresolved


def call(base: str, case, key: str):
    return case.call(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


async def make_resources(base: str, tenant_id: int, key: str) -> None:
    """What the seed does not have: a contact, a campaign with a sequence, a suppression, an import, a reply
    mailbox, an alert channel and an event endpoint of this tenant."""
    import httpx

    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60) as http:
        r = await http.post("/api/v2/contacts/ingest", json={"contacts": [
            {"tenant_id": tenant_id, "email": f"c{tenant_id}@example.com"}]})
        assert r.status_code < 300, r.text
        r = await http.post("/api/v2/campaigns", json={
            "tenant_id": tenant_id, "name": "matrix", "from_name": "M", "from_email": "m@example.com"})
        assert r.status_code < 300, r.text
        r = await http.put(f"/api/v2/campaigns/{tenant_id}/{r.json()['id']}/sequence", json={"steps": [{}]})
        assert r.status_code < 300, r.text
        r = await http.post(f"/api/v2/replies/{tenant_id}/mailboxes", json={
            "host": "127.0.0.1", "port": 1, "tls": False, "username": "replies", "password": "imap-secret"})
        assert r.status_code < 300, r.text
        r = await http.post(f"/api/v2/alert-channels/{tenant_id}", json={
            "kind": "webhook", "name": "hook", "url": "http://127.0.0.1:9/alerts"})
        assert r.status_code < 300, r.text
        r = await http.post(f"/api/v2/event-endpoints/{tenant_id}", json={
            "url": "https://crm.example/hooks", "event_types": ["bounced"]})
        assert r.status_code < 300, r.text
        r = await http.post("/api/v2/suppressions", json={"tenant_id": tenant_id, "emails": [f"s{tenant_id}@example.com"],
                                                          "reason": "manual", "source": "matrix"})
        assert r.status_code < 300, r.text
        r = await http.post("/api/v2/contacts/import", content=b"email\ni@example.com\n",
                            headers={"Content-Type": "text/csv"})
        assert r.status_code < 300, r.text


@pytest.mark.slow
async def test_another_tenants_key_finds_nothing_of_a_tenant_in_any_operation(seeded, settings, db):
    assert seeded[:2] == [A, B]
    with serve(settings) as base:
        key_a = await asyncio.to_thread(tenant_key, base, A)
        key_b = await asyncio.to_thread(tenant_key, base, B)
        await make_resources(base, A, key_a)
        await make_resources(base, B, key_b)
        ids, texts = await ids_of(db, A)
        matrix, unresolved = await asyncio.to_thread(cases, base, ids, texts)
        before = await fingerprint(db, ids["_tables"], A)

        leaks = []
        for case in matrix:
            r = await asyncio.to_thread(call, base, case, key_b)
            if r.status_code != 404 or set(r.json()) - {"status_code", "detail", "field", "extra"}:
                leaks.append(f"{case.operation.label} -> {r.status_code} {r.text[:200]}")
        after = await fingerprint(db, ids["_tables"], A)

        # A's own key, deletions last so every other operation still finds what it names.
        refused = []
        for case in sorted(matrix, key=lambda c: c.method.upper() == "DELETE"):
            r = await asyncio.to_thread(call, base, case, key_a)
            if r.status_code in (401, 404) or r.status_code >= 500:
                refused.append(f"{case.operation.label} -> {r.status_code} {r.text[:200]}")

    print(f"\nisolation matrix: {len(matrix)} operations; not resolved: {unresolved}")
    assert not leaks, "tenant B reached tenant A:\n" + "\n".join(leaks)
    assert {t: d for t, d in after.items() if before[t] != d} == {}, "B's calls changed A's rows"
    assert not refused, "tenant A refused its own resources:\n" + "\n".join(refused)
    assert len(matrix) >= 100, [c.operation.label for c in matrix]
    assert not unresolved, "an id the matrix cannot find a table for (name it <noun>_id after its table)"
