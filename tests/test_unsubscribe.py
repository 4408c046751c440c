"""Unsubscribe tokens (round trip, forgery, address binding) and the public /u/{token} page and one-click POST."""

from __future__ import annotations

import base64
import re

import pytest

from engine.errors import Invalid
from engine.unsubscribe import (
    LANGUAGE_CODES,
    list_unsubscribe_headers,
    make_token,
    read_token,
    unsubscribe_url,
)
from tests.conftest import SECRET_KEY

ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}


def token_for(email: str, tenant_id: int = 1, **kwargs) -> str:
    return make_token(SECRET_KEY, tenant_id=tenant_id, email=email, **kwargs)


def test_round_trip_and_length() -> None:
    token = token_for("Jean.Dupont@Example.FR", contact_id=123_456, campaign_id=42, language="pt_BR")
    read = read_token(SECRET_KEY, token)
    assert read is not None
    assert (read.tenant_id, read.email, read.contact_id, read.campaign_id, read.language) == (
        1, "jean.dupont@example.fr", 123_456, 42, "pt")
    assert len(token) <= 80 and re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    # ids beyond 32 bits and unknown languages survive too
    big = read_token(SECRET_KEY, token_for("a@example.com", tenant_id=2**40, contact_id=2**62, language="xx"))
    assert big is not None and (big.tenant_id, big.contact_id, big.language) == (2**40, 2**62, "en")
    assert LANGUAGE_CODES[-1] == "ar"   # the byte order is part of the format: append only


def test_unusable_address_is_refused() -> None:
    with pytest.raises(Invalid):
        token_for("not an address")


def _swap_payload(token: str, new_email: str) -> str:
    body, mac = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    forged = payload.replace(b"a@example.com", new_email.encode())
    return base64.urlsafe_b64encode(forged).rstrip(b"=").decode() + "." + mac


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),      # MAC changed
    lambda t: ("B" if t[0] != "B" else "C") + t[1:],        # payload changed
    lambda t: t.split(".")[0],                              # no MAC
    lambda t: t + ".x",                                     # extra part
    lambda t: t.replace(".", ".="),                         # not the alphabet
    lambda t: "",
    lambda t: "a" * 1000 + "." + "b",
    lambda t: _swap_payload(t, "b@example.com"),            # another address, same MAC
])
def test_tampered_tokens_are_refused(mangle) -> None:
    assert read_token(SECRET_KEY, mangle(token_for("a@example.com"))) is None


def test_other_secret_refuses() -> None:
    assert read_token("another-secret-key-0123456789abcdef", token_for("a@example.com")) is None


def test_headers_for_the_message_builder() -> None:
    token = token_for("a@example.com")
    url = unsubscribe_url("https://engine.example/", token)
    assert url == f"https://engine.example/u/{token}"
    assert list_unsubscribe_headers("https://engine.example", token) == {
        "List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    both = list_unsubscribe_headers("https://engine.example", token, mailto="unsub@engine.example")
    assert both["List-Unsubscribe"] == f"<{url}>, <mailto:unsub@engine.example>"


async def suppressed(db, email: str, tenant_id: int = 1) -> list[tuple[str, str]]:
    rows = await db.fetch("SELECT reason::text, source FROM suppressions WHERE tenant_id = $1 AND value = $2",
                          tenant_id, email)
    return [tuple(r) for r in rows]


async def test_one_click_post_suppresses_at_once_and_is_idempotent(client, seeded, db) -> None:
    token = token_for("Leaving@Example.com", campaign_id=7, language="fr")
    for _ in range(2):
        r = await client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
    assert await suppressed(db, "leaving@example.com") == [("unsubscribe", "one-click")]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_token_for_one_address_cannot_unsubscribe_another(client, seeded, db) -> None:
    forged = _swap_payload(token_for("a@example.com"), "b@example.com")
    r = await client.post(f"/u/{forged}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status_code == 404
    assert (await client.get(f"/u/{forged}")).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_forged_or_orphan_tokens_write_nothing(client, seeded, db) -> None:
    for token in ("garbage", "AAAA.BBBB", token_for("a@example.com")[:-2] + "zz",
                  token_for("a@example.com", tenant_id=999)):   # signed, but no such tenant
        r = await client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
        assert r.status_code == 404, token
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_get_shows_the_page_in_the_contacts_language_and_does_not_unsubscribe(client, seeded, db) -> None:
    token = token_for("lecteur@example.fr", language="fr")
    r = await client.get(f"/u/{token}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<html lang="fr" dir="ltr">' in page and "Me désinscrire" in page
    assert "lecteur@example.fr" in page and f'<form method="post" action="{token}">' in page
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    # link checkers probe with HEAD: the same status, no page, nothing written
    r = await client.head(f"/u/{token}")
    assert r.status_code == 200 and r.content == b"" and r.headers["cache-control"] == "no-store"
    assert (await client.head(f"/u/{token[:-2]}zz")).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    # the page's button posts an empty form: unsubscribed, and told so in French
    r = await client.post(f"/u/{token}", content=b"", headers=ONE_CLICK)
    assert r.status_code == 200 and "Désinscription confirmée" in r.text and 'lang="fr"' in r.text
    assert await suppressed(db, "lecteur@example.fr") == [("unsubscribe", "unsubscribe-page")]


@pytest.mark.parametrize(("language", "words"), [
    ("en", "Unsubscribe me"), ("es", "Darme de baja"), ("de", "Jetzt abmelden"), ("pt", "Cancelar a minha"),
    ("ru", "Отписаться"), ("zh", "确认退订"), ("hi", "सदस्यता छोड़ें"), ("ar", "إلغاء اشتراكي"),
])
async def test_every_language_has_its_page(client, language: str, words: str) -> None:
    r = await client.get(f"/u/{token_for('x@example.com', language=language)}")
    assert r.status_code == 200 and words in r.text
    direction = "rtl" if language == "ar" else "ltr"
    assert f'<html lang="{language}" dir="{direction}">' in r.text


async def test_arabic_page_is_right_to_left_with_the_address_isolated(client) -> None:
    r = await client.get(f"/u/{token_for('x@example.com', language='ar')}")
    assert 'dir="rtl"' in r.text and "<bdi>x@example.com</bdi>" in r.text


async def test_unsubscribe_marks_the_contact(client, admin, seeded, db) -> None:
    from tests.conftest import tenant_key

    sos = await tenant_key(client, admin, 1)
    r = await client.post("/api/v2/contacts/ingest", headers=sos, json={"contacts": [
        {"tenant_id": 1, "data_source_id": 1, "email": "reader@example.fr", "language": "fr"}]})
    contact_id = r.json()["results"][0]["id"]
    token = token_for("reader@example.fr", contact_id=contact_id, language="fr")
    r = await client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status_code == 200
    assert await db.fetchval("SELECT status::text FROM contacts WHERE id = $1", contact_id) == "unsubscribed"
    events = (await client.get(f"/api/v2/contacts/1/{contact_id}/events", headers=sos)).json()
    assert events[-1]["kind"] == "status_changed" and events[-1]["detail"]["source"] == "one-click"
    # the other tenant's list is untouched by tenant 1's token
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = 2") == 0


async def test_the_public_routes_need_no_key_and_the_api_still_does(client) -> None:
    assert (await client.get("/u/" + token_for("x@example.com"))).status_code == 200
    assert (await client.get("/api/v2/suppressions/1")).status_code == 401
