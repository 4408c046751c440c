"""The web dashboard in headless Chromium: every page renders its plots without a console error, the session
cookie never holds the key, the controls need their CSRF token, and a tenant key never sees another tenant."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import httpx
import msgspec
import pytest
from playwright.async_api import async_playwright

from api.app import create_app
from api.cli import _Server
from api.dashboard.session import COOKIE, Session, seal, unseal
from tests.conftest import ADMIN_KEY, SECRET_KEY

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTEFACTS = Path(__file__).parent / "artefacts" / "dashboard"
NOT_FOUND = "Failed to load resource: the server responded with a status of 404 (Not Found)"

ACTIVITY = """
INSERT INTO contacts (tenant_id, email, email_hash, status, language)
SELECT 1, 'r' || g || '@inbox.example', sha256(convert_to('r' || g || '@inbox.example', 'UTF8')), 'valid',
       (ARRAY['fr', 'en', 'de', 'ar'])[1 + g % 4]
FROM generate_series(1, 3000) g;
INSERT INTO sends (tenant_id, campaign_id, contact_id, status, language, ip_id, vmta, ip_assigned_at, complained_at)
SELECT 1, {campaign}, c.id,
       (CASE WHEN n % 10 = 0 THEN 'queued' WHEN n % 23 = 0 THEN 'bounced' WHEN n % 7 = 0 THEN 'injected'
             ELSE 'delivered' END)::send_status,
       c.language,
       CASE WHEN n % 10 = 0 THEN NULL ELSE ip.id END, CASE WHEN n % 10 = 0 THEN NULL ELSE ip.vmta_name END,
       CASE WHEN n % 10 = 0 THEN NULL ELSE now() - ((n % 30) || ' days')::interval END,
       CASE WHEN n % 97 = 0 THEN now() END
FROM (SELECT id, language, row_number() OVER (ORDER BY id) AS n FROM contacts
      WHERE tenant_id = 1 AND email LIKE 'r%@inbox.example') c
JOIN LATERAL (SELECT id, vmta_name FROM ips WHERE tenant_id = 1 ORDER BY id OFFSET c.n % 3 LIMIT 1) ip ON true;
UPDATE warmup_plans SET current_day = 1 + ip_id % 6 WHERE tenant_id = 1;
UPDATE ips SET status = 'paused', status_reason = 'listed on a blocklist' WHERE id = 3;
INSERT INTO quota_grants (scope, scope_id, day, granted)
SELECT 'ip', id, (now() AT TIME ZONE 'Europe/Paris')::date, 40 + id * 7 FROM ips WHERE tenant_id = 1;
INSERT INTO imports (tenant_id, status, file_path, file_bytes, rows_read, created, updated, unchanged, rejected,
                     started_at, finished_at)
VALUES (1, 'done', '/nonexistent/a.csv', 4000000, 100000, 97000, 1500, 1400, 100, now() - interval '2 minutes', now()),
       (1, 'running', '/nonexistent/b.csv', 800000, 5000, 4000, 500, 450, 50, now(), NULL);
INSERT INTO alert_events (tenant_id, kind, subject, detail)
VALUES (1, 'blocklist_listing', '192.0.2.13 listed on zen.spamhaus.example', '{"ip_id": 3}');
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def live(settings, seeded, db):
    """The engine on a loopback port with a campaign under way, an import, suppressions and audit rows."""
    local = msgspec.structs.replace(settings, http_port=_free_port())
    server = _Server(create_app(local, admin_key=ADMIN_KEY, secret_key=SECRET_KEY), local)
    task = asyncio.create_task(server.run())
    try:
        while not server.server.started:
            assert not task.done(), task
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{local.http_port}"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=admin) as api:
            r = await api.post("/api/v2/campaigns", json={
                "tenant_id": 1, "name": "Avocats - novembre", "from_name": "SOS-Expat",
                "from_email": "hello@sos-expat-mail-01.example", "category": "avocat"})
            assert r.status_code == 201, r.text
            campaign = r.json()["id"]
            await db.execute(ACTIVITY.replace("{campaign}", str(campaign)))
            await db.execute("UPDATE campaigns SET status = 'sending', started_at = now() WHERE id = $1", campaign)
            r = await api.post("/api/v2/suppressions", json={"tenant_id": 1, "reason": "complaint", "emails": [
                "angry@inbox.example", "spamtrap.example", "<script>alert(1)</script>@x.example"]})
            assert r.status_code == 200, r.text
            keys = {}
            for tenant in (1, 2):
                r = await api.post(f"/api/v2/tenants/{tenant}/api-keys", json={"name": "dashboard"})
                keys[tenant] = r.json()["key"]
        yield url, campaign, keys
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)


