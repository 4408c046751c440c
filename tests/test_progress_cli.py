"""`email-engine import` and `campaign watch` against a live engine: the bar follows the job, the end is its figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from pathlib import Path

import httpx
import msgspec
import pytest

from api.app import create_app
from api.cli import _Server
from api.progress_cli import Bar, count_lines
from engine.sending.dispatch import Tuning
from tests.campaign_helpers import use_ips
from tests.conftest import ADMIN_KEY, SECRET_KEY
from tests.dnsserver import DnsServer
from tests.smtpserver import SmtpTestServer
from workers.main import create_worker

ROOT = Path(__file__).resolve().parent.parent
BAR = re.compile(r"^\[[#.]{30}\] +\d+% [\d,]+/[\d,]+ rows  [\d,]+ rejects  [\d,]+ rows/s  ETA [\d:-]+$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def engine(settings, seeded):
    """The API on a loopback port and a worker (sending to an SMTP server standing in for PowerMTA), both in
    this test's event loop; yields the API's URL."""
    async with DnsServer({}) as dns, SmtpTestServer() as smtp:
        local = msgspec.structs.replace(settings, http_port=_free_port(), dns_servers=(dns.address,),
                                        pmta_host=smtp.host, pmta_port=smtp.port, pmta_pool_size=4)
        server = _Server(create_app(local, admin_key=ADMIN_KEY, secret_key=SECRET_KEY), local)
        worker = create_worker(local, secret_key=SECRET_KEY, handle_signals=False,
                               ctx={"dispatch_tuning": Tuning(batch=200, chunk=32, idle=0.05, max_wait=0.5,
                                                              recover_every=1.0)})
        tasks = [asyncio.create_task(server.run()), asyncio.create_task(worker.async_run())]
        try:
            while not server.server.started:
                assert not tasks[0].done(), tasks[0]
                await asyncio.sleep(0.05)
            yield f"http://127.0.0.1:{local.http_port}", local
        finally:
            server.stop()
            await asyncio.wait_for(tasks[0], 10)
            tasks[1].cancel()
            await asyncio.gather(tasks[1], return_exceptions=True)
            await worker.close()


async def _cli(url: str, home: Path, *argv: str) -> tuple[int, str, str]:
    env = {**os.environ, "EMAIL_ENGINE_URL": url, "EMAIL_ENGINE_API_KEY": ADMIN_KEY, "EMAIL_ENGINE_HOME": str(home)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "api.cli", *argv, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def _csv(path: Path, rows: int, *, bad_every: int) -> int:
    """A CSV of `rows` contacts, one in `bad_every` with an address that is not one; the number of bad rows."""
    bad = 0
    with path.open("w") as f:
        f.write("email,first_name,company\n")
        for i in range(rows):
            if i % bad_every == 7:
                f.write(f"not-an-address-{i},N{i},Bad\n")
                bad += 1
            else:
                f.write(f"person{i}@firm{i % 97}.example,P{i},Firm {i % 97}\n")
    return bad


@pytest.mark.slow
async def test_import_of_100000_rows_shows_its_bar_and_ends_with_the_jobs_figures(engine, db, tmp_path) -> None:
    url, local = engine
    path = tmp_path / "contacts.csv"
    bad = _csv(path, 100_000, bad_every=1000)
    code, out, err = await _cli(url, tmp_path, "import", str(path), "--tenant", "1", "--tags", "salon-2026,cli")
    assert code == 0, err
    print(err)   # shown with -s: what a person at the terminal sees
    job = await db.fetchrow("SELECT * FROM imports ORDER BY id DESC LIMIT 1")
    assert (job["status"], job["rows_read"], job["rejected"], job["created"]) == ("done", 100_000, bad, 100_000 - bad)
    lines = err.strip().splitlines()
    bars = [line for line in lines if line.startswith("[")]
    assert len(bars) >= 2 and all(BAR.match(b) for b in bars), bars
    # the bar moved with the job and ends full, at the job's own count
    counts = [int(re.search(r"([\d,]+)/", b).group(1).replace(",", "")) for b in bars]
    assert counts == sorted(counts) and counts[-1] == 100_000
    assert bars[-1].startswith("[" + "#" * 30 + "] 100% 100,000/100,000 rows  100 rejects")
    assert lines[-2] == (f"import {job['id']} done: 100,000 rows read, {100_000 - bad:,} created, 0 updated, "
                         f"0 unchanged, {bad} rejected")
    assert out == ""
    tagged = await db.fetchval("SELECT count(*) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id "
                               "WHERE t.slug = 'cli'")
    assert tagged == 100_000 - bad


async def test_import_json_prints_only_the_figures_and_campaign_watch_follows(engine, db, tmp_path) -> None:
    url, local = engine
    path = tmp_path / "small.csv"
    bad = _csv(path, 30, bad_every=10)
    code, out, err = await _cli(url, tmp_path, "import", str(path), "--tenant", "2", "--json")
    assert code == 0, err
    figures = json.loads(out)
    job = await db.fetchrow("SELECT * FROM imports WHERE id = $1", figures["id"])
    assert figures["tenant_id"] == 2 and figures["status"] == "done"
    assert {k: figures[k] for k in ("rows_read", "created", "rejected")} == {
        "rows_read": job["rows_read"], "created": job["created"], "rejected": job["rejected"]} == {
        "rows_read": 30, "created": 30 - bad, "rejected": bad}
    assert err == ""
    # a draft is not sending: watch prints its figures at once
    cid = await db.fetchval("INSERT INTO campaigns (tenant_id, name, from_name, from_email) "
                            "VALUES (2, 'watch me', 'U', 'hi@ulixai-mail-01.example') RETURNING id")
    code, out, err = await _cli(url, tmp_path, "campaign", "watch", "2", str(cid), "--json")
    assert code == 0, err
    assert json.loads(out) | {"by_ip": {}, "by_language": {}} == {
        "id": cid, "tenant_id": 2, "status": "draft", "total": 0, "by_status": json.loads(out)["by_status"],
        "by_ip": {}, "by_language": {}}
    code, out, err = await _cli(url, tmp_path, "campaign", "watch", "1", str(cid))
    assert code == 1 and "404" in err            # the admin asked for tenant 1: it is tenant 2's
    code, out, err = await _cli(url, tmp_path, "import", str(tmp_path / "missing.csv"), "--tenant", "1")
    assert code == 1 and "no such file" in err


async def test_campaign_watch_follows_a_sending_campaign_to_its_end(engine, db, tmp_path) -> None:
    url, local = engine
    path = tmp_path / "audience.csv"
    _csv(path, 1500, bad_every=10_000)
    code, out, err = await _cli(url, tmp_path, "import", str(path), "--tenant", "1", "--tags", "watch", "--json")
    assert code == 0, err
    # the worker validates the new contacts (its DNS knows none of their domains); once it is done, an
    # operator marks them valid by hand, as the README's walk-through does
    for _ in range(600):
        if not await db.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = 1 AND status = 'pending'"):
            break
        await asyncio.sleep(0.1)
    await db.execute("UPDATE contacts SET status = 'valid' WHERE tenant_id = 1")
    await use_ips(db, 1, [1, 2])
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=admin) as api:
        r = await api.post("/api/v2/campaigns", json={
            "tenant_id": 1, "name": "watched", "from_name": "SOS-Expat", "from_email": "hello@sos-expat-mail-01.example",
            "audience": {"tags": ["watch"]}})
        cid = r.json()["id"]
        assert (await api.post(f"/api/v2/campaigns/1/{cid}/start")).status_code == 200
    code, out, err = await _cli(url, tmp_path, "campaign", "watch", "1", str(cid))
    assert code == 0, err
    print(err)
    figures = dict(await db.fetch("SELECT status::text, count(*) FROM sends WHERE campaign_id = $1 GROUP BY 1", cid))
    assert figures == {"injected": 1499}
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", cid) == "completed"
    lines = err.strip().splitlines()
    assert lines[-1] == f"campaign {cid} completed: 1,499 recipients (1,499 injected)"
    assert re.match(r"^\[#{30}\] 100% 1,499/1,499 messages  completed injected 1,499 failed 0 skipped 0  ", lines[-2])


def test_bar_rate_eta_and_line_count(tmp_path) -> None:
    import io

    now = [100.0]
    out = io.StringIO()
    bar = Bar(out, "rows", 1000, clock=lambda: now[0])
    assert bar.render(50, "").endswith("0 rows/s  ETA --:--")
    now[0] = 102.0
    assert bar.render(300, "3 rejects") == (f"[{'#' * 9}{'.' * 21}]  30% 300/1,000 rows  3 rejects  125 rows/s  "
                                            "ETA 0:06")
    (tmp_path / "a.csv").write_bytes(b"h\n1\n2")
    assert count_lines(tmp_path / "a.csv") == 3
