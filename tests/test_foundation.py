"""Settings, migrations, named queries, auth and tenant isolation, probes, the seed."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

import sql
from engine import db as dbm
from engine.settings import SettingsError, load_settings
from tests.conftest import ADMIN_KEY, SECRET_KEY, tenant_key, with_database

ROOT = Path(__file__).resolve().parent.parent


# --- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("var", "value"), [
    ("HTTP_PORT", "eighty"), ("HTTP_PORT", "70000"), ("DATABASE_URL", "mysql://x"),
    ("REDIS_URL", "http://x"), ("PUBLIC_URL", "ftp://x"), ("ADMIN_KEY", "short"), ("PMTA_PORT", "-1"),
])
def test_bad_setting_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({f"EMAIL_ENGINE_{var}": value})
    message = str(info.value)
    assert f"EMAIL_ENGINE_{var}" in message and "expected" in message and "\n" not in message


def test_settings_defaults_and_values() -> None:
    s = load_settings({"EMAIL_ENGINE_HTTP_PORT": "9000", "EMAIL_ENGINE_DNS_SERVERS": "127.0.0.1:5353, 10.0.0.1"})
    assert s.http_port == 9000 and s.http_host == "127.0.0.1"
    assert s.dns_servers == ("127.0.0.1:5353", "10.0.0.1")
    assert s.database_url is None and s.home == Path(".email-engine")


def test_cli_bad_environment_exits_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "EMAIL_ENGINE_HTTP_PORT": "nope", "EMAIL_ENGINE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "EMAIL_ENGINE_HTTP_PORT" in lines[0]


def test_cli_help_explains_each_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "api.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    for command in ("up", "serve", "worker", "migrate", "seed"):
        assert command in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "api.cli", "up", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "PowerMTA" in proc.stdout


# --- migrations and named queries -----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def empty_database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """The URL of a database of its own with nothing in it, dropped afterwards."""
    name = prefix + os.urandom(4).hex()
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_concurrent_migrate_applies_each_migration_once(server_urls: tuple[str, str]) -> None:
    async with empty_database(server_urls[0], "ee_test_migrate_") as url:
        env = {**os.environ, "EMAIL_ENGINE_DATABASE_URL": url, "EMAIL_ENGINE_REDIS_URL": "redis://127.0.0.1:1"}
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "api.cli", "migrate", env=env, cwd=ROOT,
                                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                 for _ in range(2)]
        results = [await p.communicate() for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        db = await asyncpg.connect(url)
        versions = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        await db.close()
        assert versions == [m.version for m in sql.migrations()]
        outputs = sorted(out.decode() for out, _ in results)
        assert outputs[0].startswith("applied 0 migration"), outputs  # the second one found the work done


async def test_a_worker_waits_for_the_schema_before_its_jobs(server_urls: tuple[str, str], caplog) -> None:
    async with empty_database(server_urls[0], "ee_test_unmigrated_") as url:
        everything = [f"{m.version:04d}_{m.name}" for m in sql.migrations()]
        assert await dbm.pending_migrations(url) == everything
        waiting = asyncio.create_task(dbm.wait_for_schema(url, poll=0.05))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert f"waiting for {len(everything)} migration(s) ({everything[0]} … {everything[-1]})" in caplog.text
        await dbm.migrate(url)
        await asyncio.wait_for(waiting, 10)
        assert await dbm.pending_migrations(url) == []


def struct_module(noun: str) -> str:
    """The module whose Structs a query file's `-- returns:` names: engine.<noun>, or inside a package."""
    if noun.startswith("mailwizz_"):
        return f"engine.mailwizz.{noun.removeprefix('mailwizz_')}"
    if importlib.util.find_spec(f"engine.sending.{noun}") is not None:
        return f"engine.sending.{noun}"
    return f"engine.{noun}"


async def test_every_named_query_prepares_and_matches_its_struct(db: asyncpg.Connection) -> None:
    queries = sql.queries()
    assert queries, "no named queries found"
    for query in queries.values():
        stmt = await db.prepare(query.sql)
        if query.returns is None:
            continue
        module = importlib.import_module(struct_module(query.noun))
        struct = getattr(module, query.returns)
        columns = [a.name for a in stmt.get_attributes()]
        fields = list(struct.__struct_fields__)
        assert sorted(columns) == sorted(fields), f"{query.noun}.sql {query.name}: {columns} != {fields}"


