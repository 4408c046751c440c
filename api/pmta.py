"""The generated PowerMTA configuration (admin only: it spans every tenant's IPs)."""

from __future__ import annotations

from typing import Annotated

from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from api.deps import Caller, Config, Db
from pmta import generate

TenantFilter = Annotated[int | None, QueryParameter(gt=0, le=2**62, description="only this tenant's IPs and keys")]


@get("/pmta/config", operation_id="getPmtaConfig", summary="The generated PowerMTA configuration", tags=["pmta"],
     description="One `<virtual-mta>` per IP with today's quota as its `max-smtp-msg-rate`, one round-robin pool "
                 "per tenant, `domain-key` lines naming the key files the worker writes (the keys themselves "
                 "never leave through the API), the injection `<source>`, the accounting file and the "
                 "per-provider shaping. Deterministic: the same database gives the same bytes.",
     media_type=MediaType.TEXT)
async def get_config(db: Db, caller: Caller, settings: Config, state: State, tenant_id: TenantFilter = None) -> Response:
    caller.require_admin()
    text, _keys = await generate.build(db, settings, state.secret_key, tenant_id=tenant_id)
    return Response(text, media_type=MediaType.TEXT)


ROUTES = [get_config]
