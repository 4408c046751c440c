"""The web dashboard at /dashboard: server-rendered pages (Jinja2, plain CSS, inline SVG plots, no script).

An API key pasted once into the login form opens a session: an HttpOnly, SameSite=Strict cookie holding the
session sealed with the engine's secret key (Fernet: encrypted and authenticated), never the key itself. A
tenant key's session ends when the key is revoked; a tenant key sees its own tenant only (another tenant's
pages answer 404, as in the API). Pages are read-only but for pause / resume of campaigns and IPs, which are
POSTs carrying the session's CSRF token and leave their audit row like any change made through the API.
"""

from __future__ import annotations

import datetime as dt
import hmac
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect

from api import audit as audit_log
from api.auth import Principal
from api.dashboard import plots
from api.dashboard.session import COOKIE, SESSION_SECONDS, Session, new_session, seal, unseal
from api.deps import Db
from engine import alert_events, audit, campaigns, dashboard, ips, suppression, tenants
from engine.errors import Conflict, NotFound
from engine.secrets import keys_match
from engine.warmup import today_in_timezone

HERE = Path(__file__).parent
STYLE = (HERE / "style.css").read_text()

# No script, no frame, nothing from elsewhere: a page may only load its own stylesheet and post to itself.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# Send-row statuses as the progress bars colour them, in the order they are drawn.
PROGRESS = [("delivered", "st-delivered"), ("injected", "st-injected"), ("deferred", "st-deferred"),
            ("bounced", "st-bounced"), ("failed", "st-failed"), ("skipped", "st-skipped"),
            ("sending", "st-sending"), ("claimed", "st-sending"), ("queued", "st-queued")]
DONE = frozenset({"delivered", "injected", "bounced", "failed", "skipped"})
PAGE = 100

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["n"] = lambda v: f"{v:,}" if isinstance(v, int) else v
_env.filters["pct"] = lambda v: f"{v:.1%}"
_env.filters["when"] = lambda v: v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if v else "—"


def _page(template: str, status: int = 200, **context: Any) -> Response:
    html = _env.get_template(template).render(**context)
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=HEADERS)


def _cookie(request: Request, value: str, max_age: int) -> Cookie:
    return Cookie(key=COOKIE, value=value, path="/dashboard", httponly=True, samesite="strict",
                  secure=request.url.scheme == "https", max_age=max_age)


async def _session(request: Request) -> Session | None:
    """The caller's session, if the cookie is ours, fresh, and (for a tenant key) the key still live."""
    found = unseal(request.app.state.secret_key, request.cookies.get(COOKIE))
    if found is None:
        return None
    if not found.admin:
        live = await dashboard.live_key_tenant(request.app.state.pool, found.key_id or 0)
        if live is None or live != found.tenant_id:
            return None
    return found


def _principal(s: Session) -> Principal:
    return Principal(admin=True) if s.admin else Principal(tenant_id=s.tenant_id, key_id=s.key_id)


def _not_found(s: Session | None) -> Response:
    return _page("error.html", 404, session=s, title="Not found", message="Nothing here for this key.")


async def _tenant_context(db: asyncpg.Connection, s: Session, tenant_id: int, tab: str) -> dict[str, Any] | None:
    """What every tenant page shows around its content, or None when the session may not see the tenant."""
    if not _principal(s).can_see(tenant_id):
        return None
    try:
        tenant = await tenants.get_tenant(db, tenant_id)
    except NotFound:
        return None
    return {"session": s, "tenant": tenant, "tab": tab, "title": f"{tenant.name} · {tab}"}


async def _tenant_page(request: Request, db: asyncpg.Connection, tenant_id: int,
                       tab: str) -> dict[str, Any] | Response:
    """A tenant page's context, or its answer without one: to the login page without a session, 404 when the
    session may not see the tenant."""
    s = await _session(request)
    if s is None:
        return Redirect("/dashboard", status_code=303)
    ctx = await _tenant_context(db, s, tenant_id, tab)
    return _not_found(s) if ctx is None else ctx


# --- login -------------------------------------------------------------------------------------------------

@get("/", include_in_schema=False)
async def home(request: Request, db: Db) -> Response:
    s = await _session(request)
    if s is None:
        return _page("login.html", title="Log in")
    if not s.admin:
        return Redirect(f"/dashboard/{s.tenant_id}/ips", status_code=303)
    return _page("tenants.html", session=s, title="Tenants", tenants=await dashboard.tenants(db, None))


@post("/login", include_in_schema=False, operation_id="dashboardLogin", status_code=303)
async def login(request: Request) -> Response:
    form = await request.form()
    key = str(form.get("key") or "").strip()
    state = request.app.state
    found: Session | None = None
    if key and keys_match(key, state.admin_key):
        found = new_session(admin=True)
    elif key:
        owner = await tenants.authenticate_key(state.pool, key)
        if owner is not None:
            found = new_session(key_id=owner[0], tenant_id=owner[1])
    if found is None:
        return _page("login.html", 401, title="Log in", error="This key is not valid (or has been revoked).")
    request.scope["user"] = _principal(found)   # the audit row of the login names the key
    response = Redirect("/dashboard", status_code=303)
    response.cookies.append(_cookie(request, seal(state.secret_key, found), SESSION_SECONDS))
    return response