def test_query_files_parse() -> None:
    parsed = sql.parse("x", "-- name: a-b\n-- why\n-- returns: Thing\nSELECT 1;\n\n-- name: c\nSELECT 2")
    assert parsed["a-b"].sql == "SELECT 1" and parsed["a-b"].returns == "Thing" and parsed["c"].sql == "SELECT 2"
    with pytest.raises(ValueError):
        sql.parse("x", "-- name: a\nSELECT 1;\n-- name: a\nSELECT 2")


# --- auth and isolation ---------------------------------------------------------------------------------

async def test_no_key_or_wrong_key_is_401(client, seeded) -> None:
    r = await client.get("/api/v2/tenants")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = await client.get("/api/v2/tenants", headers={"Authorization": "Bearer ee_nope"})
    assert r.status_code == 401
    r = await client.get("/api/v2/tenants", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


async def test_admin_lists_the_two_seeded_tenants(client, admin, seeded) -> None:
    r = await client.get("/api/v2/tenants", headers=admin)
    assert r.status_code == 200
    assert [(t["id"], t["name"]) for t in r.json()] == [(1, "SOS-Expat"), (2, "Ulixai")]


async def test_tenant_key_sees_only_its_tenant(client, admin, seeded) -> None:
    sos, ulixai = seeded
    headers = await tenant_key(client, admin, sos)
    assert (await client.get(f"/api/v2/tenants/{sos}", headers=headers)).status_code == 200
    r = await client.get(f"/api/v2/tenants/{ulixai}", headers=headers)
    assert r.status_code == 404 and "Ulixai" not in r.text
    assert [t["id"] for t in (await client.get("/api/v2/tenants", headers=headers)).json()] == [sos]
    assert (await client.get(f"/api/v2/tenants/{ulixai}/api-keys", headers=headers)).status_code == 404
    assert (await client.post(f"/api/v2/tenants/{ulixai}/api-keys", json={"name": "x"}, headers=headers)).status_code == 404
    assert (await client.post("/api/v2/tenants", json={"slug": "evil", "name": "Evil"}, headers=headers)).status_code == 403


async def test_api_key_shown_once_stored_hashed_and_revocable(client, admin, seeded, db) -> None:
    sos = seeded[0]
    r = await client.post(f"/api/v2/tenants/{sos}/api-keys", json={"name": "scraper"}, headers=admin)
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("ee_") and len(key) > 40
    listed = (await client.get(f"/api/v2/tenants/{sos}/api-keys", headers=admin)).json()
    assert key not in str(listed) and listed[0]["prefix"] == key[:10]
    stored = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert key.encode() not in bytes(stored["key_hash"]) and key not in str(dict(stored))
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get(f"/api/v2/tenants/{sos}", headers=headers)).status_code == 200
    r = await client.delete(f"/api/v2/tenants/{sos}/api-keys/{created['id']}", headers=admin)
    assert r.status_code == 204
    assert (await client.get(f"/api/v2/tenants/{sos}", headers=headers)).status_code == 401


