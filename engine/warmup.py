"""Warmup plans: the daily-quota curve of a sending IP and the pure decision that moves it each day."""

from __future__ import annotations

import datetime as dt
import enum
from zoneinfo import ZoneInfo

import msgspec

# Default ramp: start at 50 a day and double until the target. Doubling daily is the common PowerMTA
# cold-VMTA schedule (powermta.md §4: `max-cold-virtual-mta-msg 50/day,100/day,...`) and reaches 50,000 a
# day in about 11 days; tenants that want the slower 14-30 day ramps cold-email tools advise
# (deliverability.md §4) give their own curve or a smaller factor.
DEFAULT_START = 50
DEFAULT_FACTOR = 2.0


class Action(enum.StrEnum):
    """What the daily warmup run did to one IP; stored in `warmup_events.action`."""

    ADVANCE = "advance"
    HOLD = "hold"
    STEP_BACK = "step_back"
    COMPLETE = "complete"
    NOOP = "noop"


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Rates (fractions of yesterday's sends) above which an IP holds or steps back; per tenant."""

    # Hold at 2% bounces: Woodpecker's Bounce Shield default (deliverability.md §4.1). Hold at 0.1%
    # complaints: Gmail's "keep it below 0.1%" line. Step back at 5% bounces (well past every tool's
    # auto-pause point) and at 0.3% complaints, the Gmail/Yahoo hard limit (deliverability.md §1.1-1.2).
    hold_bounce: float = 0.02
    hold_complaint: float = 0.001
    back_bounce: float = 0.05
    back_complaint: float = 0.003
    # Below this many sends yesterday the rates say nothing, so the IP holds instead of ramping blind.
    min_sent: int = 1


class DayStats(msgspec.Struct, frozen=True, kw_only=True):
    """One IP's figures for one calendar day (from the send log and accounting)."""

    sent: int
    bounced: int = 0
    complained: int = 0


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded decision; maps onto a `warmup_events` row."""

    on: dt.date
    action: Action
    from_day: int
    to_day: int
    quota: int
    reason: str
    alert: bool = False


class PlanState(msgspec.Struct, frozen=True, kw_only=True):
    """An IP's warmup plan as stored in `warmup_plans` (`day` is the 0-based index into `curve`)."""

    curve: tuple[int, ...]
    day: int = 0
    target: int
    phase: str = "warming"  # warming | active
    last_advanced_on: dt.date | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def quota(self) -> int:
        """Today's daily quota."""
        return self.curve[min(self.day, len(self.curve) - 1)]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of `decide`; `alert` marks a step back, which the caller reports."""

    action: Action
    from_day: int
    new_day: int
    new_quota: int
    reason: str
    alert: bool = False
    becomes_active: bool = False


def default_curve(start: int = DEFAULT_START, target: int = 50_000, factor: float = DEFAULT_FACTOR) -> list[int]:
    """Daily quotas from `start`, multiplied by `factor` each day, ending exactly at `target`."""
    if start < 1 or target < 1:
        raise ValueError("start and target must be at least 1")
    if factor <= 1:
        raise ValueError("factor must be greater than 1")
    curve: list[int] = []
    quota = float(start)
    while round(quota) < target:
        if not curve or round(quota) > curve[-1]:
            curve.append(round(quota))
        quota *= factor
    curve.append(target)
    return curve


def validate_curve(curve: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """A tenant-supplied curve as a tuple; raises ValueError unless positive and never decreasing."""
    if not curve:
        raise ValueError("curve: at least one daily quota is needed")
    for i, quota in enumerate(curve):
        if not isinstance(quota, int) or quota < 1:
            raise ValueError(f"curve[{i}]: daily quota must be a positive integer, got {quota!r}")
        if i and quota < curve[i - 1]:
            raise ValueError(f"curve[{i}]: {quota} is below the day before ({curve[i - 1]})")
    return tuple(curve)


def new_plan(target: int, curve: list[int] | tuple[int, ...] | None = None) -> PlanState:
    """A fresh plan on day 0 of the given curve (the default doubling curve when none is given)."""
    steps = validate_curve(curve) if curve is not None else tuple(default_curve(target=target))
    return PlanState(curve=steps, target=steps[-1], day=0)


def decide(plan: PlanState, yesterday: DayStats, thresholds: Thresholds, today: dt.date) -> Decision:
    """What today's warmup run does to this plan, given yesterday's figures; pure and idempotent per day."""
    day = plan.day
    if plan.last_advanced_on == today:
        return Decision(action=Action.NOOP, from_day=day, new_day=day, new_quota=plan.quota,
                        reason=f"already decided on {today.isoformat()}")
    if plan.phase != "warming":
        return Decision(action=Action.NOOP, from_day=day, new_day=day, new_quota=plan.quota,
                        reason=f"plan is {plan.phase}, not warming")
    if yesterday.sent < thresholds.min_sent:
        return Decision(action=Action.HOLD, from_day=day, new_day=day, new_quota=plan.quota,
                        reason=f"only {yesterday.sent} sent yesterday (< {thresholds.min_sent}): nothing to judge")
    bounce = yesterday.bounced / yesterday.sent
    complaint = yesterday.complained / yesterday.sent
    figures = f"bounces {bounce:.2%}, complaints {complaint:.3%} of {yesterday.sent}"
    if bounce > thresholds.back_bounce or complaint > thresholds.back_complaint:
        back = max(0, day - 1)
        limit = (f"bounce limit {thresholds.back_bounce:.2%}" if bounce > thresholds.back_bounce
                 else f"complaint limit {thresholds.back_complaint:.3%}")
        return Decision(action=Action.STEP_BACK, from_day=day, new_day=back, new_quota=plan.curve[back],
                        reason=f"{figures}: past the step-back {limit}", alert=True)
    if bounce > thresholds.hold_bounce or complaint > thresholds.hold_complaint:
        limit = (f"bounce limit {thresholds.hold_bounce:.2%}" if bounce > thresholds.hold_bounce
                 else f"complaint limit {thresholds.hold_complaint:.3%}")
        return Decision(action=Action.HOLD, from_day=day, new_day=day, new_quota=plan.quota,
                        reason=f"{figures}: past the hold {limit}")
    nxt = min(day + 1, len(plan.curve) - 1)
    if nxt == len(plan.curve) - 1:
        return Decision(action=Action.COMPLETE, from_day=day, new_day=nxt, new_quota=plan.curve[nxt],
                        reason=f"{figures}: target {plan.curve[nxt]} reached", becomes_active=True)
    return Decision(action=Action.ADVANCE, from_day=day, new_day=nxt, new_quota=plan.curve[nxt],
                    reason=f"{figures}: within limits")


def apply(plan: PlanState, decision: Decision, today: dt.date) -> PlanState:
    """The plan after a decision, its history extended; a noop returns the plan unchanged."""
    if decision.action is Action.NOOP:
        return plan
    entry = HistoryEntry(on=today, action=decision.action, from_day=decision.from_day, to_day=decision.new_day,
                         quota=decision.new_quota, reason=decision.reason, alert=decision.alert)
    return msgspec.structs.replace(
        plan, day=decision.new_day, last_advanced_on=today, history=(*plan.history, entry),
        phase="active" if decision.becomes_active else plan.phase)


def today_in_timezone(tz_name: str, now: dt.datetime) -> dt.date:
    """The calendar date at `now` (timezone-aware) in the tenant's timezone."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(ZoneInfo(tz_name)).date()


def seconds_until_tomorrow(tz_name: str, now: dt.datetime) -> float:
    """Seconds from `now` to the next local midnight in the tenant's timezone (DST-aware)."""
    zone = ZoneInfo(tz_name)
    local = now.astimezone(zone)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return (midnight - now).total_seconds()
