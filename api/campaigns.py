"""Campaigns: drafts, the start/pause/resume/cancel controls, audience preview, statistics, the send log."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import delete, get, post, put
from litestar.params import JSONBody, QueryParameter

from api.deps import Caller, Db, TenantId, id_param
from engine import campaigns
from engine.campaigns import Audience, Campaign, CampaignDraft, CampaignStatus, SendRow, Stats
from engine.errors import Invalid, NotFound

CampaignId = id_param("campaign")
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="page size")]


class AudienceCount(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: int
    count: int


class AudiencePreview(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[int, msgspec.Meta(gt=0, examples=[1])]
    audience: Audience = msgspec.field(default_factory=Audience)


class SendPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[SendRow]
    next_cursor: int | None


EXAMPLE = {"tenant_id": 1, "name": "Avocats FR - novembre", "from_name": "SOS-Expat",
           "from_email": "hello@sos-expat-mail-01.example", "reply_to": "team@sos-expat-mail-01.example",
           "category": "avocat", "audience": {"tags": ["avocat"], "languages": ["fr"], "statuses": ["valid"]},
           "transport": "pmta", "window": {"start": "09:00", "end": "18:00", "timezone": "Europe/Paris"},
           "daily_cap": 5000}


@post("/campaigns", operation_id="createCampaign", summary="Create a campaign (draft)", tags=["campaigns"],
      description="Creates a draft. `templates` maps a language to a template id that overrides the selection "
                  "chain for that language; `audience` filters the tenant's contacts (default: status valid). "
                  f"Example: `{msgspec.json.encode(EXAMPLE).decode()}`")
async def create_campaign(data: JSONBody[CampaignDraft], db: Db, caller: Caller) -> Campaign:
    caller.scope(data.tenant_id)
    return await campaigns.create_campaign(db, data)


@get("/campaigns/{tenant_id:int}", operation_id="listCampaigns", summary="List campaigns", tags=["campaigns"],
     description="Newest first; pass the last id seen as `before` for the next page.")
async def list_campaigns(tenant_id: TenantId, db: Db, caller: Caller,
                         before: Annotated[int | None, QueryParameter()] = None,
                         status: Annotated[str | None, QueryParameter()] = None, limit: Limit = 50) -> list[Campaign]:
    if status is not None and status not in {s.value for s in CampaignStatus}:
        raise Invalid(f"status: expected one of {[s.value for s in CampaignStatus]}", field="status")
    return await campaigns.list_campaigns(db, caller.scope(tenant_id), before=before, status=status, limit=limit)


@get("/campaigns/{tenant_id:int}/{campaign_id:int}", operation_id="getCampaign", summary="Get a campaign",
     tags=["campaigns"], description="One campaign of the tenant; 404 for another tenant's.")
async def get_campaign(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> Campaign:
    return await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id)


@put("/campaigns/{tenant_id:int}/{campaign_id:int}", operation_id="updateCampaign", summary="Edit a draft",
     tags=["campaigns"], description="Replaces a draft's fields; 409 once the campaign has started.")
async def update_campaign(tenant_id: TenantId, campaign_id: CampaignId, data: JSONBody[CampaignDraft], db: Db,
                          caller: Caller) -> Campaign:
    caller.scope(tenant_id)
    caller.scope(data.tenant_id)
    if data.tenant_id != tenant_id:
        raise NotFound(f"campaign {campaign_id} not found")
    return await campaigns.update_campaign(db, campaign_id, data)


@delete("/campaigns/{tenant_id:int}/{campaign_id:int}", operation_id="deleteCampaign", summary="Delete a campaign",
        tags=["campaigns"], description="Deletes a draft, or a finished or cancelled campaign with its send log.")
async def delete_campaign(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> None:
    await campaigns.delete_campaign(db, caller.scope(tenant_id), campaign_id)


def _control(action: str, text: str):
    @post(f"/campaigns/{{tenant_id:int}}/{{campaign_id:int}}/{action}", operation_id=f"{action}Campaign",
          summary=f"{action.capitalize()} a campaign", tags=["campaigns"], description=text, status_code=200)
    async def control(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> Campaign:
        return await campaigns.transition(db, caller.scope(tenant_id), campaign_id, action)

    control.__name__ = f"{action}_campaign"
    return control


start_campaign = _control("start", "Starts a draft: sending begins at once, or at `send_at`. Workers write the "
                                   "audience into the send log and share its rows. 409 from any other state.")
pause_campaign = _control("pause", "Stops sending within a second on every worker; rows in flight finish.")
resume_campaign = _control("resume", "Goes on where the campaign stopped.")
cancel_campaign = _control("cancel", "Stops for good; rows not yet sent are recorded as skipped.")


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/audience", operation_id="campaignAudienceCount",
     summary="Count a campaign's audience", tags=["campaigns"],
     description="How many contacts the campaign's audience filter matches now.")
async def campaign_audience(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> AudienceCount:
    campaign = await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id)
    return AudienceCount(tenant_id=tenant_id, count=await campaigns.audience_count(db, tenant_id, campaign.audience))


@post("/campaigns/audience-preview", operation_id="previewAudience", summary="Preview an audience",
      tags=["campaigns"], status_code=200,
      description="Counts the contacts an audience filter would match, before any campaign exists.")
async def preview_audience(data: JSONBody[AudiencePreview], db: Db, caller: Caller) -> AudienceCount:
    caller.scope(data.tenant_id)
    audience = msgspec.to_builtins(data.audience)
    return AudienceCount(tenant_id=data.tenant_id, count=await campaigns.audience_count(db, data.tenant_id, audience))


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/stats", operation_id="campaignStats",
     summary="Campaign statistics", tags=["campaigns"],
     description="Send rows by status (queued, claimed, sending, injected, deferred, delivered, bounced, failed, "
                 "skipped) in total, per VMTA and per language, and the rows found in flight after a worker died.")
async def campaign_stats(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> Stats:
    return await campaigns.stats(db, await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id))


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/sends", operation_id="listCampaignSends",
     summary="The send log of a campaign", tags=["campaigns"],
     description="One row per recipient, in id order; pass `next_cursor` as `after` for the next page.")
async def campaign_sends(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller,
                         after: Annotated[int, QueryParameter()] = 0,
                         status: Annotated[str | None, QueryParameter()] = None, limit: Limit = 100) -> SendPage:
    campaign = await campaigns.get_campaign(db, caller.scope(tenant_id), campaign_id)
    if status is not None and status not in {s.value for s in campaigns.SendStatus}:
        raise Invalid(f"status: expected one of {[s.value for s in campaigns.SendStatus]}", field="status")
    items = await campaigns.list_sends(db, campaign, after=after, status=status, limit=limit)
    return SendPage(items=items, next_cursor=items[-1].id if len(items) == limit else None)


ROUTES = [create_campaign, list_campaigns, get_campaign, update_campaign, delete_campaign, start_campaign,
          pause_campaign, resume_campaign, cancel_campaign, campaign_audience, preview_audience, campaign_stats,
          campaign_sends]
