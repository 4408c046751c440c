"""Warmup plans: each IP's curve, where it stands today, and the history of the daily decisions."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, put
from litestar.params import JSONBody

from api.deps import Caller, Db, TenantId, id_param
from engine import warmup_plans
from engine.warmup_plans import WarmupPlan, WarmupPlanDetail

IpId = id_param("IP")


class CurveSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    curve: Annotated[list[int], msgspec.Meta(min_length=1, max_length=365, examples=[[50, 100, 250, 500, 1000]],
                                             description="daily quotas, positive and never decreasing")]


class Curve(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: int
    curve: list[int]


@get("/warmup/{tenant_id:int}", operation_id="listWarmupPlans", summary="List a tenant's warmup plans",
     tags=["warmup"], description="One plan per IP: its curve, current day (0-based), today's quota, target, "
                                  "phase and the last day the daily run decided on it.")
async def list_plans(tenant_id: TenantId, db: Db, caller: Caller) -> list[WarmupPlan]:
    return await warmup_plans.list_plans(db, caller.scope(tenant_id))


@get("/warmup/{tenant_id:int}/{ip_id:int}", operation_id="getWarmupPlan", summary="Get one IP's warmup plan",
     tags=["warmup"], description="The plan and every decision taken on it (advance, hold, step_back, complete) "
                                  "with its reason and the figures of the day before; `alert` marks step backs.")
async def get_plan(tenant_id: TenantId, ip_id: IpId, db: Db, caller: Caller) -> WarmupPlanDetail:
    return await warmup_plans.get_plan(db, caller.scope(tenant_id), ip_id)


@put("/warmup/{tenant_id:int}/curve", operation_id="setWarmupCurve", summary="Set the tenant's warmup curve",
     tags=["warmup"], status_code=200,
     description="IPs created from now on start on this curve and end at its last value; existing plans keep "
                 "theirs. 400 names `curve` when a value is not positive or falls below the day before.")
async def set_curve(tenant_id: TenantId, data: JSONBody[CurveSet], db: Db, caller: Caller) -> Curve:
    steps = await warmup_plans.set_curve(db, caller.scope(tenant_id), data.curve)
    return Curve(tenant_id=tenant_id, curve=steps)


ROUTES = [list_plans, get_plan, set_curve]
