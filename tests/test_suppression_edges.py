"""Suppression and unsubscribe headers at their edges: what mutation testing (mutation/run.sh) showed the
other tests let change. An erased contact stays erased whatever is suppressed later; a mailto given with
or without its scheme makes one valid List-Unsubscribe URI; a page holds no more than its limit; an unknown
reason is refused naming its field and the reasons there are; an unsubscribe token carrying our MAC is still
refused when it is too long, of another version, truncated, or for no tenant.
"""

from __future__ import annotations

import pytest

from engine import suppression, unsubscribe
from engine.errors import Invalid
from engine.unsubscribe import list_unsubscribe_headers


async def test_a_suppression_never_rewrites_an_erased_contact(client, admin, seeded, db):
    r = await client.post("/api/v2/contacts/ingest", headers=admin,
                          json={"contacts": [{"tenant_id": 1, "email": "gone@example.com"}]})
    contact_id = r.json()["results"][0]["id"]
    assert (await client.delete(f"/api/v2/contacts/1/{contact_id}", headers=admin)).status_code in (200, 204)
    r = await client.post("/api/v2/suppressions", headers=admin, json={
        "tenant_id": 1, "emails": ["gone@example.com"], "reason": "complaint", "source": "fbl"})
    assert r.status_code < 300, r.text
    assert await db.fetchval("SELECT status::text FROM contacts WHERE id = $1", contact_id) == "erased"


def test_a_mailto_with_or_without_its_scheme_is_one_uri() -> None:
    for mailto in ("unsubscribe@sos-expat.example", "mailto:unsubscribe@sos-expat.example"):
        headers = list_unsubscribe_headers("https://engine.example/", "tok", mailto)
        assert headers["List-Unsubscribe"] == \
            "<https://engine.example/u/tok>, <mailto:unsubscribe@sos-expat.example>"


async def test_a_page_stops_at_its_limit(db) -> None:
    tenant_id = await db.fetchval("INSERT INTO tenants (slug, name) VALUES ('pages', 'Pages') RETURNING id")
    await suppression.add_suppressions(db, tenant_id, ["a@example.com", "b@example.com", "c@example.com"],
                                       reason="manual")
    first = await suppression.list_suppressions(db, tenant_id, limit=2)
    assert [s.value for s in first.items] == ["a@example.com", "b@example.com"]
    assert first.next_cursor == str(first.items[-1].id)
    rest = await suppression.list_suppressions(db, tenant_id, cursor=first.next_cursor, limit=2)
    assert ([s.value for s in rest.items], rest.next_cursor) == (["c@example.com"], None)


def test_an_unknown_reason_names_its_field_and_the_known_ones() -> None:
    with pytest.raises(Invalid) as refused:
        suppression.parse_reason("dislike")
    assert refused.value.field == "reason"
    assert refused.value.message == ("reason: expected one of unsubscribe, hard_bounce, complaint, manual, erased, "
                                     "got 'dislike'")


def _signed(payload: bytes) -> str:
    """A token over any payload, with this secret's valid MAC (what only a format change could produce)."""
    return f"{unsubscribe._b64(payload)}.{unsubscribe._b64(unsubscribe._mac('k', payload))}"


def test_a_token_with_our_mac_is_still_refused_when_malformed() -> None:
    ok = bytes((unsubscribe.VERSION, 1, 5, 0, 0)) + b"a@example.com"
    assert unsubscribe.read_token("k", _signed(ok)) == unsubscribe.UnsubscribeToken(tenant_id=5, email="a@example.com")
    too_long = bytes((unsubscribe.VERSION, 1, 5, 0, 0)) + b"a" * 400 + b"@example.com"
    refused = {
        "too long": too_long,
        "another version": bytes((unsubscribe.VERSION + 1, 1, 5, 0, 0)) + b"a@example.com",
        "truncated varint": bytes((unsubscribe.VERSION, 1, 5, 0x80)),
        "endless varint": bytes((unsubscribe.VERSION, 1)) + b"\x80" * 11 + b"\x01",
        "no tenant": bytes((unsubscribe.VERSION, 1, 0, 0, 0)) + b"a@example.com",
        "no address": bytes((unsubscribe.VERSION, 1, 5, 0, 0)),
        "unknown language": bytes((unsubscribe.VERSION, len(unsubscribe.LANGUAGE_CODES), 5, 0, 0)) + b"a@example.com",
    }
    for why, payload in refused.items():
        assert unsubscribe.read_token("k", _signed(payload)) is None, why
    assert unsubscribe.read_token("k", unsubscribe.make_token("k", tenant_id=0, email="a@example.com")) is None


def test_every_token_reads_back_as_made() -> None:
    # ids of one to three varint bytes, every language
    for i in range(300):
        email, language = f"user{i}@example.com", unsubscribe.LANGUAGE_CODES[i % len(unsubscribe.LANGUAGE_CODES)]
        token = unsubscribe.make_token("k", tenant_id=i + 1, email=email, contact_id=i * 997, campaign_id=i * 31,
                                       language=language)
        assert unsubscribe.read_token("k", token) == unsubscribe.UnsubscribeToken(
            tenant_id=i + 1, email=email, contact_id=i * 997, campaign_id=i * 31, language=language), token
    bare = unsubscribe.read_token("k", unsubscribe.make_token("k", tenant_id=1, email="a@example.com"))
    assert bare is not None and (bare.contact_id, bare.campaign_id) == (0, 0)
    with pytest.raises(Invalid) as refused:
        unsubscribe.make_token("k", tenant_id=1, email="not an address")
    assert refused.value.field == "email" and refused.value.message == \
        "email: cannot make an unsubscribe token for 'not an address'"
