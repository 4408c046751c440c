"""Automatic pauses: a campaign, an IP or a sending domain whose hard bounces or complaints pass the tenant's
limits pauses itself, with the figures in its reason, as the results arrive.

Every path that learns a final result adds it here: the dispatcher after each chunk's SMTP answers, the
accounting reader for bounces and complaints PowerMTA reports later, the complaint reports (engine.complaints).
The limits are the tenant's sending policy (engine.sending.policy.AutoPause). A campaign is judged over its
whole run, an IP and a domain over a rolling 24 hours; resuming one deletes its figures, so the check starts
again from nothing (`rearm`). A paused IP gets no message and its warmup holds (the daily run looks at
warming IPs only); a paused domain's campaigns wait (engine.sending.policy.sender_hold).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from enum import StrEnum

import asyncpg
import msgspec

from engine import alert_events, campaigns
from engine.errors import NotFound
from engine.sending.policy import Limits, TenantPolicy
from sql import q

log = logging.getLogger(__name__)


class Scope(StrEnum):
    """The health_scope enum: what a row of figures is about."""

    CAMPAIGN = "campaign"
    IP = "ip"
    DOMAIN = "domain"


# The alert kind raised when each kind of target pauses itself (engine.alert_events; delivered elsewhere).
ALERT_KINDS = {Scope.CAMPAIGN: "campaign_auto_paused", Scope.IP: "ip_paused", Scope.DOMAIN: "domain_paused"}
WINDOWS = {Scope.CAMPAIGN: "its run", Scope.IP: "24 h", Scope.DOMAIN: "24 h"}


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    """Results of one campaign through one IP (None: not known) to add."""

    campaign_id: int
    ip_id: int | None
    results: int = 0      # final outcomes: accepted by PowerMTA, refused for good
    hard: int = 0         # of which hard bounces (the bounce table's hard class), at injection or later
    complaints: int = 0


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    scope: str
    scope_id: int
    results: int
    hard: int
    complaints: int


class Paused(msgspec.Struct, frozen=True, kw_only=True):
    scope: Scope
    scope_id: int
    reason: str


def verdict(limits: Limits, figures: Figures, window: str) -> str | None:
    """Why these figures pass the limits (the figures in the reason), or None."""
    if figures.results < limits.min_results:
        return None
    for what, count, limit in (("hard bounces", figures.hard, limits.hard_bounce_rate),
                               ("complaints", figures.complaints, limits.complaint_rate)):
        rate = count / figures.results
        if count and rate > limit:
            return (f"{what} {count} of {figures.results} results over {window} ({rate:.2%}) passed the limit "
                    f"of {limit:.2%}")
    return None


def tallies(rows: Sequence[tuple[int, int | None, int, int, int]]) -> list[Tally]:
    """(campaign_id, ip_id, results, hard, complaints) rows summed per campaign and IP."""
    sums: dict[tuple[int, int | None], list[int]] = defaultdict(lambda: [0, 0, 0])
    for campaign_id, ip_id, results, hard, complaints in rows:
        found = sums[(campaign_id, ip_id)]
        found[0] += results
        found[1] += hard
        found[2] += complaints
    return [Tally(campaign_id=c, ip_id=i, results=r, hard=h, complaints=k) for (c, i), (r, h, k) in sums.items()]


async def record(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, found: Sequence[Tally]) -> list[Paused]:
    """Add one tenant's results and pause what passed its limits; return what paused just now.

    A rate rises only with a bad result (a hard bounce, a complaint), so the limits are looked at only when
    one arrived; a target that reaches `min_results` on clean results is judged at its next bad one.
    """
    found = [t for t in found if t.results or t.hard or t.complaints]
    if not found:
        return []
    keys = await db.fetch(q("health-add"), [t.campaign_id for t in found], [t.ip_id for t in found],
                          [t.results for t in found], [t.hard for t in found], [t.complaints for t in found])
    if not any(t.hard or t.complaints for t in found):
        return []
    return await check(db, tenant_id, [(Scope(k["scope"]), k["scope_id"]) for k in keys])


async def check(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int,
                keys: Sequence[tuple[Scope, int]]) -> list[Paused]:
    """Judge these targets of one tenant against its limits; pause (and raise an alert for) each that passed."""
    if not keys:
        return []
    limits = TenantPolicy.from_settings(await db.fetchval(q("get-tenant-settings"), tenant_id)).auto_pause
    rows = await db.fetch(q("health-figures"), [s.value for s, _ in keys], [i for _, i in keys])
    paused: list[Paused] = []
    for figures in (Figures(**r) for r in rows):
        scope = Scope(figures.scope)
        reason = verdict(getattr(limits, scope.value), figures, WINDOWS[scope])
        subject = None if reason is None else await _pause(db, tenant_id, scope, figures.scope_id, reason)
        if subject is None:
            continue
        paused.append(Paused(scope=scope, scope_id=figures.scope_id, reason=reason))
        await alert_events.raise_alert(db, tenant_id, ALERT_KINDS[scope], subject,
                                       {"reason": reason, **msgspec.structs.asdict(figures),
                                        "limits": msgspec.structs.asdict(getattr(limits, scope.value))})
        log.warning("tenant %s %s %s paused itself: %s", tenant_id, scope.value, figures.scope_id, reason)
    return paused


async def pause_campaign(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, campaign_id: int,
                         reason: str) -> bool:
    """A sender-class refusal (engine.sending.dispatch): the campaign pauses at once, whatever its figures."""
    if not await campaigns.pause_itself(db, campaign_id, reason[:500]):
        return False
    await alert_events.raise_alert(db, tenant_id, ALERT_KINDS[Scope.CAMPAIGN], f"campaign:{campaign_id}",
                                   {"reason": reason[:500]})
    return True


async def _pause(db: asyncpg.Connection | asyncpg.Pool, tenant_id: int, scope: Scope, scope_id: int,
                 reason: str) -> str | None:
    """Pause the target and return the alert's subject ("campaign:12", "ip:3", "domain:mail.example"); None
    when it was not sending (already paused, finished, retired)."""
    stored = f"auto-paused: {reason}"[:500]
    if scope is Scope.CAMPAIGN:
        # The same pause the sender-class refusal uses: only a sending campaign moves.
        return f"campaign:{scope_id}" if await campaigns.pause_itself(db, scope_id, stored) else None
    if scope is Scope.IP:
        done = await db.fetchval(q("health-pause-ip"), tenant_id, scope_id, stored)
        return None if done is None else f"ip:{scope_id}"
    name = await db.fetchval(q("health-pause-domain"), tenant_id, scope_id, stored)
    return None if name is None else f"domain:{name}"


async def rearm(db: asyncpg.Connection | asyncpg.Pool, scope: Scope, scope_id: int) -> None:
    """The operator resumed the target: its figures start again from nothing."""
    await db.execute(q("health-rearm"), scope.value, scope_id)


async def prune(db: asyncpg.Connection | asyncpg.Pool) -> None:
    await db.execute(q("health-prune"))


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """What the automatic pause of one target judges now, and the complaints on record for it."""

    scope: str
    scope_id: int
    window: str
    results: int
    hard_bounces: int
    complaints: int
    limits: Limits
    complaints_total: int     # every complaint on the send log, whatever was re-armed since


async def health(db: asyncpg.Connection, tenant_id: int, scope: Scope, scope_id: int) -> Health:
    """The figures of one target of the tenant (the caller has checked that the target is the tenant's)."""
    figures = Figures(**(await db.fetch(q("health-figures"), [scope.value], [scope_id]))[0])
    limits = TenantPolicy.from_settings(await db.fetchval(q("get-tenant-settings"), tenant_id)).auto_pause
    total = await db.fetchval(q("health-complaints-total"), tenant_id, scope.value, scope_id)
    return Health(scope=scope.value, scope_id=scope_id, window=WINDOWS[scope], results=figures.results,
                  hard_bounces=figures.hard, complaints=figures.complaints, limits=getattr(limits, scope.value),
                  complaints_total=total)


class DomainState(msgspec.Struct, frozen=True, kw_only=True):
    domain_id: int
    name: str
    paused_reason: str | None
    paused_at: dt.datetime | None
    health: Health


async def domain_state(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> DomainState:
    row = await db.fetchrow(q("health-domain-state"), tenant_id, domain_id)
    if row is None:
        raise NotFound(f"domain {domain_id} not found")
    return DomainState(domain_id=row["id"], name=row["name"], paused_reason=row["paused_reason"],
                       paused_at=row["paused_at"], health=await health(db, tenant_id, Scope.DOMAIN, domain_id))


async def resume_domain(db: asyncpg.Connection, tenant_id: int, domain_id: int) -> DomainState:
    """The operator lifts the domain's pause: its campaigns send again and its check starts afresh."""
    if await db.fetchval(q("health-resume-domain"), tenant_id, domain_id) is None:
        raise NotFound(f"domain {domain_id} not found")
    await rearm(db, Scope.DOMAIN, domain_id)
    return await domain_state(db, tenant_id, domain_id)
