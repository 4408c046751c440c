"""Event webhooks for integrators: facts written to an outbox with the transaction that made them, then
delivered in order to each tenant's endpoints, signed, retried with backoff for up to a day.

A request carries `{"events": [...]}`, oldest first: one event when the endpoint keeps up, up to `BATCH` when
it is busy or coming back from an outage. Each request is signed like the inbound source webhooks
(engine/data_sources.py): `X-Timestamp` (unix seconds) and `X-Signature: sha256=` + hex HMAC-SHA256 of
`<timestamp>.` + the body. One endpoint is delivered to strictly in event order — a failed request holds back
every later event for it — so a receiver that was down gets everything afterwards, in order per contact.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets as pysecrets
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec

from engine import alert_events, secrets
from engine.data_sources import sign
from engine.errors import Invalid, NotFound
from sql import q


class EventType(StrEnum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    CAMPAIGN_STATE = "campaign.state"


EVENT_TYPES = tuple(t.value for t in EventType)
BATCH = 100                 # events per request at most
RESPONSE_MAX = 500          # characters of a response body kept in the log
REQUEST_TIMEOUT = 10.0      # seconds: the deadline of one delivery request, connect to last byte


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """Backoff after a failed request: `first`, doubling up to `cap`; an endpoint failing for `give_up` is
    turned off with an alert. The defaults follow Stripe's and GitHub's webhook retries (hours apart at the
    end, a day in all)."""

    first: float = 10.0
    cap: float = 3600.0
    give_up: float = 86400.0

    def delay(self, failures: int) -> float:
        return min(self.first * 2 ** max(failures - 1, 0), self.cap)


DEFAULT_RETRY = Retry()


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to one signed request: a 2xx is `ok`; anything else (a refused connection, a timeout, a
    5xx) is a result too, with what came back."""

    ok: bool
    status: int | None
    response: str


class EventEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int
    url: str
    event_types: list[str]
    active: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None
    attempts: int
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_status: int | None
    last_response: str | None
    created_at: dt.datetime


class CreatedEventEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a creation: the only time the signing secret is shown."""

    endpoint: EventEndpoint
    secret: str


class EventDelivery(msgspec.Struct, frozen=True, kw_only=True):
    event_id: int
    type: str
    contact_id: int | None
    status: str
    attempts: int
    last_status: int | None
    last_response: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None


EventTypes = Annotated[list[str], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES),
                                               description=f"any of {', '.join(EVENT_TYPES)}",
                                               examples=[["delivered", "bounced", "unsubscribed"]])]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One fact to report; `data` is what the receiver gets under `data`."""

    tenant_id: int
    type: str
    data: dict[str, Any]
    contact_id: int | None = None


async def emit(db: asyncpg.Connection, tenant_id: int, type: str, data: dict[str, Any],
               contact_id: int | None = None) -> int:
    """Write one event in the caller's transaction; return how many endpoints it is queued for."""
    return await emit_many(db, [Event(tenant_id=tenant_id, type=type, data=data, contact_id=contact_id)])


async def emit_many(db: asyncpg.Connection, events: Sequence[Event]) -> int:
    """Write events in the caller's transaction, in this order (one statement however many there are)."""
    if not events:
        return 0
    for e in events:
        if e.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {e.type!r}")
    rows = await db.fetch(q("emit-events"), [e.tenant_id for e in events], [e.type for e in events],
                          [e.contact_id for e in events], [e.data for e in events])
    return len(rows)


async def wanted(db: asyncpg.Connection, tenant_ids: Sequence[int]) -> set[tuple[int, str]]:
    """(tenant_id, type) pairs some active endpoint wants; empty for tenants without endpoints."""
    if not tenant_ids:
        return set()
    return {(r["tenant_id"], r["type"]) for r in await db.fetch(q("wanted-event-types"), list(set(tenant_ids)))}