@post("/logout", include_in_schema=False, operation_id="dashboardLogout", status_code=303)
async def logout(request: Request) -> Response:
    s = await _session(request)
    if s is not None:
        request.scope["user"] = _principal(s)   # the audit row of the logout names the key
    response = Redirect("/dashboard", status_code=303)
    response.cookies.append(_cookie(request, "", 0))
    return response


@get("/style.css", include_in_schema=False)
async def style() -> Response:
    return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=300",
                                                             "X-Content-Type-Options": "nosniff"})


# --- pages -------------------------------------------------------------------------------------------------

@get("/{tenant_id:int}", include_in_schema=False)
async def tenant_home(tenant_id: FromPath[int]) -> Response:
    return Redirect(f"/dashboard/{tenant_id}/ips", status_code=303)


@get("/{tenant_id:int}/ips", include_in_schema=False)
async def ips_page(tenant_id: FromPath[int], request: Request, db: Db) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "IPs")
    if isinstance(ctx, Response):
        return ctx
    now = dt.datetime.now(dt.UTC)
    rows = await dashboard.ips(db, tenant_id, today_in_timezone(ctx["tenant"].timezone, now))
    rates = await dashboard.ip_rates(db, tenant_id, now)
    empty = dashboard.IpRates(days=[(now - dt.timedelta(days=dashboard.RATE_DAYS - 1 - i)).date()
                                    for i in range(dashboard.RATE_DAYS)],
                              sent=[0] * dashboard.RATE_DAYS, bounce_rate=[0.0] * dashboard.RATE_DAYS,
                              complaint_rate=[0.0] * dashboard.RATE_DAYS)
    cards = []
    for ip in rows:
        r = rates.get(ip.id, empty)
        curve = ip.curve or [ip.daily_cap]
        peak_rate = max([*r.bounce_rate, *r.complaint_rate, 0.02])
        cards.append({
            "ip": ip,
            "warmup": plots.line_chart([("daily quota", curve, "s-quota")], [f"day {i + 1}" for i in range(len(curve))],
                                       title=f"warmup curve of {ip.address}: day {ip.current_day + 1} of {len(curve)}",
                                       marker=min(ip.current_day, len(curve) - 1), width=360, height=150),
            "quota": plots.meter(ip.used_today, ip.quota_today,
                                 title=f"{ip.used_today:,} of {ip.quota_today:,} sent today"),
            "rates": plots.line_chart([("bounce rate", r.bounce_rate, "s-bounce"),
                                       ("complaint rate", r.complaint_rate, "s-complaint")],
                                      [d.strftime("%m-%d") for d in r.days], y_max=peak_rate,
                                      y_format=lambda v: f"{v:.1%}", width=360, height=150,
                                      title=f"bounce and complaint rates of {ip.address}, last 30 days"),
            "sent_30d": sum(r.sent),
        })
    return _page("ips.html", **ctx, cards=cards, csrf=ctx["session"].csrf)


@get("/{tenant_id:int}/campaigns", include_in_schema=False)
async def campaigns_page(tenant_id: FromPath[int], request: Request, db: Db,
                         before: Annotated[int | None, QueryParameter(gt=0)] = None) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Campaigns")
    if isinstance(ctx, Response):
        return ctx
    found = await campaigns.list_campaigns(db, tenant_id, before=before, status=None, limit=PAGE)
    progress = await dashboard.campaign_progress(db, tenant_id, [c.id for c in found])
    rows = [{"campaign": c, "total": sum(progress[c.id].values()),
             "done": sum(n for st, n in progress[c.id].items() if st in DONE),
             "bar": plots.stacked_bar([(st, progress[c.id].get(st, 0), css) for st, css in PROGRESS],
                                      title=f"send rows of campaign {c.id} by status")} for c in found]
    return _page("campaigns.html", **ctx, rows=rows, csrf=ctx["session"].csrf,
                 next_before=found[-1].id if len(found) == PAGE else None)


