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
