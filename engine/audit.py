"""The audit log: who changed what through the API, written in the same transaction as the change."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import asyncpg
import msgspec

from sql import q

# Who acted: an API key (admin or tenant), a data source's signed webhook, or a recipient's unsubscribe link.
ACTORS = ("admin", "key", "data_source", "recipient")

# A body field whose name holds one of these words is never stored, whatever its value (ids of keys are kept).
SECRET = re.compile(r"key|token|passw|secret|signature|credential", re.IGNORECASE)
NOT_SECRET = re.compile(r"_ids?$", re.IGNORECASE)
REDACTED = "[redacted]"

# A summary says what changed, it does not copy the request: a 10,000-contact batch keeps its first items and
# its count. Bounds on what one row may hold.
MAX_ITEMS = 3
MAX_TEXT = 200
MAX_DEPTH = 4
# Bodies larger than this are summarised without decoding their lists (msgspec.Raw keeps them as bytes).
LARGE_BODY = 64 * 1024

PAGE_MAX = 500


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int | None
    actor: str
    key_id: int | None
    action: str
    method: str
    path: str
    target: dict[str, Any]
    summary: dict[str, Any]
    request_id: str
    created_at: dt.datetime


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AuditEntry]
    next_cursor: int | None


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One change to record (everything but its id and time)."""

    tenant_id: int | None
    actor: str
    key_id: int | None
    action: str
    method: str
    path: str
    target: dict[str, Any]
    summary: dict[str, Any]
    request_id: str


def is_secret(name: str) -> bool:
    """Whether a field of this name holds a secret."""
    return SECRET.search(name) is not None and NOT_SECRET.search(name) is None


def redact(value: Any, depth: int = 0) -> Any:
    """A JSON value with secret fields replaced, long lists cut to their first items and long strings shortened."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return {"fields": len(value)}
        return {str(k)[:MAX_TEXT]: REDACTED if is_secret(str(k)) else redact(v, depth + 1)
                for k, v in list(value.items())[:50]}
    if isinstance(value, list):
        head = [redact(v, depth + 1) for v in value[:MAX_ITEMS]]
        return head if len(value) <= MAX_ITEMS else {"count": len(value), "first": head}
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    return value


def summarise_body(body: bytes) -> dict[str, Any]:
    """The summary of a JSON request body; a body that is not a JSON object is described by its size."""
    if not body:
        return {}
    try:
        if len(body) <= LARGE_BODY:
            decoded = msgspec.json.decode(body)
        else:
            # only the top level is decoded; a long list is counted and its first items decoded
            decoded = {k: _raw_value(v) for k, v in msgspec.json.decode(body, type=dict[str, msgspec.Raw]).items()}
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {"body_bytes": len(body)}
    return redact(decoded) if isinstance(decoded, dict) else {"body": redact(decoded)}


def _raw_value(raw: msgspec.Raw) -> Any:
    data = bytes(raw)
    if data[:1] != b"[":
        return msgspec.json.decode(data) if len(data) <= LARGE_BODY else {"bytes": len(data)}
    items = msgspec.json.decode(data, type=list[msgspec.Raw])
    head = [msgspec.json.decode(bytes(i)) for i in items[:MAX_ITEMS]]
    return head if len(items) <= MAX_ITEMS else {"count": len(items), "first": head}


async def record(db: asyncpg.Connection, change: Change) -> int:
    """Write one audit row on the change's connection, inside its transaction; the row's id."""
    return await db.fetchval(q("insert-audit-entry"), change.tenant_id, change.actor, change.key_id, change.action,
                             change.method, change.path, change.target, change.summary, change.request_id)


async def list_entries(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int | None, *, action: str | None = None,
                       key_id: int | None = None, actor: str | None = None, since: dt.datetime | None = None,
                       until: dt.datetime | None = None, before: int | None = None,
                       limit: int = 100) -> AuditPage:
    """Newest first; `tenant_id` None lists every tenant (the admin's view). Pass `next_cursor` as `before`."""
    rows = await db.fetch(q("list-audit-entries"), tenant_id, action, key_id, actor, since, until, before, limit)
    items = [AuditEntry(**r) for r in rows]
    return AuditPage(items=items, next_cursor=items[-1].id if len(items) == limit else None)
