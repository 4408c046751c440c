"""Sender identity: a tenant's (name, company, postal address, website), and a campaign's overrides."""

from __future__ import annotations

from litestar import get, put
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId, id_param
from engine import identities
from engine.identities import IdentityUpdate, SenderIdentity

CampaignId = id_param("campaign")


@get("/tenants/{tenant_id:int}/sender", operation_id="getTenantSender", summary="A tenant's sender identity",
     tags=["tenants"], description="What every message's signature and footer show, unless a campaign overrides it.")
async def get_tenant_sender(tenant_id: TenantId, db: Db, caller: Caller) -> SenderIdentity:
    return await identities.get_tenant_identity(db, caller.scope(tenant_id))


@put("/tenants/{tenant_id:int}/sender", operation_id="putTenantSender", summary="Set a tenant's sender identity",
     tags=["tenants"],
     description="The whole identity: a field left out is cleared. `sender_website` must be an absolute https:// "
                 "URL; no field may hold a line break. Every layout shows company and postal address in the "
                 "footer; the library's signatures use `sender_name`.")
async def put_tenant_sender(tenant_id: TenantId, data: JSONBody[IdentityUpdate], db: Db,
                            caller: Caller) -> SenderIdentity:
    return await identities.put_tenant_identity(db, caller.scope(tenant_id), data)


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/sender", operation_id="getCampaignSender",
     summary="A campaign's sender overrides", tags=["campaigns"],
     description="Only the campaign's own values; a null field means the tenant's applies.")
async def get_campaign_sender(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> SenderIdentity:
    return await identities.get_campaign_identity(db, caller.scope(tenant_id), campaign_id)


@put("/campaigns/{tenant_id:int}/{campaign_id:int}/sender", operation_id="putCampaignSender",
     summary="Override the sender identity for a campaign", tags=["campaigns"],
     description="Fields given replace the tenant's for this campaign's messages (from the next batch on); "
                 "fields left out fall back to the tenant's.")
async def put_campaign_sender(tenant_id: TenantId, campaign_id: CampaignId, data: JSONBody[IdentityUpdate], db: Db,
                              caller: Caller) -> SenderIdentity:
    return await identities.put_campaign_identity(db, caller.scope(tenant_id), campaign_id, data)


ROUTES = [get_tenant_sender, put_tenant_sender, get_campaign_sender, put_campaign_sender]