class Browser:
    """One Chromium; each context records console errors, page errors and failed loads."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.problems: list[str] = []

    async def context(self, base: str):
        ctx = await self.browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
        ctx.on("page", self._watch)
        return ctx

    def _watch(self, page) -> None:
        page.on("console", lambda m: m.type in ("error", "warning") and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))


def _have_chromium() -> None:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("headless Chromium not found at /usr/bin/chromium: run tests/system-deps.sh (as root)")


@pytest.fixture
async def chromium():
    _have_chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield Browser(browser)
        finally:
            await browser.close()


async def _login(ctx, key: str):
    page = await ctx.new_page()
    await page.goto("/dashboard")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()
    return page


async def _shot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


async def test_every_page_renders_its_plots_without_console_errors(live, chromium, db) -> None:
    url, campaign, keys = live
    ctx = await chromium.context(url)
    page = await _login(ctx, ADMIN_KEY)
    assert await page.title() == "Tenants · email-engine"
    assert await page.locator("tbody tr").count() == 2
    await _shot(page, "tenants")
    # the cookie: HttpOnly, SameSite=Strict, and neither the key nor anything readable in it
    (cookie,) = [c for c in await ctx.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert ADMIN_KEY not in cookie["value"] and "admin" not in cookie["value"]
    assert unseal(SECRET_KEY, cookie["value"]).admin

    await page.goto("/dashboard/1/ips")
    cards = page.locator("article.ip")
    assert await cards.count() == 50
    first = cards.first
    assert await first.locator("svg").count() == 3
    # the warmup curve has a point per day and marks today; the rate plot has 30 days for each of its two lines
    curve = await first.locator("svg.plot").first.locator("polyline").get_attribute("points")
    assert len(curve.split()) > 5 and await first.locator("svg.plot circle").count() == 1
    rates = first.locator("svg.plot").nth(1).locator("polyline")
    assert await rates.count() == 2 and len((await rates.first.get_attribute("points")).split()) == 30
    assert await first.locator("svg.meter rect").count() == 2
    assert await page.locator("#ip-3 .status").inner_text() == "paused"
    await page.screenshot(path=str(ARTEFACTS / "ips-top.png"))   # the first screen, as the README shows it
    await _shot(page, "ips")

    await page.goto("/dashboard/1/campaigns")
    row = page.locator("tbody tr").first
    assert "Avocats - novembre" in await row.inner_text()
    assert await row.locator("svg.meter rect").count() >= 4      # track + delivered, injected, bounced, queued
    assert "2,700 / 3,000" in await row.inner_text()
    await _shot(page, "campaigns")

    await page.goto(f"/dashboard/1/campaigns/{campaign}")
    assert await page.locator("figure svg").count() == 3
    languages = page.locator("svg[aria-label='send rows per language'] text")
    assert {"fr", "en", "de", "ar"} <= set(await languages.all_text_contents())
    vmtas = await page.locator("svg[aria-label='send rows per VMTA'] text").all_text_contents()
    assert sum(1 for t in vmtas if "vmta" in t) == 3
    await _shot(page, "campaign")

    await page.goto("/dashboard/1/imports")
    assert await page.locator("tbody tr").count() == 2
    assert await page.locator("tbody tr svg.meter").count() == 2
    await _shot(page, "imports")

    await page.goto("/dashboard/1/suppressions")
    text = await page.locator("tbody").inner_text()
    assert "angry@inbox.example" in text and "spamtrap.example" in text
    assert await page.locator("script").count() == 0           # the odd entry is text, not markup
    await _shot(page, "suppressions")

    await page.goto("/dashboard/1/alerts")
    assert "192.0.2.13 listed on zen.spamhaus.example" in await page.locator("tbody").inner_text()
    await _shot(page, "alerts")

    await page.goto("/dashboard/1/audit")
    actions = await page.locator("tbody tr td:nth-child(3)").all_inner_texts()
    assert {"createCampaign", "addSuppressions", "createApiKey"} <= set(actions)
    # the admin's login is in the log too, under no tenant (the admin's own view)
    assert await db.fetchval("SELECT actor FROM audit_log WHERE action = 'dashboardLogin'") == "admin"
    await _shot(page, "audit")
    await page.click("header button:has-text('Log out')")
    await page.wait_for_load_state()
    assert await page.locator("#key").count() == 1 and not [c for c in await ctx.cookies() if c["name"] == COOKIE]
    assert await db.fetchval("SELECT actor FROM audit_log WHERE action = 'dashboardLogout'") == "admin"
    assert chromium.problems == []


async def test_pause_and_resume_buttons_post_with_csrf_and_leave_audit_rows(live, chromium, db) -> None:
    url, campaign, keys = live
    ctx = await chromium.context(url)
    page = await _login(ctx, keys[1])
    assert page.url.endswith("/dashboard/1/ips")
    await page.goto(f"/dashboard/1/campaigns/{campaign}")
    await page.click("button:has-text('Pause')")
    await page.wait_for_load_state()
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign) == "paused"
    await page.click("button:has-text('Resume')")
    await page.wait_for_load_state()
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign) == "sending"
    await page.goto("/dashboard/1/ips")
    await page.locator("#ip-1 button:has-text('Pause')").click()
    await page.wait_for_load_state()
    assert await db.fetchval("SELECT status::text FROM ips WHERE id = 1") == "paused"
    assert await page.locator("#ip-1 .status").inner_text() == "paused"
    rows = await db.fetch("SELECT action, actor, key_id, target FROM audit_log WHERE action LIKE 'dashboard%Control' "
                          "ORDER BY id")
    key_id = await db.fetchval("SELECT max(id) FROM api_keys WHERE tenant_id = 1")
    assert [(r["action"], r["actor"], r["key_id"]) for r in rows] == [
        ("dashboardCampaignControl", "key", key_id)] * 2 + [("dashboardIpControl", "key", key_id)]
    assert rows[0]["target"] == {"tenant_id": 1, "campaign_id": campaign, "action": "pause"}
    # without the session's token (a form posted from elsewhere) nothing changes
    r = await ctx.request.post(f"/dashboard/1/campaigns/{campaign}/pause", form={"csrf": "forged"},
                               max_redirects=0)
    assert r.status == 403
    r = await ctx.request.post(f"/dashboard/1/campaigns/{campaign}/pause", max_redirects=0)
    assert r.status == 403
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign) == "sending"
    assert chromium.problems == []


async def test_a_tenant_key_cannot_see_the_other_tenants_pages(live, chromium, db) -> None:
    url, campaign, keys = live
    ctx = await chromium.context(url)
    page = await _login(ctx, keys[2])
    assert page.url.endswith("/dashboard/2/ips")
    assert await page.locator("header .tenant").inner_text() == "Ulixai"
    await _shot(page, "tenant-2-ips")
    assert chromium.problems == []
    paths = ("ips", "campaigns", f"campaigns/{campaign}", "imports", "suppressions", "alerts", "audit")
    for path in paths:
        response = await page.goto(f"/dashboard/1/{path}")
        assert response.status == 404, path
        content = await page.content()
        assert "angry@inbox.example" not in content and "zen.spamhaus" not in content
    # Chromium reports each refused page itself, as a failed load; nothing else went wrong
    assert chromium.problems == [f"console: {NOT_FOUND}"] * len(paths)
    chromium.problems.clear()
    await _shot(page, "tenant-2-denied")
    # the form of tenant 2's own session cannot act on tenant 1
    csrf = unseal(SECRET_KEY, next(c["value"] for c in await ctx.cookies() if c["name"] == COOKIE)).csrf
    r = await ctx.request.post(f"/dashboard/1/campaigns/{campaign}/pause", form={"csrf": csrf}, max_redirects=0)
    assert r.status == 404
    assert await db.fetchval("SELECT status::text FROM campaigns WHERE id = $1", campaign) == "sending"
    # the session ends with its key
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = 2")
    response = await page.goto("/dashboard/2/ips")
    assert response.url.endswith("/dashboard") and await page.locator("#key").count() == 1
    # a forged or altered cookie opens nothing
    forged = seal("another-secret-key-0123456789", Session(admin=True, csrf="x"))
    await ctx.add_cookies([{"name": COOKIE, "value": forged, "url": url + "/dashboard"}])
    await page.goto("/dashboard/1/ips")
    assert await page.locator("#key").count() == 1
    assert chromium.problems == []
