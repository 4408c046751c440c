"""Every library message in both layouts against the email-client data, SpamAssassin, size, links and
variables; a deliberately bad template gets a finding for each problem; the API's check endpoint.

Cost: the client check runs in one node process for all messages (about 5 s for 756), and SpamAssassin in one
more for all of them (about 50 ms of CPU a message on top of a 1 s start): every message in both layouts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.checks import FALLBACKS, SPAM_LIMIT, check_messages, client_support
from engine.languages import LANGUAGES
from engine.layout import Layout, build_email
from tests.conftest import tenant_key
from tests.library_cases import cases, message

ARTEFACTS = Path(__file__).parent / "artefacts" / "spam"
CASES = cases()


@pytest.fixture(scope="module")
async def reports():
    """One batch for everything: the client data and SpamAssassin over every message in both layouts."""
    messages = [message(c) for c in CASES]
    checked = await check_messages(messages, spam=False)
    scored = await check_messages(messages, clients=False)
    return list(zip(checked, scored, strict=True))


async def test_every_layout_feature_a_client_lacks_has_a_named_fallback():
    shells = [build_email("-", "", None, {}, language=lang, unsubscribe_url="https://engine.example/u/1",
                          layout=layout, sender={"sender_company": "SOS-Expat", "sender_address": "1 rue"}).html
              for layout in Layout for lang in sorted(LANGUAGES)]
    for errors, _ in await client_support(shells):
        features = {re.match(r"`(.+?)`", e).group(1) for e in errors}
        assert features <= set(FALLBACKS), f"no fallback named for {features - set(FALLBACKS)}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
async def test_library_message_passes_every_check(reports, index):
    checked, spam = reports[index]
    errors = [f for f in checked.findings if f.severity != "note"]
    assert errors == [], errors
    assert checked.html_bytes < 102 * 1024
    if spam is not None:
        if spam.spam_score is None or spam.spam_score >= SPAM_LIMIT:
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            (ARTEFACTS / (CASES[index].id.replace("/", "_") + ".txt")).write_text(spam.spam_report or repr(spam))
        assert spam.spam_score is not None and spam.spam_score < SPAM_LIMIT, spam.findings


BAD_SUBJECT = "FREE MONEY!!! ACT NOW, 100% GUARANTEED"
BAD_BODY = ('<style>.row { display: flex; gap: 8px; }</style><div class="row"><p>{{ first_name }}</p></div>'
            + "<p>" + "Une offre pensée pour votre cabinet. " * 4200 + "</p>")


async def test_a_deliberately_bad_template_gets_a_finding_for_each_problem():
    from engine.checks import build_check_message

    bad = build_check_message(subject=BAD_SUBJECT, body_html=BAD_BODY, body_text=None, variables=["first_name"],
                              language="fr", layout="branded", preheader=None, title=None,
                              context={"first_name": "Luc"}, sender={"sender_company": "SOS-Expat"})
    [report] = await check_messages([bad])
    assert not report.passed
    by_check = {f.check for f in report.findings if f.severity == "error"}
    assert by_check == {"clients", "size", "spam"}, report.findings
    assert any("display:flex" in f.message and f.client == "outlook.windows" for f in report.findings)
    assert report.html_bytes > 150_000 and report.spam_score >= SPAM_LIMIT and "GUARANTEED" in report.spam_report
    assert any(f.check == "spam" and f.field == "subject" and "SUBJ_ALL_CAPS" in f.message for f in report.findings)


async def test_a_missing_tool_is_a_warning_never_an_exception(tmp_path):
    [report] = await check_messages([message(CASES[0])], node_modules=tmp_path, spam=False)
    assert report.passed
    assert [f.message for f in report.findings] == [
        "not run: @jsx-email/doiuse-email is not installed (npm ci in tests/clients)"]


async def test_the_check_endpoint_returns_the_same_findings_for_a_users_template(client, admin, seeded):
    r = await client.post("/api/v2/templates", headers=admin, json={
        "tenant_id": 1, "name": "Bad", "language": "fr", "subject": BAD_SUBJECT, "body_html": BAD_BODY,
        "layout": "branded", "variables": ["first_name"]})
    assert r.status_code == 201, r.text
    bad = r.json()["id"]
    r = await client.post(f"/api/v2/templates/1/{bad}/check", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["passed"] is False and body["layout"] == "branded" and body["spam_score"] >= SPAM_LIMIT
    assert {f["check"] for f in body["findings"] if f["severity"] == "error"} == {"clients", "size", "spam"}
    # The same template in the personal layout: the same template problems, whatever the layout.
    r = await client.post(f"/api/v2/templates/1/{bad}/check?layout=personal", headers=admin)
    assert r.json()["layout"] == "personal" and {f["check"] for f in r.json()["findings"]
                                                 if f["severity"] == "error"} == {"clients", "size", "spam"}
    # A library-grade template passes.
    good = await client.post("/api/v2/templates", headers=admin, json={
        "tenant_id": 1, "name": "Good", "language": "en", "subject": "A question for {{ company }}",
        "body_html": "<p>Hi {{ first_name }},</p><p>Could we help your clients abroad?</p>"
                     "<p>Kind regards,<br>{{ sender_name }}</p>"})
    r = await client.post(f"/api/v2/templates/1/{good.json()['id']}/check", headers=admin)
    assert r.status_code == 200 and r.json()["passed"] is True, r.json()
    # Another tenant's key: 404, as for every other template route.
    other = await tenant_key(client, admin, 2)
    assert (await client.post(f"/api/v2/templates/1/{bad}/check", headers=other)).status_code == 404
    r = await client.post(f"/api/v2/templates/1/{bad}/check?layout=fancy", headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "layout"