async def test_create_tenant_validates_fields(client, admin, seeded) -> None:
    r = await client.post("/api/v2/tenants", json={"slug": "Bad Slug", "name": "x"}, headers=admin)
    assert r.status_code == 400 and "slug" in r.text
    r = await client.post("/api/v2/tenants", json={"slug": "ok", "name": "x", "timezone": "Mars/Olympus"}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "timezone"
    r = await client.post("/api/v2/tenants", content=b"{not json", headers={**admin, "content-type": "application/json"})
    assert r.status_code == 400
    r = await client.post("/api/v2/tenants", json={"slug": "sos-expat", "name": "Again"}, headers=admin)
    assert r.status_code == 409
    r = await client.post("/api/v2/tenants", json={"slug": "acme", "name": "Acme"}, headers=admin)
    assert r.status_code == 201 and r.json()["slug"] == "acme" and r.json()["id"] > 2


# --- probes and docs ------------------------------------------------------------------------------------

async def test_health_and_ready(client) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json()["stores"] == {"postgresql": "ok", "redis": "ok"}


async def test_ready_names_the_store_that_is_down(settings) -> None:
    from litestar.testing import AsyncTestClient

    from api.app import create_app

    broken = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1")
    app = create_app(broken, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)
    async with AsyncTestClient(app=app) as c:
        r = await c.get("/ready")
    assert r.status_code == 503 and "redis" in r.json()["detail"] and "postgresql" not in r.json()["detail"]


async def test_a_store_down_is_a_503_naming_it_never_a_500(settings, seeded, db) -> None:
    from litestar.testing import AsyncTestClient

    from api.app import create_app

    no_postgres = msgspec.structs.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/postgres")
    async with AsyncTestClient(app=create_app(no_postgres, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)) as c:
        r = await c.get("/api/v2/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 503 and r.json()["detail"].startswith("PostgreSQL"), r.text
    assert r.headers["retry-after"] == "5"
    # Redis down after the batch committed: 503, and the contact is kept (pending; the validation sweep
    # enqueues it once Redis is back, and a re-send of the batch finds it unchanged)
    no_redis = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1")
    async with AsyncTestClient(app=create_app(no_redis, admin_key=ADMIN_KEY, secret_key=SECRET_KEY)) as c:
        r = await c.post("/api/v2/contacts/ingest", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         json={"contacts": [{"tenant_id": 1, "email": "kept@example.fr"}]})
    assert r.status_code == 503 and r.json()["detail"].startswith("Redis"), r.text
    assert await db.fetchval("SELECT status::text FROM contacts WHERE email = 'kept@example.fr'") == "pending"


async def test_openapi_operations_have_ids_and_descriptions(client) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    ops = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(ops) >= 8
    for path, method, op in ops:
        assert op.get("operationId"), (path, method)
        assert op.get("description"), (path, method)
        assert "example" in str(op), (path, method)  # parameters, bodies or responses carry examples
    for page in ("swagger", "redoc", "scalar"):
        assert (await client.get(f"/schema/{page}")).status_code == 200


async def test_openapi_marks_only_the_api_as_needing_a_key(client) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    assert "bearer" in spec["components"]["securitySchemes"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            wanted = [{"bearer": []}] if path.startswith("/api/v2/") or path == "/metrics" else None
            assert op.get("security") == wanted, (path, method)
    assert {"/health", "/ready", "/u/{token}"} <= set(spec["paths"])


def schema_at(schema: dict, pointer: str, components: dict) -> dict:
    """The JSON schema of the value at a JSON pointer (`/results/0/id`) inside a value of `schema`."""
    for part in [p for p in pointer.split("/") if p]:
        while "$ref" in schema or "oneOf" in schema or "anyOf" in schema:
            if "$ref" in schema:
                schema = components[schema["$ref"].rsplit("/", 1)[1]]
            else:  # T | None: the T
                schema = next(o for o in schema.get("oneOf", schema.get("anyOf")) if o.get("type") != "null")
        schema = schema["items"] if part.isdigit() else schema["properties"][part]
    while "$ref" in schema or "oneOf" in schema:
        schema = (components[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema
                  else next(o for o in schema["oneOf"] if o.get("type") != "null"))
    return schema


def leaves(value: object, at: str = "") -> list[tuple[str, object]]:
    """(JSON pointer, value) of each leaf of a link's request body."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in leaves(item, f"{at}/{key}")]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in leaves(item, f"{at}/{i}")]
    return [(at, value)]


async def test_openapi_links_give_each_target_a_value_of_the_type_it_takes(client) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    components = spec["components"]["schemas"]
    operations = {op["operationId"]: op for item in spec["paths"].values() for op in item.values()}

    def body_schema(op: dict) -> dict:
        return op["requestBody"]["content"]["application/json"]["schema"]

    def source_type(op: dict, status: str, expression: str) -> str:
        where, pointer = expression.split("#")
        root = (op["responses"][status]["content"]["application/json"]["schema"] if where == "$response.body"
                else body_schema(op))
        return schema_at(root, pointer, components)["type"]

    count = 0
    for source in operations.values():
        for status, response in source["responses"].items():
            for name, link in response.get("links", {}).items():
                target = operations[link["operationId"]]
                taken = {p["name"]: schema_at(p["schema"], "", components)["type"] for p in target.get("parameters", [])}
                for parameter, expression in link.get("parameters", {}).items():
                    assert source_type(source, status, expression) == taken[parameter], (name, parameter)
                for pointer, expression in leaves(link.get("requestBody", {})):
                    wanted = schema_at(body_schema(target), pointer, components)["type"]
                    assert source_type(source, status, expression) == wanted, (name, pointer)
                count += 1
    assert count >= 80


async def test_openapi_says_which_bodies_refuse_unknown_fields(client, admin) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    body = spec["paths"]["/api/v2/tenants"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["additionalProperties"] is False
    r = await client.post("/api/v2/tenants", headers=admin,
                          json={"slug": "closed", "name": "Closed", "timezone": "Europe/Paris", "colour": "red"})
    assert r.status_code == 400 and "unknown field `colour`" in r.json()["detail"], r.text
    # answers are not closed: a client may meet fields added later
    assert "additionalProperties" not in spec["components"]["schemas"]["Tenant"]


# --- seed -----------------------------------------------------------------------------------------------

COUNTS = ["tenants", "ips", "domains", "tags", "data_sources", "mailwizz_instances", "warmup_plans", "domain_ips",
          "email_templates"]


async def test_seed_is_complete_and_idempotent(db: asyncpg.Connection) -> None:
    from engine.library import library_files
    from engine.seed import seed

    assert await seed(db) == [1, 2]
    first = {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTS}
    assert first["tenants"] == 2 and first["ips"] == 100 and first["domains"] == 100
    assert first["tags"] == 32 and first["data_sources"] == 8 and first["mailwizz_instances"] == 2
    # per tenant: nine general starters, the seed's Cold - Avocat FR, and 27 messages per library file
    assert first["email_templates"] == 20 + 27 * len(library_files())
    assert await seed(db) == [1, 2]
    assert {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in COUNTS} == first
    addresses = [r["address"] for r in await db.fetch("SELECT host(address) AS address FROM ips")]
    assert all(a.startswith(("192.0.2.", "198.51.100.", "203.0.113.")) for a in addresses)
    assert all(n.endswith(".example") for n in [r["name"] for r in await db.fetch("SELECT name FROM domains")])
    assert await db.fetchval("SELECT count(*) FROM data_sources WHERE tenant_id = 1 AND id = 1") == 1


# --- secrets on disk and the embedded path --------------------------------------------------------------

def test_generated_keys_are_private_files(tmp_path: Path) -> None:
    from engine import secrets

    value, created = secrets.load_or_create(tmp_path / "admin_key", generate=secrets.new_api_key)
    assert created and value.startswith("ee_")
    assert stat.S_IMODE((tmp_path / "admin_key").stat().st_mode) == 0o600
    assert secrets.load_or_create(tmp_path / "admin_key") == (value, False)


async def test_embedded_stores_start_migrate_query_stop() -> None:
    import shutil
    import tempfile

    from engine import embedded

    # Not pytest's tmp_path: its root (/tmp/pytest-of-<user>, mode 700) is closed to the unprivileged user
    # PostgreSQL runs as when the tests run as root.
    tmp_path = Path(tempfile.mkdtemp(prefix="ee-embedded-"))
    os.chmod(tmp_path, 0o755)
    try:
        await _embedded_round_trip(embedded, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


async def _embedded_round_trip(embedded, tmp_path: Path) -> None:
    stores = await asyncio.to_thread(embedded.start, tmp_path, database_url=None, redis_url=None)
    try:
        await dbm.migrate(stores.database_url)
        conn = await dbm.connect(stores.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(sql.migrations())
        finally:
            await conn.close()
        from redis.asyncio import Redis

        r = Redis.from_url(stores.redis_url)
        assert await r.ping()
        await r.aclose()
    finally:
        await asyncio.to_thread(stores.stop)
    assert not (tmp_path / "redis" / "redis.sock").exists() or stores.redis_proc is None
