"""Warmup plans in PostgreSQL: creating them with an IP, reading them with their history, and the daily run
that applies `engine.warmup.decide` to every warming IP of a tenant, once per calendar day."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from engine import alert_events, warmup
from engine.errors import Invalid, NotFound
from sql import q

log = logging.getLogger(__name__)


class WarmupPlan(msgspec.Struct, frozen=True, kw_only=True):
    ip_id: int
    tenant_id: int
    address: str
    vmta_name: str
    ip_status: str
    curve: list[int]
    current_day: int  # 0-based index into curve
    quota: int        # today's daily quota: curve[current_day]
    target: int
    phase: str        # warming | active
    last_advanced_on: dt.date | None
    updated_at: dt.datetime


class WarmupEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One daily decision and the figures it was taken on."""

    id: int
    ip_id: int
    on_day: dt.date
    action: str
    from_day: int | None
    to_day: int | None
    quota: int | None
    reason: str
    alert: bool
    sent: int | None
    bounced: int | None
    complained: int | None
    created_at: dt.datetime


class WarmupPlanDetail(msgspec.Struct, frozen=True, kw_only=True):
    plan: WarmupPlan
    history: list[WarmupEvent]


def curve_for(settings: dict, target: int) -> list[int]:
    """The tenant's own curve when it set one, else doubling from 50 (or less, for a tiny target) to `target`."""
    custom = settings.get("warmup_curve")
    if custom:
        return list(warmup.validate_curve(custom))
    return warmup.default_curve(start=min(warmup.DEFAULT_START, target), target=target)


def thresholds_for(settings: dict) -> warmup.Thresholds:
    """The tenant's thresholds over the defaults; a broken override is logged and ignored, never fatal."""
    overrides = settings.get("warmup_thresholds") or {}
    try:
        return msgspec.convert({**msgspec.structs.asdict(warmup.Thresholds()), **overrides}, warmup.Thresholds)
    except (msgspec.ValidationError, TypeError) as exc:
        log.warning("ignoring invalid warmup_thresholds %r: %s", overrides, exc)
        return warmup.Thresholds()


async def create_plan(db: asyncpg.Connection, tenant_id: int, ip_id: int, daily_cap: int) -> None:
    """The new IP's plan on day 0 of its tenant's curve."""
    settings = await db.fetchval(q("get-tenant-settings"), tenant_id) or {}
    plan = warmup.new_plan(daily_cap, curve_for(settings, daily_cap))
    await db.execute(q("warmup-create-plan"), ip_id, tenant_id, list(plan.curve), plan.target)


async def list_plans(db: asyncpg.Connection, tenant_id: int) -> list[WarmupPlan]:
    return [WarmupPlan(**r) for r in await db.fetch(q("warmup-list-plans"), tenant_id)]


async def get_plan(db: asyncpg.Connection, tenant_id: int, ip_id: int) -> WarmupPlanDetail:
    """One IP's plan with every decision taken on it, oldest first."""
    row = await db.fetchrow(q("warmup-get-plan"), tenant_id, ip_id)
    if row is None:
        raise NotFound(f"no warmup plan for IP {ip_id}")
    events = [WarmupEvent(**r) for r in await db.fetch(q("warmup-list-events"), tenant_id, ip_id)]
    return WarmupPlanDetail(plan=WarmupPlan(**row), history=events)


async def set_curve(db: asyncpg.Connection, tenant_id: int, curve: list[int]) -> list[int]:
    """Store the tenant's own curve (for IPs created from now on); Invalid naming `curve` when it is bad."""
    try:
        steps = list(warmup.validate_curve(curve))
    except ValueError as exc:
        raise Invalid(str(exc), field="curve") from exc
    if await db.fetchval(q("warmup-set-curve"), tenant_id, steps) is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return steps


def is_due(tz_name: str, now: dt.datetime, hour: int) -> bool:
    """Whether a tenant's local clock has reached the warmup hour today (later runs that day are no-ops)."""
    return now.astimezone(ZoneInfo(tz_name)).hour >= hour


async def day_figures(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, tz_name: str, day: dt.date,
                      ip_ids: list[int]) -> dict[int, warmup.DayStats]:
    """Each IP's sends, bounces and complaints on one local day of the tenant."""
    sends = {r["ip_id"]: r for r in await db.fetch(q("warmup-day-sends"), ip_ids, day, tz_name)}
    complaints = {r["ip_id"]: r["complained"]
                  for r in await db.fetch(q("warmup-day-complaints"), tenant_id, day, tz_name, ip_ids)}
    return {ip_id: warmup.DayStats(sent=sends[ip_id]["sent"] if ip_id in sends else 0,
                                   bounced=sends[ip_id]["bounced"] if ip_id in sends else 0,
                                   complained=complaints.get(ip_id, 0))
            for ip_id in ip_ids}


async def advance_ip(db: asyncpg.Connection, tenant_id: int, ip_id: int, today: dt.date,
                     yesterday: warmup.DayStats, thresholds: warmup.Thresholds) -> warmup.Action:
    """Decide and record today's step for one IP in one transaction; NOOP if already done today."""
    async with db.transaction():
        row = await db.fetchrow(q("warmup-lock-plan"), tenant_id, ip_id)
        if row is None or row["ip_status"] != "warming":
            return warmup.Action.NOOP
        plan = warmup.PlanState(curve=tuple(row["curve"]), day=row["current_day"], target=row["target"],
                                phase=row["phase"], last_advanced_on=row["last_advanced_on"])
        decision = warmup.decide(plan, yesterday, thresholds, today)
        if decision.action is warmup.Action.NOOP:
            return decision.action
        recorded = await db.fetchval(
            q("warmup-record-event"), ip_id, tenant_id, today, decision.action.value, decision.from_day,
            decision.new_day, decision.new_quota, decision.reason, decision.alert, yesterday.sent,
            yesterday.bounced, yesterday.complained)
        if recorded is None:  # another run got here first
            return warmup.Action.NOOP
        after = warmup.apply(plan, decision, today)
        await db.execute(q("warmup-update-plan"), ip_id, after.day, after.phase, today)
        if decision.becomes_active:
            await db.execute(q("warmup-activate-ip"), ip_id)
        if decision.alert:
            await alert_events.raise_alert(db, tenant_id, "ip_stepped_back", f"ip:{ip_id}", {
                "day": decision.new_day, "quota": decision.new_quota, "reason": decision.reason,
                "sent": yesterday.sent, "bounced": yesterday.bounced, "complained": yesterday.complained})
    if decision.alert:
        log.warning("warmup alert: tenant %s IP %s stepped back to day %s (quota %s) on %s: %s", tenant_id, ip_id,
                    decision.new_day, decision.new_quota, today, decision.reason)
    return decision.action


async def advance_tenant(pool: asyncpg.Pool, tenant_id: int, tz_name: str, settings: dict,
                         today: dt.date) -> Counter[str]:
    """Today's warmup run for one tenant: every warming IP, each in its own transaction; counts per action."""
    done: Counter[str] = Counter()
    ip_ids = [r["ip_id"] for r in await pool.fetch(q("warmup-due-ips"), tenant_id, today)]
    if not ip_ids:
        return done
    figures = await day_figures(pool, tenant_id, tz_name, today - dt.timedelta(days=1), ip_ids)
    thresholds = thresholds_for(settings)
    async with pool.acquire() as db:
        for ip_id in ip_ids:
            action = await advance_ip(db, tenant_id, ip_id, today, figures[ip_id], thresholds)
            done[action.value] += 1
    return done
