"""Warmup curve and the daily decision: a 30-day simulation with injected bounce and complaint figures."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.warmup import (
    Action,
    DayStats,
    PlanState,
    Thresholds,
    apply,
    decide,
    default_curve,
    new_plan,
    seconds_until_tomorrow,
    today_in_timezone,
    validate_curve,
)

START = dt.date(2024, 3, 1)

# Day of the run -> (bounced, complained) the day before; the IP sent its whole quota every day, with
# 0.5% bounces on the days not listed.
FIGURES: dict[int, tuple[int, int]] = {
    3: (6, 0),      # 6 of 200 = 3% bounces, past 2%: hold
    5: (24, 0),     # 24 of 400 = 6% bounces, past 5%: step back
    10: (0, 2),     # 2 of 1,600 = 0.125% complaints, past 0.1%: hold
    11: (8, 6),     # 6 of 1,600 = 0.375% complaints, past 0.3%: step back
}
SILENT_DAYS = {6}  # nothing sent the day before: hold

# What each day's run must do, and the quota it leaves (curve 50 .. 50,000 in 11 steps).
EXPECTED: list[tuple[Action, int]] = [
    (Action.ADVANCE, 100), (Action.ADVANCE, 200),
    (Action.HOLD, 200),
    (Action.ADVANCE, 400),
    (Action.STEP_BACK, 200),
    (Action.HOLD, 200),
    (Action.ADVANCE, 400), (Action.ADVANCE, 800), (Action.ADVANCE, 1600),
    (Action.HOLD, 1600),
    (Action.STEP_BACK, 800),
    (Action.ADVANCE, 1600), (Action.ADVANCE, 3200), (Action.ADVANCE, 6400), (Action.ADVANCE, 12800),
    (Action.ADVANCE, 25600),
    (Action.COMPLETE, 50000),
] + [(Action.NOOP, 50000)] * 13


def yesterday_for(run: int, quota: int) -> DayStats:
    if run in SILENT_DAYS:
        return DayStats(sent=0)
    bounced, complained = FIGURES.get(run, (quota // 200, 0))
    return DayStats(sent=quota, bounced=bounced, complained=complained)


def test_default_curve_doubles_and_ends_exactly_at_target():
    assert default_curve(target=1000) == [50, 100, 200, 400, 800, 1000]
    assert default_curve(target=800) == [50, 100, 200, 400, 800]
    assert default_curve(start=50, target=30) == [30]
    assert default_curve(start=100, target=1000, factor=1.5)[-1] == 1000
    with pytest.raises(ValueError):
        default_curve(target=100, factor=1)


def test_tenant_curves_are_checked():
    assert validate_curve([10, 20, 20, 40]) == (10, 20, 20, 40)
    for bad in ([], [10, 5], [0, 10], [10, 2.5]):
        with pytest.raises(ValueError):
            validate_curve(bad)
    assert new_plan(target=0, curve=[5, 10]).target == 10


def test_thirty_day_simulation_follows_holds_steps_back_and_completes():
    plan = new_plan(target=50_000)
    assert plan.curve == (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 50000)
    seen: list[tuple[Action, int]] = []
    for run in range(1, 31):
        today = START + dt.timedelta(days=run)
        decision = decide(plan, yesterday_for(run, plan.quota), Thresholds(), today)
        plan = apply(plan, decision, today)
        seen.append((decision.action, plan.quota))
        # the cron running twice on one day changes nothing
        again = decide(plan, yesterday_for(run, plan.quota), Thresholds(), today)
        assert again.action is Action.NOOP and apply(plan, again, today) == plan
    assert seen == EXPECTED
    assert plan.phase == "active" and plan.quota == plan.target == 50_000
    assert [e.action for e in plan.history if e.alert] == [Action.STEP_BACK, Action.STEP_BACK]
    assert len(plan.history) == 17  # one entry per real decision, none for the noops
    assert "past the step-back bounce limit" in plan.history[4].reason
    assert "nothing to judge" in plan.history[5].reason
    assert "past the hold complaint limit" in plan.history[9].reason
    assert "past the step-back complaint limit" in plan.history[10].reason
    # the quotas it advanced through are the curve's, in order, from the last step back to the target
    advanced = [e.quota for e in plan.history[11:]]
    assert advanced == list(plan.curve[5:])


def test_thresholds_are_strict_and_per_tenant():
    plan = PlanState(curve=(50, 100, 200), day=1, target=200)
    today = dt.date(2024, 5, 2)
    at_limit = DayStats(sent=1000, bounced=20, complained=1)  # exactly 2% and 0.1%: not past them
    assert decide(plan, at_limit, Thresholds(), today).action is Action.COMPLETE
    strict = Thresholds(hold_bounce=0.01)
    assert decide(plan, at_limit, strict, today).action is Action.HOLD


def test_step_back_on_the_first_day_stays_there_with_an_alert():
    plan = new_plan(target=400)
    decision = decide(plan, DayStats(sent=50, bounced=10), Thresholds(), dt.date(2024, 5, 2))
    assert (decision.action, decision.new_day, decision.new_quota, decision.alert) == (Action.STEP_BACK, 0, 50, True)


def test_active_plan_is_left_alone():
    plan = PlanState(curve=(50, 100), day=1, target=100, phase="active")
    assert decide(plan, DayStats(sent=100), Thresholds(), dt.date(2024, 5, 2)).action is Action.NOOP


def test_days_are_counted_in_the_tenants_timezone():
    now = dt.datetime(2024, 3, 10, 23, 30, tzinfo=dt.UTC)
    assert today_in_timezone("UTC", now) == dt.date(2024, 3, 10)
    assert today_in_timezone("Asia/Tokyo", now) == dt.date(2024, 3, 11)
    assert today_in_timezone("America/Los_Angeles", now) == dt.date(2024, 3, 10)
    with pytest.raises(ValueError):
        today_in_timezone("UTC", now.replace(tzinfo=None))


def test_seconds_until_tomorrow_knows_daylight_saving():
    # 2024-03-10 is 23 hours long in New York (clocks jump from 02:00 to 03:00)
    start = dt.datetime(2024, 3, 10, 5, 0, tzinfo=dt.UTC)  # 00:00 EST
    assert seconds_until_tomorrow("America/New_York", start) == 23 * 3600
    assert seconds_until_tomorrow("UTC", dt.datetime(2024, 3, 10, 23, 0, tzinfo=dt.UTC)) == 3600
