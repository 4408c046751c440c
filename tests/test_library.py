"""The template library: every file's shape and copy rules, idempotent seeding, listing by category and step."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.languages import LANGUAGES
from engine.library import (
    DEFAULT_ROOT,
    LIBRARY_VARIABLES,
    STEPS,
    LibraryError,
    bare_links,
    copy_html,
    library_files,
    library_templates,
    load_file,
)
from engine.rendering import check_template, template_variables
from engine.seed import TENANTS, seed
from tests.conftest import tenant_key
from tests.library_cases import SAMPLE_ROOT, library_paths, loaded

PATHS = library_paths()


def test_the_library_directory_is_not_empty_once_it_exists():
    if DEFAULT_ROOT.exists():
        assert library_files(DEFAULT_ROOT), f"{DEFAULT_ROOT} exists but holds no <tenant>/<category>.toml"
    assert PATHS, "no library file at all: the checks would run on nothing"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_file_has_every_language_and_step_and_follows_the_copy_rules(path: Path):
    file = loaded(path)
    assert file.tenant in {t.slug for t in TENANTS}
    assert set(file.messages) == LANGUAGES and all(tuple(s) == STEPS for s in file.messages.values())
    for lang, steps in file.messages.items():
        for step, message in steps.items():
            where = f"{file.tenant}/{file.category} [{lang}.{step}]"
            assert len(bare_links(message.body)) <= 1, f"{where}: more than one link"
            assert "\n" not in message.subject and len(message.subject) <= 120, where
            used = template_variables(message.subject, message.body)
            assert used <= set(LIBRARY_VARIABLES), f"{where}: undocumented variables {used - set(LIBRARY_VARIABLES)}"
            # The sign-off block names the sender: no more "Best regards," with nothing after it.
            assert "{{ sender_name }}" in message.body.strip().split("\n\n")[-1], f"{where}: no signature"
    for template in library_templates(file):
        assert check_template(template.subject, template.body_html) == []


def test_copy_becomes_paragraphs_with_the_signature_lines_kept_and_one_link():
    html = copy_html("Hello {{ first_name }},\n\nLine one\nstill one & <more>.\nSee {{ sender_website }}\n\n"
                     "Regards,\n{{ sender_name }}\n")
    assert html == ('<p>Hello {{ first_name }},</p><p>Line one still one &amp; &lt;more&gt;. See '
                    '<a href="{{ sender_website }}">{{ sender_website }}</a></p><p>Regards,<br>{{ sender_name }}</p>')


def test_an_incomplete_file_is_refused_naming_what_is_missing(tmp_path: Path):
    source = (SAMPLE_ROOT / "sos-expat" / "avocat.toml").read_text(encoding="utf-8")
    broken = tmp_path / "sos-expat" / "avocat.toml"
    broken.parent.mkdir()
    broken.write_text(source.replace("[ar.follow_up_2]", "[ar.follow_up_3]"), encoding="utf-8")
    with pytest.raises(LibraryError, match=r"\[ar\] must have exactly opening, follow_up_1, follow_up_2"):
        load_file(broken)
    broken.write_text(source.replace('category = "avocat"', 'category = "notary"'), encoding="utf-8")
    with pytest.raises(LibraryError, match="expected the file's name"):
        load_file(broken)


async def test_seed_loads_the_library_idempotently_and_lists_it_by_category_and_step(db, client, admin):
    assert await seed(db, library_root=SAMPLE_ROOT) == [1, 2]
    count = await db.fetchval("SELECT count(*) FROM email_templates")
    # SOS-Expat has the sample's 27 messages on top of the ten starters; Ulixai only the starters.
    assert count == 20 + 27
    # A tenant's edit survives a second run, and nothing is added twice.
    await db.execute("UPDATE email_templates SET subject = 'edited' WHERE tenant_id = 1 AND name = "
                     "'Lawyers - opening - FR'")
    assert await seed(db, library_root=SAMPLE_ROOT) == [1, 2]
    assert await db.fetchval("SELECT count(*) FROM email_templates") == count
    assert await db.fetchval("SELECT subject FROM email_templates WHERE name = 'Lawyers - opening - FR'") == "edited"
    versions = await db.fetchval("SELECT count(*) FROM email_template_versions v JOIN email_templates t "
                                 "ON t.id = v.template_id WHERE t.category = 'avocat' AND t.step IS NOT NULL")
    assert versions == 27

    r = await client.get("/api/v2/templates/1/library?category=avocat", headers=admin)
    assert r.status_code == 200, r.text
    groups = r.json()
    library = [g for g in groups if g["step"] is not None]
    assert [g["step"] for g in library] == list(STEPS)
    assert all(g["category"] == "avocat" and {t["language"] for t in g["templates"]} == LANGUAGES for g in library)
    assert all(t["layout"] == "personal" for g in library for t in g["templates"])
    r = await client.get("/api/v2/templates/1?category=avocat&step=follow_up_2&language=ar", headers=admin)
    items = r.json()["items"]
    assert len(items) == 1 and items[0]["name"] == "Lawyers - follow-up 2 - AR" and items[0]["preheader"]
    assert (await client.get("/api/v2/templates/1?step=third", headers=admin)).status_code == 400
    # Another tenant's key sees none of it.
    other = await tenant_key(client, admin, 2)
    assert (await client.get("/api/v2/templates/1/library", headers=other)).status_code == 404
    r = await client.get("/api/v2/templates/2/library?category=avocat", headers=other)
    assert r.status_code == 200 and r.json() == [g for g in r.json() if g["step"] is None]


async def test_the_seed_gives_each_tenant_a_sender_identity_that_previews_show(db, client, admin, seeded):
    r = await client.get("/api/v2/tenants/2/sender", headers=admin)
    assert r.json() == {"sender_name": "Thomas Laurent", "sender_company": "Ulixai",
                        "sender_address": "8 avenue de l'Exemple, 69002 Lyon, France",
                        "sender_website": "https://ulixai.example"}
    fr = await db.fetchval("SELECT id FROM email_templates WHERE tenant_id = 2 AND name = 'Introduction - FR'")
    r = await client.get(f"/api/v2/templates/2/{fr}/preview", headers=admin)
    assert "Thomas Laurent" in r.text and "8 avenue de l&#39;Exemple" in r.text


async def test_preheader_and_title_are_settable_and_make_a_new_version(client, admin, seeded):
    r = await client.post("/api/v2/templates", headers=admin, json={
        "tenant_id": 1, "name": "With preheader", "language": "en", "subject": "Hello <{{ company }}>",
        "body_html": "<p>Hi {{ first_name }},</p>", "preheader": "  Two lines\nabout you  "})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["layout"] == "personal" and made["preheader"] == "Two lines about you" and made["title"] is None
    render = {"tenant_id": 1, "template_id": made["id"], "variables": {"first_name": "Jane", "company": "A&B"}}
    html = (await client.post("/api/v2/templates/render", headers=admin, json=render)).json()["html"]
    # The title defaults to the rendered subject, escaped like any value.
    assert "<title>Hello &lt;A&amp;B&gt;</title>" in html and ">Two lines about you</div>" in html
    r = await client.put(f"/api/v2/templates/1/{made['id']}", headers=admin,
                         json={"title": "A note for you", "layout": "branded"})
    assert r.json()["version"] == 2 and r.json()["layout"] == "branded"
    html = (await client.post("/api/v2/templates/render", headers=admin, json=render)).json()["html"]
    assert "<title>A note for you</title>" in html and 'class="container"' in html
    old = (await client.post("/api/v2/templates/render", headers=admin, json={**render, "version": 1})).json()
    assert "<title>Hello &lt;A&amp;B&gt;</title>" in old["html"] and 'class="container"' not in old["html"]
    r = await client.post("/api/v2/templates", headers=admin, json={
        "tenant_id": 1, "name": "x", "language": "en", "subject": "s", "body_html": "<p>x</p>", "layout": "fancy"})
    assert r.status_code == 400 and r.json()["field"] == "layout"


async def test_the_migration_fixes_the_seeds_avocat_starter_where_it_is_unchanged(db):
    import sql
    from engine.starters import starter_templates

    old = "<p>Bonjour {firstName},</p><p>Votre cabinet {company} pourrait bénéficier...</p>"
    await db.execute("INSERT INTO tenants (slug, name) VALUES ('t1', 'T1'), ('t2', 'T2')")
    for tenant, body in ((1, old), (2, old + "<p>edited</p>")):
        await db.execute("WITH t AS (INSERT INTO email_templates (tenant_id, name, language, category, subject, "
                         "body_html) VALUES ($1, 'Cold - Avocat FR', 'fr', 'avocat', 's', $2) RETURNING *) "
                         "INSERT INTO email_template_versions (template_id, version, language, subject, body_html) "
                         "SELECT id, 1, language, subject, body_html FROM t", tenant, body)
    migration = next(m for m in sql.migrations() if m.version == 20).sql
    await db.execute(migration[migration.index("WITH fixed AS ("):])
    starter = next(s for s in starter_templates() if s.name == "Cold - Avocat FR")
    rows = await db.fetch("SELECT tenant_id, version, body_html, variables FROM email_templates ORDER BY tenant_id")
    assert rows[0]["version"] == 2 and rows[0]["body_html"] == starter.body_html
    assert rows[0]["variables"] == list(starter.variables)
    assert rows[1]["version"] == 1 and rows[1]["body_html"].endswith("<p>edited</p>")  # a tenant's edit is kept
    assert await db.fetchval("SELECT count(*) FROM email_template_versions") == 3
