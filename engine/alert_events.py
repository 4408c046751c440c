"""Alert events: what the engine's watches raise (a blocklist listing, a failed PowerMTA reload), stored
for engine/alerts.py to route to the alert channels, which stamps `delivered_at` once it has."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec

from sql import q

# Every kind the engine raises, in one place: the alert channels filter on them (engine.alerts) and the
# metrics count them from zero (engine.fleet_metrics). ENGINE_KINDS are about the engine as a whole (tenant None).
KINDS = ("ip_paused", "ip_stepped_back", "blocklist_listing", "domain_paused", "provider_backoff",
         "campaign_auto_paused", "campaign_completed", "campaign_failed", "pmta_unreachable",
         "pmta_reload_failed", "validation_provider_failing", "dns_check_bad", "event_endpoint_disabled")
ENGINE_KINDS = ("pmta_reload_failed", "pmta_unreachable")


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int | None    # None: about the engine as a whole (its PowerMTA config)
    kind: str                # one of engine.alerts.ALERT_KINDS
    subject: str
    detail: dict[str, Any]
    created_at: dt.datetime
    delivered_at: dt.datetime | None


async def raise_alert(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int | None, kind: str, subject: str,
                      detail: dict[str, Any] | None = None) -> AlertEvent:
    return AlertEvent(**await db.fetchrow(q("create-alert-event"), tenant_id, kind, subject, detail or {}))


async def list_alerts(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int | None,
                      limit: int = 100) -> list[AlertEvent]:
    return [AlertEvent(**r) for r in await db.fetch(q("list-alert-events"), tenant_id, limit)]
