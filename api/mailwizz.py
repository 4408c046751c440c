"""A tenant's MailWizz install: where it is, its API keys (write-only), and the list contacts are pushed to."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Request, get, put
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId
from engine import tenants
from engine.mailwizz import sync as mailwizz_sync
from engine.mailwizz.sync import MailWizzConfig

Key = Annotated[str, msgspec.Meta(min_length=8, max_length=200, pattern=r"^[^\s]+$")]


class MailWizzConfigIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    base_url: Annotated[str, msgspec.Meta(
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=500, examples=["https://mailwizz.sos-expat.example/api"],
        description="the API root (ends with /api on a standard install)")]
    api_version: Literal[1, 2] = 2
    public_key: Annotated[Key, msgspec.Meta(examples=["a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"],
                                            description="the customer's API key (2.x: the only key)")]
    private_key: Annotated[Key, msgspec.Meta(
        description="1.x only: the signing key; omitted on a later PUT keeps the stored one")] | None = None
    list_uid: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]{6,40}$", examples=["ab12cd34ef567"],
                                          description="the list valid contacts are pushed to")] | None = None


@get("/mailwizz/{tenant_id:int}", operation_id="getMailWizzConfig", summary="Get the MailWizz install",
     tags=["mailwizz"], description="Where the tenant's MailWizz is and which list it uses. The keys are never "
     "returned: `has_public_key` / `has_private_key` say whether they are stored. 404 if none is configured.")
async def get_config(tenant_id: TenantId, db: Db, caller: Caller) -> MailWizzConfig:
    return await mailwizz_sync.get_config(db, caller.scope(tenant_id))


@put("/mailwizz/{tenant_id:int}", operation_id="putMailWizzConfig", summary="Configure the MailWizz install",
     tags=["mailwizz"], status_code=200,
     description="Creates or replaces the tenant's install. Keys are stored encrypted with the engine's secret "
     "key and never shown again. Contacts are pushed and campaigns created only once `list_uid` is set.")
async def put_config(tenant_id: TenantId, data: JSONBody[MailWizzConfigIn], db: Db, caller: Caller,
                     request: Request) -> MailWizzConfig:
    await tenants.get_tenant(db, caller.scope(tenant_id))
    return await mailwizz_sync.put_config(
        db, request.app.state.secret_key, tenant_id, base_url=data.base_url.rstrip("/"),
        api_version=data.api_version, public_key=data.public_key, private_key=data.private_key,
        list_uid=data.list_uid)


ROUTES = [get_config, put_config]
