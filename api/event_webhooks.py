"""Event webhooks for integrators: endpoints, the event types they want, and their delivery log."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, patch, post
from litestar.datastructures import State
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Db, TenantId, id_param
from engine import events
from engine.events import CreatedEventEndpoint, EventDelivery, EventEndpoint, EventTypes

EndpointId = id_param("event endpoint")
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]


class EventEndpointCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, examples=["https://crm.example/hooks/email"])]
    event_types: EventTypes


class EventEndpointPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    event_types: EventTypes | None = None
    active: bool | None = None


DESCRIPTION = (
    "Each request is `POST {\"events\": [...]}` with the oldest pending events first (several when the endpoint "
    "is busy or catching up), each `{id, type, tenant_id, contact_id, created_at, data}`; `bounced` carries the "
    "bounce class, category and SMTP code. Signed like the inbound source webhooks: `X-Timestamp` (unix "
    "seconds) and `X-Signature: sha256=` + hex HMAC-SHA256 with the endpoint's secret of `<X-Timestamp>.` + "
    "the body. Any 2xx acknowledges the batch; anything else is retried with backoff (10 s doubling up to an "
    "hour), in order: later events wait. An endpoint failing for 24 h is turned off with an alert "
    "(`event_endpoint_disabled`); turning it back on delivers what it had not received.")


@post("/event-endpoints/{tenant_id:int}", operation_id="createEventEndpoint", summary="Register an event webhook",
      tags=["event-webhooks"], description=DESCRIPTION + " The signing secret is in the answer once, as `secret`.")
async def create_endpoint(tenant_id: TenantId, data: JSONBody[EventEndpointCreate], db: Db, caller: Caller,
                          state: State) -> CreatedEventEndpoint:
    return await events.create_endpoint(db, state.secret_key, caller.scope(tenant_id), url=data.url,
                                        event_types=data.event_types)


@get("/event-endpoints/{tenant_id:int}", operation_id="listEventEndpoints", summary="List event webhooks",
     tags=["event-webhooks"], description="With each endpoint's delivery state; secrets are never listed.")
async def list_endpoints(tenant_id: TenantId, db: Db, caller: Caller) -> list[EventEndpoint]:
    return await events.list_endpoints(db, caller.scope(tenant_id))


@get("/event-endpoints/{tenant_id:int}/{endpoint_id:int}", operation_id="getEventEndpoint",
     summary="Get an event webhook", tags=["event-webhooks"],
     description="`failing_since`, `attempts` and `next_attempt_at` describe a run of failures; `last_status` "
                 "and `last_response` the last attempt.")
async def get_endpoint(tenant_id: TenantId, endpoint_id: EndpointId, db: Db, caller: Caller) -> EventEndpoint:
    return await events.get_endpoint(db, caller.scope(tenant_id), endpoint_id)


@patch("/event-endpoints/{tenant_id:int}/{endpoint_id:int}", operation_id="updateEventEndpoint",
       summary="Change an event webhook", tags=["event-webhooks"],
       description="New event types apply to events from now on. `active: false` stops deliveries and queues "
                   "no new events; `active: true` starts again from the oldest event it had not received.")
async def update_endpoint(tenant_id: TenantId, endpoint_id: EndpointId, data: JSONBody[EventEndpointPatch], db: Db,
                          caller: Caller) -> EventEndpoint:
    return await events.update_endpoint(db, caller.scope(tenant_id), endpoint_id, event_types=data.event_types,
                                        active=data.active)


@delete("/event-endpoints/{tenant_id:int}/{endpoint_id:int}", operation_id="deleteEventEndpoint",
        summary="Delete an event webhook", tags=["event-webhooks"], description="Its delivery log goes with it.")
async def delete_endpoint(tenant_id: TenantId, endpoint_id: EndpointId, db: Db, caller: Caller) -> None:
    await events.delete_endpoint(db, caller.scope(tenant_id), endpoint_id)


@get("/event-endpoints/{tenant_id:int}/{endpoint_id:int}/deliveries", operation_id="listEventDeliveries",
     summary="An event webhook's delivery log", tags=["event-webhooks"],
     description="Newest first (`before` pages back by event id): each event with its status, attempts and the "
                 "endpoint's last response to it.")
async def list_deliveries(tenant_id: TenantId, endpoint_id: EndpointId, db: Db, caller: Caller,
                          before: Annotated[int | None, QueryParameter(gt=0)] = None,
                          limit: Limit = 100) -> list[EventDelivery]:
    return await events.list_deliveries(db, caller.scope(tenant_id), endpoint_id, before=before, limit=limit)


ROUTES = [create_endpoint, list_endpoints, get_endpoint, update_endpoint, delete_endpoint, list_deliveries]
