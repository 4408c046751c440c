"""Alert channels (Telegram, signed webhook): a tenant's own, and the admin's for engine-wide events."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import httpx
import msgspec
from litestar import delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Config, Db, TenantId, id_param
from engine import alerts
from engine.alerts import ALERT_KINDS, AlertChannel, AlertDelivery, CreatedAlertChannel
from engine.events import Attempt

ChannelId = id_param("alert channel")
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]


class AlertChannelCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Annotated[Literal["telegram", "webhook"], msgspec.Meta(examples=["telegram"])]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["ops on-call"])]
    chat_id: Annotated[str, msgspec.Meta(pattern=r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$",
                                         description="telegram: the chat's id or @channelusername",
                                         examples=["-1001234567890"])] | None = None
    bot_token: Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}:[A-Za-z0-9_-]{20,100}$",
                                           description="telegram: the bot's token (write-only, stored encrypted)",
                                           examples=["123456789:AAE-exampletokenexampletoken"])] | None = None
    url: Annotated[str, msgspec.Meta(max_length=2000, description="webhook: where alerts are POSTed",
                                     examples=["https://ops.example/alerts"])] | None = None
    kinds: Annotated[list[str], msgspec.Meta(max_length=len(ALERT_KINDS),
                                             description=f"alert kinds wanted (empty: all): {', '.join(ALERT_KINDS)}")] = []
    window_seconds: Annotated[int, msgspec.Meta(ge=1, le=7 * 86400, description="one message per kind and "
                                                "target in this window, then a digest")] = alerts.DEFAULT_WINDOW


DESCRIPTION = ("`telegram` posts through the Bot API's sendMessage (`bot_token` is write-only and stored "
               "encrypted; `chat_id` is where). `webhook` POSTs `{\"alert\": {...}}` signed like the event "
               "webhooks (`X-Timestamp`, `X-Signature: sha256=` HMAC of `<timestamp>.<body>`); its secret is in "
               "the answer once. A channel gets at most one message per alert kind and target per "
               "`window_seconds`, then one digest of what the window held back.")


async def _create(db, state: State, tenant_id: int | None, data: AlertChannelCreate) -> CreatedAlertChannel:
    return await alerts.create_channel(db, state.secret_key, tenant_id, kind=data.kind, name=data.name,
                                       chat_id=data.chat_id, bot_token=data.bot_token, url=data.url,
                                       kinds=data.kinds, window_seconds=data.window_seconds)


async def _test(db, state: State, settings, tenant_id: int | None, channel_id: int) -> Attempt:
    async with httpx.AsyncClient() as http:
        return await alerts.send_test(db, http, state.secret_key, settings.telegram_api_url, tenant_id, channel_id,
                                      dt.datetime.now(dt.UTC))


@post("/alert-channels/{tenant_id:int}", operation_id="createAlertChannel", summary="Create an alert channel",
      tags=["alerts"], description=DESCRIPTION)
async def create_channel(tenant_id: TenantId, data: JSONBody[AlertChannelCreate], db: Db, caller: Caller,
                         state: State) -> CreatedAlertChannel:
    return await _create(db, state, caller.scope(tenant_id), data)


@get("/alert-channels/{tenant_id:int}", operation_id="listAlertChannels", summary="List alert channels",
     tags=["alerts"], description="Bot tokens and webhook secrets are never listed.")
async def list_channels(tenant_id: TenantId, db: Db, caller: Caller) -> list[AlertChannel]:
    return await alerts.list_channels(db, caller.scope(tenant_id))


@delete("/alert-channels/{tenant_id:int}/{channel_id:int}", operation_id="deleteAlertChannel",
        summary="Delete an alert channel", tags=["alerts"], description="Its queued messages go with it.")
async def delete_channel(tenant_id: TenantId, channel_id: ChannelId, db: Db, caller: Caller) -> None:
    await alerts.delete_channel(db, caller.scope(tenant_id), channel_id)


@post("/alert-channels/{tenant_id:int}/{channel_id:int}/test", operation_id="testAlertChannel",
      summary="Send a test alert", tags=["alerts"], status_code=200,
      description="Sends a test message now and answers what the channel replied (`ok`, `status`, `response`); "
                  "the message is logged with the channel's deliveries. A channel that cannot be reached is "
                  "`ok: false`, not an error.")
async def test_channel(tenant_id: TenantId, channel_id: ChannelId, db: Db, caller: Caller, state: State,
                       settings: Config) -> Attempt:
    return await _test(db, state, settings, caller.scope(tenant_id), channel_id)


@get("/alert-channels/{tenant_id:int}/{channel_id:int}/deliveries", operation_id="listAlertDeliveries",
     summary="A channel's messages", tags=["alerts"],
     description="Newest first: each message (an event's, a digest, a test) with its status — pending, sent, "
                 "folded into a digest, or failed after every retry — and the channel's last response.")
async def list_deliveries(tenant_id: TenantId, channel_id: ChannelId, db: Db, caller: Caller,
                          limit: Limit = 100) -> list[AlertDelivery]:
    return await alerts.list_deliveries(db, caller.scope(tenant_id), channel_id, limit)


@post("/engine/alert-channels", operation_id="createEngineAlertChannel", summary="Create an admin alert channel",
      tags=["alerts"], description="Admin only. Receives the engine-wide alerts (PowerMTA unreachable or its "
                                   "reload failing). " + DESCRIPTION)
async def create_engine_channel(data: JSONBody[AlertChannelCreate], db: Db, caller: Caller,
                                state: State) -> CreatedAlertChannel:
    caller.require_admin()
    return await _create(db, state, None, data)


@get("/engine/alert-channels", operation_id="listEngineAlertChannels", summary="List the admin's alert channels",
     tags=["alerts"], description="Admin only.")
async def list_engine_channels(db: Db, caller: Caller) -> list[AlertChannel]:
    caller.require_admin()
    return await alerts.list_channels(db, None)


@delete("/engine/alert-channels/{channel_id:int}", operation_id="deleteEngineAlertChannel",
        summary="Delete an admin alert channel", tags=["alerts"], description="Admin only.")
async def delete_engine_channel(channel_id: ChannelId, db: Db, caller: Caller) -> None:
    caller.require_admin()
    await alerts.delete_channel(db, None, channel_id)


@post("/engine/alert-channels/{channel_id:int}/test", operation_id="testEngineAlertChannel",
      summary="Send a test alert to an admin channel", tags=["alerts"], status_code=200, description="Admin only.")
async def test_engine_channel(channel_id: ChannelId, db: Db, caller: Caller, state: State,
                              settings: Config) -> Attempt:
    caller.require_admin()
    return await _test(db, state, settings, None, channel_id)


ROUTES = [create_channel, list_channels, delete_channel, test_channel, list_deliveries, create_engine_channel,
          list_engine_channels, delete_engine_channel, test_engine_channel]
