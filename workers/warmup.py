"""The daily warmup run: an hourly arq cron that advances each tenant's IPs once its local warmup hour comes."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from arq import cron

from engine import warmup_plans
from engine.warmup import today_in_timezone
from sql import q

log = logging.getLogger(__name__)


async def advance_warmup(ctx: dict, *, today: dt.date | str | None = None) -> dict[str, int]:
    """Advance every warming IP whose tenant's warmup hour has come today; counts per action.

    Hourly rather than daily so each tenant moves at its own local hour (`settings.warmup_hour`) whatever
    its timezone; the runs after that hour find every plan already advanced and do nothing. A given `today`
    (tests, a manual catch-up) acts on every tenant for that date regardless of the hour.
    """
    pool = ctx["pool"]
    hour = ctx["settings"].warmup_hour
    now = dt.datetime.now(dt.UTC)
    fixed = dt.date.fromisoformat(today) if isinstance(today, str) else today
    total: Counter[str] = Counter()
    for tenant in await pool.fetch(q("warmup-tenants")):
        tz = tenant["timezone"]
        if fixed is None and not warmup_plans.is_due(tz, now, hour):
            continue
        day = fixed or today_in_timezone(tz, now)
        done = await warmup_plans.advance_tenant(pool, tenant["id"], tz, tenant["settings"] or {}, day)
        if done:
            log.info("warmup %s for tenant %s: %s", day, tenant["id"], dict(done))
        total.update(done)
    return dict(total)


def cron_jobs(settings: Any) -> list:
    # Minute 0 of every hour: a tenant at UTC+05:30 moves at the first full hour past its warmup hour.
    return [cron(advance_warmup, minute=0, unique=True, run_at_startup=False)]


FUNCTIONS = [advance_warmup]