@get("/{tenant_id:int}/campaigns/{campaign_id:int}", include_in_schema=False)
async def campaign_page(tenant_id: FromPath[int], campaign_id: FromPath[int], request: Request,
                        db: Db) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Campaigns")
    if isinstance(ctx, Response):
        return ctx
    try:
        campaign = await campaigns.get_campaign(db, tenant_id, campaign_id)
    except NotFound:
        return _not_found(ctx["session"])
    stats = await campaigns.stats(db, campaign)

    def breakdown(groups: dict[str, dict[str, int]]) -> list:
        return [(key, [(st, counts.get(st, 0), css) for st, css in PROGRESS])
                for key, counts in sorted(groups.items(), key=lambda kv: -sum(kv[1].values()))]

    done = sum(n for st, n in stats.by_status.items() if st in DONE)
    return _page("campaign.html", **ctx, campaign=campaign, stats=stats, done=done, csrf=ctx["session"].csrf,
                 legend=[(st, css) for st, css in PROGRESS if stats.by_status.get(st)],
                 bar=plots.stacked_bar([(st, stats.by_status.get(st, 0), css) for st, css in PROGRESS],
                                       title=f"send rows of campaign {campaign.id} by status", width=560, height=18),
                 by_language=plots.bar_chart(breakdown(stats.by_language), title="send rows per language"),
                 by_ip=plots.bar_chart(breakdown(stats.by_ip), title="send rows per VMTA"))


@get("/{tenant_id:int}/imports", include_in_schema=False)
async def imports_page(tenant_id: FromPath[int], request: Request, db: Db) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Imports")
    if isinstance(ctx, Response):
        return ctx
    rows = []
    for job in await dashboard.imports(db, tenant_id):
        parts = [("created", job.created, "st-delivered"), ("updated", job.updated, "st-injected"),
                 ("unchanged", job.unchanged, "st-skipped"), ("rejected", job.rejected, "st-bounced")]
        rows.append({"job": job, "bar": plots.stacked_bar(parts, title=f"rows of import {job.id} by outcome")})
    return _page("imports.html", **ctx, rows=rows)


@get("/{tenant_id:int}/suppressions", include_in_schema=False)
async def suppressions_page(tenant_id: FromPath[int], request: Request, db: Db,
                            cursor: Annotated[str | None, QueryParameter(max_length=19)] = None) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Suppressions")
    if isinstance(ctx, Response):
        return ctx
    found = await suppression.list_suppressions(db, tenant_id, cursor=cursor, limit=PAGE)
    return _page("suppressions.html", **ctx, page=found)


@get("/{tenant_id:int}/audit", include_in_schema=False)
async def audit_page(tenant_id: FromPath[int], request: Request, db: Db,
                     before: Annotated[int | None, QueryParameter(gt=0)] = None) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Audit log")
    if isinstance(ctx, Response):
        return ctx
    found = await audit.list_entries(db, tenant_id, before=before, limit=PAGE)
    return _page("audit.html", **ctx, page=found)


@get("/{tenant_id:int}/alerts", include_in_schema=False)
async def alerts_page(tenant_id: FromPath[int], request: Request, db: Db) -> Response:
    ctx = await _tenant_page(request, db, tenant_id, "Alerts")
    if isinstance(ctx, Response):
        return ctx
    return _page("alerts.html", **ctx, alerts=await alert_events.list_alerts(db, tenant_id, limit=PAGE))


# --- the two controls --------------------------------------------------------------------------------------

async def _control(request: Request, tenant_id: int, back: str, change) -> Response:
    s = await _session(request)
    if s is None:
        return Redirect("/dashboard", status_code=303)
    form = await request.form()
    if not hmac.compare_digest(str(form.get("csrf") or ""), s.csrf):
        return _page("error.html", 403, session=s, title="Refused",
                     message="This form is stale or came from elsewhere: reload the page and try again.")
    if not _principal(s).can_see(tenant_id):
        return _not_found(s)
    request.scope["user"] = _principal(s)
    try:
        async with audit_log.transaction(request) as db:
            await change(db)
    except NotFound:
        return _not_found(s)
    except Conflict as exc:
        return _page("error.html", 409, session=s, title="Not now", message=exc.message)
    return Redirect(back, status_code=303)


@post("/{tenant_id:int}/campaigns/{campaign_id:int}/{action:str}", include_in_schema=False,
      operation_id="dashboardCampaignControl", status_code=303)
async def campaign_control(tenant_id: FromPath[int], campaign_id: FromPath[int], action: FromPath[str],
                           request: Request) -> Response:
    if action not in ("pause", "resume"):
        return _not_found(None)
    return await _control(request, tenant_id, f"/dashboard/{tenant_id}/campaigns/{campaign_id}",
                          lambda db: campaigns.transition(db, tenant_id, campaign_id, action))


@post("/{tenant_id:int}/ips/{ip_id:int}/{action:str}", include_in_schema=False,
      operation_id="dashboardIpControl", status_code=303)
async def ip_control(tenant_id: FromPath[int], ip_id: FromPath[int], action: FromPath[str],
                     request: Request) -> Response:
    if action not in ("pause", "resume"):
        return _not_found(None)
    return await _control(request, tenant_id, f"/dashboard/{tenant_id}/ips",
                          lambda db: ips.change_status(db, tenant_id, ip_id, action, "from the dashboard"))


ROUTER = Router(path="/dashboard", route_handlers=[
    home, login, logout, style, tenant_home, ips_page, campaigns_page, campaign_page, imports_page,
    suppressions_page, audit_page, alerts_page, campaign_control, ip_control], include_in_schema=False)
