"""CSV imports: multipart and raw uploads, BOM, `;`, quoted newlines, broken lines reported by number."""

from __future__ import annotations

import asyncio
import codecs
import json
import os

import asyncpg
import msgspec
import pytest
from arq import Retry
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from engine import db as dbm
from engine import imports
from tests.conftest import SECRET_KEY, tenant_key
from tests.dnsserver import DnsServer
from workers import contacts as contact_jobs
from workers.main import create_worker


@pytest.fixture
async def sos(client, admin, seeded) -> dict[str, str]:
    return await tenant_key(client, admin, seeded[0])


async def run_worker(settings) -> None:
    # validation runs in the same burst: its DNS is a loopback server that knows no domain
    async with DnsServer({}) as dns:
        local = msgspec.structs.replace(settings, dns_servers=(dns.address,))
        worker = create_worker(local, secret_key=SECRET_KEY, burst=True, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()


async def progress(client, headers, import_id: int) -> dict:
    r = await client.get(f"/api/v2/imports/{import_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_multipart_with_bom_semicolons_quoted_newlines_and_broken_lines(client, sos, settings, db) -> None:
    text = ("email;first_name;company;siret\n"
            "ann@example.fr;Ann;\"Cabinet\nAnn\";123\n"
            "broken@example.fr;Too;Many;Fields;Here\n"
            "not-an-email;Bob;B;456\n"
            "carl@example.fr;Carl;\"C; and co\";789\n"
            "\n"
            "ann@example.fr;Ann;\"Cabinet\nAnn\";123\n")
    files = {"file": ("contacts.csv", b"\xef\xbb\xbf" + text.encode(), "text/csv")}
    data = {"tags": "import-a, Lang FR", "language": "fr-FR", "data_source_id": "3"}
    r = await client.post("/api/v2/contacts/import", files=files, data=data, headers=sos)
    assert r.status_code == 202, r.text
    import_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    await run_worker(settings)
    got = await progress(client, sos, import_id)
    p = got["progress"]
    assert p["status"] == "done", p
    assert (p["rows_read"], p["created"], p["unchanged"], p["rejected"]) == (5, 2, 1, 2)
    assert [(x["line"], x["reason"].split(":")[0]) for x in got["rejects"]] == [(4, "expected 4 fields, found 5"),
                                                                                  (5, "email")]
    row = await db.fetchrow("SELECT * FROM contacts WHERE email = 'ann@example.fr'")
    assert row["company"] == "Cabinet\nAnn" and row["custom"] == {"siret": "123"} and row["language"] == "fr"
    assert row["data_source_id"] == 3
    tags = [r["slug"] for r in await db.fetch(
        "SELECT t.slug FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id WHERE ct.contact_id = $1 ORDER BY 1", row["id"])]
    assert tags == ["import-a", "lang-fr"]
    assert await db.fetchval("SELECT company FROM contacts WHERE email = 'carl@example.fr'") == "C; and co"
    # validation was queued per batch and ran in the same burst
    assert await db.fetchval("SELECT count(*) FROM contact_events WHERE kind IN ('validated', 'validation_deferred')") == 2
    assert not list((settings.home / "imports").iterdir())  # the upload is gone once imported


async def test_raw_csv_stream_with_mapping_and_unterminated_quote(client, sos, settings, db) -> None:
    text = "Mail,Prénom,Note\r\nx@example.fr,Xavier,hello\r\ny@example.fr,\"Yves,oops\r\n"
    mapping = json.dumps({"email": "Mail", "first_name": "Prénom", "custom.note": "Note"})
    r = await client.post("/api/v2/contacts/import", params={"mapping": mapping}, content=text.encode(),
                          headers={**sos, "content-type": "text/csv"})
    assert r.status_code == 202, r.text
    await run_worker(settings)
    got = await progress(client, sos, r.json()["id"])
    assert got["progress"]["created"] == 1 and got["progress"]["rejected"] == 1
    assert got["rejects"][0]["line"] == 3 and "malformed CSV" in got["rejects"][0]["reason"]
    assert await db.fetchval("SELECT custom FROM contacts WHERE email = 'x@example.fr'") == {"note": "hello"}


async def test_import_bad_options_and_isolation(client, admin, sos, settings) -> None:
    csv_headers = {**sos, "content-type": "text/csv"}
    r = await client.post("/api/v2/contacts/import", content=b"", headers=csv_headers)
    assert r.status_code == 400 and r.json()["field"] == "file"
    r = await client.post("/api/v2/contacts/import", params={"mapping": "{bad"}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 400 and r.json()["field"] == "mapping"
    r = await client.post("/api/v2/contacts/import", params={"mapping": '{"mail": "x"}'}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 400 and "mapping.mail" in r.text
    r = await client.post("/api/v2/contacts/import", params={"data_source_id": 5}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 400 and r.json()["field"] == "data_source_id"
    r = await client.post("/api/v2/contacts/import", params={"tenant_id": 2}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 404
    r = await client.post("/api/v2/contacts/import", content=b"email\na@b.fr\n",
                          headers={**admin, "content-type": "text/csv"})
    assert r.status_code == 400 and r.json()["field"] == "tenant_id"
    r = await client.post("/api/v2/contacts/import", params={"tenant_id": 2}, content=b"email\na@b.fr\n",
                          headers={**admin, "content-type": "text/csv"})
    assert r.status_code == 202
    ulixai_import = r.json()["id"]
    assert (await client.get(f"/api/v2/imports/{ulixai_import}", headers=sos)).status_code == 404
    assert len(list((settings.home / "imports").iterdir())) == 1  # refused uploads left nothing behind


async def test_file_without_email_column_fails_the_import_with_a_reason(client, sos, settings) -> None:
    r = await client.post("/api/v2/contacts/import", content=b"name\nann\n", headers={**sos, "content-type": "text/csv"})
    await run_worker(settings)
    p = (await progress(client, sos, r.json()["id"]))["progress"]
    assert p["status"] == "failed" and "email" in p["error"]


async def test_erasure_scrubs_rejected_lines_and_a_reimport_keeps_no_text(client, sos, settings, db) -> None:
    text = ("email,first_name\n"
            "Dora@Example.fr,Dora\n"
            "dora@example.fr,Dora,extra field\n"       # rejected, its text names Dora
            "eve@example.fr,Eve,extra field\n")        # rejected, names someone else
    r = await client.post("/api/v2/contacts/import", content=text.encode(),
                          headers={**sos, "content-type": "text/csv"})
    await run_worker(settings)
    raws = {x["line"]: x["raw"] for x in (await progress(client, sos, r.json()["id"]))["rejects"]}
    assert "dora@example.fr" in raws[3] and "eve@example.fr" in raws[4]
    dora = await db.fetchval("SELECT id FROM contacts WHERE email = 'dora@example.fr'")
    assert (await client.delete(f"/api/v2/contacts/1/{dora}", headers=sos)).status_code == 204
    raws = {x["line"]: x["raw"] for x in (await progress(client, sos, r.json()["id"]))["rejects"]}
    assert raws == {3: None, 4: "eve@example.fr,Eve,extra field"}
    # importing the erased address again: refused, reported by line number and reason, its text not kept
    r = await client.post("/api/v2/contacts/import", content=b"email,first_name\nDORA@example.fr,Dora\n",
                          headers={**sos, "content-type": "text/csv"})
    await run_worker(settings)
    got = await progress(client, sos, r.json()["id"])
    assert [(x["line"], x["reason"].split(":")[0], x["raw"]) for x in got["rejects"]] == [(2, "erased", None)]
    assert await db.fetchval("SELECT count(*) FROM import_rejects WHERE raw ILIKE '%dora%'") == 0


async def test_a_store_fault_mid_import_is_retried_and_resumes(client, sos, settings, db, database_url,
                                                               monkeypatch) -> None:
    text = "email\n" + "".join(f"p{i}@example.fr\n" for i in range(10))
    r = await client.post("/api/v2/contacts/import", content=text.encode(), headers={**sos, "content-type": "text/csv"})
    import_id = r.json()["id"]
    monkeypatch.setattr(imports, "BATCH", 4)
    real, calls = imports.contacts.write_batch, 0

    async def restarting(*args, **kwargs):   # PostgreSQL restarts while the second batch is written
        nonlocal calls
        calls += 1
        if calls == 2:
            raise asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")
        return await real(*args, **kwargs)

    monkeypatch.setattr(imports.contacts, "write_batch", restarting)
    pool = await dbm.create_pool(database_url, min_size=1, max_size=2)
    arq = ArqRedis(ConnectionPool.from_url(settings.redis_url), default_queue_name=settings.queue_name)
    ctx = {"pool": pool, "redis": arq, "settings": settings, "job_try": 1}
    try:
        with pytest.raises(Retry):   # arq runs the job again later, not "failed"
            await contact_jobs.import_contacts(ctx, import_id)
        p = (await progress(client, sos, import_id))["progress"]
        assert (p["status"], p["rows_read"], p["created"]) == ("running", 4, 4)
        ctx["job_try"] = 2
        await contact_jobs.import_contacts(ctx, import_id)   # the retry resumes after the committed batch
    finally:
        await arq.aclose()
        await pool.close()
    p = (await progress(client, sos, import_id))["progress"]
    assert (p["status"], p["rows_read"], p["created"], p["rejected"]) == ("done", 10, 10, 0)
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE email LIKE 'p%@example.fr'") == 10


async def test_an_unreadable_upload_fails_the_import_with_a_reason(client, sos, settings, db) -> None:
    r = await client.post("/api/v2/contacts/import", content=b"email\na@example.fr\n",
                          headers={**sos, "content-type": "text/csv"})
    import_id = r.json()["id"]
    path = await db.fetchval("SELECT file_path FROM imports WHERE id = $1", import_id)
    os.unlink(path)
    await run_worker(settings)
    p = (await progress(client, sos, import_id))["progress"]
    assert p["status"] == "failed" and p["error"].startswith("upload unreadable")


async def test_utf16_tabs_and_french_headers_are_detected_and_shown(client, sos, settings, db) -> None:
    text = "Courriel\tPrénom\tSociété\tÉtiquettes\r\nzoé@example.fr\tZoé\tCafé Zoé\tsalon, vip\r\n"
    r = await client.post("/api/v2/contacts/import", content=codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
                          headers={**sos, "content-type": "text/csv"})
    assert r.status_code == 202, r.text
    assert (r.json()["encoding"], r.json()["delimiter"]) == ("utf-16", "\t")
    await run_worker(settings)
    p = (await progress(client, sos, r.json()["id"]))["progress"]
    assert (p["status"], p["created"], p["rejected"]) == ("done", 1, 0), p
    row = await db.fetchrow("SELECT id, first_name, company FROM contacts WHERE email = 'zoé@example.fr'")
    assert (row["first_name"], row["company"]) == ("Zoé", "Café Zoé")
    assert await db.fetchval("SELECT array_agg(t.slug ORDER BY t.slug) FROM contact_tags ct JOIN tags t "
                             "ON t.id = ct.tag_id WHERE ct.contact_id = $1", row["id"]) == ["salon", "vip"]


async def test_windows_1252_pipes_given_as_parameters_and_a_multipart_mapping(client, sos, settings, db) -> None:
    text = "Correo|Nombre|Empresa\r\nines@example.es|Inés|Peña “Hermanos”\r\n"
    r = await client.post("/api/v2/contacts/import", params={"encoding": "windows-1252", "delimiter": "|"},
                          content=text.encode("cp1252"), headers={**sos, "content-type": "text/csv"})
    assert r.status_code == 202, r.text
    assert (r.json()["encoding"], r.json()["delimiter"]) == ("cp1252", "|")
    # multipart: the options as form fields, a mapping naming columns the spellings would not guess
    files = {"file": ("x.csv", "Adresse;Qui\na@example.be;Anaïs\n".encode("latin-1"), "text/csv")}
    data = {"encoding": "latin-1", "mapping": json.dumps({"email": "Adresse", "first_name": "Qui"})}
    r2 = await client.post("/api/v2/contacts/import", files=files, data=data, headers=sos)
    assert r2.status_code == 202, r2.text
    assert (r2.json()["encoding"], r2.json()["delimiter"]) == ("iso8859-1", ";")
    await run_worker(settings)
    assert await db.fetchval("SELECT company FROM contacts WHERE email = 'ines@example.es'") == "Peña “Hermanos”"
    assert await db.fetchval("SELECT first_name FROM contacts WHERE email = 'a@example.be'") == "Anaïs"


async def test_bad_encoding_or_delimiter_is_a_400_naming_it(client, sos, settings) -> None:
    csv_headers = {**sos, "content-type": "text/csv"}
    r = await client.post("/api/v2/contacts/import", params={"encoding": "ebcdic-klingon"}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 400 and r.json()["field"] == "encoding"
    r = await client.post("/api/v2/contacts/import", params={"delimiter": "#"}, content=b"email\na@b.fr\n",
                          headers=csv_headers)
    assert r.status_code == 400 and r.json()["field"] == "delimiter"
    assert not list((settings.home / "imports").iterdir())


async def test_a_batch_larger_than_the_file_and_resume_after_the_last_committed_batch(client, sos, settings, db,
                                                                                      database_url,
                                                                                      monkeypatch) -> None:
    # a worker killed after two committed batches: the next run reads on from the third, nothing twice
    text = "email;first_name\n" + "".join(f"r{i}@example.fr;R{i}\n" for i in range(25))
    r = await client.post("/api/v2/contacts/import", content=text.encode(), headers={**sos, "content-type": "text/csv"})
    import_id = r.json()["id"]
    monkeypatch.setattr(imports, "BATCH", 10)
    real, calls = imports.contacts.write_batch, 0

    async def killed(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await real(*args, **kwargs)

    monkeypatch.setattr(imports.contacts, "write_batch", killed)
    pool = await dbm.create_pool(database_url, min_size=1, max_size=2)
    try:
        with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
            await imports.run_import(pool, import_id, on_batch=_no_validation)
        p = (await progress(client, sos, import_id))["progress"]
        assert (p["status"], p["rows_read"], p["created"]) == ("running", 20, 20)
        await imports.run_import(pool, import_id, on_batch=_no_validation)
    finally:
        await pool.close()
    p = (await progress(client, sos, import_id))["progress"]
    assert (p["status"], p["rows_read"], p["created"], p["updated"], p["unchanged"]) == ("done", 25, 25, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM contact_events WHERE kind = 'created'") == 25


async def _no_validation(tenant_id: int, ids: list[int]) -> None:
    return None


async def test_the_same_address_and_new_tags_in_batches_written_side_by_side(client, sos, settings, db,
                                                                           database_url, monkeypatch) -> None:
    # batches of 3 go through the database two at a time: an address in two neighbouring batches, and a tag
    # first seen in both, must neither deadlock nor be counted twice
    lines = ["a@example.fr;Ann;t1", "b@example.fr;Bob;t1", "c@example.fr;Cy;t2",
             "a@example.fr;Anna;t3", "d@example.fr;Di;t3", "c@example.fr;Cy;t2",
             "e@example.fr;Ed;t4", "a@example.fr;Anna;t4", "f@example.fr;Fa;t3"]
    text = "email;first_name;tags\n" + "\n".join(lines) + "\n"
    r = await client.post("/api/v2/contacts/import", content=text.encode(), headers={**sos, "content-type": "text/csv"})
    monkeypatch.setattr(imports, "BATCH", 3)
    pool = await dbm.create_pool(database_url, min_size=1, max_size=4)
    try:
        await asyncio.wait_for(imports.run_import(pool, r.json()["id"], on_batch=_no_validation), 60)
    finally:
        await pool.close()
    p = (await progress(client, sos, r.json()["id"]))["progress"]
    # a: created, then updated (new name, new tag), then updated (new tag); c: created, then unchanged
    assert (p["status"], p["rows_read"], p["created"], p["updated"], p["unchanged"], p["rejected"]) == \
        ("done", 9, 6, 2, 1, 0)
    row = await db.fetchrow("SELECT id, first_name FROM contacts WHERE email = 'a@example.fr'")
    assert row["first_name"] == "Anna"
    assert await db.fetchval("SELECT array_agg(t.slug ORDER BY t.slug) FROM contact_tags ct JOIN tags t "
                             "ON t.id = ct.tag_id WHERE ct.contact_id = $1", row["id"]) == ["t1", "t3", "t4"]
    assert await db.fetchval("SELECT count(*) FROM tags WHERE slug IN ('t1', 't2', 't3', 't4')") == 4
