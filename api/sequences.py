"""Sequences: a campaign's steps, stop rules and recipient window; the tenant's holidays; A/B results; spintax."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import get, post, put
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId, id_param
from engine import sequences, spintax
from engine.errors import NotFound
from engine.sequences import Sequence, SequenceDraft, VariantReport

CampaignId = id_param("campaign")

EXAMPLE = {"steps": [{"templates": {"fr": 12, "en": 13}, "variants": [{"name": "A"}, {"name": "B",
           "subject": "{Bonjour|Salut} {firstName}"}]},
                     {"delay": {"business_days": 2}, "templates": {"fr": 14, "en": 15}, "thread": True},
                     {"delay": {"business_days": 3}, "templates": {"fr": 16, "en": 17}, "thread": True}],
           "stop_on": {"auto_reply": False, "resume_after_return": True, "company": True},
           "recipient_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00",
                                "min_gap": 20, "max_gap": 90},
           "winner_after": 200}


class Holiday(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    day: dt.date
    name: Annotated[str, msgspec.Meta(max_length=200, examples=["Noël"])] = ""


class Holidays(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    holidays: Annotated[list[Holiday], msgspec.Meta(max_length=1000, examples=[[{"day": "2026-12-25", "name": "Noël"}]])]


class SpintaxText(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000, examples=["{Hello|Hi} {firstName}"])]


class SpintaxPreview(msgspec.Struct, frozen=True, kw_only=True):
    variants: list[str]
    total: int


@put("/campaigns/{tenant_id:int}/{campaign_id:int}/sequence", operation_id="setCampaignSequence",
     summary="Set a draft campaign's sequence", tags=["sequences"],
     description="Steps (step 1 is the opening message; its templates default to the campaign's `templates`), "
                 "each with a delay in business days and hours in the recipient's time zone, its templates per "
                 "language (English as the fallback), `thread` (a follow-up in the same thread, \"Re: \" + the "
                 "opening subject) and A/B `variants`; stop rules; a per-recipient window. 409 once started. "
                 f"Example: `{msgspec.json.encode(EXAMPLE).decode()}`")
async def set_sequence(tenant_id: TenantId, campaign_id: CampaignId, data: JSONBody[SequenceDraft], db: Db,
                       caller: Caller) -> Sequence:
    return await sequences.save_sequence(db, caller.scope(tenant_id), campaign_id, data)


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/sequence", operation_id="getCampaignSequence",
     summary="A campaign's sequence", tags=["sequences"],
     description="404 when the campaign has none (it is one step, sent as the campaign says).")
async def get_sequence(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> Sequence:
    found = await sequences.get_tenant_sequence(db, caller.scope(tenant_id), campaign_id)
    if found is None:
        raise NotFound(f"campaign {campaign_id} has no sequence")
    return found


@get("/campaigns/{tenant_id:int}/{campaign_id:int}/variants", operation_id="campaignVariants",
     summary="A/B results per step and variant", tags=["sequences"],
     description="Sent, delivered, bounced, replied, unsubscribed and the reply rate of every variant; "
                 "`winner` once the campaign picked one.")
async def variant_stats(tenant_id: TenantId, campaign_id: CampaignId, db: Db, caller: Caller) -> list[VariantReport]:
    found = await sequences.get_tenant_sequence(db, caller.scope(tenant_id), campaign_id)
    return [] if found is None else await sequences.variant_report(db, found)


@put("/sequences/{tenant_id:int}/holidays", operation_id="setHolidays", summary="Set the tenant's holidays",
     tags=["sequences"], description="Days no follow-up is due on and no recipient window opens (replaces the list).")
async def set_holidays(tenant_id: TenantId, data: JSONBody[Holidays], db: Db, caller: Caller) -> list[Holiday]:
    await sequences.set_holidays(db, caller.scope(tenant_id), [(h.day, h.name) for h in data.holidays])
    return [Holiday(day=day, name=name) for day, name in await sequences.list_holidays(db, tenant_id)]


@get("/sequences/{tenant_id:int}/holidays", operation_id="listHolidays", summary="The tenant's holidays",
     tags=["sequences"], description="In date order.")
async def list_holidays(tenant_id: TenantId, db: Db, caller: Caller) -> list[Holiday]:
    return [Holiday(day=day, name=name) for day, name in await sequences.list_holidays(db, caller.scope(tenant_id))]


@post("/spintax/preview", operation_id="previewSpintax", summary="Every way a spintax text can read",
      tags=["sequences"], status_code=200,
      description="Up to 50 readings and how many there are; an unbalanced brace is a 422 naming its position.")
async def preview_spintax(data: JSONBody[SpintaxText], caller: Caller) -> SpintaxPreview:
    found, total = spintax.variants(data.text, "text")
    return SpintaxPreview(variants=found, total=total)


ROUTES = [set_sequence, get_sequence, variant_stats, set_holidays, list_holidays, preview_spintax]
