"""Warmup decisions at their edges: what mutation testing (mutation/run.sh) showed the other tests let change.

A rate exactly at a limit is within it; the decision carries the day it came from, the day and quota it
goes to and why (the history an operator reads); each threshold is a limit on its own.
"""

from __future__ import annotations

import datetime as dt

from engine import warmup
from engine.warmup import Action, DayStats, Decision, HistoryEntry, PlanState, Thresholds

TODAY = dt.date(2026, 11, 2)
CURVE = (50, 100, 200, 400)


def plan(day: int = 1, **kw) -> PlanState:
    return PlanState(curve=CURVE, day=day, target=CURVE[-1], **kw)


def test_a_rate_exactly_at_a_limit_is_within_it() -> None:
    t = Thresholds(hold_bounce=0.02, hold_complaint=0.001, back_bounce=0.05, back_complaint=0.003)
    at_hold = warmup.decide(plan(), DayStats(sent=1000, bounced=20, complained=1), t, TODAY)
    assert at_hold == Decision(action=Action.ADVANCE, from_day=1, new_day=2, new_quota=200,
                               reason="bounces 2.00%, complaints 0.100% of 1000: within limits")
    at_back = warmup.decide(plan(), DayStats(sent=1000, bounced=50, complained=3), Thresholds(
        hold_bounce=0.5, hold_complaint=0.5, back_bounce=0.05, back_complaint=0.003), TODAY)
    assert at_back.action is Action.ADVANCE


def test_each_limit_binds_alone_and_the_decision_says_which() -> None:
    t = Thresholds()
    back = warmup.decide(plan(2), DayStats(sent=1000, bounced=0, complained=4), t, TODAY)
    assert back == Decision(action=Action.STEP_BACK, from_day=2, new_day=1, new_quota=100, alert=True,
                            reason="bounces 0.00%, complaints 0.400% of 1000: past the step-back complaint limit 0.300%")
    hold = warmup.decide(plan(2), DayStats(sent=1000, bounced=21), t, TODAY)
    assert hold == Decision(action=Action.HOLD, from_day=2, new_day=2, new_quota=200,
                            reason="bounces 2.10%, complaints 0.000% of 1000: past the hold bounce limit 2.00%")
    hold_c = warmup.decide(plan(2), DayStats(sent=1000, complained=2), t, TODAY)
    assert hold_c.reason.endswith("past the hold complaint limit 0.100%") and hold_c.action is Action.HOLD


def test_too_few_sends_hold_and_exactly_enough_judge() -> None:
    t = Thresholds(min_sent=10)
    assert warmup.decide(plan(), DayStats(sent=9), t, TODAY) == Decision(
        action=Action.HOLD, from_day=1, new_day=1, new_quota=100,
        reason="only 9 sent yesterday (< 10): nothing to judge")
    assert warmup.decide(plan(), DayStats(sent=10), t, TODAY).action is Action.ADVANCE


def test_noops_and_the_last_day_say_where_they_stand() -> None:
    done_today = plan(last_advanced_on=TODAY)
    assert warmup.decide(done_today, DayStats(sent=100), Thresholds(), TODAY) == Decision(
        action=Action.NOOP, from_day=1, new_day=1, new_quota=100, reason="already decided on 2026-11-02")
    active = plan(3, phase="active")
    assert warmup.decide(active, DayStats(sent=100), Thresholds(), TODAY) == Decision(
        action=Action.NOOP, from_day=3, new_day=3, new_quota=400, reason="plan is active, not warming")
    complete = warmup.decide(plan(2), DayStats(sent=100), Thresholds(), TODAY)
    assert complete == Decision(action=Action.COMPLETE, from_day=2, new_day=3, new_quota=400, becomes_active=True,
                                reason="bounces 0.00%, complaints 0.000% of 100: target 400 reached")


def test_apply_writes_the_decision_into_the_history() -> None:
    decision = warmup.decide(plan(), DayStats(sent=100), Thresholds(), TODAY)
    after = warmup.apply(plan(), decision, TODAY)
    assert after.history == (HistoryEntry(on=TODAY, action=Action.ADVANCE, from_day=1, to_day=2, quota=200,
                                          reason=decision.reason),)
    assert (after.day, after.last_advanced_on, after.phase) == (2, TODAY, "warming")


def test_the_day_ends_at_the_tenants_midnight_not_the_servers() -> None:
    # 23:30 in Paris is 22:30 UTC: the tenant's day ends in half an hour, the server's in an hour and a half;
    # at 23:30 UTC it is already the next day in Paris, whose own midnight is 23.5 hours away.
    assert warmup.seconds_until_tomorrow("Europe/Paris", dt.datetime(2026, 11, 2, 22, 30, tzinfo=dt.UTC)) == 1800
    assert warmup.seconds_until_tomorrow("Europe/Paris", dt.datetime(2026, 11, 2, 23, 30, tzinfo=dt.UTC)) == 23.5 * 3600
