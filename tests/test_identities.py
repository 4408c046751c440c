"""Sender identity: a tenant's, a campaign's overrides, refused input, and what sent messages show."""

from __future__ import annotations

import email
import email.policy

import msgspec
import pytest

from engine.settings import SettingsError, load_settings, public_url_warning
from tests.campaign_helpers import add_contacts, mark_valid, running_worker, use_ips, wait_for_status
from tests.conftest import tenant_key
from tests.smtpserver import SmtpTestServer
from tests.test_campaign_send import FAST

IDENTITY = {"sender_name": "Léa Moreau", "sender_company": "SOS-Expat SAS",
            "sender_address": "3 place de l'Exemple, 33000 Bordeaux, France", "sender_website": "https://sos-expat.example"}


async def test_tenant_identity_is_set_whole_and_checked(client, admin, seeded):
    r = await client.put("/api/v2/tenants/1/sender", headers=admin, json=IDENTITY)
    assert r.status_code == 200 and r.json() == IDENTITY
    assert (await client.get("/api/v2/tenants/1/sender", headers=admin)).json() == IDENTITY
    for field, value in (("sender_website", "http://sos-expat.example"), ("sender_website", "/relative"),
                         ("sender_address", "1 rue\r\nBcc: x@example.com")):
        r = await client.put("/api/v2/tenants/1/sender", headers=admin, json={**IDENTITY, field: value})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    r = await client.put("/api/v2/tenants/1/sender", headers=admin, json={**IDENTITY, "logo": "x"})
    assert r.status_code == 400
    assert (await client.get("/api/v2/tenants/1/sender", headers=admin)).json() == IDENTITY  # nothing half-written
    other = await tenant_key(client, admin, 2)
    assert (await client.get("/api/v2/tenants/1/sender", headers=other)).status_code == 404
    assert (await client.put("/api/v2/tenants/1/sender", headers=other, json=IDENTITY)).status_code == 404


async def test_campaign_overrides_show_in_every_message_sent(client, admin, seeded, db, settings):
    await add_contacts(client, admin, 6, language_cycle=["fr", "ar"])
    await mark_valid(db)
    await use_ips(db, 1, [1])
    r = await client.post("/api/v2/campaigns", headers=admin, json={
        "tenant_id": 1, "name": "Identity", "from_name": "Léa", "from_email": "hello@sos-expat-mail-01.example",
        "category": "avocat", "audience": {"tags": ["campaign-test"]}})
    campaign_id = r.json()["id"]
    r = await client.put(f"/api/v2/campaigns/1/{campaign_id}/sender", headers=admin,
                         json={"sender_name": "Léa Moreau", "sender_address": IDENTITY["sender_address"]})
    assert r.status_code == 200 and r.json()["sender_company"] is None
    other = await tenant_key(client, admin, 2)
    assert (await client.get(f"/api/v2/campaigns/1/{campaign_id}/sender", headers=other)).status_code == 404
    async with SmtpTestServer() as server:
        tuned = msgspec.structs.replace(settings, pmta_host=server.host, pmta_port=server.port, pmta_pool_size=2)
        async with running_worker(tuned, dispatch_tuning=FAST):
            assert (await client.post(f"/api/v2/campaigns/1/{campaign_id}/start", headers=admin)).status_code == 200
            await wait_for_status(db, campaign_id, "completed")
        received = list(server.messages)
    assert len(received) == 6
    for m in received:
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        assert "X-Envelope-Id" not in msg and msg["x-envid"].isdigit()
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        # The campaign's name and address; the tenant's company (the seed's), as no override was given.
        for part in (html, text):
            assert "Léa Moreau" in part and "SOS-Expat" in part
        assert "3 place de l&#39;Exemple" in html and "3 place de l'Exemple" in text
        assert "12 rue de l" not in text


def test_public_url_over_http_is_refused_outside_local_use_and_warned_about_inside():
    with pytest.raises(SettingsError, match="must be https://"):
        load_settings({"EMAIL_ENGINE_PUBLIC_URL": "http://engine.example.com"})
    local = load_settings({"EMAIL_ENGINE_PUBLIC_URL": "http://127.0.0.1:8000"})
    assert "RFC 8058" in public_url_warning(local)
    assert public_url_warning(load_settings({})) is not None  # the default is a local http URL
    assert public_url_warning(load_settings({"EMAIL_ENGINE_PUBLIC_URL": "https://engine.example.com"})) is None
