"""Templates through the API and the engine: the seed's curl, the fallback chain, versions, cache, security."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from engine import templates
from engine.languages import LANGUAGES
from engine.library import load_library
from engine.rendering import MAX_BODY_BYTES, TemplateCache
from engine.templates import TemplateBook, TemplateCreate, load_template_book
from tests.conftest import tenant_key

SEED_CURL = {"tenant_id": 1, "name": "Cold - Avocat FR", "language": "fr", "category": "avocat",
             "subject": "Développez votre cabinet avec SOS Expat",
             "body_html": "<p>Bonjour {firstName},</p><p>Votre cabinet {company} pourrait bénéficier...</p>",
             "variables": ["firstName", "company", "website"]}

INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% import 'x.html' as x %}",
    "{{ firstName.__class__ }}",
    "{{ x['__globals__'] }}",
    "{{ x|attr('__class__') }}",
    "{{ self.__init__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{% include 'x' %}",
    "{{ firstName|safe }}",
]


def body(**changes) -> dict:
    return {**SEED_CURL, **changes}


async def create(client, headers, **changes) -> dict:
    r = await client.post("/api/v2/templates", json=body(**changes), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def clear_tenant(db, tenant_id: int) -> None:
    """Start a fallback test from no templates at all (the seed loads the starters)."""
    await db.execute("UPDATE email_templates SET active = false WHERE tenant_id = $1", tenant_id)


async def starters_only(db) -> None:
    """Leave the seed's ten starters alone in tenant 1's list (the library's messages set aside)."""
    await db.execute("UPDATE email_templates SET deleted_at = now() WHERE step IS NOT NULL")


async def select(client, headers, language, category=None):
    return await client.post("/api/v2/templates/select",
                             json={"tenant_id": 1, "language": language, "category": category}, headers=headers)


# --- the seed's curl and rendering --------------------------------------------------------------------------

async def test_seed_curl_payload_creates_and_renders(client, admin, seeded) -> None:
    created = await create(client, admin)
    assert created["name"] == "Cold - Avocat FR" and created["version"] == 1 and created["active"] is True
    assert created["variables"] == ["firstName", "company", "website"] and created["body_text"] is None
    r = await client.post("/api/v2/templates/render", headers=admin, json={
        "tenant_id": 1, "template_id": created["id"], "variables": {"firstName": "Zoé", "company": "Martin & Fils"}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["subject"] == "Développez votre cabinet avec SOS Expat"
    assert "Bonjour Zoé," in out["html"] and "Votre cabinet Martin &amp; Fils pourrait" in out["html"]
    assert out["text"].startswith("Bonjour Zoé,\n\nVotre cabinet Martin & Fils pourrait bénéficier...")
    assert "http://engine.test/u/preview" in out["text"] and '<html lang="fr" dir="ltr">' in out["html"]
    assert (out["template_id"], out["version"], out["language"]) == (created["id"], 1, "fr")
    # Posting it again is not a conflict: names are not unique, the newest wins selection.
    again = await create(client, admin)
    r = await select(client, admin, "fr", "avocat")
    assert r.status_code == 200 and r.json()["id"] == again["id"] and r.json()["matched"] == "language+category"


async def test_missing_variable_is_422_naming_it(client, admin, seeded) -> None:
    created = await create(client, admin)
    r = await client.post("/api/v2/templates/render", headers=admin, json={
        "tenant_id": 1, "template_id": created["id"], "variables": {"firstName": "Zoé"}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "company" and "company" in r.json()["detail"]


async def test_render_for_a_contact_and_contact_isolation(client, admin, seeded, db) -> None:
    created = await create(client, admin, body_html="<p>Bonjour {firstName} ({city}),</p>",
                           variables=["firstName", "city"])
    ids = {}
    for tenant_id in (1, 2):
        ids[tenant_id] = await db.fetchval(
            "INSERT INTO contacts (tenant_id, email, email_hash, first_name, company, custom) "
            "VALUES ($1, $2, sha256(convert_to($2::text, 'UTF8')), 'Zoé', 'Cabinet Z', $3) RETURNING id",
            tenant_id, f"zoe{tenant_id}@cabinet.example", {"city": "Lyon"})
    r = await client.post("/api/v2/templates/render", headers=admin,
                          json={"tenant_id": 1, "template_id": created["id"], "contact_id": ids[1]})
    assert r.status_code == 200, r.text
    assert "Bonjour Zoé (Lyon)," in r.json()["html"], r.json()["html"][-1200:]
    r = await client.post("/api/v2/templates/render", headers=admin,
                          json={"tenant_id": 1, "template_id": created["id"], "contact_id": ids[2]})
    assert r.status_code == 404 and r.json()["field"] == "contact_id"
    r = await client.get(f"/api/v2/templates/1/{created['id']}/preview?contact_id={ids[1]}", headers=admin)
    assert r.status_code == 200 and "Bonjour Zoé (Lyon)," in r.text


# --- the fallback chain -----------------------------------------------------------------------------------

async def test_each_rung_of_the_fallback(client, admin, seeded, db) -> None:
    await clear_tenant(db, 1)
    en_general = await create(client, admin, name="en general", language="en", category=None)
    r = await select(client, admin, "de", "avocat")
    assert r.status_code == 200 and (r.json()["id"], r.json()["matched"]) == (en_general["id"], "en")
    en_cat = await create(client, admin, name="en avocat", language="en", category="avocat")
    r = await select(client, admin, "de", "avocat")
    assert (r.json()["id"], r.json()["matched"]) == (en_cat["id"], "en+category")
    de_general = await create(client, admin, name="de general", language="de", category=None)
    r = await select(client, admin, "de", "avocat")
    assert (r.json()["id"], r.json()["matched"]) == (de_general["id"], "language")
    de_cat = await create(client, admin, name="de avocat", language="de", category="Avocat ")
    assert de_cat["category"] == "avocat"
    r = await select(client, admin, "de-AT", "AVOCAT")
    assert (r.json()["id"], r.json()["matched"]) == (de_cat["id"], "language+category")
    # No category: general templates only; an unknown language is English.
    r = await select(client, admin, "de", None)
    assert (r.json()["id"], r.json()["matched"]) == (de_general["id"], "language")
    r = await select(client, admin, "xx", "avocat")
    assert (r.json()["id"], r.json()["matched"]) == (en_cat["id"], "en+category")
    # An inactive template is skipped.
    r = await client.put(f"/api/v2/templates/1/{de_cat['id']}", json={"active": False}, headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 1
    r = await select(client, admin, "de", "avocat")
    assert r.json()["matched"] == "language"
    # The in-memory book makes the same choices as the query.
    book = await load_template_book(db, 1)
    for language, category in (("de", "avocat"), ("de", None), ("xx", "avocat"), ("ru", None), ("de", "x")):
        expected = (await templates.select_template(db, 1, language, category))
        chosen = book.select(language, category)
        assert chosen is not None and (chosen[0].id, chosen[1]) == (expected[0].id, expected[1])


async def test_nothing_matches_is_404_saying_what(client, admin, seeded, db) -> None:
    await clear_tenant(db, 1)
    await create(client, admin, name="fr only", language="fr", category="avocat")
    r = await select(client, admin, "ru", "notaire")
    assert r.status_code == 404
    assert "'ru'" in r.json()["detail"] and "'notaire'" in r.json()["detail"]
    assert r.json()["extra"] == {"language": "ru", "category": "notaire"}


async def test_template_book_overrides_and_compiled(seeded, db) -> None:
    book = await load_template_book(db, 1)
    # the ten starters and the library's 27 messages per category file of SOS-Expat
    assert len(book) == 10 + 27 * len(load_library(tenant="sos-expat"))
    ar = book.choose("ar-EG", None)
    assert ar is not None and ar.language == "ar"
    avocat = book.choose("fr", "avocat")
    assert avocat is not None and avocat.name == "Cold - Avocat FR"
    # A campaign's choice for a language beats the chain; for other languages the chain still decides.
    assert book.choose("fr", "avocat", {"fr": ar.id}) is ar
    assert book.choose("de", "avocat", {"fr": ar.id}).language == "de"
    assert book.choose("fr", None, {"fr": 10**9}).language == "fr"  # unknown or dead override: the chain
    cache = TemplateCache()
    own = TemplateBook(1, list(book.by_id.values()), cache=cache)
    assert own.compiled(avocat) is own.compiled(avocat) and cache.compiles == 1
    assert TemplateBook(1, []).choose("fr", "avocat") is None


# --- versions and the cache -------------------------------------------------------------------------------

async def test_update_keeps_previous_version_and_render_uses_new(client, admin, seeded, db) -> None:
    created = await create(client, admin)
    url = f"/api/v2/templates/1/{created['id']}"
    render = {"tenant_id": 1, "template_id": created["id"], "variables": {"firstName": "Zoé", "company": "Z"}}
    first = (await client.post("/api/v2/templates/render", json=render, headers=admin)).json()
    assert first["version"] == 1 and "Bonjour Zoé" in first["html"]
    r = await client.put(url, json={"body_html": "<p>Salut {firstName} de {company}</p>"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["subject"] == SEED_CURL["subject"]
    second = (await client.post("/api/v2/templates/render", json=render, headers=admin)).json()
    assert second["version"] == 2 and "Salut Zoé de Z" in second["html"] and "Bonjour" not in second["html"]
    # The version a send used stays renderable.
    old = (await client.post("/api/v2/templates/render", json={**render, "version": 1}, headers=admin)).json()
    assert old["version"] == 1 and "Bonjour Zoé" in old["html"]
    r = await client.get(url + "/versions", headers=admin)
    assert [v["version"] for v in r.json()] == [2, 1]
    assert r.json()[1]["body_html"] == SEED_CURL["body_html"]
    v1 = await templates.get_template_version(db, 1, created["id"], 1)
    assert v1.body_html == SEED_CURL["body_html"]
    # A change that does not alter what renders keeps the version.
    r = await client.put(url, json={"name": "Renamed"}, headers=admin)
    assert r.json()["version"] == 2 and r.json()["name"] == "Renamed"


async def test_update_invalidates_the_cache_in_other_processes(redis_url, namespace, seeded, db) -> None:
    # The cache is keyed by (id, version): a fresh book can only compile the new version; the published
    # message additionally frees the old entries in every listening process.
    cache = TemplateCache()
    book = TemplateBook(1, list((await load_template_book(db, 1)).by_id.values()), cache=cache)
    tpl = book.choose("fr", "avocat")
    book.compiled(tpl)
    key = (templates.cache_key(tpl), ("email", "fr", tpl.layout))
    assert cache.lookup(key) is not None
    listener_client, publisher = Redis.from_url(redis_url), Redis.from_url(redis_url)
    ready = asyncio.Event()
    task = asyncio.create_task(templates.follow_invalidations(listener_client, namespace, cache, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await templates.publish_invalidation(publisher, namespace, tpl.id)
        for _ in range(200):
            if cache.lookup(key) is None:
                break
            await asyncio.sleep(0.01)
        assert cache.lookup(key) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await listener_client.aclose()
        await publisher.aclose()
    await templates.update_template(db, 1, tpl.id, templates.TemplateUpdate(subject="Nouveau {firstName}"))
    fresh = (await load_template_book(db, 1)).by_id[tpl.id]
    assert fresh.version == tpl.version + 1
    assert book.compiled(fresh) is not book.compiled(tpl)


# --- security and limits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", INJECTIONS)
async def test_injection_is_refused_with_422_at_save(client, admin, seeded, db, payload) -> None:
    before = await db.fetchval("SELECT count(*) FROM email_templates")
    r = await client.post("/api/v2/templates", json=body(body_html=f"<p>{payload}</p>"), headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "body_html"
    r = await client.post("/api/v2/templates", json=body(subject=f"Hi {payload}"), headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "subject"
    assert await db.fetchval("SELECT count(*) FROM email_templates") == before


async def test_injection_refused_on_update_and_harmless_at_render(client, admin, seeded) -> None:
    created = await create(client, admin)
    r = await client.put(f"/api/v2/templates/1/{created['id']}", headers=admin,
                         json={"body_html": "{{ cycler.__init__.__globals__ }}"})
    assert r.status_code == 422 and r.json()["field"] == "body_html"
    # Hostile values are data: escaped in HTML, never evaluated.
    r = await client.post("/api/v2/templates/render", headers=admin, json={
        "tenant_id": 1, "template_id": created["id"],
        "variables": {"firstName": "{{ ''.__class__ }}<script>", "company": "{% import 'x' %}"}})
    assert r.status_code == 200
    html = r.json()["html"]
    assert "{{ &#39;&#39;.__class__ }}&lt;script&gt;" in html and "<script>" not in html and "<class" not in html


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: victim@example.test", "Hello\nX", "Hello\rX"])
async def test_line_breaks_in_subject_are_refused(client, admin, seeded, subject) -> None:
    r = await client.post("/api/v2/templates", json=body(subject=subject), headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "subject"


async def test_size_caps_and_bad_fields(client, admin, seeded) -> None:
    big = "<p>" + "x" * MAX_BODY_BYTES + "</p>"
    r = await client.post("/api/v2/templates", json=body(body_html=big), headers=admin)
    assert r.status_code == 413 and r.json()["field"] == "body_html"
    r = await client.post("/api/v2/templates", json=body(subject="x" * 1000), headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "subject"
    r = await client.post("/api/v2/templates", json=body(language="it"), headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "language"
    r = await client.post("/api/v2/templates", json=body(colour="red"), headers=admin)
    assert r.status_code == 400
    r = await client.post("/api/v2/templates", json=body(body_html="<p>{% if x %}</p>"), headers=admin)
    assert r.status_code == 422 and r.json()["field"] == "body_html"
    r = await client.post("/api/v2/templates", json=body(body_html="<p>{frist_name}</p>"), headers=admin)
    assert r.status_code == 422 and r.json()["extra"]["variable"] == "frist_name"
    r = await client.post("/api/v2/templates", json=body(tenant_id=999), headers=admin)
    assert r.status_code == 404
    r = await client.get("/api/v2/templates/1?cursor=abc", headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "cursor"


# --- tenants ----------------------------------------------------------------------------------------------

async def test_tenant_isolation(client, admin, seeded, db) -> None:
    own = await tenant_key(client, admin, 1)
    other = await create(client, admin, tenant_id=2)
    before = await db.fetchval("SELECT count(*) FROM email_templates")
    assert (await client.post("/api/v2/templates", json=body(tenant_id=2), headers=own)).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM email_templates") == before
    for path in (f"/api/v2/templates/1/{other['id']}", f"/api/v2/templates/2/{other['id']}",
                 f"/api/v2/templates/1/{other['id']}/preview", f"/api/v2/templates/1/{other['id']}/versions",
                 "/api/v2/templates/2"):
        assert (await client.get(path, headers=own)).status_code == 404, path
    assert (await client.put(f"/api/v2/templates/1/{other['id']}", json={"name": "x"}, headers=own)).status_code == 404
    assert (await client.delete(f"/api/v2/templates/1/{other['id']}", headers=own)).status_code == 404
    r = await client.post("/api/v2/templates/render", headers=own, json={
        "tenant_id": 1, "template_id": other["id"], "variables": {"firstName": "a", "company": "b"}})
    assert r.status_code == 404
    r = await client.post("/api/v2/templates/select", headers=own, json={"tenant_id": 2, "language": "fr"})
    assert r.status_code == 404
    assert (await client.get(f"/api/v2/templates/2/{other['id']}", headers=admin)).json()["name"] == other["name"]
    await starters_only(db)
    page = (await client.get("/api/v2/templates/1?limit=200", headers=own)).json()
    assert other["id"] not in {t["id"] for t in page["items"]} and len(page["items"]) == 10


async def test_list_filters_pages_and_delete(client, admin, seeded, db) -> None:
    await starters_only(db)
    r = await client.get("/api/v2/templates/1?limit=4", headers=admin)
    first = r.json()
    assert len(first["items"]) == 4 and first["next_cursor"] == str(first["items"][-1]["id"])
    rest = (await client.get(f"/api/v2/templates/1?limit=200&cursor={first['next_cursor']}", headers=admin)).json()
    assert len(rest["items"]) == 6 and rest["next_cursor"] is None
    fr = (await client.get("/api/v2/templates/1?language=fr", headers=admin)).json()["items"]
    assert sorted(t["name"] for t in fr) == ["Cold - Avocat FR", "Introduction - FR"]
    avocat = (await client.get("/api/v2/templates/1?category=avocat", headers=admin)).json()["items"]
    assert [t["name"] for t in avocat] == ["Cold - Avocat FR"]
    target = avocat[0]["id"]
    assert (await client.delete(f"/api/v2/templates/1/{target}", headers=admin)).status_code == 204
    assert (await client.get(f"/api/v2/templates/1/{target}", headers=admin)).status_code == 404
    assert (await client.delete(f"/api/v2/templates/1/{target}", headers=admin)).status_code == 404
    r = await select(client, admin, "fr", "avocat")
    assert r.json()["matched"] == "language"


# --- preview and the seed ---------------------------------------------------------------------------------

async def test_preview_is_an_html_page_with_lang_and_dir(client, admin, seeded, db) -> None:
    ar = await db.fetchval("SELECT id FROM email_templates WHERE tenant_id = 1 AND language = 'ar'")
    r = await client.get(f"/api/v2/templates/1/{ar}/preview", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<html lang="ar" dir="rtl">' in r.text and "Camille" in r.text
    # The tenant's sender identity signs and fills the footer, as in a campaign.
    assert "http://engine.test/u/preview" in r.text and "Claire Martin" in r.text and "12 rue de l" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    fr = await create(client, admin)
    r = await client.get(f"/api/v2/templates/1/{fr['id']}/preview", headers=admin)
    assert '<html lang="fr" dir="ltr">' in r.text and "Bonjour Camille," in r.text


async def test_seed_loads_starters_for_both_tenants(db) -> None:
    from engine.seed import seed

    await seed(db)
    await seed(db)
    for tenant_id in (1, 2):
        rows = await db.fetch("SELECT name, language, category, version FROM email_templates WHERE tenant_id = $1"
                              " AND step IS NULL", tenant_id)
        assert len(rows) == 10
        library = 27 * len(load_library(tenant=("sos-expat", "ulixai")[tenant_id - 1]))
        assert await db.fetchval("SELECT count(*) FROM email_templates WHERE tenant_id = $1 AND step IS NOT NULL",
                                 tenant_id) == library
        assert {r["language"] for r in rows if r["category"] is None} == LANGUAGES
        assert [(r["name"], r["language"]) for r in rows if r["category"]] == [("Cold - Avocat FR", "fr")]
        assert all(r["version"] == 1 for r in rows)
    assert await db.fetchval("SELECT count(*) FROM email_template_versions") == 20 + 27 * len(load_library())


async def test_every_starter_renders_for_a_contact(seeded, db) -> None:
    await starters_only(db)   # the library's messages have their own checks (tests/test_library*.py)
    book = await load_template_book(db, 1)
    assert book.sender["sender_name"] == "Claire Martin"  # the seed's identity, which every message carries
    for tpl in book.by_id.values():
        out = templates.render_compiled(tpl, templates.render_context(
            {"first_name": "Zoé", "company": "Z & Co"}, None, "https://engine.test/u/t", book.sender))
        assert "Zoé" in out.subject + out.html and out.text.rstrip().endswith("https://engine.test/u/t")
        assert "Claire Martin" in out.text


def test_create_payload_decodes_the_seed_curl() -> None:
    import msgspec

    data = msgspec.convert(SEED_CURL, TemplateCreate)
    assert data.category == "avocat" and data.body_text is None and data.active is True


async def test_worker_hooks_follow_invalidations(redis, settings) -> None:
    from engine.rendering import DEFAULT_CACHE
    from workers import templates as worker_templates

    ctx = {"redis_client": redis, "settings": settings}
    await worker_templates.on_startup(ctx)
    try:
        key = ((987654321, 1, 0), ("email", "en"))
        DEFAULT_CACHE.store(key, templates.compiled_version(templates.TemplateVersion(
            template_id=987654321, version=1, language="en", subject="s", body_html="<p>b</p>", body_text=None,
            variables=[], created_at=templates.dt.datetime.now(templates.dt.UTC))))
        await templates.publish_invalidation(redis, settings.redis_namespace, 987654321)
        for _ in range(200):
            if DEFAULT_CACHE.lookup(key) is None:
                break
            await asyncio.sleep(0.01)
        assert DEFAULT_CACHE.lookup(key) is None
    finally:
        await worker_templates.on_shutdown(ctx)
    assert "template_invalidations" not in ctx


async def test_the_chain_picks_one_off_templates_then_openings_never_follow_ups(client, admin, seeded, db) -> None:
    book = await load_template_book(db, 1)
    for language in LANGUAGES:
        for category in ("avocat", "expatrie", "partenaire"):
            chosen = book.choose(language, category)
            assert chosen is not None and chosen.step in (None, "opening"), (language, category, chosen.name)
            r = await select(client, admin, language, category)
            assert r.status_code == 200 and r.json()["id"] == chosen.id, (language, category, r.text)
    # a one-off template beats the library's opening on its rung
    assert book.choose("fr", "avocat").name == "Cold - Avocat FR"
    assert book.choose("de", "avocat").step == "opening"
