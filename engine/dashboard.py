"""What the web dashboard shows: read-only figures per tenant, IP, campaign and import."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from engine.imports import Import
from sql import q

# The window of the bounce and complaint plots.
RATE_DAYS = 30
IMPORTS_SHOWN = 50

__all__ = ["Import", "IpDay", "IpSummary", "TenantSummary", "CampaignProgress", "RATE_DAYS"]


class TenantSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    slug: str
    name: str
    contacts: int
    ips_sending: int
    ips: int
    campaigns_sending: int


class IpSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    address: str
    vmta_name: str
    status: str
    status_reason: str | None
    daily_cap: int
    curve: list[int]
    current_day: int
    quota_today: int
    used_today: int


class IpDay(msgspec.Struct, frozen=True, kw_only=True):
    ip_id: int
    day: dt.date
    sent: int
    bounced: int
    complained: int


class CampaignProgress(msgspec.Struct, frozen=True, kw_only=True):
    campaign_id: int
    status: str
    count: int


class IpRates(msgspec.Struct, frozen=True, kw_only=True):
    """An IP's last RATE_DAYS UTC days, oldest first: messages sent and the bounce and complaint rates (0..1)."""

    days: list[dt.date]
    sent: list[int]
    bounce_rate: list[float]
    complaint_rate: list[float]


async def tenants(db: asyncpg.Connection, tenant_id: int | None) -> list[TenantSummary]:
    return [TenantSummary(**r) for r in await db.fetch(q("dashboard-tenants"), tenant_id)]


async def ips(db: asyncpg.Connection, tenant_id: int, today: dt.date) -> list[IpSummary]:
    return [IpSummary(**r) for r in await db.fetch(q("dashboard-ips"), tenant_id, today)]


async def ip_rates(db: asyncpg.Connection, tenant_id: int, now: dt.datetime) -> dict[int, IpRates]:
    """Per IP id, its daily figures over the last RATE_DAYS days (days without mail count as zero)."""
    first = (now.astimezone(dt.UTC) - dt.timedelta(days=RATE_DAYS - 1)).date()
    days = [first + dt.timedelta(days=i) for i in range(RATE_DAYS)]
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    found: dict[int, dict[dt.date, IpDay]] = {}
    for r in await db.fetch(q("dashboard-ip-days"), tenant_id, start):
        found.setdefault(r["ip_id"], {})[r["day"]] = IpDay(**r)
    out = {}
    for ip_id, by_day in found.items():
        rows = [by_day.get(d) for d in days]
        sent = [r.sent if r else 0 for r in rows]
        out[ip_id] = IpRates(days=days, sent=sent,
                             bounce_rate=[r.bounced / r.sent if r and r.sent else 0.0 for r in rows],
                             complaint_rate=[r.complained / r.sent if r and r.sent else 0.0 for r in rows])
    return out


async def campaign_progress(db: asyncpg.Connection, tenant_id: int,
                            campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Send rows by status, per campaign id."""
    out: dict[int, dict[str, int]] = {cid: {} for cid in campaign_ids}
    for r in await db.fetch(q("dashboard-campaign-progress"), tenant_id, campaign_ids):
        out[r["campaign_id"]][r["status"]] = r["count"]
    return out


async def imports(db: asyncpg.Connection, tenant_id: int, limit: int = IMPORTS_SHOWN) -> list[Import]:
    return [Import(**r) for r in await db.fetch(q("dashboard-imports"), tenant_id, limit)]


async def live_key_tenant(db: asyncpg.Connection | asyncpg.Pool, key_id: int) -> int | None:
    """The tenant of a key that is still live, or None once it is revoked."""
    return await db.fetchval(q("dashboard-live-key"), key_id)