def check_url(url: str, field: str) -> str:
    """HTTPS, or plain HTTP to a loopback address (a receiver on the same host)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host:
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise Invalid(f"{field}: expected an https:// URL (http:// only to a loopback address), got {url!r}",
                  field=field)


def check_types(types: Sequence[str]) -> list[str]:
    for t in types:
        if t not in EVENT_TYPES:
            raise Invalid(f"event_types: {t!r} is not one of {', '.join(EVENT_TYPES)}", field="event_types")
    return sorted(set(types), key=EVENT_TYPES.index)


async def create_endpoint(db: asyncpg.Connection, secret_key: str, tenant_id: int, *, url: str,
                          event_types: Sequence[str]) -> CreatedEventEndpoint:
    check_url(url, "url")
    secret = pysecrets.token_hex(32)
    row = await db.fetchrow(q("create-event-endpoint"), tenant_id, url, secrets.encrypt(secret_key, secret),
                            check_types(event_types))
    return CreatedEventEndpoint(endpoint=EventEndpoint(**row), secret=secret)


async def list_endpoints(db: asyncpg.Connection, tenant_id: int) -> list[EventEndpoint]:
    return [EventEndpoint(**r) for r in await db.fetch(q("list-event-endpoints"), tenant_id)]


async def get_endpoint(db: asyncpg.Connection, tenant_id: int, endpoint_id: int) -> EventEndpoint:
    row = await db.fetchrow(q("get-event-endpoint"), tenant_id, endpoint_id)
    if row is None:
        raise NotFound(f"event endpoint {endpoint_id} not found")
    return EventEndpoint(**row)


async def update_endpoint(db: asyncpg.Connection, tenant_id: int, endpoint_id: int, *,
                          event_types: Sequence[str] | None, active: bool | None) -> EventEndpoint:
    types = check_types(event_types) if event_types is not None else None
    row = await db.fetchrow(q("update-event-endpoint"), tenant_id, endpoint_id, types, active)
    if row is None:
        raise NotFound(f"event endpoint {endpoint_id} not found")
    return EventEndpoint(**row)


async def delete_endpoint(db: asyncpg.Connection, tenant_id: int, endpoint_id: int) -> None:
    if await db.fetchval(q("delete-event-endpoint"), tenant_id, endpoint_id) is None:
        raise NotFound(f"event endpoint {endpoint_id} not found")


async def list_deliveries(db: asyncpg.Connection, tenant_id: int, endpoint_id: int, *, before: int | None,
                          limit: int) -> list[EventDelivery]:
    await get_endpoint(db, tenant_id, endpoint_id)
    return [EventDelivery(**r) for r in await db.fetch(q("list-event-deliveries"), endpoint_id, before, limit)]


async def post_signed(http: httpx.AsyncClient, url: str, secret: str, body: bytes, now: dt.datetime) -> Attempt:
    """POST a body signed with `secret`; every outcome, a transport error included, is an Attempt."""
    timestamp = str(int(now.timestamp()))
    headers = {"Content-Type": "application/json", "X-Timestamp": timestamp,
               "X-Signature": sign(secret, timestamp, body), "User-Agent": "email-engine"}
    try:
        r = await http.post(url, content=body, headers=headers, timeout=REQUEST_TIMEOUT)
    except httpx.HTTPError as exc:
        return Attempt(ok=False, status=None, response=(f"{type(exc).__name__}: {exc}")[:RESPONSE_MAX])
    return Attempt(ok=200 <= r.status_code < 300, status=r.status_code,
                   response=r.content[:RESPONSE_MAX].decode("utf-8", "replace"))


def _body(rows: Sequence[asyncpg.Record], tenant_id: int) -> bytes:
    return msgspec.json.encode({"events": [
        {"id": r["id"], "type": r["type"], "tenant_id": tenant_id, "contact_id": r["contact_id"],
         "created_at": r["created_at"], "data": r["data"]} for r in rows]})


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True):
    requests: int = 0
    delivered: int = 0          # events the receivers acknowledged
    failed: int = 0             # requests that failed (their events wait for the next attempt)
    disabled: int = 0           # endpoints turned off after failing for `Retry.give_up`


async def deliver_due(pool: asyncpg.Pool, http: httpx.AsyncClient, secret_key: str, *, now: dt.datetime,
                      retry: Retry = DEFAULT_RETRY, endpoints: int = 20) -> DeliveryReport:
    """One request to each endpoint whose next attempt is due: its oldest pending events."""
    requests = delivered = failed = disabled = 0
    async with pool.acquire() as db, db.transaction():
        # The endpoints stay locked while their requests run (each has a deadline): another worker skips them.
        for ep in await db.fetch(q("due-event-endpoints"), now, endpoints):
            rows = await db.fetch(q("pending-events"), ep["id"], BATCH)
            if not rows:
                continue
            ids = [r["id"] for r in rows]
            secret = secrets.decrypt(secret_key, ep["secret_enc"])
            attempt = await post_signed(http, ep["url"], secret, _body(rows, ep["tenant_id"]), now)
            requests += 1
            if attempt.ok:
                await db.execute(q("mark-events-delivered"), ep["id"], ids, attempt.status, attempt.response, now)
                await db.execute(q("event-endpoint-succeeded"), ep["id"], now, attempt.status, attempt.response)
                delivered += len(ids)
                continue
            failed += 1
            await db.execute(q("mark-events-attempted"), ep["id"], ids, attempt.status, attempt.response)
            since = ep["failing_since"] or now
            reason = None
            if (now - since).total_seconds() >= retry.give_up:
                reason = f"failing since {since.isoformat(timespec='seconds')}: {attempt.response[:200]}"
                disabled += 1
                await alert_events.raise_alert(db, ep["tenant_id"], "event_endpoint_disabled",
                                               f"event-endpoint:{ep['id']}",
                                               {"url": ep["url"], "reason": reason})
            next_at = now + dt.timedelta(seconds=retry.delay(ep["attempts"] + 1))
            await db.execute(q("event-endpoint-failed"), ep["id"], now, attempt.status, attempt.response, next_at,
                             reason)
    return DeliveryReport(requests=requests, delivered=delivered, failed=failed, disabled=disabled)
