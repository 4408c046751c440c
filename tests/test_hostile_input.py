"""Hostile input, each answered by a clear 4xx naming the field, with nothing written and never a 5xx.

The first probes are generated from the OpenAPI document: a NUL in every text field of every JSON body and in
every text query parameter, and integers past int32 and int64 in every integer field, so an operation added
later is probed too. The rest are limits and shapes a fuzzer does not reach: an oversized body and batch,
CSV lines and fields, deep JSON, header injection, invisible and look-alike characters in addresses,
template size and recursion, names that look like paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api.app import MAX_BODY
from engine.contacts import MAX_BATCH
from tests.live_api import example_of

OPENAPI = "/schema/openapi.json"
NUL = "a\x00b"


def json_operations(spec: dict) -> list[tuple[str, str, dict, dict]]:
    """(method, path, operation, body schema) of each /api/v2 operation taking a JSON object."""
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if path.startswith("/api/v2/") and schema:
                components = spec["components"]["schemas"]
                resolved = components[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
                if "properties" in resolved:
                    found.append((method, path, op, resolved))
    return found


def filled(path: str) -> str:
    """The path with every parameter set to 1 (tenant 1 and the first of each of its resources)."""
    import re

    return re.sub(r"\{[^}]+\}", "1", path)


def kinds(prop: dict) -> set[str]:
    """The JSON types a property may take."""
    found: set[str] = set()
    for schema in (prop, *prop.get("oneOf", prop.get("anyOf", ()))):
        kind = schema.get("type")
        found |= set(kind) if isinstance(kind, list) else {kind} if kind else set()
    return found


async def test_a_nul_in_any_text_of_any_body_or_query_is_a_400_naming_it(client, admin, seeded):
    spec = (await client.get(OPENAPI)).json()
    probed = 0
    for method, path, _, schema in json_operations(spec):
        components = spec["components"]["schemas"]
        base = example_of(schema, components)
        for name, prop in schema["properties"].items():
            if "string" not in kinds(prop):
                continue
            r = await client.request(method.upper(), filled(path), json={**base, name: NUL}, headers=admin)
            assert r.status_code == 400, (method, path, name, r.text)
            assert r.json()["field"] == name, (method, path, name, r.text)
            probed += 1
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", ()):
                if param["in"] == "query" and "string" in kinds(param.get("schema", {})) and path.startswith("/api/"):
                    r = await client.request(method.upper(), filled(path), params={param["name"]: NUL}, headers=admin)
                    assert r.status_code == 400, (method, path, param["name"], r.text)
                    assert r.json()["field"] == param["name"], (method, path, r.text)
                    probed += 1
    assert probed >= 60


@pytest.mark.parametrize("value", [2**31, 2**63, -(2**63) - 1, 10**30])
async def test_an_integer_past_its_column_in_any_body_is_a_4xx_never_a_500(client, admin, seeded, value):
    spec = (await client.get(OPENAPI)).json()
    probed = 0
    for method, path, _, schema in json_operations(spec):
        base = example_of(schema, spec["components"]["schemas"])
        for name, prop in schema["properties"].items():
            if "integer" not in kinds(prop):
                continue
            r = await client.request(method.upper(), filled(path), json={**base, name: value}, headers=admin)
            assert r.status_code < 500, (method, path, name, r.text)
            if value >= 2**63 or value < -(2**63):
                assert r.status_code == 400 and r.json()["field"] == name, (method, path, name, r.text)
            probed += 1
    assert probed >= 20


async def test_an_admin_key_naming_a_tenant_that_does_not_exist_gets_404_naming_it(client, admin, seeded):
    r = await client.post("/api/v2/data-sources/999999", json={"name": "ghost", "kind": "api"}, headers=admin)
    assert r.status_code == 404, r.text
    assert r.json() == {"status_code": 404, "detail": "tenant 999999 not found", "field": "tenant_id"}


async def test_body_and_batch_over_their_limits_are_413(client, admin, seeded):
    r = await client.post("/api/v2/contacts/ingest", content=b"{" + b" " * MAX_BODY + b"}",
                          headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    contacts = [{"tenant_id": 1, "email": f"c{i}@example.com"} for i in range(MAX_BATCH + 1)]
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": contacts}, headers=admin)
    assert r.status_code == 413 and r.json()["field"] == "contacts", r.text[:200]


async def test_deeply_nested_json_is_a_400(client, admin, seeded):
    for depth in (100, 100_000):
        body = '{"contacts": ' + "[" * depth + "]" * depth + "}"
        r = await client.post("/api/v2/contacts/ingest", content=body.encode(),
                              headers={**admin, "Content-Type": "application/json"})
        assert r.status_code == 400, r.text[:200]
        custom = {"tenant_id": 1, "email": "deep@example.com", "custom": {"k": "[" * depth + "]" * depth}}
        r = await client.post("/api/v2/contacts/ingest", json={"contacts": [custom]}, headers=admin)
        assert r.status_code < 500, r.text[:200]


async def test_csv_lines_and_fields_of_any_size_never_break_an_import(client, admin, seeded):
    huge_field = b"email;first_name\nbig@example.com;" + b"x" * 2_000_000 + b"\nok@example.com;Ok\n"
    one_line = b"email\n" + b"a" * 5_000_000
    for body in (huge_field, one_line, b"email\n\x00@example.com\n"):
        r = await client.post("/api/v2/contacts/import?tenant_id=1", content=body,
                              headers={**admin, "Content-Type": "text/csv"})
        assert r.status_code < 500, r.text[:200]


@pytest.mark.parametrize("field", ["from_name", "from_email", "reply_to", "name"])
async def test_header_injection_in_a_campaign_is_refused_naming_the_field(client, admin, seeded, field):
    draft = {"tenant_id": 1, "name": "n", "from_name": "SOS", "from_email": "hello@sos-expat-mail-01.example",
             "reply_to": "reply@sos-expat-mail-01.example"}
    for evil in ("x\r\nBcc: victim@example.com", "x\nBcc: victim@example.com", "x\rBcc: v@example.com"):
        r = await client.post("/api/v2/campaigns", json={**draft, field: evil}, headers=admin)
        if field == "name":  # the campaign's name reaches no header: any text but control characters is fine
            assert r.status_code in (201, 400), r.text
            continue
        assert r.status_code == 400 and r.json()["field"] == field, r.text


async def test_header_injection_in_a_template_subject_is_refused(client, admin, seeded):
    template = {"tenant_id": 1, "name": "t", "language": "en", "subject": "Hi\r\nBcc: victim@example.com",
                "body_html": "<p>x</p>"}
    r = await client.post("/api/v2/templates", json=template, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "subject", r.text


async def test_template_size_and_recursion_are_refused_not_crashed(client, admin, seeded):
    base = {"tenant_id": 1, "name": "t", "language": "en", "subject": "s"}
    r = await client.post("/api/v2/templates", json={**base, "body_html": "x" * (300 * 1024)}, headers=admin)
    assert r.status_code == 413 and r.json()["field"] == "body_html", r.text[:200]
    recursive = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    r = await client.post("/api/v2/templates", json={**base, "body_html": recursive}, headers=admin)
    if r.status_code == 201:
        r = await client.post("/api/v2/templates/render", headers=admin,
                              json={"tenant_id": 1, "template_id": r.json()["id"], "variables": {}})
        assert r.status_code in (400, 422), r.text[:300]
    else:
        assert r.status_code in (400, 422), r.text[:300]


@pytest.mark.parametrize(("sent", "outcome"), [
    ("jo\u200bhn@example.com", "refused"),           # zero-width space in the local part
    ("jo\u202ehn@example.com", "refused"),           # right-to-left override
    ("j\u043ehn@example.com", "refused"),            # Cyrillic o among Latin letters
    ("john@exa\u200bmple.com", "john@example.com"),  # invisible in the domain: UTS 46 drops it
    ("john@ex\u00adample.com", "john@example.com"),  # soft hyphen in the domain: dropped too
    ("jose\u0301@example.com", "jos\u00e9@example.com"),  # decomposed accent: NFC, one contact either way
    ("\u0436\u0435\u043d\u044f@example.ru", "\u0436\u0435\u043d\u044f@example.ru"),  # all Cyrillic: a real mailbox
])
async def test_invisible_and_look_alike_characters_in_addresses(client, admin, seeded, sent, outcome):
    r = await client.post("/api/v2/contacts/ingest", json={"contacts": [{"tenant_id": 1, "email": sent}]},
                          headers=admin)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    if outcome == "refused":
        assert result["outcome"] == "rejected" and result["reason"] == "email: not a usable address (syntax)", result
    else:
        assert result["outcome"] in ("created", "updated"), result
        contact = (await client.get(f"/api/v2/contacts/1/{result['id']}", headers=admin)).json()
        assert contact["email"] == outcome


def files_outside(allowed: Path, home: Path, probe: Path) -> list[Path]:
    """Files under `home` but not in `allowed`, and `probe` if a traversal made it."""
    found = [p for p in home.rglob("*") if p.is_file() and p.parent != allowed]
    return found + ([probe] if probe.exists() else [])


async def test_names_that_look_like_paths_name_no_file(client, admin, seeded, settings):
    for name in ("../../../../tmp/ee-traversal", "/etc/passwd", "..\\..\\x"):
        r = await client.post("/api/v2/feedback/pmta-accounting", params={"name": name},
                              content=b"type,timeLogged,orig,rcpt\n", headers={**admin, "Content-Type": "text/csv"})
        assert r.status_code < 500, r.text
    assert files_outside(Path(settings.home) / "accounting", Path(settings.home), Path("/tmp/ee-traversal")) == []
    for token in ("..%2F..%2Fetc%2Fpasswd", "....//....//etc"):
        assert (await client.get(f"/u/{token}")).status_code == 404
