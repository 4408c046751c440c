"""Alert channels: every alert_events row reaches the channels of its tenant (the engine-wide ones reach the
admin's) through Telegram's Bot API or a signed HTTPS webhook, at most one message per kind and target
(`subject`) per channel window, then one digest of what the window held back.

Two steps, both run by the worker's alert job and never by the path that raised the event: `route` gives each
new event to its channels (a message, or a count in the window's digest); `send_due` sends what is queued and
retries what failed, with backoff. Events raised inside a transaction are routed only once it commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets as pysecrets
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import asyncpg
import httpx
import msgspec

from engine import alert_events, secrets
from engine.errors import Invalid, NotFound
from engine.events import REQUEST_TIMEOUT, RESPONSE_MAX, Attempt, check_url, post_signed
from sql import q


class ChannelKind(StrEnum):
    TELEGRAM = "telegram"
    WEBHOOK = "webhook"


# Every kind the engine raises; a channel may restrict itself to some.
ALERT_KINDS = alert_events.KINDS
# A failed message is tried again after these many seconds, then given up (an alert a day late helps nobody).
RETRY_DELAYS = (10.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
TEXT_MAX = 4000             # Telegram's sendMessage takes 4096 characters
DEFAULT_WINDOW = 3600


class AlertChannel(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: int | None   # None: the admin's channel (engine-wide events)
    kind: str
    name: str
    target: str             # telegram: the chat id; webhook: the URL
    kinds: list[str]        # [] = every kind
    window_seconds: int
    active: bool
    created_at: dt.datetime


class CreatedAlertChannel(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook channel's signing secret is shown here once; a Telegram channel's bot token never is."""

    channel: AlertChannel
    secret: str | None = None


class AlertDelivery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    event_id: int | None    # None: a digest or a test message
    kind: str
    subject: str
    text: str
    status: str             # pending | sent | folded (into a digest) | failed (given up)
    attempts: int
    last_response: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None


def check_kinds(kinds: list[str]) -> list[str]:
    for kind in kinds:
        if kind not in ALERT_KINDS:
            raise Invalid(f"kinds: {kind!r} is not one of {', '.join(ALERT_KINDS)}", field="kinds")
    return sorted(set(kinds), key=ALERT_KINDS.index)


async def create_channel(db: asyncpg.Connection, secret_key: str, tenant_id: int | None, *, kind: str, name: str,
                         chat_id: str | None = None, bot_token: str | None = None, url: str | None = None,
                         kinds: list[str] | None = None,
                         window_seconds: int = DEFAULT_WINDOW) -> CreatedAlertChannel:
    shown = None
    if kind == ChannelKind.TELEGRAM:
        if not chat_id:
            raise Invalid("chat_id: required for a telegram channel", field="chat_id")
        if not bot_token:
            raise Invalid("bot_token: required for a telegram channel", field="bot_token")
        if url is not None:
            raise Invalid("url: only for a webhook channel", field="url")
        target, secret = chat_id, bot_token
    else:
        if not url:
            raise Invalid("url: required for a webhook channel", field="url")
        if chat_id is not None or bot_token is not None:
            field = "chat_id" if chat_id is not None else "bot_token"
            raise Invalid(f"{field}: only for a telegram channel", field=field)
        target, secret = check_url(url, "url"), pysecrets.token_hex(32)
        shown = secret
    row = await db.fetchrow(q("create-alert-channel"), tenant_id, kind, name, target,
                            secrets.encrypt(secret_key, secret), check_kinds(kinds or []), window_seconds)
    return CreatedAlertChannel(channel=AlertChannel(**row), secret=shown)


async def list_channels(db: asyncpg.Connection, tenant_id: int | None) -> list[AlertChannel]:
    return [AlertChannel(**r) for r in await db.fetch(q("list-alert-channels"), tenant_id)]


async def delete_channel(db: asyncpg.Connection, tenant_id: int | None, channel_id: int) -> None:
    if await db.fetchval(q("delete-alert-channel"), tenant_id, channel_id) is None:
        raise NotFound(f"alert channel {channel_id} not found")


async def list_deliveries(db: asyncpg.Connection, tenant_id: int | None, channel_id: int,
                          limit: int) -> list[AlertDelivery]:
    if await db.fetchrow(q("get-alert-channel-secret"), tenant_id, channel_id) is None:
        raise NotFound(f"alert channel {channel_id} not found")
    return [AlertDelivery(**r) for r in await db.fetch(q("list-alert-deliveries"), channel_id, limit)]


def message_text(kind: str, subject: str, detail: dict[str, Any]) -> str:
    """One readable message: the kind, the target, then the event's details one per line."""
    lines = [f"{kind.replace('_', ' ')}: {subject}"]
    lines += [f"{key}: {value}" for key, value in detail.items()]
    return "\n".join(lines)[:TEXT_MAX]


def digest_text(kind: str, subject: str, folded: int, window: int) -> str:
    return (f"{kind.replace('_', ' ')}: {subject}\n{folded} more in the last {_span(window)} "
            f"(one message per {_span(window)})")


