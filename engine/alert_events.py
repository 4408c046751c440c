"""Alert events: what the engine's watches raise (a blocklist listing, a failed PowerMTA reload), stored
for engine/alerts.py to route to the alert channels, which stamps `delivered_at` once it has."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec

from sql import q


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
