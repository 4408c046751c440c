"""What the automatic pauses and the provider-aware backoff see: the figures of a campaign, an IP or a
sending domain, the provider holds of a tenant's IPs, and resuming a domain that paused itself."""

from __future__ import annotations

from typing import Annotated

from litestar import get, post
from litestar.params import QueryParameter

from api.deps import Caller, Db, TenantId, id_param
from engine import campaigns, health, ips
from engine.health import DomainState, Health, Scope
from engine.sending import backoff
from engine.sending.backoff import ProviderHold

CampaignId = id_param("campaign")
IpId = id_param("IP")
DomainId = id_param("domain")


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/health", operation_id="getCampaignHealth",
     summary="The campaign's figures for its automatic pause", tags=["campaigns"],
     description="Final results, hard bounces and complaints since the campaign started or was last resumed, "
                 "with the tenant's limits (sending-policy `auto_pause.campaign`); `complaints_total` counts "
                 "every complaint on its send log.")
async def campaign_health(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> Health:
    campaign = await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id)
    return await health.health(db, campaign.tenant_id, Scope.CAMPAIGN, campaign.id)


@get("/ips/{tenant_id:int}/{ip_id:int}/health", operation_id="getIpHealth",
     summary="The IP's figures for its automatic pause", tags=["ips"],
     description="The last 24 hours (since its last resume, if later) with the tenant's limits "
                 "(`auto_pause.ip`); past them the IP pauses itself and its warmup holds.")
async def ip_health(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller) -> Health:
    ip = await ips.get_ip(db, caller.scope(tenant_id), ip_id)
    return await health.health(db, ip.tenant_id, Scope.IP, ip.id)


@get("/ips/{tenant_id:int}/provider-holds", operation_id="listProviderHolds",
     summary="Provider holds of the tenant's IPs", tags=["ips"],
     description="Each IP x mailbox provider whose reputation deferrals were counted (Gmail 421 4.7.28, Yahoo "
                 "TSS04, Outlook 4.7.650: the patterns with a `hold` in pmta/shaping.toml): `active` holds "
                 "keep that IP from that provider until `held_until`; the IP sends to every other provider.")
async def provider_holds(tenant_id: TenantId, db: Db, caller: Caller,
                         ip_id: Annotated[int | None, QueryParameter(gt=0, le=2**62)] = None) -> list[ProviderHold]:
    return await backoff.list_holds(db, caller.scope(tenant_id), ip_id)


@get("/domains/{tenant_id:int}/{domain_id:int}/health", operation_id="getDomainHealth",
     summary="The sending domain's figures for its automatic pause", tags=["domains"],
     description="The last 24 hours of every campaign sent from the domain, with the tenant's limits "
                 "(`auto_pause.domain`) and whether the domain paused itself.")
async def domain_health(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> DomainState:
    return await health.domain_state(db, caller.scope(tenant_id), domain_id)


@post("/domains/{tenant_id:int}/{domain_id:int}/resume", operation_id="resumeDomain", status_code=200,
      summary="Resume a domain that paused itself", tags=["domains"],
      description="Its campaigns send again, and its check starts again from nothing.")
async def resume_domain(tenant_id: TenantId, domain_id: DomainId, db: Db, caller: Caller) -> DomainState:
    return await health.resume_domain(db, caller.scope(tenant_id), domain_id)


ROUTES = [campaign_health, ip_health, provider_holds, domain_health, resume_domain]