def _span(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


class RouteReport(msgspec.Struct, frozen=True, kw_only=True):
    events: int = 0
    queued: int = 0         # messages queued for sending (events and digests)
    folded: int = 0         # events held back by a window (counted in its digest)
    digests: int = 0


async def route(db: asyncpg.Connection, now: dt.datetime, limit: int = 500) -> RouteReport:
    """Give new events to their channels; call inside a transaction."""
    digests = 0
    for w in await db.fetch(q("closed-alert-windows"), now):
        await db.execute(q("queue-alert-delivery"), w["channel_id"], None, w["kind"], w["subject"],
                         digest_text(w["kind"], w["subject"], w["folded"], w["window_seconds"]), "pending", now)
        digests += 1
    events = await db.fetch(q("undelivered-alert-events"), limit)
    queued = folded = 0
    for e in events:
        text = message_text(e["kind"], e["subject"], e["detail"])
        for ch in await db.fetch(q("alert-event-channels"), e["tenant_id"], e["kind"]):
            held = await db.fetchval(q("alert-window-take"), ch["id"], e["kind"], e["subject"], now,
                                     float(ch["window_seconds"]))
            status = "folded" if held else "pending"
            await db.execute(q("queue-alert-delivery"), ch["id"], e["id"], e["kind"], e["subject"], text, status, now)
            folded, queued = folded + bool(held), queued + (not held)
    if events:
        await db.execute(q("mark-alert-events-routed"), [e["id"] for e in events], now)
    return RouteReport(events=len(events), queued=queued + digests, folded=folded, digests=digests)


_BOT_PATH = re.compile(r"/bot[^/\s]+/")


class _HideBotTokens(logging.Filter):
    """httpx logs every request's URL at INFO, and a Bot API URL carries the bot's token: hide it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_BOT_PATH.sub("/bot<token>/", str(a)) if isinstance(a, str | httpx.URL) else a
                                for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_HideBotTokens())


async def send_telegram(http: httpx.AsyncClient, api_url: str, token: str, chat_id: str, text: str) -> Attempt:
    """Bot API sendMessage; the answer's `ok` decides, and an unreadable answer is a failure like any other."""
    url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
    try:
        r = await http.post(url, json={"chat_id": chat_id, "text": text, "disable_web_page_preview": True},
                            timeout=REQUEST_TIMEOUT)
    except httpx.HTTPError as exc:
        # The token is part of the URL: keep it out of anything stored.
        return Attempt(ok=False, status=None, response=f"{type(exc).__name__}: {exc}".replace(token, "<token>")
                       [:RESPONSE_MAX])
    body = r.content[:RESPONSE_MAX].decode("utf-8", "replace").replace(token, "<token>")
    try:
        answer = msgspec.json.decode(r.content)
    except msgspec.DecodeError:
        answer = None
    ok = r.status_code == 200 and isinstance(answer, dict) and answer.get("ok") is True
    return Attempt(ok=ok, status=r.status_code, response=body)


def _retry_after(attempt: Attempt) -> float:
    """Telegram's 429 says how long to wait (parameters.retry_after)."""
    if attempt.status != 429:
        return 0.0
    try:
        answer = msgspec.json.decode(attempt.response)
        return float(answer["parameters"]["retry_after"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return 0.0


async def send_one(http: httpx.AsyncClient, secret_key: str, telegram_api_url: str, channel: Mapping[str, Any],
                   *, kind: str, subject: str, text: str, event_id: int | None, now: dt.datetime) -> Attempt:
    """One message to one channel, whatever its kind."""
    secret = secrets.decrypt(secret_key, channel["secret_enc"])
    if channel["channel_kind"] == ChannelKind.TELEGRAM:
        return await send_telegram(http, telegram_api_url, secret, channel["target"], text)
    body = msgspec.json.encode({"alert": {"event_id": event_id, "kind": kind, "subject": subject, "text": text,
                                          "at": now}})
    return await post_signed(http, channel["target"], secret, body, now)


class SendReport(msgspec.Struct, frozen=True, kw_only=True):
    sent: int = 0
    retrying: int = 0
    failed: int = 0         # given up after every retry


async def send_due(pool: asyncpg.Pool, http: httpx.AsyncClient, secret_key: str, telegram_api_url: str, *,
                   now: dt.datetime, retry_delays: tuple[float, ...] = RETRY_DELAYS,
                   limit: int = 200) -> SendReport:
    """Send the queued messages that are due; each failure waits its turn in `retry_delays`."""
    sent = retrying = failed = 0
    async with pool.acquire() as db, db.transaction():
        for d in await db.fetch(q("due-alert-deliveries"), now, limit):
            attempt = await send_one(http, secret_key, telegram_api_url, d, kind=d["kind"], subject=d["subject"],
                                     text=d["text"], event_id=d["event_id"], now=now)
            if attempt.ok:
                status, next_at, sent = "sent", now, sent + 1
            elif d["attempts"] < len(retry_delays):
                wait = max(retry_delays[d["attempts"]], _retry_after(attempt))
                status, next_at, retrying = "pending", now + dt.timedelta(seconds=wait), retrying + 1
            else:
                status, next_at, failed = "failed", now, failed + 1
            await db.execute(q("alert-delivery-result"), d["id"], status, attempt.response, next_at, now)
    return SendReport(sent=sent, retrying=retrying, failed=failed)


async def send_test(db: asyncpg.Connection, http: httpx.AsyncClient, secret_key: str, telegram_api_url: str,
                    tenant_id: int | None, channel_id: int, now: dt.datetime) -> Attempt:
    """Send a test message at once and log it with the channel's deliveries."""
    row = await db.fetchrow(q("get-alert-channel-secret"), tenant_id, channel_id)
    if row is None:
        raise NotFound(f"alert channel {channel_id} not found")
    channel = {"channel_kind": row["kind"], "target": row["target"], "secret_enc": row["secret_enc"]}
    subject = f"channel:{channel_id}"
    text = f"test: {row['name']}\nThis channel receives email-engine alerts."
    attempt = await send_one(http, secret_key, telegram_api_url, channel, kind="test", subject=subject, text=text,
                             event_id=None, now=now)
    await db.execute(q("log-alert-test"), channel_id, subject, text, "sent" if attempt.ok else "failed",
                     attempt.response, now)
    return attempt
